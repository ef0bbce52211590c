"""What every flow shares: an explicit state table, the screen model and error texts.

A flow is a state machine. ``TRANSITIONS`` lists, for each state, the states it may move to;
``to()`` refuses anything else (``IllegalTransition``), so a bug can never show "paid" from
"paying" without passing "confirming"/"printing". The decisions (what to show for a payment
result, whether the balance covers a bill, what change to give) are pure functions in the
flow modules; the ``do_*`` methods are the async driver, calling an injected edge client.
The page only renders ``view()`` and sends actions back: it holds no flow logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, ClassVar, Protocol

from kiosk.edge_client import EdgeError

__all__ = ["Context", "Flow", "IllegalTransition", "Timing", "text"]


class IllegalTransition(Exception):
    """An action or a state change that the current state does not allow."""

    def __init__(self, flow: str, state: str, target: str) -> None:
        super().__init__(f"{flow}: {state} -> {target} is not allowed")
        self.flow, self.state, self.target = flow, state, target


class Edge(Protocol):
    """The part of ``kiosk.edge_client.EdgeClient`` the flows use (fakes implement it)."""

    async def request(self, type_: str, body: dict[str, Any], timeout_s: float | None = None,
                      request_id: str | None = None) -> Any: ...
    async def request_result(self, request_id: str, wait_s: float = 0.0) -> Any: ...
    async def pay(self, *, request_id: str, purpose: str, refs: list[str], amount_fen: int,
                  method: str, scan_id: str | None = None, timeout_s: float | None = None,
                  tendered_fen: int | None = None) -> dict[str, Any]: ...
    async def pay_status(self, payment_id: str) -> dict[str, Any]: ...
    async def pay_reverse(self, payment_id: str) -> dict[str, Any]: ...
    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> dict[str, Any]: ...
    async def payments(self) -> list[dict[str, Any]]: ...
    async def reprint_payment(self, payment_id: str) -> dict[str, Any]: ...
    async def print_doc(self, kind: str, ref: str | None = None, *,
                        copy: bool = False) -> dict[str, Any]: ...
    async def reprint(self, job_id: str | None = None) -> dict[str, Any]: ...
    async def printer_status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Timing:
    """Payment confirmation timing (docs/healthcard.md: query every few seconds, ~30 s, reverse)."""

    poll_interval_s: float = 2.0
    confirm_window_s: float = 30.0
    pay_timeout_s: float = 20.0
    #: How long an outcome stays on screen after the card was taken out mid-payment.
    linger_s: float = 15.0


@dataclass
class Context:
    """What a flow may know about the session: the masked patient, the role, the day."""

    patient: dict[str, Any]
    role: str = "kiosk"
    today: date = field(default_factory=date.today)
    staff: dict[str, Any] | None = None


def text(code: str, message: str, message_zh: str, **extra: Any) -> dict[str, Any]:
    """An error/notice for the screen, always in both languages."""
    return {"code": code, "message": message, "message_zh": message_zh, **extra}


class Flow:
    """Base of the flows: state, data for the screen, error, version, the state table."""

    name: ClassVar[str] = ""
    START: ClassVar[str] = ""
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {}
    #: States in which the page must not time the session out or offer "home".
    BUSY: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, edge: Edge, ctx: Context, *,
                 on_change: Callable[[Flow], None] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 timing: Timing | None = None) -> None:
        self.edge = edge
        self.ctx = ctx
        self.on_change = on_change or (lambda _f: None)
        self.sleep = sleep
        self.clock = clock
        self.timing = timing or Timing()
        self.state = self.START
        self.data: dict[str, Any] = {}
        self.error: dict[str, Any] | None = None
        self.history: list[str] = [self.START]
        #: Set by the screen when the card left while money or paper was moving: the flow
        #: runs to its outcome, but nothing can be printed for the patient any more.
        self.card_gone = False
        self.abandoned = False  # on_abandon ran (the screen calls it once)

    # -- the state table -------------------------------------------------------------------

    def can(self, target: str) -> bool:
        """May the flow move from its state to ``target``?"""
        return target in self.TRANSITIONS.get(self.state, frozenset())

    def to(self, target: str, *, error: dict[str, Any] | None = None, **data: Any) -> None:
        """Move to ``target`` (checked against the table) and tell the page."""
        if not self.can(target):
            raise IllegalTransition(self.name, self.state, target)
        self.state = target
        if error is not None and self.ctx.role == "cashier":
            error = desk_wording(error)
        self.error = error
        self.data.update(data)
        self.history.append(target)
        self.on_change(self)

    def expect(self, *states: str) -> None:
        """Refuse an action that the current state does not offer."""
        if self.state not in states:
            raise IllegalTransition(self.name, self.state, "/".join(states))

    def fail(self, exc: EdgeError, target: str = "error") -> None:
        """Show an edge/platform error in ``target`` (what happened and what to do)."""
        self.to(target, error={**exc.as_dict(), **advice(exc, self.ctx.role)})

    @property
    def busy(self) -> bool:
        """True while money or paper is in motion (no timeout, no leaving)."""
        return self.state in self.BUSY

    def shows_outcome(self) -> bool:
        """True in a state worth showing once the patient may have walked away.

        Final states (nothing follows) and the failure states that end the patient's part;
        a state waiting for a choice (methods, a list) is not.
        """
        return self.state in ("print_failed", "declined", "error") or not self.TRANSITIONS.get(
            self.state)

    def view(self) -> dict[str, Any]:
        """The screen model the page renders."""
        return {"name": self.name, "state": self.state, "data": self.data,
                "error": self.error, "busy": self.busy, "card_gone": self.card_gone}

    async def on_abandon(self) -> None:
        """The patient left (card out, timeout, home) mid-flow: release what the flow holds.

        Best effort and never raising: the screen has already wiped the session.
        """

    async def start(self) -> None:
        """First work on entering the flow (load lists …); default: nothing."""

    async def handle(self, action: str, args: dict[str, Any]) -> None:
        """Run ``do_<action>``; unknown actions are illegal transitions."""
        fn = getattr(self, f"do_{action}", None)
        if fn is None:
            raise IllegalTransition(self.name, self.state, action)
        await fn(**args)

    async def on_scan(self, scan: dict[str, Any]) -> bool:
        """A scan arrived while this flow is shown; True when it was used."""
        return False


#: What the patient can do about each error, in both languages.
_ADVICE: dict[str, tuple[str, str]] = {
    "platform_unavailable": ("Please try again in a moment, or go to a staffed counter.",
                             "请稍后再试，或到人工窗口办理。"),
    "edge_unavailable": ("Please go to a staffed counter.", "请到人工窗口办理。"),
    "edge_timeout": ("Please try again, or go to a staffed counter.", "请重试，或到人工窗口办理。"),
    "no_card": ("Please insert your health card.", "请插入您的居民健康卡。"),
    "card_removed": ("Please insert your card again.", "请重新插入健康卡。"),
}
_REASON_ADVICE: dict[str, tuple[str, str]] = {
    "insufficient_balance": ("Top up your card, or pay with a WeChat/Alipay code.",
                             "请先充值，或使用微信/支付宝付款码支付。"),
    "slot_full": ("Please choose another time or doctor.", "请选择其他时段或医生。"),
    "closed": ("Registration for this session has closed; choose another.",
               "该时段已停止挂号，请选择其他时段。"),
    "card_blocked": ("This card is reported lost; please go to a staffed counter.",
                     "该卡已挂失，请到人工窗口办理。"),
}


#: What the cashier at a desk can do: staff are not sent to "a staffed counter" or told to
#: "ask staff for help" — they are told what happened and what to do at the desk.
_DESK_ADVICE: dict[str, tuple[str, str]] = {
    "platform_unavailable": ("The hospital system is not answering: try again shortly; "
                             "meanwhile follow the desk's outage procedure.",
                             "医院系统无响应：请稍后重试，其间按窗口应急流程办理。"),
    "edge_unavailable": ("The terminal service is not running: restart the desk terminal "
                         "or call IT.", "终端服务未运行：请重启收费终端或联系信息科。"),
    "edge_timeout": ("The terminal did not answer in time: check the result before trying "
                     "again.", "终端响应超时：请先核实办理结果再重试。"),
    "no_card": ("Read the patient's health card.", "请读取患者的健康卡。"),
    "card_removed": ("Read the patient's health card again.", "请重新读取患者的健康卡。"),
    "session_expired": ("Sign in again, then redo this.", "请重新登录后再办理。"),
    "staff_only": ("Sign in again, then redo this.", "请重新登录后再办理。"),
    "not_this_patient": ("Read the card of the patient this payment belongs to.",
                         "请读取该笔支付所属患者的健康卡。"),
}
_DESK_REASON_ADVICE: dict[str, tuple[str, str]] = {
    "forbidden": ("This is not the patient whose card was read: read that patient's card "
                  "first.", "不属于当前读卡的患者：请先读取所属患者的健康卡再办理。"),
    "insufficient_balance": ("The card balance is too low: take another method, or top up "
                             "first.", "卡内余额不足：请改用其他支付方式，或先充值。"),
    "card_blocked": ("This card is reported lost: check the patient's ID document and "
                     "follow the lost-card procedure.",
                     "该卡已挂失：请核对患者有效身份证件，按挂失流程办理。"),
    "refund_exceeds": ("More than the refundable amount: check the amount.",
                       "超过可退金额：请核对退款金额。"),
    "not_refundable": ("This payment cannot be refunded here.", "该笔支付不可在此退费。"),
    "use_cancel": ("A registration fee goes back by cancelling the registration (退号).",
                   "挂号费请通过退号办理退款。"),
}
#: The flows' own outcomes (by ``error.code``) as a cashier is told them: what to do at the
#: desk, not the patient's "go to a staffed counter".
_DESK_TODO: dict[str, tuple[str, str]] = {
    "declined": ("Nothing was charged: take another method, or ask the patient to check "
                 "their wallet.", "未扣款：请改用其他支付方式，或请患者核对付款账户。"),
    "unresolved": ("Do not take the money again. Note the order number; the terminal keeps "
                   "asking for the outcome and the dashboard lists it until it is known — "
                   "then reprint by payment number.",
                   "请勿重复收费。请记下支付订单号；终端会继续查询结果，监控台在确认前持续列出，"
                   "确认后可按支付单号补打。"),
    "print_failed": ("Fix the printer, then tap 'Reprint' (no second charge).",
                     "请处理打印机后点击“补打凭条”（不会重复收费）。"),
    "slip_later": ("Read the patient's card again and reprint by payment number (no second "
                   "charge).", "请重新读取患者健康卡，按支付单号补打（不会重复收费）。"),
    "paper_out": ("Load paper before taking the payment, or take it and reprint after.",
                  "请先装纸再收费，或收费后装纸补打。"),
    "cover_open": ("Close the printer cover before taking the payment.",
                   "请先合上打印机上盖再收费。"),
    "offline": ("Check the printer's power and cable; the receipt can be reprinted later.",
                "请检查打印机电源和连线；凭条可稍后补打。"),
    "printer_error": ("Check the printer; the receipt can be reprinted later.",
                      "请检查打印机；凭条可稍后补打。"),
    "printer_unknown": ("Check the printer; the receipt can be reprinted later.",
                        "请检查打印机；凭条可稍后补打。"),
}


def desk_wording(error: dict[str, Any]) -> dict[str, Any]:
    """``error`` with its advice for a cashier where the flows wrote it for a patient."""
    todo = _DESK_TODO.get(str(error.get("code", "")))
    if todo is None:
        return error
    return {**error, "todo": todo[0], "todo_zh": todo[1]}


_DESK_DEFAULT = ("Check the details and try again; if it fails again, call the duty "
                 "supervisor or IT.", "请核对后重试；如仍失败，请联系值班主管或信息科。")


def advice(exc: EdgeError, role: str = "kiosk") -> dict[str, str]:
    """``todo``/``todo_zh``: what to do next after ``exc`` — for a patient, or at a desk."""
    if role == "cashier":
        en, zh = _DESK_REASON_ADVICE.get(exc.reason) or _DESK_ADVICE.get(exc.code) or (
            _REASON_ADVICE[exc.reason] if exc.reason in ("slot_full", "closed")
            else _DESK_DEFAULT)
        return {"todo": en, "todo_zh": zh}
    en, zh = _REASON_ADVICE.get(exc.reason, _ADVICE.get(
        exc.code, ("Please try again, or ask staff for help.", "请重试，或向工作人员求助。")))
    return {"todo": en, "todo_zh": zh}
