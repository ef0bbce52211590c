"""Reference platform: 预约取号 (check-in), slip printed, insured share, cancelled listings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.ids import id_check_digit
from central.platform.sim.models import migrate, open_database
from tests.central.platform.conftest import FakeClock
from tests.central.platform.test_platform_sim_api import (
    API,
    book,
    key,
    new_patient,
    open_slot,
    stats,
)


def _paid_today(client: TestClient) -> tuple[str, dict]:
    slot = open_slot(client, period="pm")
    pid = new_patient(client, balance=100_000)["patient"]["patient_id"]
    r = book(client, pid, slot["slot_id"], "prepaid")
    assert r.status_code == 200, r.text
    return pid, r.json()


def test_checkin_marks_time_once_and_is_idempotent_by_key(client: TestClient,
                                                          clock: FakeClock) -> None:
    _, b = _paid_today(client)
    assert b["checked_in_at"] is None and b["slip_printed"] is False
    headers = {"Idempotency-Key": "kiosk-1:checkin-1"}
    first = client.post(f"{API}/bookings/{b['booking_id']}/checkin", headers=headers)
    assert first.status_code == 200 and first.json()["checked_in_at"] == "2025-03-10T01:00:00.000Z"
    clock.advance(60)
    replay = client.post(f"{API}/bookings/{b['booking_id']}/checkin", headers=headers)
    assert replay.json() == first.json()
    # another key (a later visit to the kiosk): the first time is kept, no second effect
    other = client.post(f"{API}/bookings/{b['booking_id']}/checkin", headers=key())
    assert other.json()["checked_in_at"] == first.json()["checked_in_at"]
    assert stats(client)["reg.checkin"] == 1
    assert client.post(f"{API}/bookings/{b['booking_id']}/checkin").status_code == 400


def test_checkin_refuses_unpaid_cancelled_and_other_days(client: TestClient) -> None:
    slot = open_slot(client, period="pm")
    pid = new_patient(client)["patient"]["patient_id"]
    unpaid = book(client, pid, slot["slot_id"]).json()
    r = client.post(f"{API}/bookings/{unpaid['booking_id']}/checkin", headers=key())
    assert r.status_code == 422 and r.json()["code"] == "not_paid"
    client.post(f"{API}/bookings/{unpaid['booking_id']}/cancel", headers=key())
    r = client.post(f"{API}/bookings/{unpaid['booking_id']}/checkin", headers=key())
    assert r.json()["code"] == "already_cancelled"
    later = open_slot(client, period="pm", date="2025-03-11")
    body17 = "11010519850101123"
    pid2 = client.post("/admin/patients", json={
        "card_no": "320100999900000002", "id_number": body17 + id_check_digit(body17),
        "name": "李四", "sex": "M", "birth_date": "1985-01-01", "balance_fen": 100_000,
        "insured": False}).json()["patient"]["patient_id"]
    tomorrow = book(client, pid2, later["slot_id"], "prepaid").json()
    r = client.post(f"{API}/bookings/{tomorrow['booking_id']}/checkin", headers=key())
    assert r.status_code == 422 and r.json()["code"] == "not_today"
    missing = client.post(f"{API}/bookings/BK0/checkin", headers=key())
    assert missing.status_code == 404
    assert "reg.checkin" not in stats(client)


def test_checked_in_booking_cannot_be_cancelled(client: TestClient) -> None:
    _, b = _paid_today(client)
    client.post(f"{API}/bookings/{b['booking_id']}/checkin", headers=key())
    r = client.post(f"{API}/bookings/{b['booking_id']}/cancel", headers=key())
    assert r.status_code == 422 and r.json()["code"] == "checked_in"


def test_slip_printed_is_recorded_and_listed(client: TestClient) -> None:
    pid, b = _paid_today(client)
    r = client.post(f"{API}/bookings/{b['booking_id']}/printed", headers=key())
    assert r.json() == {"booking_id": b["booking_id"], "printed": True}
    client.post(f"{API}/bookings/{b['booking_id']}/printed", headers=key())
    assert stats(client)["reg.printed"] == 1
    listed = client.get(f"{API}/bookings", params={"patient_id": pid}).json()["bookings"]
    assert listed[0]["slip_printed"] is True


def test_cancelled_bookings_stay_in_the_list(client: TestClient) -> None:
    slot = open_slot(client, period="pm")
    pid = new_patient(client)["patient"]["patient_id"]
    b = book(client, pid, slot["slot_id"]).json()
    client.post(f"{API}/bookings/{b['booking_id']}/cancel", headers=key())
    listed = client.get(f"{API}/bookings", params={"patient_id": pid}).json()["bookings"]
    assert [x["status"] for x in listed] == ["cancelled"]


def test_insured_patient_pays_the_configured_share(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(insured_share_pct=40)) as client:
        slot = open_slot(client, period="pm")
        assert slot["insured_fee_fen"] == (slot["fee_fen"] * 40 + 50) // 100
        pid = new_patient(client, balance=100_000)["patient"]["patient_id"]
        ins = book(client, pid, slot["slot_id"], insured=True).json()
        assert ins["insured"] is True and ins["fee_fen"] == slot["insured_fee_fen"]
        assert ins["insurance_fen"] == slot["fee_fen"] - ins["fee_fen"] > 0
        # the payment due is the patient's share, not the full fee
        full = client.post(f"{API}/payments", headers=key(), json={
            "patient_id": pid, "purpose": "registration", "refs": [ins["booking_id"]],
            "amount_fen": slot["fee_fen"], "method": "cash"})
        assert full.status_code == 422 and full.json()["code"] == "amount_mismatch"
        share = client.post(f"{API}/payments", headers=key(), json={
            "patient_id": pid, "purpose": "registration", "refs": [ins["booking_id"]],
            "amount_fen": ins["fee_fen"], "method": "cash"})
        assert share.json()["state"] == "approved"
        # self-pay on another session: the full fee
        other = open_slot(client, period="am", date="2025-03-11")
        self_pay = book(client, pid, other["slot_id"], insured=False).json()
        assert self_pay["fee_fen"] == other["fee_fen"] and self_pay["insurance_fen"] == 0


def test_migration_2_adds_the_booking_columns_to_a_version_1_database(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)")
    con.execute("INSERT INTO schema_version VALUES (1, 'x')")
    con.execute("CREATE TABLE booking_row (booking_id TEXT PRIMARY KEY, visit_no TEXT, "
                "patient_id TEXT, slot_id TEXT, queue_no INT, pay_method TEXT, insured INT, "
                "fee_fen INT, status TEXT, payment_id TEXT, created_at TEXT)")
    con.execute("INSERT INTO booking_row VALUES ('BK1','V1','P1','S1',1,'later',0,500,"
                "'booked',NULL,'t')")
    con.commit()
    con.close()
    schema = open_database(db)
    assert migrate(schema, "2025-03-10T00:00:00.000Z") == 3
    with schema.db.connection_context():
        row = schema.BookingRow.get(schema.BookingRow.booking_id == "BK1")
        assert (row.checked_in_at, row.slip_printed, row.insurance_fen) == (None, False, 0)
        assert migrate(schema, "x") == 3  # applied once
        versions = [r.version for r in schema.SchemaVersion.select()]
    assert versions == [1, 2, 3]


def test_insured_share_setting_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError):
        PlatformSimSettings(db_path=tmp_path / "x.db", insured_share_pct=101)
