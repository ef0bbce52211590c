"""Money at this terminal: the payment desk (pay, status, reverse, refund).

Delivery rules (docs/architecture.md): a payment whose outcome is unknown is never paid
again; the caller asks ``request_result`` with the same request id. Only confirmed outcomes
go into the ledger, once per payment id however often their approval is seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.card_session import CardSessions
from edge.runtime.errors import SessionError
from edge.runtime.events import EventBus
from edge.runtime.ledger import Ledger
from edge.runtime.link import PlatformLink
from edge.runtime.memory import PayIntent, RefundDone, SessionMemory
from edge.runtime.ports import Clock
from edge.runtime.scans import ScanDesk
from edge.runtime.terminal import Terminal
from edge.uplink.errors import OutcomeUnknown, UplinkClosed
from yikatong.protocol.messages import PaymentList, PaymentResult, PaymentSummary, RefundResult

if TYPE_CHECKING:
    from edge.runtime.staff import StaffDesk

__all__ = ["PaymentDesk"]

log = logging.getLogger("edge.runtime")

#: Payment states that are an outcome; ``pending``/``unknown`` are not.
FINAL_PAYMENT_STATES = frozenset({"approved", "declined", "reversed"})
#: A payment nobody resolved for this long no longer holds back a disruptive command (the
#: uplink's follow-up and staff take it from there).
UNRESOLVED_MAX_AGE_S = 3600.0


class PaymentDesk:
    """``pay.*`` for the session's patient, the ledger, and payments settled later."""

    def __init__(self, *, terminal: Terminal, link: PlatformLink, cards: CardSessions,
                 scans: ScanDesk, staff: StaffDesk, ledger: Ledger, shipper: AuditShipper,
                 bus: EventBus, clock: Clock, memory: SessionMemory) -> None:
        self.terminal = terminal
        self.link = link
        self.cards = cards
        self.scans = scans
        self.staff = staff
        self.ledger = ledger
        self.shipper = shipper
        self.bus = bus
        self.clock = clock
        self.memory = memory
        # request id or payment id → what the payment was for; kept beyond the session,
        # since a payment may settle after the patient left (ledger kind, cash change).
        self._intents: dict[str, PayIntent] = {}
        # Payments under way or without a final outcome (request id / payment id → since,
        # monotonic): a reboot or restart ordered from central waits until they resolve.
        self._unresolved: dict[str, float] = {}
        self._aliases: dict[str, set[str]] = {}  # payment id → the ids it is held under
        self._monotonic: Callable[[], float] = time.monotonic

    @property
    def unresolved(self) -> list[str]:
        """Request/payment ids of payments sent and not yet resolved (recent ones only)."""
        cutoff = self._monotonic() - UNRESOLVED_MAX_AGE_S
        for key in [k for k, t in self._unresolved.items() if t < cutoff]:
            del self._unresolved[key]
            self._aliases.pop(key, None)
        return sorted(self._unresolved)

    def _track(self, result: PaymentResult, *keys: str | None) -> None:
        """Hold the payment as unresolved until its state is final (under every id of it)."""
        ids = {k for k in (*keys, result.payment_id) if k}
        ids |= self._aliases.get(result.payment_id, set())
        if result.state in FINAL_PAYMENT_STATES:
            for k in ids:
                self._unresolved.pop(k, None)
            self._aliases.pop(result.payment_id, None)
        else:
            for k in ids:
                self._unresolved.setdefault(k, self._monotonic())
            self._aliases[result.payment_id] = ids

    async def pay(self, *, purpose: str, refs: list[str], amount_fen: int, method: str,
                  scan_id: str | None, request_id: str, timeout_s: float | None,
                  tendered_fen: int | None = None) -> PaymentResult:
        """``pay.create`` for the session's patient; a payment code is taken by its scan id.

        ``request_id`` is the caller's idempotency key: after OutcomeUnknown the caller asks
        ``request_result`` with it and never pays again. ``tendered_fen``: the cash handed
        over at a desk (实收); the change (找零) is worked out here, for the receipt.
        """
        _, patient = self.cards.require_patient()
        body: dict[str, Any] = {"patient_id": patient.patient_id, "purpose": purpose,
                                "refs": refs, "amount_fen": amount_fen}
        if method == "cash":
            self.staff.require()  # only a desk takes cash
            body["method"] = "cash"
            if tendered_fen is not None and tendered_fen < amount_fen:
                raise SessionError("not_enough_cash",
                                   "The cash tendered is less than the amount due.",
                                   "实收金额不足应收金额。")
        elif method == "prepaid":
            body["method"] = "prepaid"
        elif method == "code":
            held = self.scans.take_code(scan_id)
            if held is None:
                raise SessionError("scan_code_again",
                                   "Please show your payment code again (it expires quickly).",
                                   "付款码已失效，请刷新后重新出示。")
            body["method"], body["auth_code"] = held.wallet, held.code
        else:
            raise SessionError("bad_method", f"Unknown payment method {method}.", "支付方式无效。")
        self._intents[request_id] = PayIntent(
            purpose, tuple(refs), amount_fen, tendered_fen if method == "cash" else None)
        # Never the payment code: the method says which wallet, the request id which payment.
        self.shipper.record("payment.requested", {
            "request_id": request_id, "amount_fen": amount_fen, "method": body["method"],
            "purpose": purpose})
        self._unresolved.setdefault(request_id, self._monotonic())
        try:
            result = await self.link.call("pay.create", body, timeout_s, request_id)
        except Exception as exc:
            if not _maybe_taken(exc):
                self._unresolved.pop(request_id, None)  # refused or never sent: nothing moved
            self.shipper.record("payment.error", {
                "request_id": request_id,
                "error": str(getattr(exc, "code", "")) or type(exc).__name__})
            raise
        if not isinstance(result, PaymentResult):  # the uplink validated it as this model
            raise TypeError(f"pay.create answered with {type(result).__name__}")
        self.outcome(request_id, result)
        return result

    def outcome(self, request_id: str, result: BaseModel) -> None:
        """An answer to request ``request_id`` (also one learnt later): audit and ledger."""
        if isinstance(result, PaymentResult):
            self._audit(request_id, result)
            self._note(result, request_id)
            self._track(result, request_id)

    async def settled_later(self, type_: str, request_id: str, result: BaseModel | None,
                            error: Any) -> None:
        """The uplink's follow-up learnt a payment's outcome after its screen gave up."""
        if type_ != "pay.create":
            return
        paid = result if isinstance(result, PaymentResult) else None
        state = paid.state if paid is not None else ("" if result is not None else "failed")
        if paid is not None:
            self._audit(request_id, paid)
            self._note(paid, request_id)
            self._track(paid, request_id)
        elif error is not None:
            self._unresolved.pop(request_id, None)  # final: the platform never took it
        body = {"request_id": request_id, "state": state,
                "payment_id": paid.payment_id if paid is not None else ""}
        self.bus.publish("payment.settled", body)
        log.info("payment %s settled after the screen gave up: %s", request_id, state)

    def _audit(self, request_id: str, r: PaymentResult) -> None:
        self.shipper.record("payment.outcome", {
            "request_id": request_id, "payment_id": r.payment_id, "state": r.state,
            "method": r.method, "amount_fen": r.amount_fen})

    def _note(self, result: PaymentResult, key: str | None = None) -> None:
        """Remember the payment for its receipt; an approved one goes into the ledger."""
        intent = self._intents.get(key) if key is not None else None
        if intent is None:
            intent = self._intents.get(result.payment_id)
        elif result.payment_id not in self._intents:
            self._intents[result.payment_id] = intent
        self.memory.remember_payment(result, intent)
        if result.state != "approved":
            return
        purpose = intent.purpose if intent is not None else "bills"
        kind = "topup" if purpose == "topup" else "payment"
        staff = self.staff.current
        self.ledger.record(f"pay-{result.payment_id}", self.clock.now(), kind=kind,
                           method=result.method, amount_fen=result.amount_fen,
                           payment_id=result.payment_id,
                           operator=staff.staff_id if staff is not None else "")
        if (result.method == "cash" and self.terminal.is_desk and intent is not None
                and intent.tendered_fen is not None):
            # 实收/找零 for the receipt and for a copy printed later (first one wins).
            self.ledger.record_cash(result.payment_id, intent.tendered_fen,
                                    intent.tendered_fen - intent.amount_fen)

    async def status(self, payment_id: str) -> PaymentResult:
        """``pay.status``; a payment seen approved here is written to the ledger."""
        result = await self.link.call("pay.status", {"payment_id": payment_id})
        return self._payment(result)

    async def reverse(self, payment_id: str) -> PaymentResult:
        """``pay.reverse`` of a payment that never resolved (the wallet deadline passed).

        A payment that settled meanwhile comes back approved: it is paid, and recorded so.
        """
        result = await self.link.call("pay.reverse", {"payment_id": payment_id}, 30)
        return self._payment(result)

    def _payment(self, result: BaseModel) -> PaymentResult:
        if not isinstance(result, PaymentResult):  # the uplink validated it as this model
            raise TypeError(f"pay.* answered with {type(result).__name__}")
        self._note(result)
        self._track(result)  # the request id it was created under resolves with it
        return result

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> RefundDone:
        """Cashier refund to the original method; the refund plus that method."""
        staff = self.staff.require()
        self.cards.require_patient()
        # Central allows a refund for any patient this desk identified in the last half hour;
        # the desk itself refunds only a payment of the patient whose card is in the reader.
        original = next((p for p in await self.pay_list() if p.payment_id == payment_id),
                        None)
        if original is None:
            raise SessionError("not_this_patient",
                               "This payment belongs to another patient than the one whose "
                               "card was read.", "该笔支付不属于当前读卡的患者。")
        result = await self.link.call("pay.refund", {"payment_id": payment_id,
                                                     "amount_fen": amount_fen,
                                                     "reason": reason}, 30)
        if not isinstance(result, RefundResult):  # the uplink validated it as this model
            raise TypeError(f"pay.refund answered with {type(result).__name__}")
        self.ledger.record(f"refund-{result.refund_id}", self.clock.now(), kind="refund",
                           method=original.method, amount_fen=result.amount_fen,
                           payment_id=payment_id, operator=staff.staff_id)
        self.shipper.record("refund", {"refund_id": result.refund_id, "payment_id": payment_id,
                                       "amount_fen": result.amount_fen,
                                       "method": original.method})
        done = RefundDone(result, original.method, reason)
        self.memory.remember_refund(done)
        return done

    async def pay_list(self) -> list[PaymentSummary]:
        """The identified patient's payments, newest first (the desk refunds or reprints one)."""
        self.staff.require()
        s, patient = self.cards.require_patient()
        result = await self.link.call("pay.list", {"patient_id": patient.patient_id}, 20)
        self.cards.still(s)  # card pulled while we waited: not this patient's any more
        if not isinstance(result, PaymentList):  # the uplink validated it as this model
            raise TypeError(f"pay.list answered with {type(result).__name__}")
        return list(result.payments)


def _maybe_taken(exc: BaseException) -> bool:
    """True when a failed ``pay.create`` may still have moved money (outcome unknown)."""
    return isinstance(exc, OutcomeUnknown | UplinkClosed)
