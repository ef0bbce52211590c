"""``/reports``: lab reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from central.platform.sim.api.runner import ERRORS, IdempotencyKey, OpRunner
from central.platform.sim.schemas import PrintedOut, ReportOut, ReportsOut

ReportNo = Annotated[str, Path(max_length=40)]


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the reports resource."""
    router = APIRouter(prefix="/reports", tags=["reports"], responses=ERRORS)
    svc = runner.service

    @router.get("", response_model=ReportsOut, operation_id="report_list")
    async def reports(
        patient_id: Annotated[str | None, Query(max_length=32)] = None,
        specimen_barcode: Annotated[str | None, Query(max_length=40)] = None,
    ) -> object:
        """List reports by patient or by the specimen barcode on the tube/slip."""
        return await runner.run("report.list",
                                lambda: svc.report_list(patient_id, specimen_barcode))

    @router.get("/{report_no}", response_model=ReportOut, operation_id="report_fetch")
    async def fetch(report_no: ReportNo) -> object:
        """The full report with items, flags and reference ranges."""
        return await runner.run("report.fetch", lambda: svc.report_fetch(report_no))

    @router.post("/{report_no}/printed", response_model=PrintedOut,
                 operation_id="report_printed")
    async def printed(report_no: ReportNo, key: IdempotencyKey = None) -> object:
        """Record that the report was printed."""
        return await runner.run("report.printed", lambda: svc.report_printed(report_no),
                                key=key, fingerprint={"report_no": report_no})

    return router
