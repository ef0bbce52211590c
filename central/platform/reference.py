"""Adapter for the reference platform's HTTP API (``ykt platform-sim`` speaks it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from central.platform.base import BY_KEY_OPERATIONS, OPERATIONS, PlatformAdapter
from central.platform.breaker import CircuitBreaker
from central.platform.errors import (
    PaymentNotFound,
    PlatformOutcomeUnknown,
    PlatformProtocolError,
    PlatformRejected,
    PlatformUnavailable,
)
from central.platform.http import KeepAliveTransport

__all__ = ["RESULT_KEYS", "ReferenceAdapter"]

API = "/api/v1"


@dataclass(frozen=True, slots=True)
class _Route:
    """How one catalogue operation maps onto the reference platform's HTTP API."""

    method: str
    path: str  # may contain one ``{field}`` taken from the body
    path_field: str | None = None
    query: tuple[str, ...] = ()  # body fields sent as query parameters (GET)
    send_body: bool = True


_ROUTES: dict[str, _Route] = {
    "patient.identify": _Route("POST", "/patients/identify"),
    "reg.departments": _Route("GET", "/departments", send_body=False),
    "reg.slots": _Route("GET", "/slots", query=("dept_code", "date"), send_body=False),
    "reg.book": _Route("POST", "/bookings"),
    "reg.cancel": _Route("POST", "/bookings/{booking_id}/cancel", "booking_id", send_body=False),
    "reg.bookings": _Route("GET", "/bookings", query=("patient_id", "date"), send_body=False),
    "reg.checkin": _Route(
        "POST", "/bookings/{booking_id}/checkin", "booking_id", send_body=False
    ),
    "reg.printed": _Route(
        "POST", "/bookings/{booking_id}/printed", "booking_id", send_body=False
    ),
    "bill.list": _Route("GET", "/bills", query=("patient_id",), send_body=False),
    "pay.create": _Route("POST", "/payments"),
    "pay.status": _Route("GET", "/payments/{payment_id}", "payment_id", send_body=False),
    "pay.reverse": _Route(
        "POST", "/payments/{payment_id}/reverse", "payment_id", send_body=False
    ),
    "pay.refund": _Route("POST", "/payments/{payment_id}/refunds", "payment_id"),
    "pay.list": _Route("GET", "/payments", query=("patient_id",), send_body=False),
    "report.list": _Route(
        "GET", "/reports", query=("patient_id", "specimen_barcode"), send_body=False
    ),
    "report.fetch": _Route("GET", "/reports/{report_no}", "report_no", send_body=False),
    "report.printed": _Route(
        "POST", "/reports/{report_no}/printed", "report_no", send_body=False
    ),
    "hotlist.delta": _Route("GET", "/hotlist", query=("since_version",), send_body=False),
    "staff.login": _Route("POST", "/staff/login"),
}
assert set(_ROUTES) == OPERATIONS

#: Lookup and reversal by the merchant's order number (our pay.create idempotency key):
#: not catalogue operations, only the payment resolver uses them.
_BY_KEY_ROUTES: dict[str, _Route] = {
    "pay.status_by_key": _Route("GET", "/payments/by-key/{key}", "key", send_body=False),
    "pay.reverse_by_key": _Route(
        "POST", "/payments/by-key/{key}/reverse", "key", send_body=False
    ),
}
assert set(_BY_KEY_ROUTES) == BY_KEY_OPERATIONS

