"""Uplink caller-timeout rules with no broker reachable (nothing can be sent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

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
