"""``ykt kiosk``: the UI server. Static pages plus a small JSON API over the edge daemon.

The browser holds no device handles and no personal data beyond masked values; every
action goes through this server to the local ``ykt edge`` API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from edge.common.config import load_config, read_secret
from edge.common.logging import setup_logging
from kiosk.config import KioskConfig
from kiosk.edge_client import EdgeClient, EdgeError

log = logging.getLogger("kiosk.app")

STATIC = Path(__file__).parent / "static"

__all__ = ["add_kiosk_arguments", "create_app", "main"]


class RegisterIn(BaseModel):
    """The patient's choice on the confirm screen."""

    model_config = ConfigDict(extra="forbid")
    slot_id: str = Field(min_length=1, max_length=64)
    insured: bool = False


def create_app(cfg: KioskConfig, edge: EdgeClient) -> FastAPI:
    """Build the UI server around an edge client."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await edge.aclose()

    app = FastAPI(title="Yikatong kiosk UI", version="1", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    api = APIRouter(prefix="/api")

    @app.exception_handler(EdgeError)
    async def _edge_error(_: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse({"error": exc.as_dict()}, status_code=exc.status)

    def today() -> date:
        return datetime.now(ZoneInfo(cfg.ui.timezone)).date()

    @api.get("/config")
    async def ui_config() -> dict[str, Any]:
        return {"ui": {**cfg.ui.model_dump(), "today": today().isoformat()}}

    @api.get("/state")
    async def state() -> dict[str, Any]:
        try:
            health = await edge.health()
        except EdgeError as exc:
            return {"online": False, "error": exc.as_dict(), "session": None}
        return {"online": True, "health": health, "session": health.get("session")}

    @api.get("/events")
    async def events() -> StreamingResponse:
        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in edge.events():
                    yield chunk
            except EdgeError:
                yield b"event: edge.offline\ndata: {}\n\n"

        return StreamingResponse(relay(), media_type="text/event-stream")

    @api.post("/identify")
    async def identify() -> dict[str, Any]:
        return {"session": await edge.identify()}

    @api.get("/departments")
    async def departments() -> dict[str, Any]:
        return await edge.request("reg.departments", {})

    @api.get("/slots")
    async def slots(dept: str = Query(min_length=1, max_length=16),
                    day: str | None = Query(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")) -> Any:
        return await edge.request("reg.slots", {"dept_code": dept,
                                                "date": day or today().isoformat()})

    @api.post("/register")
    async def register(req: RegisterIn) -> dict[str, Any]:
        session = await edge.session()
        if not session or "patient" not in session:
            raise EdgeError(409, "no_patient", "Please insert your card first.", "请先插入健康卡。")
        booking = await edge.request("reg.book", {
            "patient_id": session["patient"]["patient_id"],
            "slot_id": req.slot_id,
            "pay_method": cfg.ui.pay_method,
            "insured": req.insured,
        }, timeout_s=60)
        # The booking is confirmed: print. A print failure never undoes it; the UI offers
        # a reprint marked as a copy instead.
        try:
            printed = await edge.print_slip(booking)
        except EdgeError as exc:
            printed = {"state": "failed", "reason": exc.code}
        return {"booking": booking, "print": printed}

    @api.post("/reprint")
    async def reprint(booking: dict[str, Any]) -> dict[str, Any]:
        return {"print": await edge.print_slip(booking, copy=True)}

    @api.post("/session/end")
    async def end() -> dict[str, Any]:
        await edge.end_session()
        return {"ok": True}

    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    return app


def add_kiosk_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ykt kiosk``."""
    p.add_argument("--config", default="/etc/yikatong/kiosk.toml", help="kiosk TOML config file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")


def main(args: argparse.Namespace) -> int:
    """Serve the UI until stopped."""
    cfg = load_config(args.config, KioskConfig)
    setup_logging("kiosk", args.log_level)
    token = read_secret(cfg.edge.token_file, cfg.edge.token_env, what="edge.token_file")
    edge = EdgeClient(cfg.edge.url, token, timeout=cfg.edge.timeout_s)
    app = create_app(cfg, edge)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.server.host, port=cfg.server.port,
                                           log_config=None, access_log=False))
    asyncio.run(server.serve())
    return 0
