"""``ykt kiosk``: the UI server. Static pages plus a small JSON API over the edge daemon.

The browser holds no device handles and no personal data beyond masked values; every
action goes through this server to the local ``ykt edge`` API. The flows (state machines in
``kiosk.flows``) run here; the page renders the view model pushed over ``/api/events`` and
posts what the person did to ``/api/action``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from kiosk.config import KioskConfig
from kiosk.edge_client import EdgeClient, EdgeError
from kiosk.flows import Timing
from kiosk.session import Screen
from kiosk.voice import speak
from yikatong.common.config import load_config, read_secret
from yikatong.common.logging import setup_logging

log = logging.getLogger("kiosk.app")

STATIC = Path(__file__).parent / "static"

__all__ = ["add_kiosk_arguments", "create_app", "main"]


class ActionIn(BaseModel):
    """One thing the person at the screen did."""

    model_config = ConfigDict(extra="forbid")
    action: str = Field(pattern=r"^[a-z_]{1,32}$")
    args: dict[str, Any] = Field(default_factory=dict)


def create_app(cfg: KioskConfig, edge: EdgeClient, *, timing: Timing | None = None) -> FastAPI:
    """Build the UI server around an edge client."""
    screen = Screen(cfg, edge, timing=timing)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        follower = asyncio.create_task(screen.follow(), name="edge-events")
        with contextlib.suppress(Exception):
            await screen.sync()
        yield
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await edge.aclose()

    app = FastAPI(title="Yikatong kiosk UI", version="1", lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.screen = screen  # read by tests and the benchmark (never by request handlers)
    api = APIRouter(prefix="/api")

    @app.exception_handler(EdgeError)
    async def _edge_error(_: Request, exc: EdgeError) -> JSONResponse:
        return JSONResponse({"error": exc.as_dict()}, status_code=exc.status)

    def today() -> date:
        return datetime.now(ZoneInfo(cfg.ui.timezone)).date()

    @api.get("/config")
    async def ui_config() -> dict[str, Any]:
        # The kiosk's TOML with central's screen settings on top (Screen.apply_ui).
        return {"ui": {**screen.cfg.ui.model_dump(), "today": today().isoformat()},
                "ui_rev": screen.ui_rev}

    @api.get("/state")
    async def state() -> dict[str, Any]:
        try:
            health = await edge.health()
        except EdgeError as exc:
            return {"online": False, "error": exc.as_dict(), "session": None,
                    "view": screen.view()}
        # The page gets a summary only: the daemon's full health carries SAM and reader
        # detail that is for technicians and central, not for a public screen.
        summary = {k: health.get(k) for k in ("uplink_connected", "reader_present",
                                              "platform_ok", "role")}
        if isinstance(health.get("enrollment"), dict):
            summary["enrollment"] = health["enrollment"].get("state")
        return {"online": True, "health": summary, "session": health.get("session"),
                "view": screen.view()}

    @api.get("/events")
    async def events(request: Request) -> StreamingResponse:
        """The view model, pushed after every change (server-sent events)."""

        async def stream() -> AsyncIterator[bytes]:
            async with screen.subscribe() as q:
                while not await request.is_disconnected():
                    try:
                        v = await asyncio.wait_for(q.get(), timeout=15)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield b"event: view\ndata: " + json.dumps(
                        v, ensure_ascii=False).encode() + b"\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @api.post("/action")
    async def action(req: ActionIn) -> dict[str, Any]:
        return {"view": await screen.dispatch(req.action, req.args)}

    @api.post("/identify")
    async def identify() -> dict[str, Any]:
        return {"session": await edge.identify()}

    @api.get("/departments")
    async def departments() -> dict[str, Any]:
        return dict(await edge.request("reg.departments", {}))

    @api.get("/slots")
    async def slots(dept: str = Query(min_length=1, max_length=16),
                    day: str | None = Query(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")) -> Any:
        return await edge.request("reg.slots", {"dept_code": dept,
                                                "date": day or today().isoformat()})

    @api.post("/session/end")
    async def end() -> dict[str, Any]:
        await screen.dispatch("end", {})
        return {"ok": True}

    @api.get("/voice/{key}.wav", include_in_schema=False)
    async def voice(key: str) -> Response:
        wav = await speak(screen.cfg, key)
        if wav is None:
            return Response(status_code=404)
        return Response(wav, media_type="audio/wav",
                        headers={"Cache-Control": "max-age=86400"})

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
