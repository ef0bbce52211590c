"""Desk refund: the identified patient's payments → pick one → amount, reason → ID check →
refund to the original method → receipt.

The cashier never types a payment number: the list comes from ``pay.list`` for the patient
whose card is in the reader, so a refund is always of that patient's own payment (central
refuses anything else with ``forbidden``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from kiosk.edge_client import EdgeError
from kiosk.flows.base import advice, text
from kiosk.flows.paying import PayingFlow, print_states

__all__ = ["RefundFlow", "check_form", "parse_yuan", "payment_rows"]

BEIJING = ZoneInfo("Asia/Shanghai")
_YUAN = re.compile(r"^\s*¥?\s*([0-9]{1,7})(?:\.([0-9]{1,2}))?\s*$")


def parse_yuan(typed: str) -> int | None:
    """Typed yuan ("12", "12.5", "¥12.50") as fen; None when it is not an amount (pure)."""
    m = _YUAN.match(str(typed or ""))
    if m is None:
        return None
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def payment_rows(payments: Iterable[dict[str, Any]], tz: ZoneInfo = BEIJING
                 ) -> list[dict[str, Any]]:
    """The platform's payments for the screen: local date/time as ``when`` (pure)."""
    out = []
    for p in payments:
        at = datetime.fromisoformat(str(p["created_at"]).replace("Z", "+00:00"))
        out.append({**p, "when": at.astimezone(tz).strftime("%Y-%m-%d %H:%M")})
    return out


def check_form(payment: dict[str, Any], amount_text: str, reason: str
               ) -> tuple[int | None, dict[str, Any] | None]:
    """(amount in fen, None) when the refund form is complete, else (None, what is wrong)."""
    fen = parse_yuan(amount_text)
    if fen is None:
        return None, text("bad_amount", "Enter the amount to refund as a number, e.g. 12.50.",
                          "请输入正确的退款金额（数字，如 12.50）。")
    if fen <= 0:
        return None, text("zero_amount", "The amount to refund must be more than ¥0.",
                          "退款金额须大于 0 元。")
    left = int(payment.get("refundable_fen", 0))
    if fen > left:
        return None, text("too_much", f"At most ¥{left / 100:.2f} can still be refunded.",
                          f"退款金额超过可退金额（¥{left / 100:.2f}）。")
    if not reason.strip():
        return None, text("no_reason", "Enter the reason for the refund.", "请输入退费原因。")
    return fen, None


class RefundFlow(PayingFlow):
    """退费 (cashier only)."""

    name = "refund"
    START = "loading"
    BUSY = frozenset({"refunding", "printing"})
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "error"}),
        "list": frozenset({"form", "loading"}),
        "form": frozenset({"form", "id_check", "loading"}),
        "id_check": frozenset({"form", "refunding"}),
        "refunding": frozenset({"printing", "error"}),
        "error": frozenset({"form", "loading"}),
        **print_states(),
    }

    def __init__(self, *args: Any, tz: ZoneInfo = BEIJING, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tz = tz

    async def start(self) -> None:
        """List the patient's payments that can still be refunded."""
        try:
            payments = await self.edge.payments()
        except EdgeError as exc:
            self.fail(exc)
            return
        rows = [p for p in payment_rows(payments, self.tz) if p.get("refundable_fen", 0) > 0]
        self.to("list", payments=rows)

    async def do_reload(self) -> None:
        """Back to the list, read afresh (after an error, or from the form)."""
        self.expect("list", "form", "error")
        self.to("loading", payment=None)
        await self.start()

    async def do_pick(self, payment_id: str) -> None:
        """The cashier chose a payment: the form, with the refundable amount filled in."""
        self.expect("list")
        chosen = next((p for p in self.data.get("payments", [])
                       if p["payment_id"] == payment_id), None)
        if chosen is None:
            return
        left = int(chosen["refundable_fen"])
        self.to("form", payment=chosen, amount_text=f"{left // 100}.{left % 100:02d}",
                reason="")

    async def do_submit(self, amount: str, reason: str) -> None:
        """The refund form; amount errors are shown here, before the ID check."""
        self.expect("form")
        fen, problem = check_form(self.data["payment"], str(amount), str(reason))
        if problem is not None or fen is None:
            self.to("form", error=problem, amount_text=str(amount), reason=str(reason))
            return
        self.to("id_check", payment_id=self.data["payment"]["payment_id"], amount_fen=fen,
                amount_text=str(amount), reason=reason.strip(),
                name=self.ctx.patient.get("name"), id_number=self.ctx.patient.get("id_number"))

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
            if exc.reason == "forbidden" or exc.code == "not_this_patient":
                # Central: not a payment of the patient whose card is in the reader.
                self.to("error", error=text(
                    "not_this_patient",
                    "This payment belongs to another patient than the one whose card was "
                    "read: nothing was refunded.",
                    "该笔支付不属于当前读卡的患者，未退费。",
                    **advice(exc, self.ctx.role)))
                return
            self.fail(exc)
            return
        self.data["refund"] = res
        await self.print_doc("refund_receipt", str(res["refund_id"]))