#: Top-level keys every result must carry (docs/message-catalogue.md); a reply without
#: them is a protocol error rather than something to hand to a device.
RESULT_KEYS: dict[str, frozenset[str]] = {
    "patient.identify": frozenset({"patient_id", "name", "sex", "card_no", "balance_fen"}),
    "reg.departments": frozenset({"departments"}),
    "reg.slots": frozenset({"slots"}),
    "reg.book": frozenset({"booking_id", "queue_no", "fee_fen", "status"}),
    "reg.cancel": frozenset({"booking_id", "status", "refund_fen"}),
    "reg.bookings": frozenset({"bookings"}),
    "reg.checkin": frozenset({"booking_id", "status", "checked_in_at"}),
    "reg.printed": frozenset({"booking_id", "printed"}),
    "bill.list": frozenset({"bills"}),
    "pay.create": frozenset({"payment_id", "state", "amount_fen", "method"}),
    "pay.status": frozenset({"payment_id", "state", "amount_fen", "method"}),
    "pay.reverse": frozenset({"payment_id", "state", "amount_fen", "method"}),
    "pay.refund": frozenset({"refund_id", "payment_id", "amount_fen", "state"}),
    "pay.list": frozenset({"payments"}),
    "report.list": frozenset({"reports"}),
    "report.fetch": frozenset({"report_no", "items"}),
    "report.printed": frozenset({"report_no", "printed"}),
    "hotlist.delta": frozenset({"version", "full", "added", "removed"}),
    "staff.login": frozenset({"staff_id", "name", "role"}),
    "pay.status_by_key": frozenset({"payment_id", "state", "amount_fen", "method"}),
    "pay.reverse_by_key": frozenset({"payment_id", "state", "amount_fen", "method"}),
}


