"""Payment tracking and resolution: unknown → status/re-ask → final, reversal past deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.payments import Payments
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.store import open_store
from edge.protocol.envelope import new_envelope

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


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "c.db")
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


async def test_lost_reply_is_resolved_by_asking_again_with_the_same_key(
    store, fake_platform, clock
) -> None:
    pay = Payments(store, fake_platform, clock=clock)
    env = create("payunknown1")
    fake_platform.script("pay.create", "lose_reply")
    result, error = await platform_create(fake_platform, env)
    await pay.observe(env, result, error)
    assert pay.get("payunknown1").state == "unknown"
    assert [p.request_id for p in pay.unresolved()] == ["payunknown1"]
    assert await pay.resolve_once() == 0
    info = pay.get("payunknown1")
    assert info.state == "approved" and info.payment_id is not None
    assert fake_platform.effects["payunknown1"] == 1  # asked twice, charged once
    assert pay.unresolved() == []
    actions = [(e.action, e.detail.get("to")) for e in store.audit_entries()]
    assert ("payment.created", None) in actions and ("payment.state", "approved") in actions
    assert store.verify_chain() == (True, None)


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
    raw = b"".join(p.read_bytes() for p in Path(store.path).parent.glob("c.db*"))
    assert b"134567890123456789" not in raw
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
