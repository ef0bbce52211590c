"""FastAPI app factory of the reference platform."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from central.platform.sim.api import (
    admin,
    bills,
    bookings,
    departments,
    hotlist,
    patients,
    payments,
    reports,
    slots,
    staff,
)
from central.platform.sim.api.runner import OpRunner
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.errors import SimError
from central.platform.sim.faults import FaultInjector
from central.platform.sim.models import open_database
from central.platform.sim.service import Clock, PlatformService

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_TAGS = [
    {"name": "patients", "description": "Identify patients by card, ID number or e-health QR"},
    {"name": "departments", "description": "Outpatient departments"},
    {"name": "slots", "description": "Doctor sessions open for registration"},
    {"name": "bookings", "description": "Registrations (挂号) and cancellations"},
    {"name": "bills", "description": "Unpaid outpatient bills"},
    {"name": "payments", "description": "Prepaid, cash and WeChat/Alipay micropay payments"},
    {"name": "reports", "description": "Lab reports"},
    {"name": "hotlist", "description": "Lost-card list"},
    {"name": "staff", "description": "Staff sign-in"},
    {"name": "admin", "description": "Test controls: patients, hot list, faults, stats"},
]

_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(settings: PlatformSimSettings, *, clock: Clock | None = None) -> FastAPI:
    """Build the platform app: migrate and seed the database, mount one router per resource."""
    schema = open_database(settings.db_path)
    service = PlatformService(schema, settings, clock or _utc_now)
    service.prepare()
    runner = OpRunner(service, FaultInjector(settings.fault_hang_s))

    app = FastAPI(
        title=f"{settings.hospital_name} — reference platform",
        summary="Reference hospital platform (HIS) for Yikatong: registrations, payments, "
        "bills, lab reports, lost-card list.",
        version="1.0.0",
        openapi_tags=_TAGS,
    )
    for module in (patients, departments, slots, bookings, bills, payments, reports,
                   hotlist, staff):
        app.include_router(module.build_router(runner), prefix="/api/v1")
    if settings.admin_enabled:
        app.include_router(admin.build_router(runner))

    @app.exception_handler(SimError)
    async def _sim_error(_: Request, exc: SimError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse(
            {"code": "invalid_request", "message": problems or "invalid request",
             "message_zh": "请求参数不正确"},
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return JSONResponse(
            {"code": code, "message": str(exc.detail),
             "message_zh": "请求的资源不存在或方法不支持"},
            status_code=exc.status_code,
        )

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("platform-sim internal error", exc_info=exc)
        return JSONResponse(
            {"code": "internal_error", "message": "internal error", "message_zh": "平台内部错误"},
            status_code=500,
        )

    return app
