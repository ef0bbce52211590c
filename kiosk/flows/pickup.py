"""Pick up a pre-booked appointment (预约取号): today's bookings → pay if due → check in → slip.

The same list is the way back for "paid but no slip": a paid booking of today whose slip
never came out (the card was pulled, the paper ran out, the session timed out) is shown as
such and prints without any charge; once a slip was printed or the visit checked in, every
further slip is a copy (副本).
"""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import text
from kiosk.flows.paying import PayingFlow, print_states
from kiosk.flows.payment import new_request_id, pay_states
from kiosk.flows.slip import is_copy, record_printed, slip_missing

__all__ = ["PickupFlow", "pickable"]


def pickable(bookings: list[dict[str, Any]], today: str) -> list[dict[str, Any]]:
    """Today's bookings that can be picked up, each marked for the list (pure).

    Cancelled bookings (cancelled here, abandoned, or by phone) are left out; ``copy`` says
    the slip will be a copy, ``slip_missing`` that it was paid but never printed.
    """
    return [dict(b, copy=is_copy(b), slip_missing=slip_missing(b)) for b in bookings
            if b.get("status") in ("booked", "paid") and b.get("date") == today]


def _clean(booking: dict[str, Any]) -> dict[str, Any]:
    """The booking as the platform sent it (without the list's marks)."""
    return {k: v for k, v in booking.items() if k not in ("copy", "slip_missing")}


class PickupFlow(PayingFlow):
    """取号: a booking made by phone/app (or earlier) gets its slip here."""

    name = "pickup"
    START = "loading"
    PURPOSE = "registration"
    BUSY = PayingFlow.BUSY | {"checking_in"}
    LATER = ("Insert your card again and choose 'Pick up' to print it — you will not be "
             "charged again — or ask at a staffed counter.",
             "请重新插卡并选择“预约取号”打印凭条（不会重复收费），或到人工窗口补打。")
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "none", "error"}),
        "list": frozenset({"checking_in", "pay_method"}),
        "none": frozenset(),
        "error": frozenset({"loading"}),
        "checking_in": frozenset({"printing"}),
        **pay_states(after_paid=("checking_in",), back=("list",)),
        **print_states(),
    }

    async def start(self) -> None:
        """Load today's bookings."""
        today = self.ctx.today.isoformat()
        try:
            res = await self.edge.request("reg.bookings", {
                "patient_id": self.ctx.patient["patient_id"], "date": today})
        except EdgeError as exc:
            self.fail(exc)
            return
        items = pickable(res["bookings"], today)
        self.to("list" if items else "none", bookings=items)

    async def do_retry(self) -> None:
        """Load again."""
        self.expect("error")
        self.to("loading")
        await self.start()

    async def do_pick(self, booking_id: str) -> None:
        """Check in and print the slip (paying first if the fee is still due)."""
        self.expect("list")
        b = next((x for x in self.data["bookings"] if x["booking_id"] == booking_id), None)
        if b is None:
            return
        self.data["booking"] = _clean(b)
        if b["status"] == "paid" or b["fee_fen"] == 0:
            await self._issue()
            return
        warning = await self.check_printer()
        self.offer_payment(int(b["fee_fen"]), [b["booking_id"]], warning)

    async def do_back(self) -> None:
        """From the methods back to the list."""
        if self.state == "pay_method":
            self.to("list")
        else:
            await super().do_back()

    async def paid(self, result: dict[str, Any]) -> None:
        """Fee confirmed: check in and print the slip."""
        self.data["booking"] = dict(self.data["booking"], status="paid")
        await self._issue()

    async def _issue(self) -> None:
        """Check the visit in at the platform, then print (a copy if one may exist)."""
        booking = self.data["booking"]
        copy = is_copy(booking)  # decided before this check-in sets checked_in_at
        self.to("checking_in", copy=copy, checkin_error=None)
        if not booking.get("checked_in_at"):
            try:
                res = await self.edge.request("reg.checkin", {"booking_id": booking["booking_id"]},
                                              30, new_request_id())
            except EdgeError as exc:
                # The fee is paid: the slip still prints and the nurse station checks the
                # patient in from it. Say so rather than withhold the slip.
                self.data["checkin_error"] = text(
                    "checkin_pending", "Check-in could not be confirmed "
                    f"({exc.message}); please show this slip at the nurse station.",
                    f"签到未能确认（{exc.message_zh}），请持凭条到分诊台签到。")
            else:
                booking = dict(booking, **{k: v for k, v in res.items() if v is not None})
                self.data["booking"] = booking
        await self.print_doc("registration_slip", str(booking["booking_id"]), copy=copy)

    async def printed_ok(self, out: dict[str, Any]) -> None:
        """The slip came out: the platform records it, so a later slip is a copy."""
        await record_printed(self, self.data["booking"])
