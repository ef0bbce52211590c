"""ReferenceAdapter against the reference platform: in-process (ASGITransport) and over
a real uvicorn server on a free loopback port."""

from __future__ import annotations

import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from central.platform.breaker import BreakerState, CircuitBreaker
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.platform.reference import ReferenceAdapter
from central.platform.sim.app import create_app
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.server import RunningServer, start_in_thread

_keys = itertools.count(1)


def k() -> str:
    return f"dev-1:{next(_keys)}"


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
async def asgi(settings: PlatformSimSettings, clock: Any,
               ticks: Ticks) -> AsyncIterator[tuple[ReferenceAdapter, httpx.AsyncClient]]:
    app = create_app(settings, clock=clock)
    transport = httpx.ASGITransport(app=app)
    adapter = ReferenceAdapter(
        "http://127.0.0.1", connect_timeout=0.1, read_timeout=0.3, transport=transport,
        breaker=CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=ticks))
    admin = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
    yield adapter, admin
    await adapter.aclose()
    await admin.aclose()


@pytest.fixture
def server(settings: PlatformSimSettings, clock: Any) -> Iterator[RunningServer]:
    running = start_in_thread(settings, clock=clock)
    yield running
    running.stop()


async def _first_patient(admin: httpx.AsyncClient) -> dict[str, Any]:
    return (await admin.get("/admin/patients")).json()[0]["patient"]


async def _open_slot(adapter: Any, period: str = "pm") -> dict[str, Any]:
    for dept in (await adapter.call("reg.departments", {}, idempotency_key=k()))["departments"]:
        slots = await adapter.call("reg.slots", {"dept_code": dept["code"], "date": "2025-03-10"},
                                   idempotency_key=k())
        for slot in slots["slots"]:
            if slot["remaining"] > 0 and slot["period"] == period:
                return slot
    raise AssertionError("no open slot")


