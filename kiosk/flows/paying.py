"""A flow that takes money and then prints: the shared driver of the paying flows."""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow, text
from kiosk.flows.payment import change_due, method_choices, printer_gate, settle

__all__ = ["PayingFlow", "print_states"]


def print_states(done: str = "done") -> dict[str, frozenset[str]]:
    """Printing after a confirmed outcome; a failed print offers one reprint, marked copy."""
    return {
        "printing": frozenset({done, "print_failed"}),
        "print_failed": frozenset({"printing"}),
        done: frozenset(),
    }


class PayingFlow(Flow):
    """Choose a method → (scan a code | count cash) → pay → confirm → print."""

    PURPOSE: ClassVar[str] = ""
    BUSY = frozenset({"paying", "confirming", "printing", "booking"})
    #: What to do when the card was taken out before the document could print.
    LATER: ClassVar[tuple[str, str]] = (
        "Ask at a staffed counter for a copy — you will not be charged again.",
        "请到人工窗口补打（不会重复收费）。")

    def offer_payment(self, amount_fen: int, refs: list[str], warning: dict[str, Any] | None
                      ) -> None:
        """Show the methods for ``amount_fen`` (with the printer warning, if any)."""
        balance = int(self.ctx.patient.get("balance_fen", 0))
        self.to("pay_method", amount_fen=amount_fen, refs=refs, printer_warning=warning,
                methods=method_choices(self.ctx.role, balance, amount_fen, self.PURPOSE))

    async def check_printer(self) -> dict[str, Any] | None:
        """Ask the printer before any money is taken."""
        return await printer_gate(self)

    async def do_method(self, method: str) -> None:
        """The patient picked a method."""
        self.expect("pay_method", "declined")
        if self.state == "declined":
            self.to("pay_method")
        choice = next((m for m in self.data.get("methods", []) if m["method"] == method), None)
        if choice is None or not choice["ok"]:
            why = (choice or {}).get("why", "Not available here")
            why_zh = (choice or {}).get("why_zh", "此处不可用")
            self.to("pay_method", error=text("method_refused", why, why_zh))
            return
        if method == "code":
            self.to("scan_code", scan=None)
        elif method == "cash":
            self.to("cash_tendered", tendered_fen=None, change_fen=None)
        else:
            await self._pay("prepaid", None)

    async def do_back(self) -> None:
        """Back from scanning/cash/declined to the method list."""
        self.expect("scan_code", "cash_tendered", "declined")
        self.to("pay_method")

    async def do_tendered(self, tendered_fen: int) -> None:
        """Cashier: the cash handed over; the change is computed, then the cash is booked."""
        self.expect("cash_tendered")
        try:
            change = change_due(int(self.data["amount_fen"]), int(tendered_fen))
        except (ValueError, TypeError):
            self.to("cash_tendered", error=text(
                "not_enough_cash", "The cash tendered is less than the amount due.",
                "实收金额不足应收金额。"))
            return
        self.data.update(tendered_fen=int(tendered_fen), change_fen=change)
        await self._pay("cash", None)

    async def on_scan(self, scan: dict[str, Any]) -> bool:
        """A payment code shown while waiting for one pays at once (by its scan id)."""
        if self.state != "scan_code" or scan.get("kind") != "payment_code":
            return False
        self.data["scan"] = {"wallet": scan["wallet"], "masked": scan["masked"]}
        await self._pay("code", scan["scan_id"])
        return True

    async def _pay(self, method: str, scan_id: str | None) -> None:
        self.to("paying", method=method)
        tendered = self.data.get("tendered_fen") if method == "cash" else None
        result = await settle(self, purpose=self.PURPOSE, refs=list(self.data["refs"]),
                              amount_fen=int(self.data["amount_fen"]), method=method,
                              scan_id=scan_id, tendered_fen=tendered)
        if result is not None:
            self.data["payment"] = result
            if result.get("balance_fen") is not None and self.PURPOSE != "topup":
                self.ctx.patient["balance_fen"] = result["balance_fen"]
            await self.paid(result)

    async def paid(self, result: dict[str, Any]) -> None:
        """Money confirmed: print the flow's document (subclasses)."""
        raise NotImplementedError

    # -- printing ------------------------------------------------------------------------

    async def print_doc(self, kind: str, ref: str, *, copy: bool = False) -> None:
        """Print after a confirmed outcome; never undoes it when the paper fails.

        Only the kind and the reference go to the daemon, which builds the document from
        the platform's replies it holds (cash tendered and change included).
        """
        self.to("printing")
        try:
            out = await self.edge.print_doc(kind, ref, copy=copy)
        except EdgeError as exc:
            out = {"state": "failed", "reason": exc.code, "job_id": None,
                   "message": exc.message, "message_zh": exc.message_zh}
        await self._after_print(out)

    async def printed_ok(self, out: dict[str, Any]) -> None:
        """The document came out (subclasses tell the platform); must not raise."""

    async def _after_print(self, out: dict[str, Any]) -> None:
        if out.get("state") == "printed":
            await self.printed_ok(out)
        self._printed(out)

    def _printed(self, out: dict[str, Any]) -> None:
        if out.get("state") == "printed":
            self.to("done", print=out)
        elif self.card_gone:
            # The daemon wiped the card session, so nothing personal can print now.
            en, zh = self.LATER
            self.to("print_failed", print=dict(out, job_id=None), error=text(
                "slip_later", "Done — but your card was taken out, so nothing could be "
                "printed.", "已办理成功，但卡已取出，凭条未能打印。", todo=en, todo_zh=zh))
        else:
            self.to("print_failed", print=out, error=text(
                "print_failed",
                f"Done, but the paper did not print ({out.get('message') or out.get('reason')}).",
                f"已办理成功，但凭条打印失败（{out.get('message_zh') or out.get('reason')}）。",
                todo="Tap 'Reprint' to print it — you will not be charged again — or ask at a "
                     "staffed counter.",
                todo_zh="请点击“补打凭条”（不会重复收费），或到人工窗口补打。"))

    async def do_reprint(self) -> None:
        """Paid but no paper: print the same document again, marked as a copy; no charge."""
        self.expect("print_failed")
        job_id = (self.data.get("print") or {}).get("job_id")
        self.to("printing")
        try:
            out = await self.edge.reprint(job_id) if job_id else {"state": "failed"}
        except EdgeError as exc:
            out = {"state": "failed", "reason": exc.code, "job_id": job_id,
                   "message": exc.message, "message_zh": exc.message_zh}
        if out.get("state") != "printed" and job_id:
            out.setdefault("job_id", job_id)
        await self._after_print(out)
