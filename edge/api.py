"""The daemon's local API for the kiosk UI server: loopback only, bearer-token protected.

The kiosk never sees a full name or ID number: the session endpoints return masked values,
and printing takes the personal fields from the card session held by the daemon. The kiosk
prints by reference (a booking id, payment id…): the document is built from the platform's
replies the daemon holds, never from figures the kiosk sends (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.runtime import EdgeRuntime, SessionError
from edge.uplink.errors import (
    OutcomeUnknown,
    PlatformUnavailable,
    Rejected,
    RequestExpired,
    UplinkError,
)
from yikatong.protocol.messages import dump_body

__all__ = ["SwitchableApp", "TokenGate", "create_api", "create_enrollment_api"]


class RequestIn(BaseModel):
    """A request the kiosk wants forwarded to the platform."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern=r"^[a-z]+\.[a-z_]+$", max_length=40)
    body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=120)


    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{8,64}$")


class PrintIn(BaseModel):
    """A document to print for the current session, named by kind and reference.

    ``ref``: the booking id (registration and cancellation slips), payment id (payment and
    top-up receipts), refund id (refund receipt) or report number (lab report); none for the
    closing report.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["registration_slip", "payment_receipt", "topup_receipt", "refund_receipt",
                  "cancellation_slip", "lab_report", "closing_report"]
    ref: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,64}$")
    copy_: bool = Field(default=False, alias="copy")

    @model_validator(mode="after")
    def _ref_when_needed(self) -> PrintIn:
        if (self.ref is None) != (self.kind == "closing_report"):
            raise ValueError("ref names the document (none for closing_report)")
        return self


class ReprintIn(BaseModel):
    """Reprint a failed job (as a copy), or the last document when ``job_id`` is absent."""

    model_config = ConfigDict(extra="forbid")
    job_id: str | None = Field(default=None, max_length=128)


class PayIn(BaseModel):
    """A payment for the session's patient; a wallet code is referred to by its scan id."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{8,64}$")  # the caller's idempotency key
    purpose: Literal["registration", "bills", "topup"]
    refs: list[str] = Field(default_factory=list, max_length=100)
    amount_fen: int = Field(ge=1, le=1_000_000_000)
    method: Literal["prepaid", "cash", "code"]
    scan_id: str | None = Field(default=None, max_length=32)
    timeout_s: float | None = Field(default=None, gt=0, le=120)
    #: Cash handed over at a desk (实收); the daemon works out the change for the receipt.
    tendered_fen: int | None = Field(default=None, ge=1, le=1_000_000_000)


class RefundIn(BaseModel):
    """A desk refund to the original method."""

    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=64)
    amount_fen: int = Field(ge=1, le=1_000_000_000)
    reason: str = Field(min_length=1, max_length=100)