class ContractChecked:
    """Checks every body and result against the wire contract (yikatong.protocol.messages)."""

    def __init__(self, inner: ReferenceAdapter) -> None:
        self.inner = inner
        self.seen: set[str] = set()

    async def call(self, op: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        from yikatong.protocol.messages import REQUESTS

        body_model, result_model = REQUESTS[op]
        body_model.model_validate(body)
        result = await self.inner.call(op, body, **kw)
        result_model.model_validate(result)  # what central's forwarder will check
        self.seen.add(op)
        return result


async def test_every_operation_round_trips(asgi: tuple[ReferenceAdapter, httpx.AsyncClient],
                                           demo_pin: str) -> None:
    raw_adapter, admin = asgi
    adapter = ContractChecked(raw_adapter)
    p = await _first_patient(admin)
    who = await adapter.call("patient.identify", {"by": "card", "value": p["card_no"]},
                             idempotency_key=k())
    assert who == p
    slot = await _open_slot(adapter)
    booking = await adapter.call("reg.book", {"patient_id": p["patient_id"],
                                              "slot_id": slot["slot_id"], "pay_method": "later",
                                              "insured": False}, idempotency_key=k())
    listed = await adapter.call("reg.bookings", {"patient_id": p["patient_id"]},
                                idempotency_key=k())
    assert listed["bookings"] == [booking]
    paid = await adapter.call("pay.create", {
        "patient_id": p["patient_id"], "purpose": "registration", "refs": [booking["booking_id"]],
        "amount_fen": booking["fee_fen"], "method": "cash"}, idempotency_key=k())
    assert paid["state"] == "approved"
    status = await adapter.call("pay.status", {"payment_id": paid["payment_id"]},
                                idempotency_key=k())
    assert status == paid
    cancel = await adapter.call("reg.cancel", {"booking_id": booking["booking_id"]},
                                idempotency_key=k())
    assert cancel["refund_fen"] == booking["fee_fen"]
    # 预约取号 of a second, prepaid booking (insured: the patient's share), then its slip
    insured = await adapter.call("reg.book", {"patient_id": p["patient_id"],
                                              "slot_id": slot["slot_id"],
                                              "pay_method": "prepaid",
                                              "insured": bool(p["insured"])},
                                 idempotency_key=k())
    checked = await adapter.call("reg.checkin", {"booking_id": insured["booking_id"]},
                                 idempotency_key=k())
    assert checked["checked_in_at"] and checked["status"] == "paid"
    assert await adapter.call("reg.printed", {"booking_id": insured["booking_id"]},
                              idempotency_key=k()) == {"booking_id": insured["booking_id"],
                                                       "printed": True}
    top = await adapter.call("pay.create", {"patient_id": p["patient_id"], "purpose": "topup",
                                            "refs": [], "amount_fen": 500, "method": "cash"},
                             idempotency_key=k())
    refund = await adapter.call("pay.refund", {"payment_id": top["payment_id"],
                                               "amount_fen": 200, "reason": "test"},
                                idempotency_key=k())
    assert refund["state"] == "refunded"
    other = await adapter.call("pay.create", {"patient_id": p["patient_id"], "purpose": "topup",
                                              "refs": [], "amount_fen": 100, "method": "cash"},
                               idempotency_key=k())
    rev = await adapter.call("pay.reverse", {"payment_id": other["payment_id"]},
                             idempotency_key=k())
    assert rev["state"] == "reversed"
    paid_list = await adapter.call("pay.list", {"patient_id": p["patient_id"]},
                                   idempotency_key=k())
    mine = {x["payment_id"]: x for x in paid_list["payments"]}
    assert mine[top["payment_id"]]["refundable_fen"] == 300
    assert mine[paid["payment_id"]]["refundable_fen"] == 0  # a fee goes back by reg.cancel
    assert "bills" in await adapter.call("bill.list", {"patient_id": p["patient_id"]},
                                         idempotency_key=k())
    reports = []
    for entry in (await admin.get("/admin/patients")).json():
        got = await adapter.call("report.list", {"patient_id": entry["patient"]["patient_id"]},
                                 idempotency_key=k())
        reports += [r for r in got["reports"] if r["status"] == "ready"]
    report = await adapter.call("report.fetch", {"report_no": reports[0]["report_no"]},
                                idempotency_key=k())
    assert report["items"]
    assert await adapter.call("report.printed", {"report_no": report["report_no"]},
                              idempotency_key=k()) == {"report_no": report["report_no"],
                                                       "printed": True}
    delta = await adapter.call("hotlist.delta", {"since_version": 0}, idempotency_key=k())
    assert delta["full"] is True and delta["added"]
    staff = await adapter.call("staff.login", {"badge": "S1002", "pin": demo_pin},
                               idempotency_key=k())
    assert staff["role"] == "cashier"
    await adapter.call("reg.departments", {}, idempotency_key=k())
    from yikatong.protocol.messages import CENTRAL_REQUESTS, REQUESTS

    platform_ops = set(REQUESTS) - CENTRAL_REQUESTS  # those central answers itself
    assert adapter.seen == platform_ops, platform_ops - adapter.seen


async def test_business_refusals_become_platform_rejected(
    asgi: tuple[ReferenceAdapter, httpx.AsyncClient],
) -> None:
    adapter, _ = asgi
    with pytest.raises(PlatformRejected) as err:
        await adapter.call("patient.identify", {"by": "card", "value": "000000000000"},
                           idempotency_key=k())
    assert err.value.code == "not_found" and err.value.http_status == 404
    assert err.value.to_error_body()["code"] == "rejected"
    with pytest.raises(PlatformRejected) as err:
        await adapter.call("pay.status", {}, idempotency_key=k())
    assert err.value.code == "invalid_request"
    with pytest.raises(PlatformRejected) as err:
        await adapter.call("reg.teleport", {}, idempotency_key=k())
    assert err.value.code == "unknown_type"
    # The same key with another body: the platform's duplicate_mismatch comes through.
    with pytest.raises(PlatformRejected):
        await adapter.call("reg.cancel", {"booking_id": "BK1"}, idempotency_key="same")
    with pytest.raises(PlatformRejected) as err:
        await adapter.call("reg.cancel", {"booking_id": "BK2"}, idempotency_key="same")
    assert err.value.code == "duplicate_mismatch"
    assert adapter.breaker.state is BreakerState.CLOSED  # refusals mean the platform is up


async def test_503_opens_the_breaker_which_half_opens_by_the_clock(
    asgi: tuple[ReferenceAdapter, httpx.AsyncClient], ticks: Ticks,
) -> None:
    adapter, admin = asgi
    await admin.post("/admin/faults", json={"op": "reg.departments", "error_rate": 1.0})
    for _ in range(2):
        with pytest.raises(PlatformUnavailable):
            await adapter.call("reg.departments", {}, idempotency_key=k())
    assert adapter.breaker.state is BreakerState.OPEN
    seen = (await admin.get("/admin/stats")).json()["requests"]["reg.departments"]
    with pytest.raises(PlatformUnavailable, match="circuit open") as err:
        await adapter.call("reg.departments", {}, idempotency_key=k())
    assert err.value.retry_after == pytest.approx(30) and err.value.retryable
    assert (await admin.get("/admin/stats")).json()["requests"]["reg.departments"] == seen
    ticks.t += 30
    assert adapter.breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(PlatformUnavailable):  # the trial fails: open again
        await adapter.call("reg.departments", {}, idempotency_key=k())
    assert adapter.breaker.state is BreakerState.OPEN
    await admin.delete("/admin/faults")
    ticks.t += 30
    assert (await adapter.call("reg.departments", {}, idempotency_key=k()))["departments"]
    assert adapter.breaker.state is BreakerState.CLOSED


async def test_timeout_in_process_is_outcome_unknown(
    asgi: tuple[ReferenceAdapter, httpx.AsyncClient],
) -> None:
    adapter, admin = asgi
    await admin.post("/admin/faults", json={"op": "bill.list", "timeout_rate": 1.0,
                                            "hang_ms": 3000})
    with pytest.raises(PlatformOutcomeUnknown):
        await adapter.call("bill.list", {"patient_id": "P000001"}, idempotency_key=k())
    assert adapter.breaker.consecutive_failures == 1


# --- over a real uvicorn server --------------------------------------------------------------

def _adapter(base_url: str, read_timeout: float = 0.5) -> ReferenceAdapter:
    return ReferenceAdapter(base_url, connect_timeout=0.5, read_timeout=read_timeout,
                            breaker=CircuitBreaker(failure_threshold=5, reset_timeout=30))


async def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nobody listens there
    adapter = _adapter(f"http://127.0.0.1:{port}")
    with pytest.raises(PlatformUnavailable, match="cannot connect"):
        await adapter.call("reg.departments", {}, idempotency_key=k())
    await adapter.aclose()


async def test_uvicorn_read_timeout_and_503(server: RunningServer) -> None:
    adapter = _adapter(server.base_url, read_timeout=0.3)
    async with httpx.AsyncClient(base_url=server.base_url) as admin:
        await admin.post("/admin/faults", json={"op": "reg.departments", "timeout_rate": 1.0,
                                                "hang_ms": 1500})
        with pytest.raises(PlatformOutcomeUnknown) as err:
            await adapter.call("reg.departments", {}, idempotency_key=k())
        assert isinstance(err.value.__cause__, httpx.ReadTimeout)
        await admin.post("/admin/faults", json={"op": "reg.departments", "error_rate": 1.0})
        with pytest.raises(PlatformUnavailable, match="503"):
            await adapter.call("reg.departments", {}, idempotency_key=k())
        await admin.delete("/admin/faults")
        assert (await adapter.call("reg.departments", {}, idempotency_key=k()))["departments"]
    await adapter.aclose()


async def test_uvicorn_drop_after_commit_then_retry_with_same_key_is_exactly_once(
    server: RunningServer,
) -> None:
    adapter = _adapter(server.base_url, read_timeout=0.3)
    async with httpx.AsyncClient(base_url=server.base_url) as admin:
        patient = await _first_patient(admin)
        slot = await _open_slot(adapter)
        body = {"patient_id": patient["patient_id"], "slot_id": slot["slot_id"],
                "pay_method": "later", "insured": False}
        await admin.post("/admin/faults", json={"op": "reg.book",
                                                "drop_reply_after_commit_rate": 1.0,
                                                "hang_ms": 1500})
        with pytest.raises(PlatformOutcomeUnknown):
            await adapter.call("reg.book", body, idempotency_key="dev-9:req-42")
        stats = (await admin.get("/admin/stats")).json()
        assert stats["effects"]["reg.book"] == 1  # it did take effect
        assert stats["faults_injected"] == {"reg.book:drop": 1}
        await admin.delete("/admin/faults")
        result = await adapter.call("reg.book", body, idempotency_key="dev-9:req-42")
        again = await adapter.call("reg.book", body, idempotency_key="dev-9:req-42")
        assert result == again and result["status"] == "booked"
        assert (await admin.get("/admin/stats")).json()["effects"]["reg.book"] == 1
        bookings = await adapter.call("reg.bookings", {"patient_id": patient["patient_id"]},
                                      idempotency_key=k())
        assert [b["booking_id"] for b in bookings["bookings"]] == [result["booking_id"]]
    await adapter.aclose()
