"""Registration: department → day → doctor/slot → confirm fee → pay → slip → take your card."""

from __future__ import annotations

import contextlib
from datetime import date, timedelta
from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import text
from kiosk.flows.paying import PayingFlow, print_states
from kiosk.flows.payment import new_request_id, pay_states
from kiosk.flows.slip import record_printed

__all__ = ["RegisterFlow", "booking_days", "fee_due", "slot_view"]

_BACK = ("slots", "depts")


def booking_days(today: date, ahead: int = 7) -> list[str]:
    """Today and the next ``ahead`` days: same-day registration or booking ahead (pure)."""
    return [(today + timedelta(days=i)).isoformat() for i in range(ahead + 1)]


def slot_view(slot: dict[str, Any], now_hhmm: str | None) -> dict[str, Any]:
    """A slot with whether it can still be taken and why not (pure).

    ``now_hhmm`` is the hospital's time of day when the slot is today, else None.
    """
    closed = now_hhmm is not None and slot["closes_at"] <= now_hhmm
    full = slot["remaining"] <= 0
    out = dict(slot, open=not closed and not full)
    if closed:
        out.update(why="Closed", why_zh="已停止挂号")
    elif full:
        out.update(why="Full", why_zh="已约满")
    return out


def fee_due(slot: dict[str, Any], insured: bool) -> dict[str, Any]:
    """What the patient pays for ``slot``, and insurance's part (pure).

    The platform quotes an insured patient's share per slot (``insured_fee_fen``); without
    a quote the full fee is shown and the booking's own fee decides what is charged.
    """
    fee = int(slot["fee_fen"])
    share = slot.get("insured_fee_fen")
    if not insured or share is None:
        return {"due_fen": fee, "insurance_fen": 0}
    return {"due_fen": int(share), "insurance_fen": fee - int(share)}


#: States in which an unpaid booking of this flow waits for the patient's money.
_UNPAID = frozenset({"pay_method", "scan_code", "cash_tendered", "declined"})


