"""Desk refund: payment number, amount, reason → check the patient's ID → refund → receipt."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import text
from kiosk.flows.paying import PayingFlow, print_states

__all__ = ["RefundFlow", "check_form"]

_PAYMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_form(payment_id: str, amount_fen: int, reason: str) -> dict[str, Any] | None:
    """None when the refund form is complete, else what is wrong (pure)."""
    if not _PAYMENT_ID.match(payment_id or ""):
        return text("bad_payment_id", "Enter the payment number from the receipt.",
                    "请输入凭条上的支付编号。")
    if amount_fen <= 0:
        return text("bad_amount", "Enter the amount to refund.", "请输入退款金额。")
    if not reason.strip():
        return text("no_reason", "Enter the reason for the refund.", "请输入退款原因。")
    return None


class RefundFlow(PayingFlow):
    """退费 (cashier only)."""

    name = "refund"
    START = "form"
    BUSY = frozenset({"refunding", "printing"})
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "form": frozenset({"form", "id_check"}),
        "id_check": frozenset({"form", "refunding"}),
        "refunding": frozenset({"printing", "error"}),
        "error": frozenset({"form"}),
        **print_states(),
    }

    async def do_submit(self, payment_id: str, amount_fen: int, reason: str) -> None:
        """The refund form; next the cashier checks the patient's ID document."""
        self.expect("form")
        problem = check_form(payment_id.strip(), int(amount_fen), reason)
        if problem:
            self.to("form", error=problem)
            return
        self.to("id_check", payment_id=payment_id.strip(), amount_fen=int(amount_fen),
                reason=reason.strip(), name=self.ctx.patient.get("name"),
                id_number=self.ctx.patient.get("id_number"))

    async def do_back(self) -> None:
        """Back to the form."""
        self.expect("id_check", "error")
        self.to("form")

    async def do_id_checked(self) -> None:
        """The cashier has seen the ID document: refund to the original method."""
        self.expect("id_check")
        self.to("refunding")
        d = self.data
        try:
            res = await self.edge.refund(d["payment_id"], d["amount_fen"], d["reason"])
        except EdgeError as exc:
            self.fail(exc)
            return
        self.data["refund"] = res
        await self.print_doc("refund_receipt", {
            "refund_id": res["refund_id"], "payment_id": res["payment_id"],
            "amount_fen": res["amount_fen"], "method": res["method"], "reason": d["reason"]})
