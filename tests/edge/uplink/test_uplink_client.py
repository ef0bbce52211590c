"""Uplink caller-timeout rules with no broker reachable (nothing can be sent)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from central.broker import free_port
from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig
from edge.uplink.errors import (
    OutboxFull,
    OutcomeUnknown,
    PlatformUnavailable,
    Rejected,
    RequestExpired,
)
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import encode, new_envelope
from yikatong.protocol.messages import DepartmentList, PatientInfo, PaymentResult, make_request

PAY = {"patient_id": "P001", "purpose": "registration", "refs": ["B1"], "amount_fen": 1200,
       "method": "prepaid"}
BOOK = {"patient_id": "P001", "slot_id": "S1", "pay_method": "later", "insured": False}


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def offline(tmp_path: Path, clock: Clock):
    pw = tmp_path / "pw"
    pw.write_text("secret")
    cfg = UplinkConfig(
        host="127.0.0.1", port=free_port(), username="kiosk-401", password_file=pw,
        outbox_path=tmp_path / "o.db", state_path=tmp_path / "s.json", max_entries=12,
        retry_interval_s=0.2, backoff_min_s=0.05, backoff_max_s=0.2,
    )
    up = Uplink(cfg, "kiosk-401", role="kiosk", version="1", clock=clock)
    await up.start()
    yield up
    await up.stop()


async def test_unsent_payment_is_unknown_then_definitely_expired(offline, clock) -> None:
    with pytest.raises(OutcomeUnknown) as info:
        await offline.request("pay.create", PAY, timeout=0.2)
    rid = info.value.request_id
    assert offline.outbox.get(rid).state == "pending"  # still trying, never "failed"
    clock.now += timedelta(seconds=31)  # past the default exp (timeout + skew allowance)
    with pytest.raises(RequestExpired):
        await offline.result_of(rid, wait_s=3)
    assert offline.outbox.get(rid).attempts == 0


async def test_unsent_booking_is_withdrawn_and_a_same_id_retry_reopens_it(offline) -> None:
    with pytest.raises(PlatformUnavailable) as info:
        await offline.request("reg.book", BOOK, timeout=0.2, id="bookretry1")
    assert info.value.message_zh
    assert offline.outbox.get("bookretry1").fail_reason == "caller_timeout"
    with pytest.raises(PlatformUnavailable):
        await offline.request("reg.book", BOOK, timeout=0.2, id="bookretry1")
    assert offline.outbox.count() == 1


async def test_invalid_body_is_refused_before_the_outbox(offline) -> None:
    with pytest.raises(Rejected) as info:
        await offline.request("pay.create", {**PAY, "amount_fen": -5}, timeout=1)
    assert info.value.code == "invalid_request"
    with pytest.raises(Rejected) as unknown:
        await offline.request("no.such.type", {}, timeout=1)
    assert unknown.value.code == "unknown_type"
    assert offline.outbox.count() == 0


async def test_full_outbox_refuses_requests_but_takes_events(offline) -> None:
    for i in range(12):
        await offline.publish_event("alarm", {"code": f"A{i}", "severity": "info",
                                              "message": "x"})
    with pytest.raises(PlatformUnavailable):  # evicts one event; withdrawn after timeout
        await offline.request("reg.departments", {}, timeout=0.05)
    ids = []
    for i in range(12):  # the withdrawn read goes first, then one event per payment
        with pytest.raises(OutcomeUnknown) as info:
            await offline.request("pay.create", {**PAY, "amount_fen": 100 + i}, timeout=0.01)
        ids.append(info.value.request_id)
    with pytest.raises(OutboxFull):
        await offline.request("pay.create", PAY, timeout=0.01)
    assert all(offline.outbox.get(i).state == "pending" for i in ids)
    assert offline.outbox.count() == 12 and offline.outbox.pending_count() == 12


class CrashAtPublish:
    """Stands in for MqttSession: always connected, never acknowledges, and at every publish
    copies the outbox file's committed state — exactly what a kill -9 at that instant leaves.
    """

    def __init__(self, db: Path, crash_dir: Path) -> None:
        self.db, self.crash_dir = db, crash_dir
        self.snapshots: list[Path] = []
        self.free_slots = 20
        self._on_connected: Any = None

    def factory(self, _client_id: str, **kw: Any) -> CrashAtPublish:
        self._on_connected = kw["on_connected"]
        return self

    connected = True

    async def start(self) -> None:
        self._on_connected()

    async def stop(self, final: Any = None) -> None:
        return None

    def give_up_unacked(self, max_age_s: float) -> int:
        return 0  # the test decides what is in flight

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1,
                       retain: bool = False) -> asyncio.Future[None]:
        snap = self.crash_dir / f"crash{len(self.snapshots)}.db"
        src, dst = sqlite3.connect(self.db), sqlite3.connect(snap)
        try:
            src.backup(dst)  # committed data only, as after SIGKILL
        finally:
            src.close()
            dst.close()
        self.snapshots.append(snap)
        self.free_slots -= 1
        return asyncio.get_running_loop().create_future()  # no PUBACK, no reply


def crash_rig(tmp_path: Path, dev: str) -> tuple[UplinkConfig, CrashAtPublish]:
    """An uplink config on a port nobody serves, and a stand-in session for it."""
    pw = tmp_path / "pw"
    pw.write_text("secret")
    (tmp_path / "crash").mkdir()
    cfg = UplinkConfig(
        host="127.0.0.1", port=free_port(), username=dev, password_file=pw,
        outbox_path=tmp_path / "o.db", state_path=tmp_path / "s.json", retry_interval_s=30,
    )
    return cfg, CrashAtPublish(cfg.outbox_path, tmp_path / "crash")


async def test_a_payment_is_marked_sent_before_it_is_published(tmp_path: Path, clock) -> None:
    # Killed right after the publish (central may have charged), restarted after exp: the
    # outcome must be unknown (pay.status resolves it), never "expired, not taken".
    cfg, fake = crash_rig(tmp_path, "kiosk-402")
    up = Uplink(cfg, "kiosk-402", role="kiosk", version="1", clock=clock,
                session_factory=fake.factory)
    await up.start()
    with pytest.raises(OutcomeUnknown):
        await up.request("pay.create", PAY, timeout=0.3, id="crashpay01")
    await up.stop()
    assert len(fake.snapshots) == 1  # published once (retry_interval_s is long)

    clock.now += timedelta(minutes=5)  # the restart comes long after exp
    restarted = Uplink(cfg.model_copy(update={"outbox_path": fake.snapshots[0]}), "kiosk-402",
                       role="kiosk", version="1", clock=clock)
    try:
        entry = restarted.outbox.get("crashpay01")
        assert entry is not None and entry.attempts == 1  # the send was already on disk
        assert restarted.outbox.expire(clock()) == []  # what the pump does first: keeps it
        with pytest.raises(OutcomeUnknown):
            await restarted.result_of("crashpay01")
        clock.now += timedelta(days=2)  # central never answered, even to resends
        restarted.outbox.expire(clock())
        with pytest.raises(OutcomeUnknown):
            await restarted.result_of("crashpay01")
        assert restarted.outbox.get("crashpay01").fail_reason == "no_reply"
    finally:
        await restarted.stop()


async def test_a_batch_is_marked_in_priority_order_within_the_free_slots(tmp_path: Path,
                                                                         clock) -> None:
    cfg, fake = crash_rig(tmp_path, "kiosk-403")
    fake.free_slots = 0  # every slot in flight: nothing may be handed over
    up = Uplink(cfg, "kiosk-403", role="kiosk", version="1", clock=clock,
                session_factory=fake.factory)
    await up.start()
    try:
        lookups = [asyncio.create_task(up.request("reg.departments", {}, timeout=5))
                   for _ in range(4)]
        pay = asyncio.create_task(up.request("pay.create", PAY, timeout=5, id="paylater1"))
        await asyncio.sleep(0.2)
        assert fake.snapshots == [] and up.outbox.get("paylater1").attempts == 0
        fake.free_slots = 2
        up._kick()  # what a PUBACK does
        await asyncio.sleep(0.2)
        assert len(fake.snapshots) == 2  # only the free slots
        sent = {e.id for e in up.outbox.due(clock() + timedelta(hours=1), 10) if e.attempts}
        assert "paylater1" in sent and len(sent) == 2  # money first, though enqueued last
        for t in [*lookups, pay]:
            t.cancel()
    finally:
        await up.stop()


async def test_a_new_request_overtakes_nothing_that_waits_for_a_slot(tmp_path: Path,
                                                                     clock) -> None:
    # A request skips the pump only when nothing stored is due: here the payment waits for a
    # slot, so the lookup that comes after it goes through the pump, behind it.
    cfg, fake = crash_rig(tmp_path, "kiosk-404")
    fake.free_slots = 0
    up = Uplink(cfg, "kiosk-404", role="kiosk", version="1", clock=clock,
                session_factory=fake.factory)
    await up.start()
    try:
        pay = asyncio.create_task(up.request("pay.create", PAY, timeout=5, id="paywaits1"))
        await asyncio.sleep(0.1)
        fake.free_slots = 1  # one slot came free (its PUBACK's kick has not run yet)
        lookup = asyncio.create_task(up.request("reg.departments", {}, timeout=5,
                                                id="lookup001"))
        await asyncio.sleep(0.2)
        assert up.outbox.get("paywaits1").attempts == 1
        assert up.outbox.get("lookup001").attempts == 0 and len(fake.snapshots) == 1
        fake.free_slots = 1
        other = asyncio.create_task(up.request("reg.departments", {}, timeout=5,
                                               id="lookup002"))
        await asyncio.sleep(0.1)  # lookup001 is due: the pump sends it, not lookup002
        assert up.outbox.get("lookup001").attempts == 1
        assert up.outbox.get("lookup002").attempts == 0
        for t in (pay, lookup, other):
            t.cancel()
    finally:
        await up.stop()


def reply_to(request_id: str, result: object) -> bytes:
    """A reply envelope as central would send it, with any ``result`` (even a wrong one)."""
    return encode(new_envelope("resp", "kiosk-401", {"status": "ok", "result": result},
                               now=datetime.now(UTC), corr=request_id))


async def test_a_reply_that_does_not_match_its_result_model_is_a_typed_error(offline) -> None:
    with pytest.raises(OutcomeUnknown) as info:
        await offline.request("pay.create", PAY, timeout=0.05)
    pay_id = info.value.request_id
    # amount as text and no state: central answered, but nobody can tell what happened
    assert offline.outbox.complete(pay_id, reply_to(pay_id, {"payment_id": "PAY1",
                                                             "amount_fen": "12元"}))
    with pytest.raises(OutcomeUnknown) as bad_pay:
        await offline.result_of(pay_id)
    assert "unreadable reply" in bad_pay.value.message and bad_pay.value.message_zh

    read = make_request("reg.departments", "kiosk-401", {}, now=datetime.now(UTC))
    offline.outbox.enqueue(read, kind="req")
    offline.outbox.complete(read.id, reply_to(read.id, {"departments": "none"}))
    with pytest.raises(Rejected) as bad_read:
        await offline.result_of(read.id)
    assert bad_read.value.code == "invalid_reply"

    good = make_request("reg.departments", "kiosk-401", {}, now=datetime.now(UTC))
    offline.outbox.enqueue(good, kind="req")
    result = {"departments": [{"code": "NK01", "name": "心血管内科", "name_en": "Cardiology",
                               "location": "门诊楼3层东区"}]}
    offline.outbox.complete(good.id, reply_to(good.id, result))
    got = await offline.result_of(good.id)
    # The caller gets the validated result model, not a dict to parse again.
    assert isinstance(got, DepartmentList)
    assert got.model_dump(mode="json", exclude_none=True) == result
    assert got.departments[0].name == "心血管内科"


async def test_connect_listeners_run_after_every_connect_and_a_faulty_one_stops_nothing(
        tmp_path: Path, clock) -> None:
    cfg, fake = crash_rig(tmp_path, "kiosk-404")
    up = Uplink(cfg, "kiosk-404", role="kiosk", version="1", clock=clock,
                session_factory=fake.factory)
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    up.add_connect_listener(broken)
    up.add_connect_listener(lambda: calls.append("poked"))
    await up.start()
    try:
        assert calls == ["poked"]
        fake._on_connected()  # a reconnect
        assert calls == ["poked", "poked"]
    finally:
        await up.stop()


# --------------------------------------------------------------------------- personal data at rest

ID_NO, NAME, PHONE, CARD = "310104196503120022", "李秀英", "13912345678", "310100000000000002"
PIN, WALLET_CODE = "918273", "134567890123456780"
TOKEN = "tokTOKENtok0123456789abcdefXYZ"
SECRETS = (ID_NO, NAME, PHONE, CARD, PIN, WALLET_CODE, TOKEN, "血红蛋白", "1965-03-12")


async def _answered(up: Uplink, type_: str, body: dict, result: dict, *, id_: str,
                    auth: str | None = None) -> Any:
    """Send a request and deliver central's reply as the broker would; the caller's result."""
    task = asyncio.create_task(up.request(type_, body, id=id_, timeout=5, auth=auth))
    for _ in range(200):
        if up.outbox.get(id_) is not None:
            break
        await asyncio.sleep(0.01)
    up._on_message(InboundMessage(f"ykt/v1/dev/{up.device_id}/down/resp",
                                  reply_to(id_, result), 1, False))
    return await task


def _at_rest(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


async def test_finished_requests_keep_no_personal_data_or_secrets_on_disk(offline) -> None:
    patient = {"patient_id": "P1", "name": NAME, "sex": "F", "birth_date": "1965-03-12",
               "id_number": ID_NO, "card_no": CARD, "phone": PHONE, "balance_fen": 500,
               "insured": True}
    got = await _answered(offline, "patient.identify", {"by": "id_number", "value": ID_NO},
                          patient, id_="ident00001")
    assert isinstance(got, PatientInfo)
    assert got.name == NAME and got.id_number == ID_NO  # the caller gets it all
    staff = {"staff_id": "S1", "name": "王建国", "role": "cashier", "session_token": TOKEN}
    got = await _answered(offline, "staff.login", {"badge": "B1", "pin": PIN}, staff,
                          id_="login00001")
    assert got.session_token == TOKEN
    report = {"report_no": "R1", "title": "血常规", "patient_name": NAME, "sex": "F",
              "age": "60岁", "dept_name": "检验科", "specimen": "血",
              "sampled_at": "2026-01-01T08:00:00.000Z", "reported_at": "2026-01-01T09:00:00.000Z",
              "items": [{"code": "HGB", "name": "血红蛋白", "value": "135", "unit": "g/L",
                         "ref_range": "115-150", "flag": ""}],
              "doctor": "赵医生", "verify_url": "https://lab.example/v/R1"}
    got = await _answered(offline, "report.fetch", {"report_no": "R1"}, report,
                          id_="report0001", auth=TOKEN)
    assert got.items[0].name == "血红蛋白"
    pay_body = {**PAY, "method": "wechat", "auth_code": WALLET_CODE}
    paid = {"payment_id": "PAY9", "state": "approved", "amount_fen": 1200, "method": "wechat",
            "txn_id": "T9", "balance_fen": 300}
    assert await _answered(offline, "pay.create", pay_body, paid, id_="payment001",
                           auth=TOKEN) == PaymentResult(**paid)

    raw = _at_rest(offline.config.outbox_path)
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    assert "李*英".encode() in raw  # masked, still there for a reprint or a look-up

    # Later readers get the minimised outcome; money results stay whole.
    assert await offline.result_of("payment001") == PaymentResult(**paid)
    again = await offline.request("pay.create", pay_body, id="payment001", timeout=1,
                                  auth=TOKEN)
    assert again == PaymentResult(**paid)
    who = await offline.request("patient.identify", {"by": "id_number", "value": ID_NO},
                                id="ident00001", timeout=1)
    assert isinstance(who, PatientInfo)
    assert who.patient_id == "P1" and who.id_number == "310***********0022"
    assert who.phone is None and who.name != NAME
    # A different body under a used id is still refused.
    with pytest.raises(Rejected) as info:
        await offline.request("pay.create", {**pay_body, "amount_fen": 1},
                              id="payment001", timeout=1)
    assert info.value.code == "duplicate_mismatch"
    for secret in SECRETS:
        assert secret.encode() not in _at_rest(offline.config.outbox_path), secret


async def test_an_unsettled_reply_keeps_the_bytes_for_the_resend(offline) -> None:
    pay_body = {**PAY, "method": "wechat", "auth_code": WALLET_CODE}
    task = asyncio.create_task(offline.request("pay.create", pay_body, id="payment002",
                                               timeout=5))
    for _ in range(200):
        if offline.outbox.get("payment002") is not None:
            break
        await asyncio.sleep(0.01)
    unknown = encode(new_envelope(
        "resp", "kiosk-401", {"status": "error", "error": {
            "code": "outcome_unknown", "message": "m", "message_zh": "确认中",
            "retryable": True}}, now=datetime.now(UTC), corr="payment002"))
    offline._on_message(InboundMessage("ykt/v1/dev/kiosk-401/down/resp", unknown, 1, False))
    with pytest.raises(OutcomeUnknown):
        await task
    entry = offline.outbox.get("payment002")
    assert entry is not None and WALLET_CODE.encode() in entry.payload  # reopen resends these


async def test_unresolved_payments_come_from_the_durable_outbox(tmp_path: Path, clock) -> None:
    """What keeps a reboot from central waiting: read from the outbox, so a restart of the
    daemon forgets no payment still under way."""
    from yikatong.protocol.messages import make_reply_ok

    pw = tmp_path / "pw"
    pw.write_text("secret")
    cfg = UplinkConfig(host="127.0.0.1", port=free_port(), username="kiosk-403",
                       password_file=pw, outbox_path=tmp_path / "o.db",
                       state_path=tmp_path / "s.json")
    up = Uplink(cfg, "kiosk-403", role="kiosk", version="1", clock=clock)
    assert up.unresolved_payments() == []
    body = {"patient_id": "pr_1", "purpose": "bills", "refs": ["B1"], "amount_fen": 100,
            "method": "wechat", "auth_code": "134567890123456789"}
    pay = make_request("pay.create", "kiosk-403", body, now=clock(), id="pay0000000001")
    look = make_request("reg.departments", "kiosk-403", {}, now=clock(), id="dep0000000001")
    up.outbox.enqueue(pay, kind="req")
    up.outbox.enqueue(look, kind="req")
    assert up.unresolved_payments() == ["pay0000000001"]  # queued: money may move
    pending = PaymentResult(payment_id="P1", state="pending", amount_fen=100, method="wechat")
    up.outbox.complete(pay.id, encode(make_reply_ok(pay, pending, now=clock())))
    up.outbox.close()
    # The daemon restarts: the new process sees it still unresolved.
    again = Uplink(cfg, "kiosk-403", role="kiosk", version="1", clock=clock)
    assert again.unresolved_payments() == ["pay0000000001"]
    done = pending.model_copy(update={"state": "approved"})
    again.outbox.reopen(pay.id, clock())
    again.outbox.complete(pay.id, encode(make_reply_ok(pay, done, now=clock())))
    assert again.unresolved_payments() == []
    again.outbox.close()
