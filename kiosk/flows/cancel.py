"""Cancel a registration (退号) before its session starts; the fee goes back the way it came."""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow, text

__all__ = ["CancelFlow", "cancellable"]


def cancellable(bookings: list[dict[str, Any]], today: str, now_hhmm: str | None
                ) -> list[dict[str, Any]]:
    """Bookings from today on that have not started, are not cancelled and not checked in (pure).

    ``reg.bookings`` also lists cancelled bookings; a checked-in visit (取号) is cancelled at
    a staffed counter only.
    """
    out = []
    for b in bookings:
        if b.get("status") not in ("booked", "paid") or b["date"] < today:
            continue
        if b.get("checked_in_at"):
            continue
        if b["date"] == today and now_hhmm is not None and b["start"] <= now_hhmm:
            continue
        out.append(b)
    return out


class CancelFlow(Flow):
    """退号."""

    name = "cancel"
    START = "loading"
    BUSY = frozenset({"cancelling"})
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "none", "error"}),
        "list": frozenset({"confirm"}),
        "confirm": frozenset({"list", "cancelling"}),
        "cancelling": frozenset({"done", "error", "unresolved"}),
        "none": frozenset(),
        "error": frozenset({"loading"}),
        "done": frozenset(),
        "unresolved": frozenset(),
    }

    def __init__(self, *a: Any, now_hhmm: Any = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._now_hhmm = now_hhmm or (lambda: None)

    async def start(self) -> None:
        """Today's and later bookings that can still be cancelled."""
        try:
            res = await self.edge.request("reg.bookings",
                                          {"patient_id": self.ctx.patient["patient_id"]})
        except EdgeError as exc:
            self.fail(exc)
            return
        items = cancellable(res["bookings"], self.ctx.today.isoformat(), self._now_hhmm())
        self.to("list" if items else "none", bookings=items)

    async def do_retry(self) -> None:
        """Load again."""
        self.expect("error")
        self.to("loading")
        await self.start()

    async def do_pick(self, booking_id: str) -> None:
        """Confirm screen: what will be refunded, and where to."""
        self.expect("list")
        b = next((x for x in self.data["bookings"] if x["booking_id"] == booking_id), None)
        if b is not None:
            self.to("confirm", booking=b,
                    refund_fen=b["fee_fen"] if b["status"] == "paid" else 0)

    async def do_back(self) -> None:
        """Back to the list."""
        self.expect("confirm")
        self.to("list")

    async def do_confirm(self) -> None:
        """Cancel at the platform; the refund goes to the original method."""
        self.expect("confirm")
        self.to("cancelling")
        try:
            res = await self.edge.request("reg.cancel",
                                          {"booking_id": self.data["booking"]["booking_id"]}, 30)
        except EdgeError as exc:
            if exc.code == "outcome_unknown":
                self.to("unresolved", error=text(
                    "cancel_unknown", "We could not confirm the cancellation yet. Do not try "
                    "again here; please ask at a staffed counter.",
                    "暂时无法确认退号结果，请勿重复操作，请到人工窗口咨询。"))
                return
            self.fail(exc)
            return
        refund = int(res["refund_fen"])
        balance = res.get("balance_fen")
        if balance is None and refund and res.get("refund_method") in (None, "prepaid"):
            balance = await self._balance_now()
        if balance is not None:
            # The platform refunded the fee: the figure on screen is the platform's new one.
            self.ctx.patient["balance_fen"] = int(balance)
        try:
            # The daemon builds the slip from the booking and the cancellation it received
            # (and the balance it read again just now, when the platform did not say).
            out = await self.edge.print_doc("cancellation_slip", str(res["booking_id"]))
        except EdgeError as exc:
            out = {"state": "failed", "reason": exc.code, "message": exc.message,
                   "message_zh": exc.message_zh}
        self.to("done", refund_fen=refund, balance_fen=balance,
                refund_method=res.get("refund_method"), print=out)

    async def _balance_now(self) -> int | None:
        """The prepaid balance as the platform has it now (a platform that did not say)."""
        try:
            session = await self.edge.identify()
        except EdgeError:
            return None
        value = (session.get("patient") or {}).get("balance_fen")
        return int(value) if value is not None else None
