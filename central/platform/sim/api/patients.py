"""``/patients``: patient identification."""

from __future__ import annotations

from fastapi import APIRouter

from central.platform.sim.api.runner import ERRORS, OpRunner
from central.platform.sim.schemas import IdentifyRequest, PatientOut


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the patients resource."""
    router = APIRouter(prefix="/patients", tags=["patients"], responses=ERRORS)

    @router.post("/identify", response_model=PatientOut, operation_id="patient_identify")
    async def identify(req: IdentifyRequest) -> object:
        """Identify a patient by card number, national ID number or e-health QR text."""
        return await runner.run("patient.identify", lambda: runner.service.identify(req))

    return router
