"""The daemon's local API for the kiosk UI server: loopback only, bearer-token protected.

The kiosk never sees a full name or ID number: the session endpoints return masked values,
and printing takes the personal fields from the card session held by the daemon.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from edge.runtime import EdgeRuntime, SessionError
from edge.uplink.errors import OutcomeUnknown, PlatformUnavailable, Rejected, UplinkError

__all__ = ["create_api"]


class RequestIn(BaseModel):
    """A request the kiosk wants forwarded to the platform."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(pattern=r"^[a-z]+\.[a-z_]+$", max_length=40)
    body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0, le=120)


class PrintIn(BaseModel):
    """A document to print for the current session."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["registration_slip"]
    data: dict[str, Any]
    copy_: bool = Field(default=False, alias="copy")


# Requests that carry personal data go through dedicated endpoints, not the generic one.
_PERSONAL_TYPES = frozenset({"patient.identify"})


def _error(status: int, code: str, message: str, message_zh: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "message_zh": message_zh, **extra}},
        status_code=status,
    )


def create_api(runtime: EdgeRuntime, token: str) -> FastAPI:
    """Build the local API app around a running ``EdgeRuntime``."""

    def check_token(authorization: str = Header(default="")) -> None:
        expected = f"Bearer {token}"
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="bad or missing token")

    app = FastAPI(title="Yikatong edge local API", version="1", docs_url=None, redoc_url=None)
    r = APIRouter(prefix="/v1", dependencies=[Depends(check_token)])

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, exc: SessionError) -> JSONResponse:
        return _error(409, exc.code, exc.message, exc.message_zh)

    @app.exception_handler(UplinkError)
    async def _uplink_error(_: Request, exc: UplinkError) -> JSONResponse:
        if isinstance(exc, Rejected):
            return _error(422, exc.code, exc.message, exc.message_zh, reason=exc.reason)
        if isinstance(exc, OutcomeUnknown):
            return _error(504, "outcome_unknown", exc.message, exc.message_zh)
        if isinstance(exc, PlatformUnavailable):
            return _error(503, "platform_unavailable", exc.message, exc.message_zh)
        return _error(502, type(exc).__name__, exc.message, exc.message_zh)

    @r.get("/health")
    async def health() -> dict[str, Any]:
        return runtime.health()

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
            return _error(400, "use_dedicated_endpoint", "Use /v1/patient/identify.",
                          "请使用专用接口。")
        return {"result": await runtime.request(req.type, req.body, req.timeout_s)}

    @r.post("/print")
    async def print_doc(req: PrintIn) -> dict[str, Any]:
        outcome = await runtime.print_registration_slip(req.data, copy=req.copy_)
        return {"job_id": outcome.job_id, "state": outcome.state, "reason": outcome.reason}

    @r.get("/printer/status")
    async def printer_status() -> dict[str, Any]:
        st = await runtime.printer.status()
        return {"status": _as_dict(st)}

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


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "model_dump"):
        return dict(obj.model_dump())
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return dict(obj)
