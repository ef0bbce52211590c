"""``/bookings``: registrations."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Path, Query

from central.platform.sim.api.runner import ERRORS, IdempotencyKey, OpRunner
from central.platform.sim.schemas import (
    BookingOut,
    BookingsOut,
    BookRequest,
    CancelOut,
    SlipPrintedOut,
)


def build_router(runner: OpRunner) -> APIRouter:
    """Routes of the bookings resource."""
    router = APIRouter(prefix="/bookings", tags=["bookings"], responses=ERRORS)
    svc = runner.service

    @router.post("", response_model=BookingOut, operation_id="reg_book")
    async def book(req: BookRequest, key: IdempotencyKey = None) -> object:
        """Book one number of a session (``slot_full`` when none is left)."""
        return await runner.run("reg.book", lambda: svc.book(req), key=key,
                                fingerprint=req.model_dump(mode="json"))

    @router.post("/{booking_id}/cancel", response_model=CancelOut, operation_id="reg_cancel")
    async def cancel(
        booking_id: Annotated[str, Path(max_length=32)], key: IdempotencyKey = None
    ) -> object:
        """Cancel a booking; a paid fee is refunded."""
        return await runner.run("reg.cancel", lambda: svc.cancel(booking_id), key=key,
                                fingerprint={"booking_id": booking_id})

    @router.post("/{booking_id}/checkin", response_model=BookingOut, operation_id="reg_checkin")
    async def checkin(
        booking_id: Annotated[str, Path(max_length=32)], key: IdempotencyKey = None
    ) -> object:
        """Check a paid booking of today in (预约取号); repeating it changes nothing."""
        return await runner.run("reg.checkin", lambda: svc.checkin(booking_id), key=key,
                                fingerprint={"booking_id": booking_id})

    @router.post("/{booking_id}/printed", response_model=SlipPrintedOut,
                 operation_id="reg_printed")
    async def printed(
        booking_id: Annotated[str, Path(max_length=32)], key: IdempotencyKey = None
    ) -> object:
        """Record that the booking's slip was printed."""
        return await runner.run("reg.printed", lambda: svc.slip_printed(booking_id), key=key,
                                fingerprint={"booking_id": booking_id})

    @router.get("", response_model=BookingsOut, operation_id="reg_bookings")
    async def bookings(
        patient_id: Annotated[str, Query(min_length=1, max_length=32)],
        date: Annotated[date | None, Query()] = None,
    ) -> object:
        """List a patient's bookings, optionally of one day."""
        return await runner.run("reg.bookings", lambda: svc.bookings(patient_id, date))

    return router
