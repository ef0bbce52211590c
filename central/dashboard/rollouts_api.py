"""The rollouts REST API: staged software updates (docs/updates.md "Rollouts").

A thin layer over ``central.fleet.rollouts.RolloutService`` (``FleetService.rollouts``),
like central/dashboard/fleet_api.py: it checks the caller's role (central/dashboard/auth.py;
cookie writes need ``X-Requested-With: ykt``), validates the body, passes the staff member's
user name as ``actor`` (the service audits with it) and lets the app turn the service's
``FleetError`` into ``{"error": code, "message", "message_zh"}``.

| endpoint | role |
|---|---|
| ``GET /api/rollouts?state=``, ``GET /api/rollouts/{id}`` | viewer |
| ``POST /api/rollouts`` (see :class:`RolloutIn`) | administrator |
| ``POST /api/rollouts/{id}/pause`` ``{reason?}`` | technician |
| ``POST /api/rollouts/{id}/resume`` | administrator |
| ``POST /api/rollouts/{id}/cancel`` ``{reason?}`` | administrator |

Why these roles: stopping is always safe and must be at hand for whoever sees trouble first,
so a technician may pause. Starting software on many terminals at once, going on past a
failure threshold and ending a rollout for good are decisions for the whole site:
administrator (who also uploads the bundles).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from central.dashboard.auth import Administrator, ApiError, Technician, Viewer
from central.dashboard.fleet_api import jsonable

__all__ = ["RolloutIn", "rollouts_router"]

STATES = ("scheduled", "running", "paused", "completed", "cancelled")
_TEXT = r"^[^\x00-\x1f\x7f]*$"


class RolloutIn(BaseModel):
    """A new rollout: which version, which devices, how fast, when to stop."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(max_length=40)
    site: str | None = Field(default=None, max_length=64)
    role: Literal["kiosk", "cashier"] | None = None
    from_versions: list[str] = Field(default_factory=list, max_length=20)
    devices: list[str] = Field(default_factory=list, max_length=5000)
    max_per_minute: int = Field(default=5, ge=1, le=1000)
    max_in_flight: int = Field(default=10, ge=1, le=10_000)
    failure_threshold: int | None = Field(default=None, ge=1, le=100_000)
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    min_finished: int = Field(default=5, ge=1, le=100_000)
    allow_downgrade: bool = False
    start_at: str | None = Field(default=None, max_length=40)
    notes: str | None = Field(default=None, max_length=200, pattern=_TEXT)


class ReasonIn(BaseModel):
    """Why a rollout is paused or cancelled (kept with it and in the audit)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, min_length=2, max_length=200, pattern=_TEXT)


def rollouts_router(rollouts: Any) -> APIRouter:
    """The rollout endpoints over ``rollouts`` (a RolloutService or anything like it)."""
    api = APIRouter(prefix="/api")

    @api.get("/rollouts")
    async def rollout_list(_: Viewer, state: str | None = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> dict[str, Any]:
        if state in (None, "", "all"):
            items = rollouts.list_rollouts(None, limit)
        elif state in STATES:
            items = rollouts.list_rollouts(state, limit)
        else:
            raise ApiError(400, "bad_state", f"state is one of {', '.join(STATES)}",
                           "状态须为 scheduled / running / paused / completed / cancelled 之一")
        return {"rollouts": jsonable(items)}

    @api.get("/rollouts/{rollout_id}")
    async def rollout_detail(rollout_id: str, _: Viewer) -> dict[str, Any]:
        return {"rollout": jsonable(rollouts.detail(rollout_id))}

    @api.post("/rollouts", status_code=201)
    async def rollout_create(body: RolloutIn, user: Administrator) -> dict[str, Any]:
        res = await rollouts.create(body.model_dump(), actor=user.username)
        return {"rollout": jsonable(res)}

    @api.post("/rollouts/{rollout_id}/pause")
    async def rollout_pause(rollout_id: str, user: Technician,
                            body: ReasonIn | None = None) -> dict[str, Any]:
        res = await rollouts.pause(rollout_id, actor=user.username,
                                   reason=body.reason if body else None)
        return {"rollout": jsonable(res)}

    @api.post("/rollouts/{rollout_id}/resume")
    async def rollout_resume(rollout_id: str, user: Administrator) -> dict[str, Any]:
        return {"rollout": jsonable(await rollouts.resume(rollout_id, actor=user.username))}

    @api.post("/rollouts/{rollout_id}/cancel")
    async def rollout_cancel(rollout_id: str, user: Administrator,
                             body: ReasonIn | None = None) -> dict[str, Any]:
        res = await rollouts.cancel(rollout_id, actor=user.username,
                                    reason=body.reason if body else None)
        return {"rollout": jsonable(res)}

    return api
