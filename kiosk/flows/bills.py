"""Pay outstanding bills: list (all payable ones selected) → confirm → pay → receipt."""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import text
from kiosk.flows.paying import PayingFlow, print_states
from kiosk.flows.payment import pay_states

__all__ = ["BillsFlow", "default_selection", "selection_total"]


def default_selection(bills: list[dict[str, Any]]) -> list[str]:
    """Every bill payable here is selected to begin with (pure)."""
    return [b["bill_id"] for b in bills if b.get("payable_here")]


def selection_total(bills: list[dict[str, Any]], selected: list[str]) -> int:
    """Sum of the selected bills in fen (pure)."""
    chosen = set(selected)
    return sum(int(b["total_fen"]) for b in bills if b["bill_id"] in chosen)


class BillsFlow(PayingFlow):
    """缴费: settle bills by balance, payment code or (at a desk) cash."""

    name = "bills"
    START = "loading"
    PURPOSE = "bills"
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "loading": frozenset({"list", "none", "error"}),
        "list": frozenset({"list", "confirm"}),
        "confirm": frozenset({"list", "pay_method"}),
        "none": frozenset(),
        "error": frozenset({"loading"}),
        **pay_states(after_paid=("printing",), back=("list",)),
        **print_states(),
    }

    async def start(self) -> None:
        """Load the unpaid bills."""
        try:
            bills = (await self.edge.request(
                "bill.list", {"patient_id": self.ctx.patient["patient_id"]}))["bills"]
        except EdgeError as exc:
            self.fail(exc)
            return
        if not bills:
            self.to("none", bills=[])
            return
        sel = default_selection(bills)
        self.to("list", bills=bills, selected=sel, total_fen=selection_total(bills, sel))

    async def do_retry(self) -> None:
        """Load again."""
        self.expect("error")
        self.to("loading")
        await self.start()

    async def do_toggle(self, bill_id: str) -> None:
        """Select or unselect one bill (only those payable here)."""
        self.expect("list")
        bills = self.data["bills"]
        bill = next((b for b in bills if b["bill_id"] == bill_id), None)
        if bill is None:
            return
        if not bill["payable_here"] and self.ctx.role != "cashier":
            self.to("list", error=text(
                "not_payable_here", "This bill cannot be paid at a kiosk (amount over the "
                "self-service limit).", "该账单金额超过自助机限额，不能在自助机缴费。",
                todo="Please pay it at a staffed counter.", todo_zh="请到人工收费窗口缴费。"))
            return
        sel = list(self.data["selected"])
        sel.remove(bill_id) if bill_id in sel else sel.append(bill_id)
        self.to("list", selected=sel, total_fen=selection_total(bills, sel))

    async def do_next(self) -> None:
        """Go to confirm with the selection."""
        self.expect("list")
        if not self.data["selected"]:
            self.to("list", error=text("nothing_selected", "Select at least one bill.",
                                       "请至少选择一张账单。"))
            return
        self.to("confirm")

    async def do_confirm(self) -> None:
        """Confirmed: check the printer, then offer the methods."""
        self.expect("confirm")
        warning = await self.check_printer()
        self.offer_payment(int(self.data["total_fen"]), list(self.data["selected"]), warning)

    async def do_back(self) -> None:
        """One screen back."""
        if self.state in ("confirm", "pay_method"):
            self.to("list")
        else:
            await super().do_back()

    async def paid(self, result: dict[str, Any]) -> None:
        """Bills settled: the daemon prints the receipt from the payment and its bills."""
        await self.print_doc("payment_receipt", str(result["payment_id"]))
