"""``/hotlist``: the versioned lost-card list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import HotlistDeltaOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the hot-list resource."""
    router = APIRouter(prefix="/hotlist", tags=["hotlist"], responses=ERRORS)

    @router.get("", response_model=HotlistDeltaOut, operation_id="hotlist_delta")
    async def delta(since_version: Annotated[int, Query(ge=0)] = 0) -> object:
        """Changes after ``since_version`` (0, or a version from the future: the full list)."""
        return await runner.run("hotlist.delta",
                                lambda: runner.service.hotlist_delta(since_version))

    return router
