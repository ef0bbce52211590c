"""Top up the prepaid account: amount → payment code (or cash at a desk) → receipt."""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.flows.base import text
from kiosk.flows.paying import PayingFlow, print_states
from kiosk.flows.payment import pay_states

__all__ = ["AMOUNTS_FEN", "TopupFlow", "check_amount"]

AMOUNTS_FEN = (10_000, 20_000, 50_000, 100_000)
MAX_TOPUP_FEN = 500_000  # the platform's single top-up limit (¥5,000)


def check_amount(amount_fen: int) -> dict[str, Any] | None:
    """None when the amount can be topped up, else why not (pure)."""
    if amount_fen < 100:
        return text("amount_too_small", "The minimum top-up is ¥1.", "最低充值 1 元。")
    if amount_fen > MAX_TOPUP_FEN:
        return text("amount_too_large", "The maximum single top-up is ¥5,000.",
                    "单笔充值上限 5000 元。")
    return None


class TopupFlow(PayingFlow):
    """预交金充值."""

    name = "topup"
    START = "amount"
    PURPOSE = "topup"
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "amount": frozenset({"amount", "pay_method"}),
        **pay_states(after_paid=("printing",), back=("amount",)),
        "error": frozenset({"amount"}),
        **print_states(),
    }

    async def start(self) -> None:
        """Offer the preset amounts."""
        self.data["amounts"] = list(AMOUNTS_FEN)

    async def do_amount(self, amount_fen: int) -> None:
        """An amount was chosen (preset or typed at a desk)."""
        self.expect("amount")
        problem = check_amount(int(amount_fen))
        if problem:
            self.to("amount", error=problem)
            return
        warning = await self.check_printer()
        self.offer_payment(int(amount_fen), [], warning)

    async def do_back(self) -> None:
        """Back to the amounts."""
        if self.state == "pay_method":
            self.to("amount")
        else:
            await super().do_back()

    async def paid(self, result: dict[str, Any]) -> None:
        """Money in: the new balance goes on screen and on the receipt."""
        if result.get("balance_fen") is not None:
            self.ctx.patient["balance_fen"] = result["balance_fen"]
        await self.print_doc("topup_receipt", str(result["payment_id"]))
