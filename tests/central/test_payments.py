"""Payment tracking and resolution: row before the call, status / reversal past the deadline,
never a second pay.create; staff actions. On SQLite and PostgreSQL; the last tests race two
instances (two stores on one PostgreSQL database) on the same payment."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pg_support import BOTH_ENGINES, race

from central.payments import NEEDS_STAFF, PaymentError, Payments
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.store import open_store
from yikatong.protocol.envelope import new_envelope

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PAY = {"patient_id": "P001", "purpose": "registration", "refs": ["B1"], "amount_fen": 1200,
       "method": "prepaid"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


pytestmark = BOTH_ENGINES


@pytest.fixture
def store(tmp_path: Path, central_db):
    s = open_store(central_db(tmp_path))
    yield s
    s.close()


def create(id_: str, body: dict | None = None):
    return new_envelope("pay.create", "kiosk-001", body or PAY, now=T0, id=id_)


async def platform_create(fake_platform, env):
    """Call the fake platform the way the forwarder does; return (result, error)."""
    try:
        return await fake_platform.call(env.type, dict(env.body), idempotency_key=env.id), None
    except (PlatformRejected, PlatformUnavailable, PlatformOutcomeUnknown) as exc:
        return None, exc


async def test_created_row_is_committed_before_the_platform_is_called(
    store, fake_platform, clock, tmp_path, central_db
) -> None:
    pay = Payments(store, fake_platform, clock=clock)
    env = create("paybefore01")
    seen: list[tuple[str, str] | None] = []
    # Another connection to the same database: a restarted central, or another instance.
    other = open_store(central_db(tmp_path))

    class Watching(type(fake_platform)):
        async def call(self, op, body, *, idempotency_key, timeout=None):  # noqa: ASYNC109
            # What the other connection finds right now.
            seen.append(other.connection().execute(
                "SELECT request_id, state FROM payment").fetchone())
            return await super().call(op, body, idempotency_key=idempotency_key)

    watching = Watching()
    await pay.before_call(env)
    try:
        result = await watching.call("pay.create", dict(env.body), idempotency_key=env.id)
    finally:
        other.close()
    assert [tuple(r) for r in seen] == [("paybefore01", "created")]
    await pay.observe(env, result, None)
    assert pay.get("paybefore01").state == "approved"
    assert await pay.before_call(env) is None  # a resend keeps the first row
    assert [e.action for e in store.audit_entries()].count("payment.created") == 1


async def test_lost_reply_is_never_created_again_and_goes_to_staff_past_the_deadline(
    store, fake_platform, clock
) -> None:
    # The fake platform has no lookup by key (PlatformUnsupported): the staff fallback.
    # Resolution by key against the reference platform: tests/central/platform/
    # test_platform_pay_by_key.py.
    pay = Payments(store, fake_platform, clock=clock, deadline_s=30)
    env = create("payunknown1")
    await pay.before_call(env)
    fake_platform.script("pay.create", "lose_reply")
    result, error = await platform_create(fake_platform, env)
    await pay.observe(env, result, error)
    assert pay.get("payunknown1").state == "unknown"
    assert [p.request_id for p in pay.unresolved()] == ["payunknown1"]
    calls = sum(fake_platform.calls.values())
    assert await pay.resolve_once() == 1
    assert sum(fake_platform.calls.values()) == calls  # no blind pay.create, no guess
    assert pay.get("payunknown1").reason != NEEDS_STAFF
    clock.now = T0 + timedelta(seconds=31)  # the patient has left
    assert await pay.resolve_once() == 1
    assert sum(fake_platform.calls.values()) == calls
    info = pay.get("payunknown1")
    assert info.state == "unknown" and info.reason == NEEDS_STAFF
    assert [p.request_id for p in pay.unresolved()] == ["payunknown1"]
    await pay.resolve_once()
    actions = [e.action for e in store.audit_entries()]
    assert actions.count("payment.needs_staff") == 1
    assert fake_platform.effects["payunknown1"] == 1
    # the device's resend (same id, same key, within exp) brings the original outcome
    result, error = await platform_create(fake_platform, env)
    await pay.observe(env, result, error)
    assert pay.get("payunknown1").state == "approved" and pay.unresolved() == []
    assert fake_platform.effects["payunknown1"] == 1
    assert store.verify_chain() == (True, None)


async def test_unavailable_drops_only_a_row_this_call_created(store, fake_platform, clock) -> None:
    pay = Payments(store, fake_platform, clock=clock)
    env = create("payoutage02")
    await pay.before_call(env)
    await pay.observe(env, None, PlatformUnavailable("down"))
    assert pay.get("payoutage02") is None  # certainly nothing happened
    assert "payment.not_sent" in [e.action for e in store.audit_entries()]
    # A row left by an earlier attempt (central restarted during that call) stays: that
    # attempt may have charged.
    await pay.before_call(env)
    restarted = Payments(store, fake_platform, clock=clock)
    await restarted.before_call(env)
    await restarted.observe(env, None, PlatformUnavailable("down"))
    assert pay.get("payoutage02").state == "created"
    assert [p.request_id for p in restarted.unresolved()] == ["payoutage02"]


async def test_pending_past_deadline_is_reversed_once(store, fake_platform, clock) -> None:
    pay = Payments(store, fake_platform, clock=clock, deadline_s=30)
    env = create("paypending1")
    fake_platform.script("pay.create", "pending")
    result, error = await platform_create(fake_platform, env)
    assert result["state"] == "pending"
    await pay.observe(env, result, error)
    assert await pay.resolve_once() == 1  # still pending, deadline not reached
    assert pay.get("paypending1").state == "pending"
    clock.now = T0 + timedelta(seconds=31)
    assert await pay.resolve_once() == 0
    info = pay.get("paypending1")
    assert info.state == "reversed"
    assert fake_platform.payments[info.payment_id]["state"] == "reversed"
    reversals = sum(v for k, v in fake_platform.effects.items() if k != "paypending1")
    assert reversals == 1
    await pay.resolve_once()
    assert sum(v for k, v in fake_platform.effects.items() if k != "paypending1") == 1


async def test_wallet_payment_code_is_never_stored_and_waits_for_the_device(
    store, fake_platform, clock
) -> None:
    pay = Payments(store, fake_platform, clock=clock)
    body = {**PAY, "method": "wechat", "auth_code": "134567890123456789"}
    env = create("paywallet01", body)
    await pay.observe(env, None, PlatformOutcomeUnknown("timeout"))
    row = store.Payment.get(store.Payment.request_id == "paywallet01")
    assert row.request_body is None
    if store.path is not None:  # SQLite: nor is it anywhere in the files on disk
        raw = b"".join(p.read_bytes() for p in store.path.parent.glob("central.db*"))
        assert raw and b"134567890123456789" not in raw
    calls_before = sum(fake_platform.calls.values())
    assert await pay.resolve_once() == 1
    assert sum(fake_platform.calls.values()) == calls_before  # cannot re-ask without the code
    # the device resends with the same id; the forwarder's observer gets the real outcome
    await pay.observe(env, {"payment_id": "P9", "state": "approved", "amount_fen": 1200,
                            "method": "wechat"}, None)
    assert pay.get("paywallet01").state == "approved" and pay.unresolved() == []


async def test_final_states_are_not_overwritten_and_unavailable_is_not_tracked(
    store, fake_platform, clock
) -> None:
    pay = Payments(store, fake_platform, clock=clock)
    env = create("payfinal001")
    result, _ = await platform_create(fake_platform, env)
    await pay.observe(env, result, None)
    await pay.observe(env, {**result, "state": "pending"}, None)  # a stale answer
    assert pay.get("payfinal001").state == "approved"
    status = new_envelope("pay.status", "kiosk-001", {"payment_id": result["payment_id"]},
                          now=T0, id="statusreq01")
    await pay.observe(status, {**result, "state": "reversed"}, None)
    assert pay.get("payfinal001").state == "reversed"
    await pay.observe(create("payoutage01"), None, PlatformUnavailable("down"))
    assert pay.get("payoutage01") is None
    await pay.observe(create("paydecline1"), None, PlatformRejected("insufficient_balance", "x"))
    assert pay.get("paydecline1").state == "declined"


async def test_a_patient_who_walked_away_is_listed_until_the_device_learns_the_outcome(
    store, fake_platform, clock
) -> None:
    """The platform took a prepaid payment and the reply was lost; the patient left.

    Central must not call the payment "resolved" while the kiosk never heard of it, and the
    kiosk's later resend (past the request's ``exp``) must get the outcome, not "expired"
    (which the kiosk would read as "not charged").
    """
    from central.forwarder import Forwarder, ForwarderSettings
    from yikatong.mqtt.session import InboundMessage
    from yikatong.protocol.envelope import decode, encode
    from yikatong.protocol.messages import make_request

    store.add_device("kiosk-001", "kiosk", T0)
    payments = Payments(store, fake_platform, clock=clock, deadline_s=30)
    fwd = Forwarder(ForwarderSettings(), store, fake_platform, clock=clock, hooks=payments)
    env = make_request("pay.create", "kiosk-001", PAY, now=T0, id="walkaway01",
                       exp=T0 + timedelta(seconds=40))
    msg = InboundMessage("ykt/v1/dev/kiosk-001/up/req", encode(env), 1, False)

    def reply() -> dict:
        raw = store.RequestLog.get_or_none(store.RequestLog.id == "walkaway01")
        return {} if raw is None or raw.reply is None else decode(bytes(raw.reply)).body

    async def status_by_key(key: str) -> dict | None:  # the wallet-style order query
        return fake_platform.outcomes.get(key)

    fake_platform.pay_status_by_key = status_by_key  # type: ignore[method-assign]
    fake_platform.script("pay.create", "lose_reply")  # committed, then no answer
    await fwd.handle(msg)
    assert fake_platform.effects["walkaway01"] == 1
    (open_,) = payments.unresolved()
    assert open_.state == "unknown" and not open_.device_told
    # The resolver asks the platform by the order number: approved. Central knows; the
    # kiosk does not — it stays listed, for staff, as charged and not told.
    clock.now = T0 + timedelta(seconds=10)
    await payments.resolve_once()
    (charged,) = payments.unresolved()
    assert charged.state == "approved" and charged.device_told is False
    # The kiosk's follow-up, long after exp: the same bytes get the outcome, once.
    clock.now = T0 + timedelta(minutes=10)
    await fwd.handle(msg)
    body = reply()
    assert body["status"] == "ok" and body["result"]["state"] == "approved", body
    assert fake_platform.effects["walkaway01"] == 1  # asked again under the same key
    assert payments.unresolved() == []


async def test_a_request_never_sent_to_the_platform_still_expires(store, fake_platform,
                                                                  clock) -> None:
    from central.forwarder import Forwarder, ForwarderSettings
    from yikatong.mqtt.session import InboundMessage
    from yikatong.protocol.envelope import decode, encode
    from yikatong.protocol.messages import make_request

    store.add_device("kiosk-001", "kiosk", T0)
    fwd = Forwarder(ForwarderSettings(), store, fake_platform, clock=clock,
                    hooks=Payments(store, fake_platform, clock=clock))
    env = make_request("pay.create", "kiosk-001", PAY, now=T0, id="late000001",
                       exp=T0 + timedelta(seconds=40))
    clock.now = T0 + timedelta(minutes=1)
    await fwd.handle(InboundMessage("ykt/v1/dev/kiosk-001/up/req", encode(env), 1, False))
    row = store.RequestLog.get(store.RequestLog.id == "late000001")
    assert decode(bytes(row.reply)).body["error"]["code"] == "expired"
    assert fake_platform.calls["late000001"] == 0


# -- two instances on one database --------------------------------------------------------
# Two stores on one database are two connections, as two central instances have; race()
# starts each round's operations together (a barrier), one payment a round.

ROUNDS = 50


class Reversing:
    """A platform that reverses every payment it is asked to (the other calls never come)."""

    async def call(self, op: str, body: dict, *, idempotency_key: str,
                   timeout: float | None = None) -> dict:  # noqa: ASYNC109
        assert op == "pay.reverse", op
        return {"payment_id": body["payment_id"], "state": "reversed", "amount_fen": 1200,
                "method": "prepaid"}


def pending_payments(pay: Payments) -> None:
    """``ROUNDS`` pending payments ``race000000``… with payment ids ``PR0``…"""
    for r in range(ROUNDS):
        asyncio.run(pay.observe(create(f"race{r:06d}"), {
            "payment_id": f"PR{r}", "state": "pending", "amount_fen": 1200,
            "method": "prepaid"}, None))


def test_an_outcome_and_a_staff_resolution_on_two_instances_settle_once(
    store, fake_platform, clock, tmp_path, central_db
) -> None:
    other = open_store(central_db(tmp_path))
    try:
        pays = [Payments(store, fake_platform, clock=clock),
                Payments(other, fake_platform, clock=clock)]
        pending_payments(pays[0])

        def settle(k: int, s, r: int) -> str:
            if k == 0:  # a device's pay.status answered "approved", on one instance
                status = new_envelope("pay.status", "kiosk-001", {"payment_id": f"PR{r}"},
                                      now=T0, id=f"status{r:06d}")
                with s.atomic():
                    pays[0].outcome_in_tx(status, {"payment_id": f"PR{r}",
                                                   "state": "approved"}, None)
                return "approved"
            try:  # staff mark it declined on the other, at the same moment
                pays[1].staff_resolve(f"race{r:06d}", "declined", "not on the platform",
                                      staff="li")
            except PaymentError as exc:
                return exc.code
            return "declined"

        results = race([store, other], settle, ROUNDS)
    finally:
        other.close()
    finals = [e for e in store.audit_entries() if e.action == "payment.state"
              and e.detail["from"] == "pending"]
    for r, (_, staff) in enumerate(results):
        info = pays[0].get(f"race{r:06d}")
        # Whichever came first stands; the other is refused, never written over it.
        assert (info.state, staff) in (("approved", "already_final"),
                                       ("declined", "declined")), (r, info.state, staff)
        [final] = [e for e in finals if e.detail["request_id"] == f"race{r:06d}"]
        assert final.detail["to"] == info.state
    assert store.verify_chain() == (True, None)


def test_a_reversal_and_an_approved_reply_on_two_instances_never_both_happen(
    store, fake_platform, clock, tmp_path, central_db
) -> None:
    other = open_store(central_db(tmp_path))
    try:
        pays = [Payments(store, Reversing(), clock=clock),  # type: ignore[arg-type]
                Payments(other, fake_platform, clock=clock)]
        pending_payments(pays[0])

        def act(k: int, s, r: int) -> str:
            rid = f"race{r:06d}"
            if k == 0:  # staff reverse the payment on one instance
                try:
                    asyncio.run(pays[0].staff_reverse(rid, staff="li"))
                except PaymentError as exc:
                    return exc.code
                return "asked"
            # the platform answers the device's pay.create "approved" on the other: what
            # the reply says is decided in the transaction that records it (the forwarder)
            approved = {"payment_id": f"PR{r}", "state": "approved", "amount_fen": 1200,
                        "method": "prepaid"}
            with s.atomic():
                said = pays[1].reply_result(create(rid), approved)["state"]
                pays[1].outcome_in_tx(create(rid), approved, None)
            return str(said)

        results = race([store, other], act, ROUNDS)
    finally:
        other.close()
    for r, (_, said) in enumerate(results):
        info = pays[0].get(f"race{r:06d}")
        assert info.state in ("approved", "reversed"), (r, info)
        if said in ("approved", "reversed"):  # a receipt, or "money returned": the truth
            assert info.state == said and info.device_told, (r, said, info)
        else:  # told "being confirmed": reversed, or approved and listed for staff
            assert said == "unknown" and not info.device_told, (r, said, info)
    assert store.verify_chain() == (True, None)