class RegisterFlow(PayingFlow):
    """Registration for today or a later day, self-pay or insured."""

    name = "register"
    START = "loading_depts"
    PURPOSE = "registration"
    # Waiting to learn whether a booking exists is kept to its end too: a card pulled then
    # must not leave an unknown booking holding the slot (it is cancelled once known).
    BUSY = PayingFlow.BUSY | {"booking_unknown"}
    LATER = ("Insert your card again and choose 'Pick up' to print it — you will not be "
             "charged again — or ask at a staffed counter.",
             "请重新插卡并选择“预约取号”打印凭条（不会重复收费），或到人工窗口补打。")
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading_depts": frozenset({"depts", "error"}),
        "depts": frozenset({"loading_slots"}),
        "loading_slots": frozenset({"slots", "error"}),
        "slots": frozenset({"loading_slots", "confirm", "depts"}),
        "confirm": frozenset({"confirm", "booking", "slots", "printer_warning"}),
        "printer_warning": frozenset({"booking", "slots"}),
        "booking": frozenset({"pay_method", "printing", "error", "booking_unknown"}),
        "booking_unknown": frozenset({"pay_method", "printing", "unresolved", "error"}),
        "error": frozenset({"loading_depts", "depts", "slots", "confirm", "loading_slots"}),
        **pay_states(after_paid=("printing",), back=("cancelled",)),
        "cancelled": frozenset(),
        **print_states(),
    }

    def __init__(self, *a: Any, now_hhmm: Any = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._now_hhmm = now_hhmm or (lambda: None)

    async def start(self) -> None:
        """Load the departments."""
        try:
            depts = (await self.edge.request("reg.departments", {}))["departments"]
        except EdgeError as exc:
            self.fail(exc)
            return
        self.to("depts", departments=depts, days=booking_days(self.ctx.today))

    async def do_retry(self) -> None:
        """Try the failed step again."""
        self.expect("error")
        if "departments" not in self.data:
            self.to("loading_depts")
            await self.start()
        elif "dept" in self.data:
            await self._load(self.data["day"])
        else:
            self.to("depts")

    async def do_dept(self, code: str) -> None:
        """A department was chosen: today's slots."""
        self.expect("depts")
        dept = next((d for d in self.data["departments"] if d["code"] == code), None)
        if dept is None:
            return
        self.data["dept"] = dept
        await self._load(self.data["days"][0])

    async def do_day(self, day: str) -> None:
        """Another day."""
        self.expect("slots")
        if day in self.data["days"]:
            await self._load(day)

    async def do_back(self) -> None:
        """One screen back (or, in payment, to the methods)."""
        if self.state in ("scan_code", "cash_tendered", "declined"):
            await super().do_back()
        elif self.state == "error" and "departments" not in self.data:
            # Nothing to go back to yet: back to the department list means loading it.
            self.to("loading_depts")
            await self.start()
        elif self.state in ("slots", "error"):
            self.to("depts")
        elif self.state in ("confirm", "printer_warning"):
            self.to("slots")
        else:
            self.expect("slots", "confirm", "printer_warning")

    async def _load(self, day: str) -> None:
        self.to("loading_slots", day=day, slots=[])
        try:
            slots = (await self.edge.request(
                "reg.slots", {"dept_code": self.data["dept"]["code"], "date": day}))["slots"]
        except EdgeError as exc:
            self.fail(exc)
            return
        now = self._now_hhmm() if day == self.ctx.today.isoformat() else None
        self.to("slots", slots=[slot_view(s, now) for s in slots])

    async def do_slot(self, slot_id: str) -> None:
        """A slot was chosen: confirm screen with fee, self-pay or insured."""
        self.expect("slots")
        slot = next((s for s in self.data["slots"] if s["slot_id"] == slot_id), None)
        if slot is None or not slot["open"]:
            return
        insured = bool(self.ctx.patient.get("insured"))
        self.to("confirm", slot=slot, insured=insured, can_insure=insured,
                **fee_due(slot, insured))

    async def do_insured(self, insured: bool) -> None:
        """Toggle self-pay / insured (only for insured patients); the fee follows."""
        self.expect("confirm")
        on = bool(insured) and self.data["can_insure"]
        self.to("confirm", insured=on, **fee_due(self.data["slot"], on))

    async def do_confirm(self, anyway: bool = False) -> None:
        """Book the slot (after checking the printer), then take payment."""
        self.expect("confirm", "printer_warning")
        warning = self.error if self.state == "printer_warning" else None
        if self.state == "confirm":
            warning = await self.check_printer()
            if warning is not None and not anyway:
                self.to("printer_warning", error=warning)
                return
        rid = new_request_id()
        self.to("booking", printer_warning=warning)
        body = {"patient_id": self.ctx.patient["patient_id"],
                "slot_id": self.data["slot"]["slot_id"], "pay_method": "later",
                "insured": bool(self.data["insured"])}
        try:
            booking = await self.edge.request("reg.book", body, 30, rid)
        except EdgeError as exc:
            if exc.code != "outcome_unknown":
                self.fail(exc)
                return
            self.to("booking_unknown", error=text(
                "booking_unknown", "Confirming your registration — do not register again.",
                "正在确认挂号结果，请勿重复挂号"))
            booking = await self._await_booking(rid)
            if booking is None:
                return
        await self.booked(booking, warning)

    async def _await_booking(self, rid: str) -> dict[str, Any] | None:
        deadline = self.clock() + self.timing.confirm_window_s
        while self.clock() < deadline:
            try:
                return dict(await self.edge.request_result(rid, wait_s=2))
            except EdgeError as exc:
                if exc.code not in ("outcome_unknown", "platform_unavailable", "edge_timeout"):
                    self.fail(exc)
                    return None
            await self.sleep(self.timing.poll_interval_s)
        self.to("unresolved", error=text(
            "booking_unresolved", "We could not confirm the registration yet. Do not register "
            "again; please ask at a staffed counter.",
            "暂时无法确认挂号结果。请勿重复挂号，请到人工窗口咨询。"))
        return None

    async def booked(self, booking: dict[str, Any], warning: dict[str, Any] | None) -> None:
        """A booking exists: pay its fee unless nothing is due."""
        self.data["booking"] = booking
        if booking["status"] == "paid" or booking["fee_fen"] == 0:
            await self.print_doc("registration_slip", str(booking["booking_id"]))
            return
        self.offer_payment(int(booking["fee_fen"]), [booking["booking_id"]], warning)

    async def do_abandon(self) -> None:
        """Give up paying: the unpaid booking is cancelled so the slot is free again."""
        self.expect("pay_method", "declined")
        booking = self.data.get("booking")
        if booking:
            # An unpaid booking that cannot be cancelled now lapses; nothing was charged.
            with contextlib.suppress(EdgeError):
                await self.edge.request("reg.cancel", {"booking_id": booking["booking_id"]}, 30)
        self.to("cancelled")

    async def paid(self, result: dict[str, Any]) -> None:
        """Fee confirmed: print the slip."""
        booking = dict(self.data["booking"], status="paid")
        self.data["booking"] = booking
        await self.print_doc("registration_slip", str(booking["booking_id"]))

    async def printed_ok(self, out: dict[str, Any]) -> None:
        """The slip came out: the platform records it (a later pick-up prints a copy)."""
        await record_printed(self, self.data["booking"])

    async def on_abandon(self) -> None:
        """Card out or timeout while the fee was still due: free the slot (best effort)."""
        booking = self.data.get("booking")
        if self.state not in _UNPAID or not booking or booking.get("status") != "booked":
            return
        if (self.error or {}).get("reason") == "payment_in_progress":
            return  # an earlier payment may still land on this booking: keep it
        # Nothing was charged; a cancel that fails leaves an unpaid booking that lapses.
        with contextlib.suppress(EdgeError):
            await self.edge.request("reg.cancel", {"booking_id": booking["booking_id"]}, 30)
