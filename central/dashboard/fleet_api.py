"""The fleet REST API: enrollments, devices and sites, signed config, commands, claim bundle.

A thin layer over ``central.fleet.service.FleetService`` (docs/fleet-trust.md): it checks
the caller's role (central/dashboard/auth.py), validates the bodies, passes the staff
member's user name as ``actor`` (the service audits its writes with it) and turns the
service's errors — ``LocalizedError`` with ``code`` and an HTTP ``status`` — into
``{"error": code, "message", "message_zh"}`` (the handler is in central/dashboard/app.py).

| endpoint | role |
|---|---|
| ``GET /api/enrollments?status=`` | viewer |
| ``POST /api/enrollments/{code}/approve`` ``{device_id, role, site}`` | technician |
| ``POST /api/enrollments/{code}/reject`` ``{reason}`` | technician |
| ``GET /api/fleet/devices``, ``/api/fleet/sites``, ``/api/fleet/devices/{dev}`` | viewer |
| ``POST /api/fleet/devices/{dev}/disable`` | technician |
| ``POST /api/fleet/devices/{dev}/revoke`` | administrator |
| ``GET /api/config/{kind}/{target}`` | viewer |
| ``PUT /api/config/{kind}/{target}`` ``{settings, replace?}``, ``POST …/push`` | technician |
| ``POST /api/fleet/devices/{dev}/commands`` ``{name, args, exp_s?}`` | technician |
| ``GET /api/fleet/devices/{dev}/commands``, ``GET /api/commands/{id}?wait=S`` | viewer |
| ``GET /api/fleet/claim-bundle`` (audited: it holds the claim password) | administrator |

Answers wrap their object (``{"enrollments": […]}``, ``{"device": {…}}``, ``{"command": {…}}``
…), except the claim bundle, which is the bundle itself.

The service is duck-typed: nothing of ``central.fleet`` is imported here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from central.dashboard.auth import Administrator, ApiError, Technician, Viewer
from yikatong.protocol.fleet import (
    COMMANDS,
    FINAL_COMMAND_STATES,
    PAIRING_CODE_RE,
    Command,
    RemoteSettings,
)

__all__ = ["fleet_router", "jsonable", "normalize_code"]

Kind = Literal["device", "site", "role"]
ENROLL_STATUSES = ("pending", "approved", "rejected", "expired")
_CODE = re.compile(PAIRING_CODE_RE)
_CMD_ID = re.compile(r"^[0-9a-f]{32}$")
_DEV = r"^[a-z0-9][a-z0-9-]{2,62}$"
_SHORT = r"^[^\x00-\x1f\x7f]{1,64}$"
#: Longest single wait of ``GET /api/commands/{id}?wait=``.
MAX_WAIT_S = 30.0
# Crockford base32 reads O as 0 and I, L as 1: a code typed off a screen still matches.
_CROCKFORD = str.maketrans({"O": "0", "I": "1", "L": "1"})


def jsonable(obj: Any) -> Any:
    """Datetimes as ISO strings, tuples as lists, recursively."""
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def normalize_code(code: str) -> str:
    """``abcd1234`` / ``abcd-1234`` / ``ABCD 1234`` → ``ABCD-1234``; 404 if not a code."""
    c = re.sub(r"[\s-]", "", code).upper().translate(_CROCKFORD)
    if len(c) == 8:
        c = f"{c[:4]}-{c[4:]}"
    if not _CODE.match(c):
        raise ApiError(404, "unknown_code", f"{code!r} is not a pairing code",
                       f"{code} 不是配对码")
    return c


class ApproveIn(BaseModel):
    """What a technician gives an enrolling device: its id, role and site."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=_DEV)
    role: Literal["kiosk", "cashier"]
    site: str = Field(pattern=_SHORT)


class RejectIn(BaseModel):
    """Why a request is refused (shown on the device)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")


class ConfigIn(BaseModel):
    """Settings to merge into (or, with ``replace``, to replace) a target's own settings."""

    model_config = ConfigDict(extra="forbid")
    settings: dict[str, Any]
    replace: bool = False


