"""``/admin``: test and demo controls (mounted only when ``admin_enabled``)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from central.platform.base import BY_KEY_OPERATIONS, OPERATIONS
from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.errors import SimError
from central.platform.sim.schemas import (
    AdminPatientList,
    AdminPatientOut,
    FaultsOut,
    FaultSpec,
    HotlistUpdateOut,
    HotlistUpdateRequest,
    PatientCreateRequest,
    StaffCreateRequest,
    StaffOut,
    StatsOut,
)
from central.platform.sim.service import Outcome


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the admin resource."""
    router = APIRouter(prefix="/admin", tags=["admin"], responses=ERRORS)
    svc, faults = runner.service, runner.faults

    async def admin(fn: Callable[[], Outcome]) -> JSONResponse:
        status, payload = await run_in_threadpool(svc.execute, "admin", fn)
        return JSONResponse(payload, status_code=status)

    @router.get("/patients", response_model=AdminPatientList)
    async def patients() -> object:
        """All patients with their e-health QR texts."""
        return await admin(svc.admin_patients)

    @router.post("/patients", response_model=AdminPatientOut, status_code=200)
    async def create_patient(req: PatientCreateRequest) -> object:
        """Register a patient with a given card number and ID number."""
        return await admin(lambda: svc.admin_create_patient(req))

    @router.post("/hotlist", response_model=HotlistUpdateOut)
    async def hotlist(req: HotlistUpdateRequest) -> object:
        """Add a card to, or remove it from, the lost-card list."""
        return await admin(lambda: svc.admin_hotlist(req))

    @router.post("/staff", response_model=StaffOut)
    async def staff(req: StaffCreateRequest) -> object:
        """Create or reset a staff account."""
        return await admin(lambda: svc.admin_staff(req))

    @router.post("/faults", response_model=FaultsOut)
    async def set_fault(spec: FaultSpec) -> FaultsOut:
        """Inject faults into one operation (replaces its previous faults)."""
        if spec.op not in OPERATIONS | BY_KEY_OPERATIONS:
            raise SimError(400, "invalid_request", f"unknown op {spec.op!r}", "未知的业务类型")
        faults.set(spec)
        return FaultsOut(faults=faults.specs())

    @router.get("/faults", response_model=FaultsOut)
    async def list_faults() -> FaultsOut:
        """Faults in force."""
        return FaultsOut(faults=faults.specs())

    @router.delete("/faults", status_code=204)
    async def clear_faults() -> Response:
        """Remove all faults."""
        faults.clear()
        return Response(status_code=204)

    @router.get("/stats", response_model=StatsOut)
    async def stats() -> StatsOut:
        """Committed effects per operation, requests seen and faults injected."""
        effects = await run_in_threadpool(svc.effects)
        return StatsOut(effects=effects, requests=dict(faults.requests),
                        faults_injected=dict(faults.injected))

    return router

