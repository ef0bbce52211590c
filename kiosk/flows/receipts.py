"""Desk reprint of an earlier receipt (补打凭条) of the identified patient, as a copy.

The list is the patient's own paid payments (``pay.list``); a typed payment number must be
one of them. The daemon prints the copy (rebuilt when the original bytes are gone).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow, text
from kiosk.flows.refund import BEIJING, payment_rows

__all__ = ["ReceiptsFlow"]

_NUMBER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ReceiptsFlow(Flow):
    """补打凭条 (cashier only)."""

    name = "receipts"
    START = "loading"
    BUSY = frozenset({"printing"})
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "error"}),
        "list": frozenset({"list", "printing", "loading"}),
        "printing": frozenset({"done", "list"}),
        "done": frozenset({"loading"}),
        "error": frozenset({"loading"}),
    }

    def __init__(self, *args: Any, tz: ZoneInfo = BEIJING, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.tz = tz

    async def start(self) -> None:
        """The patient's paid payments, newest first."""
        try:
            payments = await self.edge.payments()
        except EdgeError as exc:
            self.fail(exc)
            return
        rows = [p for p in payment_rows(payments, self.tz) if p.get("state") == "approved"]
        self.to("list", payments=rows)

    async def do_reload(self) -> None:
        """Read the list again."""
        self.expect("done", "error", "list")
        self.to("loading")
        await self.start()

    async def do_reprint(self, payment_id: str) -> None:
        """Print a copy of the receipt of ``payment_id`` (one of this patient's)."""
        self.expect("list")
        number = str(payment_id).strip()
        known = {p["payment_id"] for p in self.data.get("payments", [])}
        if not _NUMBER.match(number) or number not in known:
            self.to("list", error=text(
                "not_this_patient", "No paid payment of this patient has that number.",
                "当前患者没有该支付编号的已支付记录。",
                todo="Pick the payment from the list, or read the card of the patient it "
                     "belongs to.", todo_zh="请从列表中选择，或读取该支付所属患者的健康卡。"))
            return
        self.to("printing", payment_id=number)
        try:
            out = await self.edge.reprint_payment(number)
        except EdgeError as exc:
            self.fail(exc, "list")
            return
        if out.get("state") == "printed":
            self.to("done", print=out)
        else:
            self.to("list", error=text(
                "print_failed",
                f"The copy did not print ({out.get('message') or out.get('reason')}).",
                f"副本未打印出来（{out.get('message_zh') or out.get('reason')}）。",
                todo="Fix the printer, then print the copy again.",
                todo_zh="请排除打印机故障后再补打。"))
