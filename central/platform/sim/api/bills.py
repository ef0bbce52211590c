"""``/bills``: unpaid outpatient bills."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import BillsOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the bills resource."""
    router = APIRouter(prefix="/bills", tags=["bills"], responses=ERRORS)

    @router.get("", response_model=BillsOut, operation_id="bill_list")
    async def bills(patient_id: Annotated[str, Query(min_length=1, max_length=32)]) -> object:
        """List a patient's unpaid bills with their items."""
        return await runner.run("bill.list", lambda: runner.service.bills(patient_id))

    return router
