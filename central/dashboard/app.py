"""The staff dashboard (fleet health) and central's REST API.

Reads are open to the staff network the dashboard is bound to; every change (registering,
disabling a device, resolving a payment) needs the admin bearer token, and the payment
actions are audit records (actor ``staff:<operator>``).
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from central.authz import SECURITY_ACTIONS
from central.fleet_health import HealthThresholds, derive_alarms
from central.payments import PaymentError
from central.platform.errors import PlatformError
from central.registry import Registry, RegistryError
from central.store import Store

STATIC = Path(__file__).parent / "static"

__all__ = ["create_dashboard"]


class DeviceIn(BaseModel):
    """A device to register."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")
    role: Literal["kiosk", "cashier"]


class StaffActionIn(BaseModel):
    """Who on the staff side asks for a payment action (recorded in the audit)."""

    model_config = ConfigDict(extra="forbid")
    operator: str = Field(default="admin", pattern=r"^[A-Za-z0-9_.-]{1,32}$")


class ResolveIn(StaffActionIn):
    """A final state found on the platform, and why."""

    state: Literal["approved", "declined", "reversed"]
    reason: str = Field(min_length=2, max_length=200)


_PAYMENT_STATUS = {"not_found": 404, "already_final": 409, "no_payment_id": 409}


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def create_dashboard(store: Store, registry: Registry, admin_token: str, *,
                     site_name: str, timezone: str = "Asia/Shanghai",
                     extra_status: Any = None, payments: Any = None,
                     thresholds: HealthThresholds | None = None, guard: Any = None) -> FastAPI:
    """Build the dashboard app; ``extra_status()`` adds live fields (broker, platform)."""
    limits = thresholds or HealthThresholds()

    def fleet() -> list[dict[str, Any]]:
        """Every device with its health view and active alarms."""
        health = store.all_health()
        out = []
        for d in store.devices():
            h = health.get(d.id)
            alarms = derive_alarms(d.id, online=d.online, enabled=d.enabled, health=h,
                                   thresholds=limits)
            out.append({**_jsonable(asdict(d)), "health": h.to_dict() if h else None,
                        "alarms": [asdict(a) for a in alarms],
                        "audit": store.device_audit_state(d.id)})
        return out

    def require_admin(authorization: str = Header(default="")) -> None:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {admin_token}".encode()):
            raise HTTPException(status_code=401, detail="admin token required")

    app = FastAPI(title="Yikatong central", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    api = APIRouter(prefix="/api")

    @app.exception_handler(RegistryError)
    async def _registry_error(_: Request, exc: RegistryError) -> JSONResponse:
        return JSONResponse({"error": {"code": "registry", "message": exc.message,
                                       "message_zh": exc.message_zh}}, status_code=400)

    @app.exception_handler(PaymentError)
    async def _payment_error(_: Request, exc: PaymentError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message,
                                       "message_zh": exc.message_zh}},
                            status_code=_PAYMENT_STATUS.get(exc.code, 400))

    @app.exception_handler(PlatformError)
    async def _platform_error(_: Request, exc: PlatformError) -> JSONResponse:
        return JSONResponse({"error": {"code": "platform", "message": exc.message,
                                       "message_zh": exc.message_zh}}, status_code=502)

    def need_payments() -> Any:
        if payments is None:
            raise HTTPException(status_code=503, detail="payments are not enabled")
        return payments

    @api.get("/status")
    async def status() -> dict[str, Any]:
        ok, broken_at = store.verify_chain()
        # The browser renders every time in the site's zone, not its own.
        out: dict[str, Any] = {"site_name": site_name, "timezone": timezone,
                               "audit_chain": {"ok": ok, "broken_at": broken_at}}
        if extra_status is not None:
            out.update(extra_status())
        return out

    @api.get("/devices")
    async def devices() -> dict[str, Any]:
        return {"devices": fleet()}

    @api.get("/alarms")
    async def alarms() -> dict[str, Any]:
        items = [a for d in fleet() for a in d["alarms"]]
        items.sort(key=lambda a: (a["severity"] != "error", a["dev"], a["code"]))
        return {"alarms": items}

    @api.get("/devices/{dev}/events")
    async def device_events(dev: str, limit: int = 50) -> dict[str, Any]:
        return {"events": _jsonable(store.recent_events(dev, min(max(limit, 1), 200)))}

    @api.get("/devices/{dev}/audit")
    async def device_audit(dev: str, since: int = 0) -> dict[str, Any]:
        return {"dev": dev, **store.device_audit_state(dev),
                "entries": store.device_audit_entries(dev, since)}

    @api.get("/events")
    async def events(limit: int = 20) -> dict[str, Any]:
        return {"events": _jsonable(store.recent_events_all(min(max(limit, 1), 200)))}

    @api.post("/devices", dependencies=[Depends(require_admin)])
    async def register(dev: DeviceIn) -> dict[str, Any]:
        creds = registry.register(dev.id, dev.role)
        # The password is shown this once; central keeps only the broker's hash of it.
        return {"id": dev.id, "username": creds.username, "password": creds.password}

    @api.post("/devices/{dev}/disable", dependencies=[Depends(require_admin)])
    async def disable(dev: str) -> dict[str, Any]:
        registry.disable(dev)
        return {"id": dev, "enabled": False}

    @api.get("/payments/unresolved")
    async def unresolved() -> dict[str, Any]:
        items = payments.unresolved() if payments is not None else []
        return {"payments": [_jsonable(asdict(p)) for p in items]}

    @api.post("/payments/{request_id}/status", dependencies=[Depends(require_admin)])
    async def payment_status(request_id: str, who: StaffActionIn | None = None
                             ) -> dict[str, Any]:
        op = (who or StaffActionIn()).operator
        info = await need_payments().staff_status(request_id, staff=op)
        return {"payment": _jsonable(asdict(info))}

    @api.post("/payments/{request_id}/reverse", dependencies=[Depends(require_admin)])
    async def payment_reverse(request_id: str, who: StaffActionIn | None = None
                              ) -> dict[str, Any]:
        op = (who or StaffActionIn()).operator
        info = await need_payments().staff_reverse(request_id, staff=op)
        return {"payment": _jsonable(asdict(info))}

    @api.post("/payments/{request_id}/resolve", dependencies=[Depends(require_admin)])
    async def payment_resolve(request_id: str, req: ResolveIn) -> dict[str, Any]:
        info = need_payments().staff_resolve(request_id, req.state, req.reason,
                                             staff=req.operator)
        return {"payment": _jsonable(asdict(info))}

    @api.get("/security")
    async def security(limit: int = 50) -> dict[str, Any]:
        """Refused requests, sign-in failures and throttles, live staff sessions."""
        entries = store.audit_by_actions(SECURITY_ACTIONS, min(max(limit, 1), 500))
        staff = guard.staff if guard is not None else None
        return {"events": [_jsonable(asdict(e)) for e in entries],
                "throttles": _jsonable(staff.throttles()) if staff else [],
                "sessions": _jsonable(staff.active()) if staff else []}

    @api.post("/staff/{badge}/reset", dependencies=[Depends(require_admin)])
    async def reset_badge(badge: str, who: StaffActionIn | None = None) -> dict[str, Any]:
        """Administrator: clear a badge's failed sign-ins and end its sessions (audited)."""
        if guard is None:
            raise HTTPException(status_code=503, detail="authorization is not enabled")
        if not 1 <= len(badge) <= 64 or not badge.isprintable():
            raise HTTPException(status_code=400, detail="bad badge")
        now = datetime.now(UTC)
        changed = guard.staff.reset_badge(badge, now)
        store.audit(now, f"staff:{(who or StaffActionIn()).operator}", "staff.badge_reset",
                    {"badge": badge, "changed": changed})
        return {"badge": badge, "reset": changed}

    @api.post("/devices/{dev}/signin-reset", dependencies=[Depends(require_admin)])
    async def reset_device_signin(dev: str, who: StaffActionIn | None = None
                                  ) -> dict[str, Any]:
        """Administrator: clear a desk's failed sign-ins (audited)."""
        if guard is None:
            raise HTTPException(status_code=503, detail="authorization is not enabled")
        if store.device(dev) is None:
            raise HTTPException(status_code=404, detail="unknown device")
        changed = guard.staff.reset_device(dev)
        store.audit(datetime.now(UTC), f"staff:{(who or StaffActionIn()).operator}",
                    "staff.device_signin_reset", {"dev": dev, "changed": changed})
        return {"dev": dev, "reset": changed}

    @api.get("/audit")
    async def audit(since: int = 0) -> dict[str, Any]:
        entries = store.audit_entries(since_seq=since)[-200:]
        return {"entries": [_jsonable(asdict(e)) for e in entries]}

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    return app