class ScanIn(BaseModel):
    """Text from the kiosk's scan field (a keyboard-wedge scanner or typed by hand)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=512)


class StaffLoginIn(BaseModel):
    """Badge and PIN; the PIN is never logged or kept."""

    model_config = ConfigDict(extra="forbid")
    badge: str = Field(min_length=1, max_length=64)
    pin: str = Field(pattern=r"^[0-9]{4,12}$", repr=False)


# Requests that carry personal data or secrets go through dedicated endpoints, where the
# daemon fills in (or keeps back) what the kiosk must not hold.
_PERSONAL_TYPES = frozenset({"patient.identify", "report.fetch", "staff.login", "pay.create",
                             "pay.refund", "pay.list"})


def _error(status: int, code: str, message: str, message_zh: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "message_zh": message_zh, **extra}},
        status_code=status,
    )


_UNAUTHORIZED = json.dumps(
    {"error": {"code": "unauthorized", "message": "Bad or missing token.",
               "message_zh": "令牌缺失或无效。"}},
    ensure_ascii=False,
).encode()


class TokenGate:
    """Pure ASGI middleware: refuse a request without the bearer token before anything else.

    FastAPI reads and validates a JSON body *before* it runs dependencies, so a check done as a
    dependency lets an unauthenticated caller make the daemon parse its body and learn the
    request models from 422 errors. This gate looks only at the headers and answers 401 without
    ever calling ``receive`` — the body is not read.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """True when exactly one Authorization header carries the expected bearer token."""
        values = [v for k, v in headers if k.lower() == b"authorization"]
        given = values[0] if len(values) == 1 else b""
        # compare_digest on equal-type bytes: the time does not depend on where they differ.
        return hmac.compare_digest(given, self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorized request on; answer any other with a typed 401."""
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        if self.authorized(list(scope.get("headers") or [])):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(_UNAUTHORIZED)).encode()),
            (b"www-authenticate", b"Bearer"),
            (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})


class SwitchableApp:
    """An ASGI app whose inner app can be replaced while the server runs.

    The daemon serves the enrollment API (pairing code) while the device is not enrolled and
    swaps in the full API once it is, on the same port, without restarting the server.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def swap(self, app: ASGIApp) -> None:
        """Serve ``app`` from the next request on (requests under way finish on the old one)."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request to the current app."""
        await self.app(scope, receive, send)


def _bare_app(token: str) -> FastAPI:
    # No schema or docs: the API is for the kiosk UI server only, not to be explored.
    app = FastAPI(title="Yikatong edge local API", version="1", openapi_url=None,
                  docs_url=None, redoc_url=None)
    # Outermost: runs before FastAPI's exception middleware and before any body is read.
    app.add_middleware(TokenGate, token=token)
    return app


def _token_check(token: str) -> Any:
    def check_token(authorization: str = Header(default="")) -> None:
        # Defence in depth only: TokenGate has already refused a request without the token.
        expected = f"Bearer {token}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="bad or missing token")
    return check_token


_ENROLLED = {"state": "enrolled", "code": None, "serial": None, "expires_at": None,
             "device_id": None, "retry_at": None, "message": "This terminal is enrolled.",
             "message_zh": "本机已完成注册。"}


def create_enrollment_api(enrollment: Any, token: str) -> FastAPI:
    """The API of a device waiting for enrollment: the pairing state, nothing else.

    ``enrollment`` is an :class:`edge.fleet.enrollment.EnrollmentState`. ``/v1/health``
    answers (the kiosk polls it) with no runtime state and the enrollment; ``/v1/events``
    streams ``enrollment`` events and ends once the device is enrolled (the kiosk reconnects
    to the full API); every other call is ``503 not_enrolled``.
    """
    app = _bare_app(token)
    r = APIRouter(prefix="/v1", dependencies=[Depends(_token_check(token))])

    @r.get("/enrollment")
    async def enrollment_state() -> dict[str, Any]:
        return dict(enrollment.as_dict())

    @r.get("/health")
    async def health() -> dict[str, Any]:
        return {"device_id": enrollment.device_id, "role": None, "uplink_connected": False,
                "reader_present": False, "card": None, "session": None,
                "platform_ok": None, "staff": None, "ui": {},
                "enrollment": enrollment.as_dict()}

    @r.get("/ui-settings")
    async def ui_settings() -> dict[str, Any]:
        return {"ui": {}}

    @r.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            async with enrollment.bus.subscribe() as q:
                yield b": connected\n\n"
                current = {"kind": "enrollment", "data": enrollment.as_dict()}
                while True:
                    data = json.dumps(current, ensure_ascii=False)
                    yield f"event: enrollment\ndata: {data}\n\n".encode()
                    if current["data"].get("state") == "enrolled":
                        return  # the full API serves the events from now on
                    while not await request.is_disconnected():
                        try:
                            current = await asyncio.wait_for(q.get(), timeout=15)
                            break
                        except TimeoutError:
                            yield b": keep-alive\n\n"
                    else:
                        return

        return StreamingResponse(stream(), media_type="text/event-stream")

    @r.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def not_enrolled(rest: str) -> JSONResponse:
        return _error(503, "not_enrolled", "This terminal is waiting for enrollment.",
                      "本机正在等待注册批准。")

    app.include_router(r)
    return app


def create_api(runtime: EdgeRuntime, token: str, *, enrollment: Any = None) -> FastAPI:
    """Build the local API app around a running ``EdgeRuntime``.

    ``enrollment``: the :class:`edge.fleet.enrollment.EnrollmentState` of a device that
    enrolled by claim (``GET /v1/enrollment`` then says ``enrolled`` and its serial).
    """

    app = _bare_app(token)
    r = APIRouter(prefix="/v1", dependencies=[Depends(_token_check(token))])

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, exc: SessionError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.message_zh)

    @app.exception_handler(UplinkError)
    async def _uplink_error(_: Request, exc: UplinkError) -> JSONResponse:
        if isinstance(exc, Rejected):
            # As on the wire: code "rejected", the platform's reason code apart (what the
            # kiosk decides on), and a message fit for a screen.
            return _error(422, "rejected", exc.reason, exc.message_zh, reason=exc.code)
        if isinstance(exc, OutcomeUnknown):
            return _error(504, "outcome_unknown", exc.message, exc.message_zh,
                          request_id=exc.request_id)
        if isinstance(exc, RequestExpired):
            return _error(410, "request_expired", exc.message, exc.message_zh,
                          request_id=exc.request_id)
        if isinstance(exc, PlatformUnavailable):
            return _error(503, "platform_unavailable", exc.message, exc.message_zh)
        return _error(502, type(exc).__name__, exc.message, exc.message_zh)

    @r.get("/health")
    async def health() -> dict[str, Any]:
        return runtime.health()

    @r.get("/enrollment")
    async def enrollment_state() -> dict[str, Any]:
        """``enrolled`` (a device with a preset identity has no serial or code here)."""
        if enrollment is None:
            return {**_ENROLLED, "device_id": runtime.device_id}
        return {**dict(enrollment.as_dict()), "state": "enrolled",
                "device_id": runtime.device_id}

    @r.get("/ui-settings")
    async def ui_settings() -> dict[str, Any]:
        """The kiosk screen settings central set (language, idle timeout, countdown, voice)."""
        return {"ui": dict(runtime.ui_settings)}

    @r.get("/session")
    async def session() -> dict[str, Any]:
        return {"session": runtime.session.masked() if runtime.session else None}

    @r.post("/session/end")
    async def end_session() -> dict[str, Any]:
        runtime.end_session()
        return {"ok": True}

    @r.post("/patient/identify")
    async def identify() -> dict[str, Any]:
        return {"session": await runtime.identify_patient()}

    @r.post("/request")
    async def forward(req: RequestIn) -> Any:
        if req.type in _PERSONAL_TYPES:
            return _error(400, "use_dedicated_endpoint", f"{req.type} has its own endpoint.",
                          "请使用专用接口。")
        return {"result": dump_body(
            await runtime.request(req.type, req.body, req.timeout_s, req.id))}

    @r.get("/request/{request_id}")
    async def request_result(request_id: str, wait_s: float = 0.0) -> Any:
        """Outcome of a request whose caller got outcome_unknown (still never re-sent)."""
        return {"result": dump_body(
            await runtime.request_result(request_id, min(max(wait_s, 0), 10)))}

    @r.post("/patient/identify-qr")
    async def identify_qr() -> dict[str, Any]:
        return {"session": await runtime.identify_by_qr()}

    @r.post("/scan", response_model=None)
    async def scan(req: ScanIn) -> dict[str, Any] | JSONResponse:
        from edge.devices.scanner.errors import InvalidScanText

        try:
            return {"scan": runtime.scan_text(req.text, "ui")}
        except InvalidScanText:
            return _error(422, "bad_scan", "That code could not be read. Please scan again.",
                          "无法识别该条码，请重新扫描。")

    @r.post("/pay")
    async def pay(req: PayIn) -> dict[str, Any]:
        return {"result": dump_body(await runtime.pay(
            purpose=req.purpose, refs=req.refs, amount_fen=req.amount_fen, method=req.method,
            scan_id=req.scan_id, request_id=req.id, timeout_s=req.timeout_s,
            tendered_fen=req.tendered_fen))}

    @r.get("/pay/{payment_id}")
    async def pay_status(payment_id: str) -> dict[str, Any]:
        return {"result": dump_body(await runtime.pay_status(payment_id))}

    @r.post("/pay/{payment_id}/reverse")
    async def pay_reverse(payment_id: str) -> dict[str, Any]:
        return {"result": dump_body(await runtime.pay_reverse(payment_id))}

    @r.post("/refund")
    async def refund(req: RefundIn) -> dict[str, Any]:
        done = await runtime.refund(req.payment_id, req.amount_fen, req.reason)
        return {"result": {**dump_body(done.result), "method": done.method}}

    @r.get("/payments")
    async def payments() -> dict[str, Any]:
        """The identified patient's payments (desk: refund or reprint one of them)."""
        return {"payments": [dump_body(p) for p in await runtime.pay_list()]}

    @r.post("/payments/{payment_id}/reprint")
    async def reprint_payment(payment_id: str) -> dict[str, Any]:
        """A copy of an earlier receipt of the identified patient, by payment number."""
        return _outcome(await runtime.reprint_payment(payment_id[:64]))

    @r.get("/staff/shift")
    async def shift() -> dict[str, Any]:
        """What the handover report will list (this cashier, since the last handover)."""
        return {"shift": runtime.shift_summary()}

    @r.post("/staff/handover")
    async def handover() -> dict[str, Any]:
        """交班: print the shift report; once printed the desk is signed out."""
        return _outcome(await runtime.shift_handover())

    @r.post("/staff/login")
    async def staff_login(req: StaffLoginIn) -> dict[str, Any]:
        return {"staff": await runtime.staff_login(req.badge, req.pin)}

    @r.post("/staff/logout")
    async def staff_logout() -> dict[str, Any]:
        runtime.staff_logout()
        return {"ok": True}

    @r.post("/print")
    async def print_doc(req: PrintIn) -> dict[str, Any]:
        outcome = await runtime.print_document(req.kind, req.ref, copy=req.copy_)
        return _outcome(outcome)

    @r.post("/reprint", response_model=None)
    async def reprint(req: ReprintIn) -> dict[str, Any] | JSONResponse:
        from edge.devices.printer.errors import PrinterError

        try:
            if req.job_id:
                return _outcome(await runtime.reprint_failed(req.job_id))
            return _outcome(await runtime.reprint_last())
        except PrinterError as exc:
            return _error(409, "not_reprintable", "This document cannot be reprinted here.",
                          "该凭条无法在此补打，请到人工窗口。", reason=getattr(exc, "reason", ""))

    @r.get("/printer/status")
    async def printer_status() -> dict[str, Any]:
        return {"status": await runtime.printer_check()}

    @r.get("/events")
    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            async with runtime.bus.subscribe() as q:
                yield b": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    data = json.dumps(ev, ensure_ascii=False)
                    yield f"event: {ev['kind']}\ndata: {data}\n\n".encode()

        return StreamingResponse(stream(), media_type="text/event-stream")

    app.include_router(r)
    return app


def _outcome(outcome: Any) -> dict[str, Any]:
    return {"job_id": outcome.job_id, "state": outcome.state, "reason": outcome.reason,
            "copy": bool(getattr(outcome, "copy", False)), "message": outcome.message,
            "message_zh": outcome.message_zh}
