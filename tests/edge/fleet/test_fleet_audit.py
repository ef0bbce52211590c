"""Device audit log: hash chain, tamper detection, restart continuity, masking, runtime hooks."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edge.fleet.audit import AuditError, AuditLog
from edge.runtime import EdgeRuntime, Ledger
from yikatong.protocol.audit import GENESIS_HASH, audit_hash
from yikatong.protocol.messages import (
    REQUESTS,
    AuditRecord,
    CardInserted,
    CardReadFailed,
    CardRemoved,
    PatientInfo,
)

ID_NUMBER = "310104196503120022"
CARD_NO = "310100000000000002"
PAY_CODE = "134567890123456780"
NAME = "李秀英"


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)

    def now(self) -> datetime:
        self.t += timedelta(milliseconds=1)
        return self.t


def test_chain_appends_links_and_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", clock=Clock())
    rows = [log.record("kiosk", "card.inserted", {"reader": "r", "n": i}) for i in range(4)]
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert rows[2].hash == audit_hash(3, rows[2].ts, "kiosk", "card.inserted",
                                      {"reader": "r", "n": 2}, rows[1].hash)
    assert log.verify() == (True, None)
    # Every shipped body is a valid ``audit`` event body of the wire contract.
    AuditRecord.model_validate(rows[0].wire_body())


def test_verify_detects_a_modified_row(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", clock=Clock())
    for i in range(5):
        log.record("kiosk", "print.done", {"n": i})
    db = sqlite3.connect(tmp_path / "audit.db")
    db.execute("UPDATE audit SET detail = ? WHERE seq = 3", ('{"n":99}',))
    db.commit()
    assert log.verify() == (False, 3)


def test_verify_detects_a_deleted_row(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", clock=Clock())
    for i in range(5):
        log.record("kiosk", "print.done", {"n": i})
    db = sqlite3.connect(tmp_path / "audit.db")
    db.execute("DELETE FROM audit WHERE seq = 2")
    db.commit()
    assert log.verify() == (False, 3)


def test_chain_continues_after_restart(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", clock=Clock())
    first = [log.record("kiosk", "card.inserted", {"n": i}) for i in range(3)]
    log.mark_shipped(2)
    log.close()
    again = AuditLog(tmp_path / "audit.db", clock=Clock())
    nxt = again.record("kiosk", "card.removed", {"n": 3})
    assert nxt.seq == 4 and nxt.prev_hash == first[-1].hash
    assert again.verify() == (True, None)
    assert [r.seq for r in again.unshipped()] == [3, 4]


def test_personal_keys_are_refused_and_free_text_is_masked(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", clock=Clock())
    for key, value in [("name", NAME), ("id_number", ID_NUMBER), ("card_no", CARD_NO),
                       ("auth_code", PAY_CODE)]:
        with pytest.raises(AuditError):
            log.record("kiosk", "x", {key: value})
        with pytest.raises(AuditError):
            log.record("kiosk", "x", {"nested": {key: value}})
    row = log.record("kiosk", "print.failed",
                     {"reason": f"holder name={NAME} id {ID_NUMBER} paid {PAY_CODE}"})
    text = json.dumps(row.wire_body(), ensure_ascii=False)
    assert ID_NUMBER not in text and PAY_CODE not in text and NAME not in text
    assert "310***********0022" in text
    stored = sqlite3.connect(tmp_path / "audit.db").execute(
        "SELECT group_concat(detail, '|') FROM audit").fetchone()[0]
    assert ID_NUMBER not in stored and PAY_CODE not in stored and NAME not in stored


# --------------------------------------------------------------------------- runtime hooks


class Uplink:
    connected = True

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.script: dict[str, Any] = {}

    async def request(self, type_: str, body: dict[str, Any], *, timeout=None, id=None):  # noqa: ASYNC109
        a = self.script[type_]
        if isinstance(a, BaseException):
            raise a
        return REQUESTS[type_][1].model_validate(a)  # as the real uplink: the result model

    async def publish_event(self, type_: str, body: dict[str, Any]) -> str:
        self.events.append((type_, body))
        return "e"

    def unresolved_payments(self) -> list[str]:
        return []  # nothing in an outbox here


IDENTITY = SimpleNamespace(name=NAME, id_number=ID_NUMBER, card_number=CARD_NO,
                           masked=lambda: {"name": "李*英"})
PATIENT = {"patient_id": "P1", "name": NAME, "sex": "F", "id_number": ID_NUMBER,
           "card_no": CARD_NO, "balance_fen": 50000, "insured": True}


def _runtime(audit: AuditLog, role: str = "kiosk") -> tuple[EdgeRuntime, Uplink]:
    up = Uplink()
    rt = EdgeRuntime(device_id="kiosk-001", role=role, hospital_name="示范医院", uplink=up,
                     printer=None, clock=Clock(), ledger=Ledger(), audit=audit)
    return rt, up


async def _drain() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_runtime_audits_card_session_and_ships_events(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    rt, up = _runtime(audit)
    rt.card_inserted("r", bytes.fromhex("3B8F8001"))
    rt.identity_read("r", IDENTITY)
    rt.card_removed("r")
    rt.card_failed("r", "not_health_card", "Not a health card.", "非健康卡")
    await _drain()
    assert [r.action for r in audit.rows()] == [
        "card.inserted", "card.read", "card.removed", "card.inserted", "card.read_failed"]
    assert audit.rows()[1].detail["card_masked"] == "3101**********0002"
    assert audit.rows()[4].detail["code"] == "not_health_card"
    assert audit.verify() == (True, None)
    shipped = [b for t, b in up.events if t == "audit"]
    assert [b["seq"] for b in shipped] == [1, 2, 3, 4, 5]
    assert audit.unshipped() == []  # each one went to the outbox
    kinds = {t: b for t, b in up.events if t != "audit"}
    CardInserted.model_validate(kinds["card.inserted"])
    CardRemoved.model_validate(kinds["card.removed"])
    assert CardReadFailed.model_validate(kinds["card.read_failed"]).code == "not_health_card"
    everything = json.dumps(up.events, ensure_ascii=False) + json.dumps(
        [r.wire_body() for r in audit.rows()], ensure_ascii=False)
    assert CARD_NO not in everything and ID_NUMBER not in everything
    assert NAME not in everything
    # No 18-digit number anywhere (hashes are hex, so digits next to a-f are not numbers).
    assert re.search(r"(?<![0-9a-f])\d{17}[0-9X](?![0-9a-f])", everything) is None


async def test_runtime_audits_a_code_payment_without_the_code(tmp_path: Path) -> None:
    from edge.devices.scanner.classify import PaymentCode

    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    rt, up = _runtime(audit)
    rt.card_inserted("r")
    rt.identity_read("r", IDENTITY)
    rt.session.patient = PatientInfo(**PATIENT)
    scan = rt.scan_received(PaymentCode(wallet="wechat", code=PAY_CODE))
    up.script["pay.create"] = {"payment_id": "PAY1", "state": "approved", "amount_fen": 5000,
                               "method": "wechat"}
    await rt.pay(purpose="bills", refs=["B1"], amount_fen=5000, method="code",
                 scan_id=scan["scan_id"], request_id="req-1", timeout_s=5)
    await _drain()
    rows = {r.action: r.detail for r in audit.rows()}
    assert rows["payment.requested"] == {"request_id": "req-1", "amount_fen": 5000,
                                         "method": "wechat", "purpose": "bills"}
    assert rows["payment.outcome"]["state"] == "approved"
    assert rows["payment.outcome"]["payment_id"] == "PAY1"
    everything = json.dumps(up.events, ensure_ascii=False)
    assert PAY_CODE not in everything and ID_NUMBER not in everything and NAME not in everything
    assert audit.verify() == (True, None)


async def test_runtime_audits_a_failed_payment(tmp_path: Path) -> None:
    from edge.uplink.errors import Rejected

    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    rt, up = _runtime(audit)
    rt.card_inserted("r")
    rt.identity_read("r", IDENTITY)
    rt.session.patient = PatientInfo(**PATIENT)
    up.script["pay.create"] = Rejected("insufficient_balance", "Not enough.", "余额不足")
    with pytest.raises(Rejected):
        await rt.pay(purpose="bills", refs=["B1"], amount_fen=5000, method="prepaid",
                     scan_id=None, request_id="req-2", timeout_s=5)
    assert audit.rows()[-1].action == "payment.error"
    assert audit.rows()[-1].detail == {"request_id": "req-2", "error": "insufficient_balance"}


async def test_runtime_audits_staff_login_and_logout_by_id_only(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    rt, up = _runtime(audit, role="cashier")
    up.script["staff.login"] = {"staff_id": "S1001", "name": "王芳", "role": "cashier"}
    await rt.staff_login("S1001", "123456")
    rt.staff_logout()
    rows = audit.rows()
    assert [(r.actor, r.action, r.detail) for r in rows] == [
        ("S1001", "staff.login", {"staff_id": "S1001"}),
        ("S1001", "staff.logout", {"staff_id": "S1001", "reason": "logout"})]
    assert "王芳" not in json.dumps([r.wire_body() for r in rows], ensure_ascii=False)


async def test_resend_audit_ships_what_a_crash_left_behind(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    for i in range(3):
        audit.record("kiosk", "print.done", {"n": i})
    rt, up = _runtime(audit)
    assert await rt.resend_audit() == 3
    assert [b["seq"] for t, b in up.events if t == "audit"] == [1, 2, 3]
    assert await rt.resend_audit() == 0


def test_runtime_without_audit_log_records_nothing() -> None:
    up = Uplink()
    rt = EdgeRuntime(device_id="k", role="kiosk", hospital_name="h", uplink=up, printer=None,
                     clock=Clock())
    rt.card_inserted("r")
    rt.card_removed("r")
    assert rt.audit is None and up.events == []
