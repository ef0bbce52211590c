"""Pick up a pre-booked appointment: today's bookings → pay if still due → slip."""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.paying import PayingFlow, print_states
from kiosk.flows.payment import pay_states

__all__ = ["PickupFlow", "pickable"]


def pickable(bookings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Today's bookings that can be picked up: not cancelled (pure)."""
    return [b for b in bookings if b.get("status") in ("booked", "paid")]


class PickupFlow(PayingFlow):
    """取号: a booking made by phone/app (or earlier) gets its slip here."""

    name = "pickup"
    START = "loading"
    PURPOSE = "registration"
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "none", "error"}),
        "list": frozenset({"printing", "pay_method"}),
        "none": frozenset(),
        "error": frozenset({"loading"}),
        **pay_states(after_paid=("printing",), back=("list",)),
        **print_states(),
    }

    async def start(self) -> None:
        """Load today's bookings."""
        try:
            res = await self.edge.request("reg.bookings", {
                "patient_id": self.ctx.patient["patient_id"],
                "date": self.ctx.today.isoformat()})
        except EdgeError as exc:
            self.fail(exc)
            return
        items = pickable(res["bookings"])
        self.to("list" if items else "none", bookings=items)

    async def do_retry(self) -> None:
        """Load again."""
        self.expect("error")
        self.to("loading")
        await self.start()

    async def do_pick(self, booking_id: str) -> None:
        """Print the slip (paying first if the fee is still due)."""
        self.expect("list")
        b = next((x for x in self.data["bookings"] if x["booking_id"] == booking_id), None)
        if b is None:
            return
        self.data["booking"] = b
        if b["status"] == "paid" or b["fee_fen"] == 0:
            await self.print_doc("registration_slip", b)
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
        """Fee confirmed: print the slip."""
        booking = dict(self.data["booking"], status="paid")
        self.data["booking"] = booking
        await self.print_doc("registration_slip", booking)
