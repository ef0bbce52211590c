"""Taking money, shared by registration, pick-up, bills and top-up.

Rules (docs/architecture.md, "Delivery rules"): the printer is checked before money is
taken; a payment whose outcome is unknown is never retried and never shown as paid — it is
polled with ``pay.status`` for ``confirm_window_s`` while the screen says "payment being
confirmed — do not pay again", then reversed; if even that cannot be settled, the screen
says so and staff resolve it from the dashboard. Every attempt has one idempotency key, made
here, so a retry by the uplink can never charge twice.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow, text

__all__ = [
    "PAY_STATES",
    "Outcome",
    "decide",
    "method_choices",
    "pay_states",
    "printer_gate",
    "settle",
]

Outcome = Literal["approved", "declined", "pending", "reversed"]

#: States every paying flow has; ``pay_states`` wires them into a flow's table.
PAY_STATES = ("pay_method", "scan_code", "paying", "confirming", "declined", "unresolved")

CONFIRMING_TEXT = text("confirming", "Payment being confirmed — do not pay again.",
                       "正在确认支付结果，请勿重复支付")


def decide(result: dict[str, Any]) -> Outcome:
    """What a ``pay.create``/``pay.status`` result means for the screen (pure)."""
    state = result.get("state")
    if state == "approved":
        return "approved"
    if state == "declined":
        return "declined"
    if state == "reversed":
        return "reversed"
    return "pending"  # pending, unknown, or anything new: never "paid"


def method_choices(role: str, balance_fen: int, amount_fen: int, purpose: str
                   ) -> list[dict[str, Any]]:
    """The methods offered for a payment, each with ``ok`` and, if not, why (pure)."""
    out: list[dict[str, Any]] = []
    if purpose != "topup":
        low = balance_fen < amount_fen
        out.append({"method": "prepaid", "ok": not low, "balance_fen": balance_fen,
                    **({"why": "Balance too low", "why_zh": "余额不足"} if low else {})})
    out.append({"method": "code", "ok": True})
    if role == "cashier":
        out.append({"method": "cash", "ok": True})
    return out


def change_due(amount_fen: int, tendered_fen: int) -> int:
    """Cash change; ValueError when the tendered cash does not cover the amount (pure)."""
    if tendered_fen < amount_fen:
        raise ValueError("tendered amount is less than the amount due")
    return tendered_fen - amount_fen


def decline_text(result: dict[str, Any]) -> dict[str, Any]:
    """Why a payment was declined, and what to do, in both languages (pure)."""
    reason = result.get("reason") or ""
    table = {
        "wallet_insufficient_funds": ("Your wallet has insufficient funds.", "钱包余额不足。"),
        "auth_code_expired": ("The payment code expired.", "付款码已过期。"),
        "insufficient_balance": ("Your card balance is too low.", "就诊卡余额不足。"),
        "payment_in_progress": ("An earlier payment for this is still being confirmed; do "
                                "not pay again.", "该单据有正在确认中的支付，请勿重复支付。"),
        "already_paid": ("This is already paid.", "该单据已支付。"),
        "invalid_auth_code": ("That is not a valid payment code.", "付款码无效。"),
        "payment_closed": ("This payment was closed after it could not be confirmed.",
                           "该笔支付因未能确认已关闭。"),
        "reversed_past_deadline": ("The payment could not be confirmed in time and was "
                                   "reversed.", "支付未能及时确认，已撤销。"),
    }
    en, zh = table.get(reason, ("The payment was declined.", "支付未成功。"))
    return text("declined", f"{en} You were not charged.", f"{zh}未扣款。", reason=reason,
                todo="Choose another way to pay, or go to a staffed counter.",
                todo_zh="请换一种支付方式，或到人工窗口办理。")


def pay_states(after_paid: tuple[str, ...], back: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """The payment part of a flow's table: from choosing a method to paid/declined."""
    return {
        "pay_method": frozenset({"pay_method", "scan_code", "paying", "cash_tendered", *back}),
        "cash_tendered": frozenset({"cash_tendered", "paying", "pay_method"}),
        "scan_code": frozenset({"paying", "pay_method", "scan_code"}),
        # scan_code again: the held code had expired; nothing was sent.
        "paying": frozenset({"confirming", "declined", "unresolved", "error", "scan_code",
                             *after_paid}),
        "confirming": frozenset({"confirming", "declined", "unresolved", *after_paid}),
        "declined": frozenset({"pay_method", *back}),
        "unresolved": frozenset(),
    }


async def printer_gate(flow: Flow) -> dict[str, Any] | None:
    """None when the printer can print now, else the problem to say before payment."""
    try:
        st = await flow.edge.printer_status()
    except EdgeError as exc:
        return text("printer_unknown", exc.message, exc.message_zh)
    if st.get("ready"):
        return None
    return text(st.get("problem") or "printer_error", st.get("message", "Printer fault."),
                st.get("message_zh", "打印机故障。"),
                todo="You can still pay; the receipt can be printed at a staffed counter.",
                todo_zh="仍可支付，凭条可到人工窗口补打。")


