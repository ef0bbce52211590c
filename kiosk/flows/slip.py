"""Registration slips: original or copy, and telling the platform that one came out."""

from __future__ import annotations

from typing import Any

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow
from kiosk.flows.payment import new_request_id

__all__ = ["is_copy", "record_printed", "slip_missing"]


def is_copy(booking: dict[str, Any]) -> bool:
    """A slip printed now is a copy (副本) once one was printed or the visit checked in (pure).

    A check-in is made right before its slip prints, so a checked-in booking may have an
    original on paper even when the platform never heard that it came out.
    """
    return bool(booking.get("slip_printed")) or bool(booking.get("checked_in_at"))


def slip_missing(booking: dict[str, Any]) -> bool:
    """Paid, but no slip came out yet (the patient left, or the paper failed) (pure)."""
    return booking.get("status") == "paid" and booking.get("slip_printed") is False


async def record_printed(flow: Flow, booking: dict[str, Any]) -> None:
    """``reg.printed`` after a slip came out; best effort (the slip is in the patient's hand)."""
    booking_id = booking.get("booking_id")
    if not booking_id or booking.get("slip_printed"):
        return
    try:
        await flow.edge.request("reg.printed", {"booking_id": booking_id}, 20, new_request_id())
    except EdgeError:
        return  # the platform keeps listing it as "slip not printed"; nothing worse
    booking["slip_printed"] = True
