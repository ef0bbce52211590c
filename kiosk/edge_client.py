"""Client of the local ``ykt edge`` API, with errors turned into one typed exception."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from yikatong.common.errors import LocalizedError

__all__ = ["EdgeClient", "EdgeError"]


class EdgeError(LocalizedError):
    """The edge daemon refused or failed an action; messages are fit for the screen.

    ``reason`` is the platform's reason code of a rejection (``insufficient_balance`` …)
    or '' — never defaulted to ``code``, because flows look advice up by it.
    """

    code = "edge_error"

    def __init__(self, status: int, code: str, message: str, message_zh: str,
                 **extra: Any) -> None:
        super().__init__(message, message_zh)
        self.status = status
        self.code = code
        self.extra = extra  # e.g. request_id of an outcome_unknown, reason of a rejection
        self.reason = str(extra.get("reason") or "")

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the browser."""
        out = {"code": self.code, "message": self.message, "message_zh": self.message_zh}
        if self.reason:
            out["reason"] = self.reason
        return out


class EdgeClient:
    """Thin async client; one instance per kiosk server."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=3.0), transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._client.request(method, path, **kw)
        except httpx.TimeoutException:
            raise EdgeError(504, "edge_timeout", "The terminal did not answer in time.",
                            "终端响应超时。") from None
        except httpx.TransportError:
            raise EdgeError(503, "edge_unavailable", "The terminal service is not running.",
                            "终端服务未运行。") from None
        if resp.status_code >= 400:
            try:
                err = dict(resp.json()["error"])
                raise EdgeError(resp.status_code, err.pop("code"), err.pop("message"),
                                err.pop("message_zh"), **err)
            except (ValueError, KeyError, TypeError):
                raise EdgeError(resp.status_code, "edge_error",
                                f"Terminal error (HTTP {resp.status_code}).",
                                f"终端错误（HTTP {resp.status_code}）。") from None
        return resp.json()

    async def _field(self, key: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        data = await self._call(method, path, **kw)
        out: dict[str, Any] = data[key]
        return out

    async def _obj(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        data: dict[str, Any] = await self._call(method, path, **kw)
        return data

    async def health(self) -> dict[str, Any]:
        """Daemon health, including the masked session."""
        return await self._obj("GET", "/v1/health")

    async def session(self) -> dict[str, Any] | None:
        """The current card session (masked) or None."""
        return await self._field("session", "GET", "/v1/session")

    async def end_session(self) -> None:
        """Wipe the session on the daemon."""
        await self._call("POST", "/v1/session/end")

    async def identify(self) -> dict[str, Any]:
        """Identify the patient of the inserted card at the platform."""
        return await self._field("session", "POST", "/v1/patient/identify")

    async def identify_qr(self) -> dict[str, Any]:
        """Open a session for the e-health QR the daemon holds from the last scan."""
        return await self._field("session", "POST", "/v1/patient/identify-qr")

    async def request(
        self, type_: str, body: dict[str, Any], timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Forward a request to the platform through the uplink."""
        payload: dict[str, Any] = {"type": type_, "body": body}
        if timeout_s is not None:
            payload["timeout_s"] = timeout_s
        if request_id is not None:
            payload["id"] = request_id
        return await self._field("result", "POST", "/v1/request", json=payload)

    async def request_result(self, request_id: str, wait_s: float = 0.0) -> Any:
        """The outcome of a request that ended in outcome_unknown (never re-sent)."""
        return await self._field("result", "GET", f"/v1/request/{request_id}",
                                 params={"wait_s": wait_s})

    async def scan(self, text: str) -> dict[str, Any]:
        """Hand scanned/typed text to the daemon; a payment code comes back as a handle."""
        return await self._field("scan", "POST", "/v1/scan", json={"text": text})

    async def pay(self, *, request_id: str, purpose: str, refs: list[str], amount_fen: int,
                  method: str, scan_id: str | None = None, timeout_s: float | None = None,
                  tendered_fen: int | None = None) -> dict[str, Any]:
        """``pay.create`` for the session's patient (the daemon fills in the payment code).

        ``tendered_fen``: cash handed over at a desk; the daemon keeps it for the receipt.
        """
        body: dict[str, Any] = {"id": request_id, "purpose": purpose, "refs": refs,
                                "amount_fen": amount_fen, "method": method}
        if scan_id is not None:
            body["scan_id"] = scan_id
        if tendered_fen is not None:
            body["tendered_fen"] = tendered_fen
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        return await self._field("result", "POST", "/v1/pay", json=body)

    async def pay_status(self, payment_id: str) -> dict[str, Any]:
        """``pay.status``."""
        return await self._field("result", "GET", f"/v1/pay/{payment_id}")

    async def pay_reverse(self, payment_id: str) -> dict[str, Any]:
        """``pay.reverse`` of an unresolved payment."""
        return await self._field("result", "POST", f"/v1/pay/{payment_id}/reverse")

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> dict[str, Any]:
        """Desk refund to the original method (staff only)."""
        return await self._field("result", "POST", "/v1/refund", json={
            "payment_id": payment_id, "amount_fen": amount_fen, "reason": reason})

    async def payments(self) -> list[dict[str, Any]]:
        """The identified patient's payments, newest first (desk only)."""
        data = await self._call("GET", "/v1/payments")
        return list(data["payments"])

    async def reprint_payment(self, payment_id: str) -> dict[str, Any]:
        """A copy of an earlier receipt of the identified patient (desk only)."""
        return await self._obj("POST", f"/v1/payments/{payment_id}/reprint")

    async def shift(self) -> dict[str, Any]:
        """What the shift handover report will list."""
        return await self._field("shift", "GET", "/v1/staff/shift")

    async def handover(self) -> dict[str, Any]:
        """Print the shift handover report; once printed the desk is signed out."""
        return await self._obj("POST", "/v1/staff/handover")

    async def staff_login(self, badge: str, pin: str) -> dict[str, Any]:
        """Sign a cashier in (the PIN goes straight through to central)."""
        return await self._field("staff", "POST", "/v1/staff/login",
                                 json={"badge": badge, "pin": pin})

    async def staff_logout(self) -> None:
        """Lock the desk."""
        await self._call("POST", "/v1/staff/logout")

    async def print_doc(self, kind: str, ref: str | None = None, *,
                        copy: bool = False) -> dict[str, Any]:
        """Print a document named by kind and reference (booking id, payment id, refund id,
        report number; none for the closing report).

        The daemon builds it from the platform's replies it holds and the card session's
        personal fields: the kiosk sends no figures (docs/architecture.md).
        """
        body: dict[str, Any] = {"kind": kind, "copy": copy}
        if ref is not None:
            body["ref"] = ref
        return await self._obj("POST", "/v1/print", json=body)

    async def print_slip(self, booking_id: str, *, copy: bool = False) -> dict[str, Any]:
        """Print the registration slip of a booking for the current session."""
        return await self.print_doc("registration_slip", booking_id, copy=copy)

    async def reprint(self, job_id: str | None = None) -> dict[str, Any]:
        """Reprint a failed job, or (no id) the last document, marked as a copy."""
        return await self._obj("POST", "/v1/reprint", json={"job_id": job_id})

    async def printer_status(self) -> dict[str, Any]:
        """Can the printer print now? ``{ready, problem, message, message_zh, paper}``."""
        return await self._field("status", "GET", "/v1/printer/status")

    async def events(self) -> AsyncIterator[bytes]:
        """Raw SSE stream from the daemon (relayed to the browser)."""
        async with self._client.stream("GET", "/v1/events", timeout=None) as resp:
            async for chunk in resp.aiter_bytes():
                yield chunk
