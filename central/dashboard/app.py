"""The staff dashboard (fleet health, fleet management) and central's REST API.

Everything but ``GET /`` (the page), ``GET /static/…`` and ``GET /api/status`` needs a
signed-in staff member (central/dashboard/auth.py): reads at least ``viewer``; registering
and disabling a device ``technician``; the payment actions, badge and desk sign-in resets
and ``/api/audit`` ``administrator``. The fleet endpoints (central/dashboard/fleet_api.py)
are there when central runs a fleet service. ``/api/status`` without a sign-in answers
only the site's name and time zone (health checks, the sign-in page).

Every write is audited with the staff member's user name (the admin token: ``admin-token``);
the payment actions as ``staff:<user name>``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from central.authz import SECURITY_ACTIONS
from central.dashboard.auth import (
    ADMIN_ACTOR,
    VIEWER,
    Administrator,
    ApiError,
    AuthSettings,
    DashboardAuth,
    StaffAccounts,
    StaffUser,
    Technician,
    auth_router,
    signed_in,
)
from central.dashboard.auth import SECURITY_ACTIONS as DASHBOARD_SECURITY_ACTIONS
from central.dashboard.bundles_api import bundles_router
from central.dashboard.fleet_api import fleet_router
from central.dashboard.rollouts_api import rollouts_router
from central.dashboard.telemetry_api import telemetry_router
from central.fleet_health import HealthThresholds, derive_alarms
from central.payments import PaymentError
from central.platform.errors import PlatformError
from central.registry import Registry, RegistryError
from central.store import Store
from central.store.devices import DeviceState
from yikatong.common.errors import LocalizedError
from yikatong.protocol.audit import GENESIS_HASH

STATIC = Path(__file__).parent / "static"
#: Files of the page besides index.html, served from ``/static/``.
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}

__all__ = ["AUDIT_CHECK_BATCH", "AUDIT_FULL_EVERY_S", "MAX_PAGE", "AuditChainCheck",
           "create_dashboard"]

#: The largest page ``GET /api/devices?limit=`` gives (without ``limit``: every device).
MAX_PAGE = 1000
_NO_AUDIT = {"audit_ok": True, "last_seq": 0, "count": 0, "first_bad_seq": None}
#: How often ``/api/status`` walks central's whole audit chain again (docs/performance.md,
#: "Fleet"): a record altered after it was checked is found within this time.
AUDIT_FULL_EVERY_S = 900.0
#: Audit records one status call checks at most: the new ones, or the next part of a pass.
AUDIT_CHECK_BATCH = 2000


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _json_with_list(key: str, items: list[Any], rest: dict[str, Any]) -> bytes:
    """``{**rest, key: items}`` as JSON, one item at a time.

    One ``json.dumps`` of thousands of devices is one long C call that holds the GIL, so
    the event loop would wait for all of it even though it runs on the reader thread;
    item by item, the loop gets its turn in between.
    """
    head = _json_bytes(rest)[:-1] + (b"," if rest else b"")
    return head + _json_bytes(key) + b":[" + b",".join(map(_json_bytes, items)) + b"]}"


class AuditChainCheck:
    """Central's audit chain as ``/api/status`` reports it, at a cost per call that does not
    grow with the chain (docs/performance.md, "Fleet").

    Each call checks only what was appended since the last one (``verify_chain_since`` from
    the remembered seq and hash), at most ``batch`` records. Every ``full_every_s`` a pass
    starts again from the first record and walks the whole chain, a batch per call, so an
    old record altered after it was checked is found by the next pass; ``step(full=True)``
    (an administrator's ``?full=1``) walks all of it at once. The last verdict stands while
    a pass is under way; a broken chain stays reported until a later pass finds it whole.
    Runs on the store's reader thread (``store.read``); the lock keeps calls one at a time.
    """

    def __init__(self, store: Store, clock: Callable[[], datetime], *,
                 full_every_s: float = AUDIT_FULL_EVERY_S,
                 batch: int = AUDIT_CHECK_BATCH) -> None:
        self.store = store
        self.clock = clock
        self.full_every_s = full_every_s
        self.batch = batch
        self._lock = threading.Lock()
        self._at: tuple[int, str] = (0, GENESIS_HASH)  # the last record found good
        self._pass_started: datetime | None = None
        self._passing = False  # a pass from the first record is under way
        self.full_at: datetime | None = None  # when the last pass that reached the head began
        self.broken_at: int | None = None
        self.rows_read = 0  # records read by every check so far (the cost per call)

    def step(self, *, full: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check what is due; returns (``audit_chain``, ``audit_check``) of the status."""
        with self._lock:
            now = self.clock()
            due = (self._pass_started is None
                   or (now - self._pass_started).total_seconds() >= self.full_every_s)
            if full or (due and not self._passing):
                self._at, self._pass_started, self._passing = (0, GENESIS_HASH), now, True
            if self.broken_at is None or self._passing:
                self._advance(whole=full)
            return ({"ok": self.broken_at is None, "broken_at": self.broken_at},
                    {"checked_seq": self._at[0], "full_pass": self._passing,
                     "full_at": self.full_at.isoformat() if self.full_at else None,
                     "full_every_s": self.full_every_s})

    def _advance(self, *, whole: bool) -> None:
        while True:
            start = self._at[0]
            bad, seq, h, read = self.store.verify_chain_since(*self._at, self.batch)
            self.rows_read += read
            self._at = (seq, h)
            if bad is not None:
                self.broken_at, self._passing = bad, False
                return
            if read - (start > 0) < self.batch:  # the head: everything is checked
                if self._passing:
                    self.full_at, self.broken_at = self._pass_started, None
                    self._passing = False
                return
            if not whole:
                return


class DeviceIn(BaseModel):
    """A device to register."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")
    role: Literal["kiosk", "cashier"]


class StaffActionIn(BaseModel):
    """Who on the staff side asks for a payment action (recorded in the audit).

    A signed-in staff member is always recorded under their own user name; ``operator``
    only names the person for callers with the shared admin token (scripts).
    """

    model_config = ConfigDict(extra="forbid")
    operator: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,32}$")


def _operator(user: StaffUser, who: StaffActionIn | None) -> str:
    if user.username == ADMIN_ACTOR:
        return (who.operator if who is not None and who.operator else ADMIN_ACTOR)
    return user.username


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
                     thresholds: HealthThresholds | None = None, guard: Any = None,
                     fleet: Any = None, accounts: StaffAccounts | None = None,
                     auth_settings: AuthSettings | None = None,
                     telemetry: Any = None) -> FastAPI:
    """Build the dashboard app; ``extra_status()`` adds live fields (broker, platform).

    ``fleet`` (a ``central.fleet.service.FleetService``) adds the fleet endpoints;
    ``accounts`` (tests: with a clock of their own) or ``auth_settings`` set up the staff
    accounts and sessions in ``store``.
    """
    limits = thresholds or HealthThresholds()
    accounts = accounts or StaffAccounts(store, auth_settings)
    auth = DashboardAuth(accounts, admin_token)

    def fleet_health(*, after: str | None = None, limit: int | None = None,
                     state: DeviceState | None = None,
                     prefix: str | None = None) -> list[dict[str, Any]]:
        """Devices (all, or a page) with health view, active alarms and audit chain state.

        A constant number of queries whatever the fleet's size (devices, their health rows,
        their audit summaries); run it through ``store.read`` — never on the event loop the
        forwarder shares (docs/performance.md, "Device list at fleet scale").
        """
        devs = store.devices(after=after, limit=limit, state=state, prefix=prefix)
        whole = limit is None and after is None and state is None and not prefix
        ids = None if whole else [d.id for d in devs]
        health = store.all_health(ids)
        audits = store.device_audit_states(ids)
        out = []
        for d in devs:
            h = health.get(d.id)
            alarms = derive_alarms(d.id, online=d.online, enabled=d.enabled, health=h,
                                   thresholds=limits)
            out.append({"id": d.id, "role": d.role, "enabled": d.enabled, "online": d.online,
                        "last_seen": d.last_seen.isoformat() if d.last_seen else None,
                        "last_boot_seq": d.last_boot_seq, "version": d.version,
                        "health": h.to_dict() if h else None,
                        "alarms": [asdict(a) for a in alarms],
                        "audit": audits.get(d.id) or _NO_AUDIT})
        return out

    def device_list(after: str | None, limit: int | None, state: DeviceState | None,
                    prefix: str | None) -> bytes:
        rows = fleet_health(after=after, limit=limit, state=state, prefix=prefix)
        more = limit is not None and len(rows) == limit
        return _json_with_list("devices", rows, {"counts": store.device_counts(),
                                                 "next": rows[-1]["id"] if more else None})

    def alarm_list(limit: int | None) -> bytes:
        """Every device's active alarms, errors first; ``limit`` keeps the first ones.

        Only what the alarms are made of (devices and their health rows, not the audit
        summaries or health views of :func:`fleet_health`); ``total`` and ``errors`` count
        them all, so a page can show a thousand offline devices as a number.
        """
        health = store.all_health()
        found = [a for d in store.devices()
                 for a in derive_alarms(d.id, online=d.online, enabled=d.enabled,
                                        health=health.get(d.id), thresholds=limits)]
        found.sort(key=lambda a: (a.severity != "error", a.dev, a.code))
        errors = sum(a.severity == "error" for a in found)
        shown = found if limit is None else found[:limit]
        return _json_with_list("alarms", [asdict(a) for a in shown],
                               {"total": len(found), "errors": errors})

    def audit(user: StaffUser, action: str, detail: dict[str, Any]) -> None:
        store.audit(accounts.now(), user.username, action, detail)

    audit_check = AuditChainCheck(store, accounts.now)
    app = FastAPI(title="Yikatong central", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.state.staff_auth = auth
    app.state.audit_check = audit_check
    api = APIRouter(prefix="/api", dependencies=[Depends(VIEWER)])
    open_api = APIRouter(prefix="/api")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(LocalizedError)
    async def _localized_error(_: Request, exc: LocalizedError) -> JSONResponse:
        # The fleet service's errors carry their HTTP status; anything else is a fault.
        status = getattr(exc, "status", None)
        return JSONResponse({"error": str(getattr(exc, "code", "error")),
                             "message": exc.message, "message_zh": exc.message_zh},
                            status_code=status if isinstance(status, int) else 500)

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

    @open_api.get("/status")
    async def status(request: Request, full: bool = False) -> dict[str, Any]:
        """The site; signed in, also the audit chain's state and the live fields.

        The chain is checked incrementally (:class:`AuditChainCheck`); ``full=1`` checks
        all of it now, for administrators (403 for the other roles).
        """
        # The browser renders every time in the site's zone, not its own.
        out: dict[str, Any] = {"site_name": site_name, "timezone": timezone}
        if signed_in(request) is None:  # a health check, or the sign-in page
            return {**out, "signed_in": False}
        if full:
            auth.check(request, "administrator")
        chain, check = await store.read(lambda: audit_check.step(full=full))
        out.update({"signed_in": True, "fleet": fleet is not None, "audit_chain": chain,
                    "audit_check": check})
        if extra_status is not None:
            out.update(extra_status())
        return out

    @api.get("/devices")
    async def devices(after: str | None = Query(default=None, max_length=64),
                      limit: int | None = Query(default=None, ge=1, le=MAX_PAGE),
                      state: DeviceState | None = None,
                      prefix: str | None = Query(default=None, max_length=64,
                                                 pattern=r"^[^\x00-\x1f\x7f]*$")
                      ) -> Response:
        """Devices by id: all of them, or a page (``limit``, then ``after`` = ``next``).

        ``counts`` covers the whole fleet whatever the page; ``state`` and ``prefix`` (the
        start of the id) filter.
        """
        body = await store.read(lambda: device_list(after, limit, state, prefix))
        return Response(body, media_type="application/json")

    @api.get("/alarms")
    async def alarms(limit: int | None = Query(default=None, ge=1, le=MAX_PAGE)) -> Response:
        """Active alarms, errors first (``limit``: the first ones; ``total`` counts all)."""
        return Response(await store.read(lambda: alarm_list(limit)),
                        media_type="application/json")

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

    @api.post("/devices")
    async def register(dev: DeviceIn, user: Technician) -> dict[str, Any]:
        creds = registry.register(dev.id, dev.role)
        audit(user, "staff.device_register", {"dev": dev.id, "role": dev.role})
        # The password is shown this once; central keeps only the broker's hash of it.
        return {"id": dev.id, "username": creds.username, "password": creds.password}

    @api.post("/devices/{dev}/disable")
    async def disable(dev: str, user: Technician) -> dict[str, Any]:
        registry.disable(dev)
        audit(user, "staff.device_disable", {"dev": dev})
        return {"id": dev, "enabled": False}

    @api.get("/payments/unresolved")
    async def unresolved() -> dict[str, Any]:
        items = payments.unresolved() if payments is not None else []
        return {"payments": [_jsonable(asdict(p)) for p in items]}

    @api.post("/payments/{request_id}/status")
    async def payment_status(request_id: str, user: Administrator,
                             who: StaffActionIn | None = None) -> dict[str, Any]:
        info = await need_payments().staff_status(request_id, staff=_operator(user, who))
        return {"payment": _jsonable(asdict(info))}

    @api.post("/payments/{request_id}/reverse")
    async def payment_reverse(request_id: str, user: Administrator,
                              who: StaffActionIn | None = None) -> dict[str, Any]:
        info = await need_payments().staff_reverse(request_id, staff=_operator(user, who))
        return {"payment": _jsonable(asdict(info))}

    @api.post("/payments/{request_id}/resolve")
    async def payment_resolve(request_id: str, req: ResolveIn, user: Administrator
                              ) -> dict[str, Any]:
        info = need_payments().staff_resolve(request_id, req.state, req.reason,
                                             staff=_operator(user, req))
        return {"payment": _jsonable(asdict(info))}

    @api.get("/security")
    async def security(limit: int = 50) -> dict[str, Any]:
        """Refused requests, sign-in failures and throttles (desks and dashboard), sessions."""
        entries = store.audit_by_actions(SECURITY_ACTIONS | DASHBOARD_SECURITY_ACTIONS,
                                         min(max(limit, 1), 500))
        staff = guard.staff if guard is not None else None
        return {"events": [_jsonable(asdict(e)) for e in entries],
                "throttles": [*(_jsonable(staff.throttles()) if staff else []),
                              *accounts.throttles()],
                "sessions": _jsonable(staff.active()) if staff else [],
                "staff_sessions": accounts.active_sessions()}

    @api.post("/staff/{badge}/reset")
    async def reset_badge(badge: str, user: Administrator,
                          who: StaffActionIn | None = None) -> dict[str, Any]:
        """Administrator: clear a badge's failed sign-ins and end its sessions (audited)."""
        if guard is None:
            raise HTTPException(status_code=503, detail="authorization is not enabled")
        if not 1 <= len(badge) <= 64 or not badge.isprintable():
            raise HTTPException(status_code=400, detail="bad badge")
        now = datetime.now(UTC)
        changed = guard.staff.reset_badge(badge, now)
        store.audit(now, f"staff:{_operator(user, who)}", "staff.badge_reset",
                    {"badge": badge, "changed": changed})
        return {"badge": badge, "reset": changed}

    @api.post("/devices/{dev}/signin-reset")
    async def reset_device_signin(dev: str, user: Administrator,
                                  who: StaffActionIn | None = None) -> dict[str, Any]:
        """Administrator: clear a desk's failed sign-ins (audited)."""
        if guard is None:
            raise HTTPException(status_code=503, detail="authorization is not enabled")
        if store.device(dev) is None:
            raise HTTPException(status_code=404, detail="unknown device")
        changed = guard.staff.reset_device(dev)
        store.audit(datetime.now(UTC), f"staff:{_operator(user, who)}",
                    "staff.device_signin_reset", {"dev": dev, "changed": changed})
        return {"dev": dev, "reset": changed}

    @api.get("/audit")
    async def audit_log(_: Administrator, since: int = 0) -> dict[str, Any]:
        entries = store.audit_entries(since_seq=since)[-200:]
        return {"entries": [_jsonable(asdict(e)) for e in entries]}

    app.include_router(open_api)
    app.include_router(auth_router(auth))
    if fleet is not None:
        app.include_router(fleet_router(
            fleet, lambda actor, action, detail: store.audit(accounts.now(), actor, action,
                                                             detail)))
        app.include_router(bundles_router(fleet))
        if getattr(fleet, "rollouts", None) is not None:  # staged updates, docs/updates.md
            app.include_router(rollouts_router(fleet.rollouts))
    app.include_router(telemetry_router(store, telemetry))  # charts: [telemetry] settings
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = STATIC / name
        kind = _STATIC_TYPES.get(path.suffix)
        if kind is None or "/" in name or not path.is_file():
            raise HTTPException(status_code=404, detail="Not Found")
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-store"})

    return app
