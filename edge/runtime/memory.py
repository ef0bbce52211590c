"""What the platform told this card session, kept by id so documents print by reference.

The kiosk asks to print ``registration_slip`` of booking ``BK1``; the daemon builds the slip
from the ``Booking`` it received itself, so a fee or queue number on paper is always the
platform's, never one the kiosk sent (docs/architecture.md, "One registration, end to end").
Memory only, cleared with the card session.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from yikatong.protocol.messages import (
    Bill,
    BillList,
    Booking,
    BookingList,
    CancelResult,
    PaymentResult,
    PayMethod,
    RefundResult,
)

__all__ = ["PayIntent", "RefundDone", "SessionMemory"]


@dataclass(frozen=True)
class PayIntent:
    """What a ``pay.create`` was for: its purpose, the bills or booking, the cash handed over."""

    purpose: str
    refs: tuple[str, ...]
    amount_fen: int
    tendered_fen: int | None = None


@dataclass(frozen=True)
class RefundDone:
    """A desk refund: the platform's result, the original method and the cashier's reason."""

    result: RefundResult
    method: PayMethod
    reason: str


@dataclass
class SessionMemory:
    """Typed replies of the current card session, by the id a document names them with."""

    bookings: dict[str, Booking] = field(default_factory=dict)
    bills: dict[str, Bill] = field(default_factory=dict)
    payments: dict[str, tuple[PaymentResult, PayIntent | None]] = field(default_factory=dict)
    #: booking id → (the cancellation, the session's patient_seq when it arrived)
    cancellations: dict[str, tuple[CancelResult, int]] = field(default_factory=dict)
    refunds: dict[str, RefundDone] = field(default_factory=dict)

    def remember(self, result: BaseModel, patient_seq: int = 0) -> None:
        """Keep a reply a document may be built from (others are ignored)."""
        if isinstance(result, Booking):
            self.bookings[result.booking_id] = result
        elif isinstance(result, BookingList):
            for b in result.bookings:
                self.bookings[b.booking_id] = b
        elif isinstance(result, BillList):
            # Merged, not replaced: a list read again after paying lacks the paid bills.
            self.bills.update((b.bill_id, b) for b in result.bills)
        elif isinstance(result, CancelResult):
            self.cancellations[result.booking_id] = (result, patient_seq)

    def remember_payment(self, result: PaymentResult, intent: PayIntent | None) -> None:
        """Keep the latest state of a payment (a receipt prints only once it is approved)."""
        self.payments[result.payment_id] = (result, intent)

    def remember_refund(self, done: RefundDone) -> None:
        """Keep a refund for its receipt."""
        self.refunds[done.result.refund_id] = done

    def clear(self) -> None:
        """The card session ended: forget it all."""
        self.bookings.clear()
        self.bills.clear()
        self.payments.clear()
        self.cancellations.clear()
        self.refunds.clear()
