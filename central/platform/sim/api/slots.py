"""``/slots``: bookable doctor sessions."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import SlotsOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the slots resource."""
    router = APIRouter(prefix="/slots", tags=["slots"], responses=ERRORS)

    @router.get("", response_model=SlotsOut, operation_id="reg_slots")
    async def slots(
        dept_code: Annotated[str, Query(min_length=1, max_length=16)],
        date: Annotated[date, Query(description="YYYY-MM-DD, today to today+7")],
    ) -> object:
        """List one department's sessions of a day; closed sessions show remaining 0."""
        return await runner.run("reg.slots", lambda: runner.service.slots(dept_code, date))

    return router
