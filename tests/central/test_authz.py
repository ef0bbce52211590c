"""Central's authorization (central/authz.py, central/staff.py): role table, staff sessions,
sign-in throttling, object grants, reply minimisation and retention — through the
forwarder's own message handling, with a scripted platform (no broker: replies are read
from the store, which is what the device would be sent). On SQLite and PostgreSQL; the last
tests race two instances (two stores on one PostgreSQL database) on the same operation."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pg_support import race

from central.authz import POLICY, AuthzSettings, Denied, Guard
from central.forwarder import Forwarder, ForwarderSettings
from central.payments import Payments
from central.platform.base import PlatformAdapter
from central.platform.errors import PlatformRejected
from central.retention import PrivacySettings, Retention
from central.staff import StaffSessions, StaffSettings
from central.store import Store, open_store
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import decode, encode
from yikatong.protocol.messages import REQUESTS, make_request

ID_NUMBER = "110101198001010015"
PIN = "246813"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, s: float) -> None:
        self.now += timedelta(seconds=s)


class Platform(PlatformAdapter):
    """Two patients, their bills, bookings, reports and payments; one cashier badge."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.ids = itertools.count(1)
        self.payments: dict[str, dict[str, Any]] = {}
        self.pin_failures = 0
        self.by_key: dict[str, dict[str, Any]] = {}

    async def call(self, op: str, body: dict[str, Any], *, idempotency_key: str,
                   timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        self.calls[op] += 1
        pid = body.get("patient_id")
        if pid is not None:
            assert pid in ("P000001", "P000002"), f"platform got {pid!r}, not its own id"
        if op == "patient.identify":
            n = {"HC01": 1, "HC02": 2}.get(body["value"], 1)
            return {"patient_id": f"P00000{n}", "name": "张三丰", "sex": "M",
                    "birth_date": "1980-01-01", "id_number": ID_NUMBER[:-1] + str(n),
                    "card_no": f"HC0000000{n}", "phone": "13812345678",
                    "balance_fen": 5000, "insured": True}
        if op == "bill.list":
            return {"bills": [{"bill_id": f"B-{pid}", "date": "2026-03-02", "dept_name": "内科",
                               "items": [], "total_fen": 100, "payable_here": True}]}
        if op == "report.list":
            return {"reports": [{"report_no": f"R-{pid}", "title": "血常规", "specimen": "血",
                                 "status": "ready", "printed": False}]}
        if op == "report.fetch":
            return {"report_no": body["report_no"], "title": "血常规", "patient_name": "张三丰",
                    "sex": "M", "age": "45岁", "dept_name": "内科", "specimen": "血",
                    "sampled_at": "2026-03-01T01:00:00.000Z",
                    "reported_at": "2026-03-01T05:00:00.000Z", "items": [],
                    "doctor": "李医生", "verify_url": "https://lab.example.test/v/1"}
        if op == "pay.create":
            if idempotency_key in self.by_key:  # idempotent, as a real platform is
                return self.by_key[idempotency_key]
            p = {"payment_id": f"PAY{next(self.ids)}", "state": "approved",
                 "amount_fen": body["amount_fen"], "method": body["method"],
                 "_patient": body["patient_id"]}
            self.payments[p["payment_id"]] = p
            self.by_key[idempotency_key] = {k: v for k, v in p.items() if not k.startswith("_")}
            return self.by_key[idempotency_key]
        if op in ("pay.status", "pay.reverse"):
            p = self.payments[body["payment_id"]]
            return {k: v for k, v in p.items() if not k.startswith("_")}
        if op == "pay.list":
            return {"payments": [
                {"payment_id": k, "created_at": "2026-03-01T01:00:00.000Z", "purpose": "topup",
                 "method": v["method"], "amount_fen": v["amount_fen"], "refunded_fen": 0,
                 "refundable_fen": v["amount_fen"], "state": "approved"}
                for k, v in self.payments.items() if v["_patient"] == pid]}
        if op == "pay.refund":
            return {"refund_id": "RF1", "payment_id": body["payment_id"],
                    "amount_fen": body["amount_fen"], "state": "refunded"}
        if op == "staff.login":
            if body["badge"] == "S1003" and body["pin"] == PIN:
                return {"staff_id": "ST1003", "name": "收费员三", "role": "cashier"}
            self.pin_failures += 1
            raise PlatformRejected("invalid_credentials", "badge or PIN is wrong")
        if op in ("reg.departments", "hotlist.delta"):
            return ({"departments": []} if op == "reg.departments"
                    else {"version": 1, "full": True, "added": [], "removed": []})
        return {}

    async def aclose(self) -> None:
        """Nothing to release."""


class Central:
    """A forwarder with the guard, fed envelopes directly."""

    def __init__(self, target: Path | str) -> None:
        self.clock = Clock()
        self.store: Store = open_store(target)
        self.platform = Platform()
        tokens = (f"tok{n:04d}-abcdefghijklmnopqrstuvw" for n in itertools.count())
        self.staff = StaffSessions(self.store, StaffSettings(idle_s=600, max_s=3600),
                                   clock=self.clock, token=lambda _n: next(tokens))
        self.guard = Guard(self.store, AuthzSettings(kiosk_topup_max_fen=50_000),
                           staff=self.staff, clock=self.clock)
        self.fwd = Forwarder(ForwarderSettings(), self.store, self.platform, clock=self.clock,
                             hooks=Payments(self.store, self.platform, clock=self.clock),
                             guard=self.guard)
        for dev, role in (("kiosk-001", "kiosk"), ("kiosk-002", "kiosk"),
                          ("cashier-001", "cashier"), ("cashier-002", "cashier")):
            self.store.add_device(dev, role, self.clock())

    async def ask(self, dev: str, type_: str, body: dict[str, Any], *,
                  auth: str | None = None) -> dict[str, Any]:
        env = make_request(type_, dev, body, now=self.clock(),
                           exp=self.clock() + timedelta(minutes=5), auth=auth)
        await self.fwd.handle(InboundMessage(f"ykt/v1/dev/{dev}/up/req", encode(env), 1, False))
        reply = self.store.RequestLog.get(self.store.RequestLog.id == env.id).reply
        return dict(decode(bytes(reply)).body)

    def security(self) -> list[dict[str, Any]]:
        return [{"action": e.action, **e.detail} for e in
                self.store.audit_by_actions(frozenset({
                    "request.forbidden", "staff.signin_failed", "staff.signin_throttled",
                    "staff.session_rejected"}), 100)]

    async def sign_in(self, dev: str = "cashier-001") -> str:
        r = await self.ask(dev, "staff.login", {"badge": "S1003", "pin": PIN})
        assert r["status"] == "ok", r
        return str(r["result"]["session_token"])

    async def identify(self, dev: str, card: str = "HC01", auth: str | None = None) -> str:
        r = await self.ask(dev, "patient.identify", {"by": "card", "value": card}, auth=auth)
        assert r["status"] == "ok", r
        return str(r["result"]["patient_id"])


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    """Every test with a store runs on both engines (the policy table's test needs none)."""
    return str(request.param)


@pytest.fixture
def central(tmp_path: Path, central_db) -> Any:
    c = Central(central_db(tmp_path))
    yield c
    c.store.close()


def code(reply: dict[str, Any]) -> str:
    return "ok" if reply["status"] == "ok" else reply["error"]["code"]


def test_the_policy_covers_every_request_type_for_every_role() -> None:
    for role, rules in POLICY.items():
        assert set(rules) <= set(REQUESTS), (role, set(rules) - set(REQUESTS))
    kiosk, desk = POLICY["kiosk"], POLICY["cashier"]
    assert "pay.refund" not in kiosk and "staff.login" not in kiosk
    assert set(desk) == set(REQUESTS)
    assert all(rule.staff for t, rule in desk.items()
               if t not in ("staff.login", "hotlist.delta", "pay.status", "pay.reverse",
                            "device.cert_renew", "device.log_bundle"))


async def test_kiosk_gets_a_masked_patient_and_an_opaque_reference(central: Central) -> None:
    r = await central.ask("kiosk-001", "patient.identify", {"by": "card", "value": "HC01"})
    p = r["result"]
    assert p["patient_id"].startswith("pr_") and "P000001" not in json.dumps(r)
    assert p["name"] == "张*丰" and p["id_number"] == "110***********0011"
    assert p["card_no"] == "HC00**0001" and "phone" not in p and "birth_date" not in p
    assert p["balance_fen"] == 5000
    # The reference works at this kiosk, and the platform gets its own id back.
    bills = await central.ask("kiosk-001", "bill.list", {"patient_id": p["patient_id"]})
    assert code(bills) == "ok" and bills["result"]["bills"][0]["bill_id"] == "B-P000001"
    # ... and nowhere else, and never after the grant ran out.
    other = await central.ask("kiosk-002", "bill.list", {"patient_id": p["patient_id"]})
    assert code(other) == "forbidden"
    central.clock.advance(1801)
    late = await central.ask("kiosk-001", "bill.list", {"patient_id": p["patient_id"]})
    assert code(late) == "forbidden"


async def test_a_stolen_kiosk_is_refused_everything_beyond_its_role(central: Central) -> None:
    ref = await central.identify("kiosk-001")
    attempts = {
        "cash top-up": ("pay.create", {"patient_id": ref, "purpose": "topup", "refs": [],
                                       "amount_fen": 100_000, "method": "cash"}),
        "top-up over the kiosk limit": (
            "pay.create", {"patient_id": ref, "purpose": "topup", "refs": [],
                           "amount_fen": 50_001, "method": "wechat",
                           "auth_code": "134567890123456789"}),
        "refund": ("pay.refund", {"payment_id": "PAY1", "amount_fen": 100, "reason": "x"}),
        "staff sign-in": ("staff.login", {"badge": "S1003", "pin": PIN}),
        "staff sign-out": ("staff.logout", {}),
        "identify by typed ID number": ("patient.identify", {"by": "id_number",
                                                             "value": ID_NUMBER}),
        "platform patient id": ("bill.list", {"patient_id": "P000002"}),
        "booking for a raw id": ("reg.book", {"patient_id": "P000002", "slot_id": "S1",
                                              "pay_method": "later", "insured": False}),
        "bookings of a raw id": ("reg.bookings", {"patient_id": "P000002"}),
        "reports of a raw id": ("report.list", {"patient_id": "P000002"}),
        "report never listed": ("report.fetch", {"report_no": "R-P000002"}),
        "printed report never listed": ("report.printed", {"report_no": "R-P000002"}),
        "cancel a booking never seen": ("reg.cancel", {"booking_id": "BK000123"}),
        "check in a booking never seen": ("reg.checkin", {"booking_id": "BK000123"}),
        "pay a bill never listed": ("pay.create", {"patient_id": ref, "purpose": "bills",
                                                   "refs": ["B-P000002"], "amount_fen": 100,
                                                   "method": "prepaid"}),
    }
    for what, (type_, body) in attempts.items():
        r = await central.ask("kiosk-001", type_, body)
        assert code(r) == "forbidden", (what, r)
        assert r["error"]["message_zh"], what
    # None reached the platform; each is a security event naming device and request.
    assert central.platform.calls["pay.create"] == 0
    assert central.platform.calls["pay.refund"] == central.platform.calls["staff.login"] == 0
    events = [e for e in central.security() if e["action"] == "request.forbidden"]
    assert len(events) == len(attempts)
    assert {e["dev"] for e in events} == {"kiosk-001"}


async def test_a_kiosk_payment_cannot_be_reversed_or_read_by_another_kiosk(
        central: Central) -> None:
    ref = await central.identify("kiosk-001")
    r = await central.ask("kiosk-001", "pay.create", {
        "patient_id": ref, "purpose": "topup", "refs": [], "amount_fen": 1000,
        "method": "wechat", "auth_code": "134567890123456789"})
    pay = r["result"]["payment_id"]
    assert code(await central.ask("kiosk-001", "pay.status", {"payment_id": pay})) == "ok"
    for t in ("pay.status", "pay.reverse"):
        assert code(await central.ask("kiosk-002", t, {"payment_id": pay})) == "forbidden"
    # Its own payment stays resolvable long after the visit (an unknown outcome).
    central.clock.advance(7200)
    assert code(await central.ask("kiosk-001", "pay.status", {"payment_id": pay})) == "ok"


async def test_desk_staff_actions_need_a_session_central_issued(central: Central) -> None:
    cash = {"purpose": "topup", "refs": [], "amount_fen": 2000, "method": "cash"}
    no_session = await central.ask("cashier-001", "patient.identify",
                                   {"by": "card", "value": "HC01"})
    assert code(no_session) == "session_expired"
    forged = await central.ask("cashier-001", "patient.identify",
                               {"by": "card", "value": "HC01"},
                               auth="forged-token-abcdefghijklmnop")
    assert code(forged) == "session_expired"
    token = await central.sign_in("cashier-001")
    ref = await central.identify("cashier-001", auth=token)
    ok = await central.ask("cashier-001", "pay.create", {"patient_id": ref, **cash}, auth=token)
    assert code(ok) == "ok"
    # The token is bound to its desk: another desk (or a kiosk) cannot use it.
    stolen = await central.ask("cashier-002", "patient.identify",
                               {"by": "card", "value": "HC01"}, auth=token)
    assert code(stolen) == "session_expired"
    # Idle past the limit: ended.
    central.clock.advance(601)
    idle = await central.ask("cashier-001", "pay.create", {"patient_id": ref, **cash},
                             auth=token)
    assert code(idle) == "session_expired"
    # Sign-out ends it at once.
    token2 = await central.sign_in("cashier-001")
    who = await central.ask("cashier-001", "staff.session", {}, auth=token2)
    assert who["result"]["name"] == "收费员三" and who["result"]["staff_id"] == "ST1003"
    bye = await central.ask("cashier-001", "staff.logout", {}, auth=token2)
    assert bye["result"] == {"ended": True}
    after = await central.ask("cashier-001", "reg.departments", {}, auth=token2)
    assert code(after) == "session_expired"
    assert code(await central.ask("cashier-001", "staff.session", {}, auth=token2)) == \
        "session_expired"
    assert any(e["action"] == "staff.session_rejected" for e in central.security())


async def test_a_resent_payment_is_not_refused_because_the_session_ended_since(
        central: Central) -> None:
    token = await central.sign_in()
    ref = await central.identify("cashier-001", auth=token)
    env = make_request("pay.create", "cashier-001", {
        "patient_id": ref, "purpose": "topup", "refs": [], "amount_fen": 700,
        "method": "cash"}, now=central.clock(), auth=token)
    raw = InboundMessage("ykt/v1/dev/cashier-001/up/req", encode(env), 1, False)
    await central.fwd.handle(raw)
    first = central.store.RequestLog.get(central.store.RequestLog.id == env.id).reply
    # Unknown outcome: central released the row; the desk resends the same bytes later.
    central.store.release_request(env.id)
    central.store.RequestLog.delete().where(central.store.RequestLog.id == env.id).execute()
    await central.ask("cashier-001", "staff.logout", {}, auth=token)
    await central.fwd.handle(raw)
    again = central.store.RequestLog.get(central.store.RequestLog.id == env.id).reply
    assert decode(bytes(again)).body["status"] == "ok", decode(bytes(again)).body
    assert decode(bytes(first)).body["result"]["payment_id"] == \
        decode(bytes(again)).body["result"]["payment_id"]


async def test_refund_only_of_the_patient_at_the_desk(central: Central) -> None:
    token = await central.sign_in()
    a = await central.identify("cashier-001", "HC01", auth=token)
    paid = await central.ask("cashier-001", "pay.create", {
        "patient_id": a, "purpose": "topup", "refs": [], "amount_fen": 3000, "method": "cash"},
        auth=token)
    pay = paid["result"]["payment_id"]
    # Patient B at a second desk: A's payment is not theirs.
    token2 = await central.sign_in("cashier-002")
    await central.identify("cashier-002", "HC02", auth=token2)
    wrong = await central.ask("cashier-002", "pay.refund",
                              {"payment_id": pay, "amount_fen": 3000, "reason": "退费"},
                              auth=token2)
    assert code(wrong) == "forbidden"
    # At the first desk, patient B's card goes in after A's: A is no longer at the desk,
    # although A's reference has not run out yet.
    await central.identify("cashier-001", "HC02", auth=token)
    swapped = await central.ask("cashier-001", "pay.refund",
                                {"payment_id": pay, "amount_fen": 3000, "reason": "退费"},
                                auth=token)
    assert code(swapped) == "forbidden"
    await central.identify("cashier-001", "HC01", auth=token)  # A's card again
    right = await central.ask("cashier-001", "pay.refund",
                              {"payment_id": pay, "amount_fen": 3000, "reason": "退费"},
                              auth=token)
    assert code(right) == "ok"
    assert central.platform.calls["pay.refund"] == 1


async def test_a_desk_lists_payments_only_of_the_patient_it_identified(
        central: Central) -> None:
    token = await central.sign_in()
    a = await central.identify("cashier-001", "HC01", auth=token)
    paid = await central.ask("cashier-001", "pay.create", {
        "patient_id": a, "purpose": "topup", "refs": [], "amount_fen": 3000, "method": "cash"},
        auth=token)
    pay = paid["result"]["payment_id"]
    listed = await central.ask("cashier-001", "pay.list", {"patient_id": a}, auth=token)
    assert [p["payment_id"] for p in listed["result"]["payments"]] == [pay]
    # Not without a staff session, not from a kiosk, not for another desk's patient.
    assert code(await central.ask("cashier-001", "pay.list", {"patient_id": a})) == \
        "session_expired"
    k = await central.identify("kiosk-001", "HC01")
    assert code(await central.ask("kiosk-001", "pay.list", {"patient_id": k})) == "forbidden"
    token2 = await central.sign_in("cashier-002")
    assert code(await central.ask("cashier-002", "pay.list", {"patient_id": a},
                                  auth=token2)) == "forbidden"
    # A listed payment is granted: the desk may read its status before reprinting it.
    status = await central.ask("cashier-001", "pay.status", {"payment_id": pay}, auth=token)
    assert code(status) == "ok"


async def test_wrong_pins_slow_down_but_never_lock_the_badge(central: Central) -> None:
    bad = {"badge": "S1003", "pin": "000000"}
    for _ in range(3):  # typing mistakes cost nothing
        assert code(await central.ask("cashier-001", "staff.login", bad)) == "rejected"
    r4 = await central.ask("cashier-001", "staff.login", bad)
    assert code(r4) == "rejected"  # the 4th failure starts a wait
    waiting = await central.ask("cashier-001", "staff.login", {"badge": "S1003", "pin": PIN})
    assert code(waiting) == "throttled" and waiting["error"]["retryable"] is True
    assert central.platform.pin_failures == 4  # the attempt during the wait never left central
    # The wait grows with each failure...
    central.clock.advance(5)
    assert code(await central.ask("cashier-001", "staff.login", bad)) == "rejected"
    central.clock.advance(9)
    assert code(await central.ask("cashier-001", "staff.login", bad)) == "throttled"
    assert central.staff.delay_s(6) == 20 and central.staff.delay_s(30) == 900
    # ... an alarm is raised ...
    assert any(e["action"] == "staff.signin_throttled" for e in central.security())
    # ... and the right PIN works once the wait is over, from the same or another desk.
    central.clock.advance(2)
    assert code(await central.ask("cashier-002", "staff.login",
                                  {"badge": "S1003", "pin": PIN})) == "ok"


async def test_an_administrator_resets_a_throttled_badge(central: Central) -> None:
    for _ in range(6):
        await central.ask("cashier-001", "staff.login", {"badge": "S1003", "pin": "000000"})
        central.clock.advance(1)
    assert code(await central.ask("cashier-002", "staff.login",
                                  {"badge": "S1003", "pin": PIN})) == "throttled"
    assert central.staff.reset_badge("S1003", central.clock())
    assert code(await central.ask("cashier-002", "staff.login",
                                  {"badge": "S1003", "pin": PIN})) == "ok"


async def test_report_names_are_masked_and_replies_purged_after_retention(
        central: Central, tmp_path: Path) -> None:
    ref = await central.identify("kiosk-001")
    listed = await central.ask("kiosk-001", "report.list", {"patient_id": ref})
    no = listed["result"]["reports"][0]["report_no"]
    rep = await central.ask("kiosk-001", "report.fetch", {"report_no": no})
    assert rep["result"]["patient_name"] == "张*丰"
    if central.store.path is not None:  # SQLite: what lies in the file on disk
        central.store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = central.store.path.read_bytes()
        assert ID_NUMBER[:-1].encode() not in raw and "张三丰".encode() not in raw
        assert b"13812345678" not in raw
    retention = Retention(central.store, central.guard,
                          PrivacySettings(personal_reply_retention_s=600), clock=central.clock)
    assert retention.purge_once()["redacted"] == 0  # not yet
    central.clock.advance(601)
    done = retention.purge_once()
    assert done["redacted"] >= 3, done  # identify, report.list, report.fetch
    replies = [decode(bytes(r.reply)).body for r in central.store.RequestLog.select()
               if r.type in ("patient.identify", "report.fetch")]
    assert all(b["status"] == "error" and b["error"]["code"] == "expired" for b in replies)
    assert retention.purge_once()["redacted"] == 0  # once


async def test_patient_lookups_are_rate_limited_per_device(central: Central) -> None:
    for _ in range(30):
        await central.identify("kiosk-001")
    r = await central.ask("kiosk-001", "patient.identify", {"by": "card", "value": "HC01"})
    assert code(r) == "throttled" and r["error"]["retryable"] is True
    assert central.store.audit_by_actions(frozenset({"request.rate_limited"}), 10)
    # Decided in the transaction that claimed the request: the refusal's own count was rolled
    # back (a savepoint), the claim and its stored answer were not.
    row = central.store.connection().execute(
        "SELECT count FROM rate_limit WHERE key = ?", ("identify:kiosk-001",)).fetchone()
    assert row[0] == 30
    # Other kiosks are not affected, and the next minute this one may look up again.
    await central.identify("kiosk-002")
    central.clock.advance(60)
    await central.identify("kiosk-001")


# -- two instances on one database --------------------------------------------------------
# Two stores on one database are two connections, as two central instances have; race()
# starts each round's operations together (a barrier), 50 rounds.

ROUNDS = 50


def test_patient_lookups_counted_by_two_instances_add_up_exactly(
        central: Central, tmp_path: Path, central_db) -> None:
    other = open_store(central_db(tmp_path))
    try:
        limit = ROUNDS + 10
        settings = AuthzSettings(kiosk_identify_per_minute=limit)
        guards = [Guard(s, settings, clock=central.clock) for s in (central.store, other)]

        def identify(k: int, _store: Store, _round: int) -> str:
            env = make_request("patient.identify", "kiosk-001", {"by": "card", "value": "HC01"},
                               now=central.clock(), exp=central.clock() + timedelta(minutes=5))
            try:
                asyncio.run(guards[k].authorize(env))
            except Denied as exc:
                return str(exc.code)
            return "ok"

        outcomes = Counter(o for pair in race([central.store, other], identify, ROUNDS)
                           for o in pair)
    finally:
        other.close()
    # A lost update would let more than the limit through.
    assert outcomes == {"ok": limit, "throttled": 2 * ROUNDS - limit}
    row = central.store.connection().execute(
        "SELECT count FROM rate_limit WHERE key = ?", ("identify:kiosk-001",)).fetchone()
    assert row[0] == limit


def test_failed_sign_ins_counted_by_two_instances_add_up_exactly(
        central: Central, tmp_path: Path, central_db) -> None:
    other = open_store(central_db(tmp_path))
    try:
        staffs = [central.staff, StaffSessions(other, clock=central.clock)]

        def fail(k: int, store: Store, _round: int) -> int:
            with store.atomic():
                return staffs[k].failed(store.connection(), f"cashier-00{k + 1}", "S1003",
                                        central.clock()).badge_failures

        seen = sorted(n for pair in race([central.store, other], fail, ROUNDS) for n in pair)
    finally:
        other.close()
    # Every failure saw the count the one before it left: 1 … 100, none twice.
    assert seen == list(range(1, 2 * ROUNDS + 1))
    state = {(t["kind"], t["id"]): t["failures"] for t in central.staff.throttles()}
    assert state == {("badge", "S1003"): 2 * ROUNDS, ("dev", "cashier-001"): ROUNDS,
                     ("dev", "cashier-002"): ROUNDS}


def test_sign_ins_at_one_desk_on_two_instances_leave_one_live_session(
        central: Central, tmp_path: Path, central_db) -> None:
    other = open_store(central_db(tmp_path))
    info = {"staff_id": "ST1003", "name": "收费员三", "role": "cashier"}
    try:
        staffs = [central.staff, StaffSessions(other, clock=central.clock)]

        def sign_in_then_count(k: int, store: Store, r: int) -> int | None:
            if r % 2 == 0:  # both instances sign the desk in at once
                with store.atomic():
                    staffs[k].open(store.connection(), "cashier-001", "S1003", info,
                                   central.clock())
                return None
            # the next round, after both committed: the desk's live sessions
            return int(store.connection().execute(
                "SELECT COUNT(*) FROM staff_session WHERE dev = ? AND ended_at IS NULL",
                ("cashier-001",)).fetchone()[0])

        counts = [n for pair in race([central.store, other], sign_in_then_count, 2 * ROUNDS)
                  for n in pair if n is not None]
    finally:
        other.close()
    assert counts == [1] * (2 * ROUNDS)