async def settle(flow: Flow, *, purpose: str, refs: list[str], amount_fen: int, method: str,
                 scan_id: str | None = None,
                 tendered_fen: int | None = None) -> dict[str, Any] | None:
    """Pay and resolve; the approved result, or None with the flow moved to a final state.

    ``tendered_fen``: the cash counted at a desk, which the daemon prints as 实收/找零.

    The flow is in ``paying`` on entry. Declined → ``declined``; an outcome that cannot be
    learnt in time → ``unresolved`` (never shown as paid, never paid again).
    """
    request_id = uuid.uuid4().hex
    # The merchant order number the desk and central look the payment up by: on screen
    # whenever the outcome is not known, since a payment id may never have come back.
    flow.data["order_no"] = order_number(request_id)
    t = flow.timing
    cash: dict[str, Any] = {} if tendered_fen is None else {"tendered_fen": tendered_fen}
    try:
        result = await flow.edge.pay(request_id=request_id, purpose=purpose, refs=refs,
                                     amount_fen=amount_fen, method=method, scan_id=scan_id,
                                     timeout_s=t.pay_timeout_s, **cash)
    except EdgeError as exc:
        if exc.code == "outcome_unknown":
            flow.to("confirming", error=CONFIRMING_TEXT, payment_id=None)
            found = await _await_create(flow, request_id)
            if found is None:
                return None
            result = found
        elif exc.code in ("rejected", "insufficient_balance") or exc.status == 422:
            flow.to("declined", error={**decline_text({"reason": exc.reason}),
                                       "detail": exc.message_zh})
            return None
        elif exc.code == "scan_code_again":
            flow.to("scan_code", error=exc.as_dict())
            return None
        else:
            flow.fail(exc)
            return None
    return await _resolve(flow, result)


async def _await_create(flow: Flow, request_id: str) -> dict[str, Any] | None:
    """pay.create timed out: ask for its stored outcome by id (the request is not re-sent)."""
    t = flow.timing
    deadline = flow.clock() + t.confirm_window_s
    while True:
        try:
            return dict(await flow.edge.request_result(request_id, wait_s=min(
                t.poll_interval_s, 10)))
        except EdgeError as exc:
            if exc.code == "request_expired":
                # Central never acted on it: definitely not charged.
                flow.to("declined", error=text(
                    "not_sent", "The payment did not go through. You were not charged.",
                    "支付未完成，未扣款。", todo="You may try again.", todo_zh="您可以重新支付。"))
                return None
            if exc.code not in ("outcome_unknown", "platform_unavailable", "edge_timeout"):
                flow.fail(exc, "unresolved")
                return None
        if flow.clock() >= deadline:
            flow.to("unresolved", error=_unresolved(None))
            return None
        await flow.sleep(t.poll_interval_s)


async def _resolve(flow: Flow, result: dict[str, Any]) -> dict[str, Any] | None:
    t = flow.timing
    payment_id = result.get("payment_id")
    deadline = flow.clock() + t.confirm_window_s
    while True:
        outcome = decide(result)
        if outcome == "approved":
            return result
        if outcome in ("declined", "reversed"):
            flow.to("declined", error=decline_text(result), payment_id=payment_id)
            return None
        flow.to("confirming", error=CONFIRMING_TEXT, payment_id=payment_id)
        if flow.clock() >= deadline:
            return await _reverse(flow, str(payment_id))
        await flow.sleep(t.poll_interval_s)
        try:
            result = await flow.edge.pay_status(str(payment_id))
        except EdgeError:
            continue  # keep saying "being confirmed"; the deadline still holds


async def _reverse(flow: Flow, payment_id: str) -> dict[str, Any] | None:
    """The wallet never confirmed in time: cancel the charge (or learn it went through)."""
    try:
        result = await flow.edge.pay_reverse(payment_id)
    except EdgeError:
        flow.to("unresolved", error=_unresolved(payment_id))
        return None
    if decide(result) == "approved":  # settled meanwhile and not reversible: it is paid
        return result
    if decide(result) == "reversed":
        flow.to("declined", error=text(
            "not_confirmed", "The payment was not confirmed in time and was cancelled. "
            "You were not charged.", "支付未在规定时间内确认，已撤销，未扣款。",
            todo="You may pay again.", todo_zh="您可以重新支付。"), payment_id=payment_id)
        return None
    flow.to("unresolved", error=_unresolved(payment_id))
    return None


def _unresolved(payment_id: str | None) -> dict[str, Any]:
    return text("unresolved", "We could not confirm this payment yet. Do not pay again: "
                "staff will check it and contact you.",
                "暂时无法确认支付结果。请勿重复支付，工作人员将核实后联系您。",
                payment_id=payment_id,
                todo="Please take your card and go to a staffed counter with this screen's "
                     "payment number.",
                todo_zh="请取卡并到人工窗口出示本页支付编号。")


def order_number(request_id: str) -> str:
    """A request id as people read it out: upper case, in groups of four (pure)."""
    raw = request_id.upper()
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4))


def new_request_id() -> str:
    """An idempotency key for one payment attempt."""
    return uuid.uuid4().hex