class ReferenceAdapter(PlatformAdapter):
    """Talks to the reference platform over HTTP with httpx, behind a circuit breaker.

    Failure mapping: connect failure / pool timeout / 503 / open circuit →
    ``PlatformUnavailable``; read or write timeout, connection dropped after the request
    went out, or no answer within connect+read timeout → ``PlatformOutcomeUnknown``;
    4xx → ``PlatformRejected`` with the platform's ``code``; unreadable reply →
    ``PlatformProtocolError``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        breaker: CircuitBreaker,
        transport: httpx.AsyncBaseTransport | None = None,
        headers_factory: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self.breaker = breaker
        self._headers_factory = headers_factory
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + API,
            # Tests pass in-process transports; the real one is lean HTTP/1.1 (http.py).
            transport=transport or KeepAliveTransport(),
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            # Never follow redirects: a redirected POST could repeat an effect elsewhere.
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    async def call(
        self,
        op: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """Perform one catalogue operation against the reference platform."""
        route = _ROUTES.get(op)
        if route is None:
            raise PlatformRejected(
                "unknown_type", f"operation {op!r} is not supported", message_zh="不支持的业务类型"
            )
        if not isinstance(body, dict):
            raise PlatformRejected("invalid_request", "body must be an object",
                                   message_zh="请求内容格式错误")
        return await self._perform(op, route, body, idempotency_key, timeout)

    async def pay_status_by_key(
        self,
        key: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """``GET /payments/by-key/{key}``; ``PaymentNotFound`` if never taken."""
        return await self._by_key("pay.status_by_key", key, key, timeout)

    async def pay_reverse_by_key(
        self,
        key: str,
        *,
        idempotency_key: str,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """``POST /payments/by-key/{key}/reverse``; ``PaymentNotFound`` if never taken."""
        return await self._by_key("pay.reverse_by_key", key, idempotency_key, timeout)

    async def _by_key(
        self,
        op: str,
        key: str,
        idempotency_key: str,
        timeout: float | None,  # noqa: ASYNC109 — passed on to the request
    ) -> dict[str, Any]:
        try:
            return await self._perform(op, _BY_KEY_ROUTES[op], {"key": key}, idempotency_key,
                                       timeout)
        except PlatformRejected as exc:
            # Only the platform's own typed answer means "never taken"; a bare 404 from a
            # proxy or an older platform has no code and is a protocol error instead.
            if exc.http_status == 404 and exc.code == "not_found":
                raise PaymentNotFound(key, exc.reason) from exc
            raise

    async def _perform(
        self,
        op: str,
        route: _Route,
        body: dict[str, Any],
        idempotency_key: str,
        timeout: float | None,  # noqa: ASYNC109 — passed on to the request
    ) -> dict[str, Any]:
        request = self._build_request(op, route, body, idempotency_key, timeout)
        if not self.breaker.allow():
            raise PlatformUnavailable(
                "circuit open: the platform failed repeatedly",
                "医院平台连续故障，暂停访问，请稍后再试",
                retry_after=self.breaker.retry_after(),
            )
        try:
            response = await self._send(request, timeout)
        except (PlatformUnavailable, PlatformOutcomeUnknown):
            self.breaker.record_failure()
            raise
        except BaseException:
            self.breaker.release()
            raise
        return self._interpret(op, response)

    def _build_request(
        self,
        op: str,
        route: _Route,
        body: dict[str, Any],
        idempotency_key: str,
        timeout: float | None,
    ) -> httpx.Request:
        path = route.path
        if route.path_field is not None:
            value = body.get(route.path_field)
            if not isinstance(value, str) or not value:
                raise PlatformRejected(
                    "invalid_request",
                    f"{op} needs a non-empty string {route.path_field!r}",
                    message_zh=f"缺少参数 {route.path_field}",
                )
            path = path.replace("{" + route.path_field + "}", quote(value, safe=""))
        params = {
            name: str(body[name]) for name in route.query if body.get(name) is not None
        }
        headers = {"Idempotency-Key": idempotency_key, "Accept": "application/json"}
        if self._headers_factory is not None:
            headers.update(self._headers_factory())
        json_body = None
        if route.send_body:
            json_body = {k: v for k, v in body.items() if k != route.path_field}
        read = timeout if timeout is not None else self._read_timeout
        return self._client.build_request(
            route.method,
            path,
            params=params or None,
            json=json_body,
            headers=headers,
            timeout=httpx.Timeout(read, connect=self._connect_timeout),
        )

    async def _send(
        self,
        request: httpx.Request,
        timeout: float | None,  # noqa: ASYNC109 — enforced below with asyncio.timeout
    ) -> httpx.Response:
        read = timeout if timeout is not None else self._read_timeout
        # httpx's read timeout bounds each socket read, and in-process transports ignore
        # timeouts entirely, so an overall deadline also guards against a slow drip.
        deadline = self._connect_timeout + read + 0.5
        try:
            async with asyncio.timeout(deadline):
                return await self._client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise PlatformUnavailable(f"cannot connect to the platform: {exc!r}") from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            # ReadTimeout / WriteTimeout / overall deadline: the request may have arrived.
            raise PlatformOutcomeUnknown(f"no reply from the platform in time: {exc!r}") from exc
        except httpx.TransportError as exc:
            # RemoteProtocolError, ReadError, WriteError: the link broke mid-exchange.
            raise PlatformOutcomeUnknown(
                f"connection to the platform lost: {exc!r}"
            ) from exc

    def _interpret(self, op: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 503:
            self.breaker.record_failure()
            retry_after = _retry_after(response.headers.get("Retry-After"))
            raise PlatformUnavailable(
                f"platform unavailable (HTTP 503): {_text(response)}", retry_after=retry_after
            )
        if status >= 500:
            # Anything else 5xx may have failed after acting: the conservative reading.
            self.breaker.record_failure()
            raise PlatformOutcomeUnknown(f"platform error HTTP {status}: {_text(response)}")
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self.breaker.record_success()  # it answered: the platform is up
            raise PlatformProtocolError(f"HTTP {status} reply is not JSON") from exc
        self.breaker.record_success()
        if 400 <= status < 500:
            if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
                raise PlatformProtocolError(f"HTTP {status} error reply without a code")
            raise PlatformRejected(
                payload["code"],
                str(payload.get("message", "")),
                message_zh=str(payload.get("message_zh") or "") or None,
                http_status=status,
            )
        if status != 200 or not isinstance(payload, dict):
            raise PlatformProtocolError(f"unexpected HTTP {status} reply for {op}")
        missing = RESULT_KEYS[op] - payload.keys()
        if missing:
            raise PlatformProtocolError(f"{op} reply lacks {sorted(missing)}")
        return payload


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _text(response: httpx.Response) -> str:
    return response.text[:200]
