"""``/departments``: outpatient departments."""

from __future__ import annotations

from fastapi import APIRouter

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import DepartmentsOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the departments resource."""
    router = APIRouter(prefix="/departments", tags=["departments"], responses=ERRORS)

    @router.get("", response_model=DepartmentsOut, operation_id="reg_departments")
    async def departments() -> object:
        """List the outpatient departments."""
        return await runner.run("reg.departments", runner.service.departments)

    return router
