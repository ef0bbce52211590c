"""Payments by the merchant's order number (the pay.create idempotency key): the reference
platform's by-key endpoints, the adapter over HTTP, and central's resolver using them when
central died during pay.create."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from central.payments import NOT_TAKEN, OPEN_STATES, Payments
from central.platform.base import PlatformAdapter
from central.platform.breaker import CircuitBreaker
from central.platform.errors import (
    PaymentNotFound,
    PlatformOutcomeUnknown,
    PlatformProtocolError,
    PlatformRejected,
    PlatformUnavailable,
    PlatformUnsupported,
)
from central.platform.reference import ReferenceAdapter
from central.platform.sim.app import create_app
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.ids import id_check_digit
from central.platform.sim.server import RunningServer, start_in_thread
from central.store import Store, open_store
from yikatong.protocol.envelope import new_envelope

API = "/api/v1"
_keys = itertools.count(1)


def k() -> str:
    return f"bykey-{next(_keys)}"


def patient_body(balance: int) -> dict[str, Any]:
    body17 = "11010519900307123"
    return {"card_no": "320100999900000001", "id_number": body17 + id_check_digit(body17),
            "name": "张三", "sex": "M", "birth_date": "1990-03-07", "phone": "13800001234",
            "balance_fen": balance, "insured": False}


# --- the reference platform's endpoints -----------------------------------------------------


def _slot(client: TestClient) -> dict[str, Any]:
    for dept in client.get(f"{API}/departments").json()["departments"]:
        slots = client.get(f"{API}/slots", params={"dept_code": dept["code"],
                                                   "date": "2025-03-10"}).json()["slots"]
        for slot in slots:
            if slot["period"] == "pm" and slot["remaining"] > 0:
                return slot
    raise AssertionError("no open slot in the seeded data")


def _prepaid_registration(client: TestClient, key: str) -> tuple[dict[str, Any], Any]:
    """A booking paid later, then paid from the prepaid balance under ``key``."""
    pid = client.post("/admin/patients", json=patient_body(5000)).json()["patient"]["patient_id"]
    b = client.post(f"{API}/bookings", headers={"Idempotency-Key": k()},
                    json={"patient_id": pid, "slot_id": _slot(client)["slot_id"],
                          "pay_method": "later"}).json() | {"patient_id": pid}
    r = client.post(f"{API}/payments", headers={"Idempotency-Key": key},
                    json={"patient_id": pid, "purpose": "registration",
                          "refs": [b["booking_id"]], "amount_fen": b["fee_fen"],
                          "method": "prepaid"})
    return b, r


def _effects(client: TestClient) -> dict[str, int]:
    return client.get("/admin/stats").json()["effects"]


def test_status_by_key_finds_the_payment_taken_under_it(client: TestClient) -> None:
    booking, paid = _prepaid_registration(client, "order-0001")
    assert paid.status_code == 200 and paid.json()["state"] == "approved"
    assert paid.json()["amount_fen"] == booking["fee_fen"]
    found = client.get(f"{API}/payments/by-key/order-0001")
    assert found.status_code == 200 and found.json() == paid.json()
    assert _effects(client)["pay.create"] == 1  # a lookup is not a payment
    assert client.get(f"{API}/payments/by-key/order-0001").json() == paid.json()


def test_status_by_key_of_an_unknown_or_refused_key_is_not_found(client: TestClient) -> None:
    r = client.get(f"{API}/payments/by-key/never-seen-1")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert r.json()["message_zh"]
    pid = client.post("/admin/patients", json=patient_body(0)).json()["patient"]["patient_id"]
    book_key = k()
    b = client.post(f"{API}/bookings", headers={"Idempotency-Key": book_key},
                    json={"patient_id": pid, "slot_id": _slot(client)["slot_id"],
                          "pay_method": "later"}).json()
    refused = client.post(f"{API}/payments", headers={"Idempotency-Key": "order-poor"},
                          json={"patient_id": pid, "purpose": "registration",
                                "refs": [b["booking_id"]], "amount_fen": b["fee_fen"],
                                "method": "prepaid"})
    assert refused.json()["code"] == "insufficient_balance"
    r = client.get(f"{API}/payments/by-key/order-poor")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert "insufficient_balance" in r.json()["message"]
    # a key used by another operation is no payment either
    r = client.get(f"{API}/payments/by-key/{book_key}")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_reverse_by_key_voids_an_approved_payment_once(client: TestClient) -> None:
    booking, paid = _prepaid_registration(client, "order-0002")
    pid = booking["patient_id"]
    balance_after_pay = paid.json()["balance_fen"]
    r1 = client.post(f"{API}/payments/by-key/order-0002/reverse",
                     headers={"Idempotency-Key": "rev-1"})
    assert r1.status_code == 200, r1.text
    assert r1.json()["state"] == "reversed"
    assert r1.json()["payment_id"] == paid.json()["payment_id"]
    assert r1.json()["balance_fen"] == balance_after_pay + booking["fee_fen"]  # money back
    # the same reversal again, and another one under a new key: still reversed, once
    r2 = client.post(f"{API}/payments/by-key/order-0002/reverse",
                     headers={"Idempotency-Key": "rev-1"})
    r3 = client.post(f"{API}/payments/by-key/order-0002/reverse",
                     headers={"Idempotency-Key": "rev-2"})
    assert r2.json() == r1.json() and r3.json()["state"] == "reversed"
    assert _effects(client)["pay.reverse"] == 1
    assert r3.json()["balance_fen"] == r1.json()["balance_fen"]
    # the booking is free to be paid again
    bookings = client.get(f"{API}/bookings", params={"patient_id": pid}).json()["bookings"]
    assert [(b["booking_id"], b["status"]) for b in bookings] == [
        (booking["booking_id"], "booked")]
    assert client.get(f"{API}/payments/by-key/order-0002").json()["state"] == "reversed"


def test_reverse_by_key_of_an_unseen_key_closes_it_against_a_late_create(
    client: TestClient,
) -> None:
    r1 = client.post(f"{API}/payments/by-key/order-late/reverse",
                     headers={"Idempotency-Key": "rev-late-1"})
    assert r1.status_code == 404 and r1.json()["code"] == "not_found"
    r2 = client.post(f"{API}/payments/by-key/order-late/reverse",
                     headers={"Idempotency-Key": "rev-late-2"})
    assert r2.status_code == 404 and r2.json()["code"] == "not_found"
    # the create arrives after all (in flight, or resent): refused, nothing charged
    booking, late = _prepaid_registration(client, "order-late")
    assert late.status_code == 422 and late.json()["code"] == "payment_closed"
    assert "pay.create" not in _effects(client) and "pay.reverse" not in _effects(client)
    assert client.get(f"{API}/payments/by-key/order-late").status_code == 404
    bookings = client.get(f"{API}/bookings",
                          params={"patient_id": booking["patient_id"]}).json()["bookings"]
    assert bookings[0]["status"] == "booked"


def test_reverse_by_key_needs_an_idempotency_key_and_is_in_openapi(client: TestClient) -> None:
    r = client.post(f"{API}/payments/by-key/order-x/reverse")
    assert r.status_code == 400 and r.json()["code"] == "missing_idempotency_key"
    spec = client.get("/openapi.json").json()
    op_ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"pay_status_by_key", "pay_reverse_by_key"} <= op_ids
    assert "/api/v1/payments/by-key/{key}" in spec["paths"]


# --- the adapter over HTTP --------------------------------------------------------------------


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def asgi(settings: PlatformSimSettings, clock: Any
               ) -> AsyncIterator[tuple[ReferenceAdapter, httpx.AsyncClient]]:
    transport = httpx.ASGITransport(app=create_app(settings, clock=clock))
    adapter = ReferenceAdapter(
        "http://127.0.0.1", connect_timeout=0.1, read_timeout=0.3, transport=transport,
        breaker=CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=Ticks()))
    admin = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")
    yield adapter, admin
    await adapter.aclose()
    await admin.aclose()


async def _book_later(adapter: ReferenceAdapter, admin: httpx.AsyncClient, balance: int
                      ) -> dict[str, Any]:
    pid = (await admin.post("/admin/patients", json=patient_body(balance))
           ).json()["patient"]["patient_id"]
    for dept in (await adapter.call("reg.departments", {}, idempotency_key=k()))["departments"]:
        slots = await adapter.call("reg.slots", {"dept_code": dept["code"], "date": "2025-03-10"},
                                   idempotency_key=k())
        for slot in slots["slots"]:
            if slot["remaining"] > 0 and slot["period"] == "pm":
                booking = await adapter.call("reg.book", {
                    "patient_id": pid, "slot_id": slot["slot_id"], "pay_method": "later",
                    "insured": False}, idempotency_key=k())
                return {**booking, "patient_id": pid}
    raise AssertionError("no open slot")


def _pay_body(booking: dict[str, Any]) -> dict[str, Any]:
    return {"patient_id": booking["patient_id"], "purpose": "registration",
            "refs": [booking["booking_id"]], "amount_fen": booking["fee_fen"],
            "method": "prepaid"}


async def test_adapter_status_and_reverse_by_key(asgi: tuple[ReferenceAdapter, Any]) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 5000)
    paid = await adapter.call("pay.create", _pay_body(booking), idempotency_key="order-a1")
    assert await adapter.pay_status_by_key("order-a1") == paid
    with pytest.raises(PaymentNotFound) as nf:
        await adapter.pay_status_by_key("order-none")
    assert isinstance(nf.value, PlatformRejected) and nf.value.code == "not_found"
    assert nf.value.key == "order-none" and nf.value.message_zh
    rev = await adapter.pay_reverse_by_key("order-a1", idempotency_key="rev-a1")
    assert rev["state"] == "reversed" and rev["payment_id"] == paid["payment_id"]
    assert await adapter.pay_reverse_by_key("order-a1", idempotency_key="rev-a1") == rev
    with pytest.raises(PaymentNotFound):
        await adapter.pay_reverse_by_key("order-none", idempotency_key="rev-none")
    effects = (await admin.get("/admin/stats")).json()["effects"]
    assert effects["pay.reverse"] == 1 and effects["pay.create"] == 1
    assert adapter.breaker.state.value == "closed"


async def test_adapter_by_key_timeouts_count_against_the_breaker(
    asgi: tuple[ReferenceAdapter, Any],
) -> None:
    adapter, admin = asgi
    await admin.post("/admin/faults", json={"op": "pay.status_by_key", "timeout_rate": 1.0,
                                            "hang_ms": 3000})
    for _ in range(2):
        with pytest.raises(PlatformOutcomeUnknown):
            await adapter.pay_status_by_key("order-slow", timeout=0.2)
    with pytest.raises(PlatformUnavailable):  # circuit open: not even sent
        await adapter.pay_reverse_by_key("order-slow", idempotency_key="rev-slow")
    stats = (await admin.get("/admin/stats")).json()
    assert "pay.reverse_by_key" not in stats["requests"]


async def test_a_bare_404_is_not_taken_for_never_charged() -> None:
    # A proxy or an older platform without the route answers 404 without a typed code.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    adapter = ReferenceAdapter(
        "http://platform", connect_timeout=0.1, read_timeout=0.3,
        transport=httpx.MockTransport(handler),
        breaker=CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=Ticks()))
    with pytest.raises(PlatformProtocolError):
        await adapter.pay_status_by_key("order-1")
    with pytest.raises(PlatformProtocolError):
        await adapter.pay_reverse_by_key("order-1", idempotency_key="rev-1")
    with pytest.raises(PlatformRejected) as bad:
        await adapter.pay_status_by_key("")
    assert bad.value.code == "invalid_request" and not isinstance(bad.value, PaymentNotFound)
    await adapter.aclose()


async def test_adapters_without_by_key_lookups_refuse_with_a_typed_error() -> None:
    class Minimal(PlatformAdapter):
        async def call(self, op: str, body: dict[str, Any], *, idempotency_key: str,
                       timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
            raise AssertionError("not called")

        async def aclose(self) -> None:
            return None

    with pytest.raises(PlatformUnsupported) as exc:
        await Minimal().pay_status_by_key("order-1")
    assert exc.value.code == "unsupported"
    with pytest.raises(PlatformUnsupported):
        await Minimal().pay_reverse_by_key("order-1", idempotency_key="r")


@pytest.fixture
def server(settings: PlatformSimSettings, clock: Any) -> Iterator[RunningServer]:
    running = start_in_thread(settings, clock=clock)
    yield running
    running.stop()


async def test_uvicorn_lost_create_reply_is_found_by_key(server: RunningServer) -> None:
    adapter = ReferenceAdapter(
        server.base_url, connect_timeout=0.5, read_timeout=0.3,
        breaker=CircuitBreaker(failure_threshold=5, reset_timeout=30, clock=Ticks()))
    async with httpx.AsyncClient(base_url=server.base_url) as admin:
        booking = await _book_later(adapter, admin, 5000)
        await admin.post("/admin/faults", json={"op": "pay.create",
                                                "drop_reply_after_commit_rate": 1.0,
                                                "hang_ms": 1500})
        with pytest.raises(PlatformOutcomeUnknown):
            await adapter.call("pay.create", _pay_body(booking), idempotency_key="order-u1")
        await admin.delete("/admin/faults")
        found = await adapter.pay_status_by_key("order-u1")
        assert found["state"] == "approved" and found["amount_fen"] == booking["fee_fen"]
        with pytest.raises(PaymentNotFound):
            await adapter.pay_status_by_key("order-u2")
        assert (await admin.get("/admin/stats")).json()["effects"]["pay.create"] == 1
    await adapter.aclose()


# --- central's resolver against the reference platform ----------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "central.db")
    yield s
    s.close()


def _create_env(booking: dict[str, Any], rid: str, clock: Any, **body: Any) -> Any:
    return new_envelope("pay.create", "kiosk-001", {**_pay_body(booking), **body},
                        now=clock(), id=rid)


async def _central_dies_during_create(adapter: ReferenceAdapter, admin: httpx.AsyncClient,
                                      store: Store, clock: Any, env: Any) -> None:
    """Row committed, the platform commits, the reply never comes, central is gone."""
    await Payments(store, adapter, clock=clock).before_call(env)
    await admin.post("/admin/faults", json={"op": "pay.create",
                                            "drop_reply_after_commit_rate": 1.0,
                                            "hang_ms": 3000})
    with pytest.raises(PlatformOutcomeUnknown):
        await adapter.call("pay.create", dict(env.body), idempotency_key=env.id)
    await admin.delete("/admin/faults")


def _actions(store: Store, rid: str) -> list[tuple[str, str, str | None]]:
    return [(e.actor, e.action, e.detail.get("to")) for e in store.audit_entries()
            if e.detail.get("request_id") == rid]


async def test_resolver_finds_a_committed_payment_by_key_after_a_crash(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 5000)
    env = _create_env(booking, "crashpay01", clock)
    await _central_dies_during_create(adapter, admin, store, clock, env)
    restarted = Payments(store, adapter, clock=clock, deadline_s=30, safety_window_s=60)
    assert restarted.get("crashpay01").payment_id is None
    assert await restarted.resolve_once() == 0
    info = restarted.get("crashpay01")
    platform_pay = await adapter.pay_status_by_key("crashpay01")
    assert info.state == "approved" and info.payment_id == platform_pay["payment_id"]
    stats = (await admin.get("/admin/stats")).json()
    assert stats["effects"]["pay.create"] == 1  # never created again
    assert stats["requests"]["pay.create"] == 1
    assert ("resolver", "payment.state", "approved") in _actions(store, "crashpay01")
    assert store.verify_chain() == (True, None)


async def test_resolver_reverses_by_key_past_the_deadline(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 0)
    # an Alipay code the payer never confirms: the payment stays pending on the platform
    env = _create_env(booking, "crashpay02", clock, method="alipay",
                      auth_code="2812345678901237")
    await _central_dies_during_create(adapter, admin, store, clock, env)
    pay = Payments(store, adapter, clock=clock, deadline_s=30, safety_window_s=60)
    assert await pay.resolve_once() == 1
    assert pay.get("crashpay02").state == "pending"  # found by key, not final yet
    clock.advance(31)
    assert await pay.resolve_once() == 0
    info = pay.get("crashpay02")
    assert info.state == "reversed"
    assert (await adapter.pay_status_by_key("crashpay02"))["state"] == "reversed"
    await pay.resolve_once()
    effects = (await admin.get("/admin/stats")).json()["effects"]
    assert effects["pay.create"] == 1 and effects["pay.reverse"] == 1
    acts = _actions(store, "crashpay02")
    assert ("resolver", "payment.state", "pending") in acts
    assert ("resolver", "payment.state", "reversed") in acts
    # The device's resend of the same create: the platform answers what it stored first,
    # but the reply central sends must say what is true now.
    resent = await adapter.call("pay.create", dict(env.body), idempotency_key=env.id)
    assert resent["state"] in ("approved", "pending")
    assert pay.reply_result(env, resent)["state"] == "reversed"


async def test_a_create_answered_past_the_deadline_is_not_told_approved(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 5000)
    env = _create_env(booking, "latepay01", clock)
    pay = Payments(store, adapter, clock=clock, deadline_s=30, safety_window_s=60)
    await pay.before_call(env)
    result = await adapter.call("pay.create", dict(env.body), idempotency_key=env.id)
    assert result["state"] == "approved"
    assert pay.reply_result(env, result) is result  # in time: passed through as it is
    clock.advance(31)  # past the deadline, but no reversal started: still the truth
    assert pay.reply_result(env, result) is result
    # Once a reversal is on its way (claimed on the row first, on whichever instance), a
    # resend answered meanwhile must not print a receipt: the device asks again.
    seen: list[str] = []
    reverse = adapter.pay_reverse_by_key

    async def watched(request_id: str, *, idempotency_key: str) -> dict[str, Any]:
        seen.append(pay.reply_result(env, result)["state"])
        return await reverse(request_id, idempotency_key=idempotency_key)

    adapter.pay_reverse_by_key = watched  # type: ignore[method-assign]
    await pay.staff_reverse("latepay01", staff="li")
    assert seen == ["unknown"]
    assert pay.reply_result(env, result)["state"] == "reversed"


async def test_resolver_reverses_by_key_when_the_crash_left_no_reply_past_the_deadline(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 0)
    env = _create_env(booking, "crashpay05", clock, method="alipay",
                      auth_code="2812345678901237")
    await _central_dies_during_create(adapter, admin, store, clock, env)
    clock.advance(31)  # central comes back only after the deadline: first look reverses
    pay = Payments(store, adapter, clock=clock, deadline_s=30, safety_window_s=60)
    assert await pay.resolve_once() == 0
    assert pay.get("crashpay05").state == "reversed"
    stats = (await admin.get("/admin/stats")).json()
    assert stats["requests"]["pay.reverse_by_key"] == 1
    assert stats["effects"]["pay.reverse"] == 1


async def test_resolver_ends_a_never_received_payment_as_not_charged(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 5000)
    env = _create_env(booking, "crashpay03", clock)
    await Payments(store, adapter, clock=clock).before_call(env)  # died before the call
    pay = Payments(store, adapter, clock=clock, deadline_s=30, safety_window_s=60)
    assert await pay.resolve_once() == 1
    clock.advance(31)  # past the deadline, inside the safety window: not believed yet
    assert await pay.resolve_once() == 1
    assert pay.get("crashpay03").state == "created"
    stats = (await admin.get("/admin/stats")).json()
    assert "pay.reverse_by_key" not in stats["requests"]
    assert stats["requests"]["pay.status_by_key"] == 2
    clock.advance(30)  # past the safety window
    assert await pay.resolve_once() == 0
    info = pay.get("crashpay03")
    assert info.state == "declined" and info.reason == NOT_TAKEN and info.payment_id is None
    acts = _actions(store, "crashpay03")
    assert ("resolver", "payment.not_taken", None) in acts
    assert ("resolver", "payment.state", "declined") in acts
    # the device resends the same request: the platform refuses the closed key
    with pytest.raises(PlatformRejected) as late:
        await adapter.call("pay.create", dict(env.body), idempotency_key=env.id)
    assert late.value.code == "payment_closed"
    await pay.observe(env, None, late.value)
    assert pay.get("crashpay03").state == "declined"
    effects = (await admin.get("/admin/stats")).json()["effects"]
    assert "pay.create" not in effects and "pay.reverse" not in effects
    assert store.verify_chain() == (True, None)


async def test_staff_reverse_of_a_row_without_payment_id_goes_by_key(
    asgi: tuple[ReferenceAdapter, Any], store: Store, clock: Any,
) -> None:
    adapter, admin = asgi
    booking = await _book_later(adapter, admin, 5000)
    env = _create_env(booking, "crashpay04", clock)
    await _central_dies_during_create(adapter, admin, store, clock, env)
    pay = Payments(store, adapter, clock=clock)
    info = await pay.staff_reverse("crashpay04", staff="zhao")
    assert info.state == "reversed" and info.payment_id is not None
    assert info.state not in OPEN_STATES
    acts = _actions(store, "crashpay04")
    assert ("staff:zhao", "payment.staff_reverse", None) in acts
    assert ("staff:zhao", "payment.state", "reversed") in acts
