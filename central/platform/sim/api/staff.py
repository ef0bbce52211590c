"""``/staff``: staff sign-in at cashier terminals."""

from __future__ import annotations

from fastapi import APIRouter

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import StaffLoginRequest, StaffOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the staff resource."""
    router = APIRouter(prefix="/staff", tags=["staff"], responses=ERRORS)

    @router.post("/login", response_model=StaffOut, operation_id="staff_login")
    async def login(req: StaffLoginRequest) -> object:
        """Check a badge and PIN."""
        return await runner.run("staff.login", lambda: runner.service.staff_login(req))

    return router