class CommandIn(BaseModel):
    """One command for one device."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=32)
    args: dict[str, str | int] = Field(default_factory=dict)
    #: Seconds until the command expires; None: the service's default (10 min).
    exp_s: int | None = Field(default=None, ge=10, le=7 * 86_400)


def _invalid(exc: ValidationError, what: str, what_zh: str) -> ApiError:
    errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or what}: {e['msg']}"
                     for e in exc.errors(include_input=False))
    return ApiError(400, "invalid", f"invalid {what}: {errs}", f"{what_zh}无效：{errs}")


def fleet_router(fleet: Any, audit: Callable[[str, str, dict[str, Any]], Any]) -> APIRouter:
    """The fleet endpoints over ``fleet`` (a FleetService or anything with its methods);
    ``audit(actor, action, detail)`` records what the service does not (the claim bundle)."""
    api = APIRouter(prefix="/api")

    # -- enrollments ------------------------------------------------------------------------
    @api.get("/enrollments")
    async def enrollments(_: Viewer, status: str | None = None
                          ) -> dict[str, Any]:
        if status in (None, "", "all"):
            items = fleet.enrollments(status=None)
        elif status in ENROLL_STATUSES:
            items = fleet.enrollments(status=status)
        else:
            raise ApiError(400, "bad_status", f"status is one of {', '.join(ENROLL_STATUSES)}",
                           "状态须为 pending / approved / rejected / expired 之一")
        return {"enrollments": jsonable(items)}

    @api.post("/enrollments/{code}/approve")
    async def approve(code: str, body: ApproveIn, user: Technician
                      ) -> dict[str, Any]:
        res = await fleet.approve(normalize_code(code), device_id=body.device_id,
                                  role=body.role, site=body.site, actor=user.username)
        return {"enrollment": jsonable(res)}

    @api.post("/enrollments/{code}/reject")
    async def reject(code: str, body: RejectIn, user: Technician
                     ) -> dict[str, Any]:
        res = await fleet.reject(normalize_code(code), reason=body.reason,
                                 actor=user.username)
        return {"enrollment": jsonable(res)}

    # -- devices and sites ------------------------------------------------------------------
    @api.get("/fleet/devices")
    async def devices(_: Viewer) -> dict[str, Any]:
        return {"devices": jsonable(fleet.devices_overview())}

    @api.get("/fleet/sites")
    async def sites(_: Viewer) -> dict[str, Any]:
        return {"sites": jsonable(fleet.sites_overview())}

    @api.get("/fleet/devices/{dev}")
    async def device(dev: str, _: Viewer) -> dict[str, Any]:
        return {"device": jsonable(fleet.device_detail(dev))}

    @api.post("/fleet/devices/{dev}/revoke")
    async def revoke(dev: str, user: Administrator) -> dict[str, Any]:
        return {"revoked": jsonable(await fleet.revoke(dev, actor=user.username))}

    @api.get("/fleet/ca")
    async def ca(_: Viewer) -> dict[str, Any]:
        return {"ca": jsonable(fleet.ca_view())}

    @api.post("/fleet/ca/rotate")
    async def ca_rotate(user: Administrator) -> dict[str, Any]:
        return {"ca": jsonable(await fleet.rotate_ca(actor=user.username))}

    @api.post("/fleet/devices/{dev}/disable")
    async def disable(dev: str, user: Technician) -> dict[str, Any]:
        await fleet.disable(dev, actor=user.username)
        return {"id": dev, "enabled": False}

    # -- desired config ---------------------------------------------------------------------

    @api.get("/config/{kind}/{target}")
    async def get_config(kind: Kind, target: str, _: Viewer
                         ) -> dict[str, Any]:
        return {"config": jsonable(fleet.get_config(kind, target))}

    @api.put("/config/{kind}/{target}")
    async def set_config(kind: Kind, target: str, body: ConfigIn,
                         user: Technician) -> dict[str, Any]:
        try:  # the part central may set, and nothing else (yikatong/protocol/fleet.py)
            RemoteSettings.model_validate(body.settings)
        except ValidationError as exc:
            raise _invalid(exc, "settings", "设置") from None
        res = await fleet.set_config(kind, target, body.settings, actor=user.username,
                                     replace=body.replace)
        return {"config": jsonable(res)}

    @api.post("/config/{kind}/{target}/push")
    async def push_config(kind: Kind, target: str, user: Technician
                          ) -> dict[str, Any]:
        return {"pushed": jsonable(await fleet.push_config(kind, target, actor=user.username))}

    # -- commands ---------------------------------------------------------------------------
    @api.post("/fleet/devices/{dev}/commands")
    async def send_command(dev: str, body: CommandIn, user: Technician
                           ) -> dict[str, Any]:
        if body.name not in COMMANDS:
            raise ApiError(400, "unknown_command", f"unknown command {body.name!r}; one of "
                           f"{', '.join(COMMANDS)}", f"未知命令 {body.name}")
        try:
            Command.model_validate({"command_id": "0" * 32, "name": body.name,
                                    "args": body.args})
        except ValidationError as exc:
            raise _invalid(exc, "arguments", "参数") from None
        extra = {} if body.exp_s is None else {"exp_s": body.exp_s}
        res = await fleet.send_command(dev, body.name, dict(body.args), actor=user.username,
                                       **extra)
        return {"command": jsonable(res)}

    @api.get("/fleet/devices/{dev}/commands")
    async def device_commands(dev: str, _: Viewer,
                              limit: Annotated[int, Query(ge=1, le=500)] = 50
                              ) -> dict[str, Any]:
        return {"commands": jsonable(fleet.commands(dev, limit=limit))}

    @api.get("/commands/{command_id}")
    async def command(command_id: str, _: Viewer,
                      wait: Annotated[float, Query(ge=0, le=3600)] = 0) -> dict[str, Any]:
        cmd = fleet.command(command_id) if _CMD_ID.match(command_id) else None
        if cmd is None:
            raise ApiError(404, "unknown_command_id", f"no command {command_id}",
                           f"没有命令 {command_id}")
        if wait > 0 and cmd.get("state") not in FINAL_COMMAND_STATES:
            cmd = await fleet.wait_command(command_id, min(wait, MAX_WAIT_S))
        return {"command": jsonable(cmd)}

    # -- claim bundle -----------------------------------------------------------------------
    @api.get("/fleet/claim-bundle")
    async def claim_bundle(user: Administrator) -> dict[str, Any]:
        bundle = fleet.claim_bundle()
        # A read, but it hands out the site's claim password: who took it is on record.
        audit(user.username, "fleet.claim_bundle", {})
        return dict(jsonable(bundle))  # flat: ca_pem, signing_pub_pem, claim_password, …

    return api
