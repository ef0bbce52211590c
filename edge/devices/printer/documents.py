"""Printable documents as typed frozen dataclasses (pure data, validated on construction).

Money is integer fen. Personal data (names, ID numbers) is carried RAW here; the layout in
``edge.devices.printer.escpos.layout`` prints only the masked forms from
``yikatong.common.privacy``. Datetimes are printed as given: callers pass local (hospital) time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import ClassVar, Literal, TypeAlias

from edge.devices.printer.errors import InvalidDocument

__all__ = [
    "CancellationSlip",
    "ClosingLine",
    "ClosingReport",
    "Document",
    "LabItem",
    "LabReport",
    "PairingSlip",
    "PayMethod",
    "PaymentReceipt",
    "ReceiptItem",
    "RefundReceipt",
    "RegistrationSlip",
    "ShiftReport",
    "TestPage",
    "TopUpReceipt",
]

PayMethod: TypeAlias = Literal["prepaid", "cash", "wechat", "alipay", "insurance"]
_METHODS = ("prepaid", "cash", "wechat", "alipay", "insurance")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _check(doc: object) -> None:
    """Validate common field types of a document dataclass; raise InvalidDocument."""
    kind = getattr(doc, "kind", type(doc).__name__)
    for f in fields(doc):  # type: ignore[arg-type]
        value = getattr(doc, f.name)
        if f.name.endswith("_fen") and value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidDocument(kind, f.name, "must be an integer number of fen")
        elif f.name == "copy" and not isinstance(value, bool):
            raise InvalidDocument(kind, f.name, "must be a bool")
        elif f.type in ("str", "str | None") and value is not None and not isinstance(value, str):
            raise InvalidDocument(kind, f.name, "must be text")
        elif f.type == "datetime" and not isinstance(value, datetime):
            raise InvalidDocument(kind, f.name, "must be a datetime")


def _cash(kind: str, due: int, tendered: int | None, change: int | None) -> None:
    """Tendered and change come together, and add up: tendered - change = amount due."""
    if tendered is None and change is None:
        return
    if tendered is None or change is None:
        raise InvalidDocument(kind, "tendered_fen", "tendered and change go together")
    if change < 0 or tendered - change != due:
        raise InvalidDocument(kind, "change_fen", "tendered minus change is not the amount")


def _non_negative(kind: str, name: str, value: int) -> None:
    if value < 0:
        raise InvalidDocument(kind, name, "must not be negative")


def _non_empty(kind: str, name: str, value: str) -> None:
    if not value.strip():
        raise InvalidDocument(kind, name, "must not be empty")


def _method(kind: str, value: str) -> None:
    if value not in _METHODS:
        raise InvalidDocument(kind, "method", f"must be one of {', '.join(_METHODS)}")


@dataclass(frozen=True)
class RegistrationSlip:
    """挂号凭条: what a patient takes to the clinic after booking a slot."""

    kind: ClassVar[str] = "registration_slip"

    hospital_name: str
    patient_name: str
    id_number: str
    card_no: str
    dept_name: str
    doctor_name: str
    doctor_title: str
    date: str
    start: str
    end: str
    queue_no: int
    location: str
    fee_fen: int
    visit_no: str
    insured: bool
    printed_at: datetime
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        _non_negative(self.kind, "fee_fen", self.fee_fen)
        for name in ("hospital_name", "patient_name", "dept_name", "visit_no"):
            _non_empty(self.kind, name, getattr(self, name))
        if not _DATE_RE.match(self.date):
            raise InvalidDocument(self.kind, "date", "must be YYYY-MM-DD")
        for name in ("start", "end"):
            if not _TIME_RE.match(getattr(self, name)):
                raise InvalidDocument(self.kind, name, "must be HH:MM")
        if not isinstance(self.queue_no, int) or isinstance(self.queue_no, bool) or (
            self.queue_no <= 0
        ):
            raise InvalidDocument(self.kind, "queue_no", "must be a positive integer")
        if not isinstance(self.insured, bool):
            raise InvalidDocument(self.kind, "insured", "must be a bool")


@dataclass(frozen=True)
class ReceiptItem:
    """One billed line: name, quantity, unit price and amount in fen."""

    name: str
    qty: int
    unit_price_fen: int
    amount_fen: int

    def __post_init__(self) -> None:
        _check(self)
        _non_empty("receipt_item", "name", self.name)
        if not isinstance(self.qty, int) or isinstance(self.qty, bool) or self.qty <= 0:
            raise InvalidDocument("receipt_item", "qty", "must be a positive integer")
        _non_negative("receipt_item", "unit_price_fen", self.unit_price_fen)
        _non_negative("receipt_item", "amount_fen", self.amount_fen)


@dataclass(frozen=True)
class PaymentReceipt:
    """缴费凭条: settled bills with their items, the method and the balance after."""

    kind: ClassVar[str] = "payment_receipt"

    hospital_name: str
    patient_name: str
    card_no: str
    items: tuple[ReceiptItem, ...]
    total_fen: int
    method: PayMethod
    txn_id: str
    printed_at: datetime
    balance_after_fen: int | None = None
    payment_id: str = ""
    dept_name: str = ""
    operator: str = ""
    copy: bool = False
    #: Cash at a desk: what was handed over (实收) and given back (找零); None elsewhere.
    tendered_fen: int | None = None
    change_fen: int | None = None

    def __post_init__(self) -> None:
        _check(self)
        if not isinstance(self.items, tuple) or not self.items or not all(
            isinstance(i, ReceiptItem) for i in self.items
        ):
            raise InvalidDocument(self.kind, "items", "must be a non-empty tuple of ReceiptItem")
        _non_negative(self.kind, "total_fen", self.total_fen)
        # A receipt whose lines do not add up to the total must never reach paper.
        if sum(i.amount_fen for i in self.items) != self.total_fen:
            raise InvalidDocument(self.kind, "total_fen", "is not the sum of the item amounts")
        _method(self.kind, self.method)
        _non_empty(self.kind, "txn_id", self.txn_id)
        _cash(self.kind, self.total_fen, self.tendered_fen, self.change_fen)


@dataclass(frozen=True)
class TopUpReceipt:
    """预交金充值凭条: money added to the prepaid account."""

    kind: ClassVar[str] = "topup_receipt"

    hospital_name: str
    patient_name: str
    card_no: str
    amount_fen: int
    method: PayMethod
    txn_id: str
    balance_after_fen: int | None  # None on a copy rebuilt later (the balance has moved on)
    printed_at: datetime
    operator: str = ""
    copy: bool = False
    tendered_fen: int | None = None  # cash at a desk: 实收
    change_fen: int | None = None  # cash at a desk: 找零
    payment_id: str = ""

    def __post_init__(self) -> None:
        _check(self)
        if self.amount_fen <= 0:
            raise InvalidDocument(self.kind, "amount_fen", "must be positive")
        if self.balance_after_fen is not None:
            _non_negative(self.kind, "balance_after_fen", self.balance_after_fen)
        _method(self.kind, self.method)
        _non_empty(self.kind, "txn_id", self.txn_id)
        _cash(self.kind, self.amount_fen, self.tendered_fen, self.change_fen)


@dataclass(frozen=True)
class RefundReceipt:
    """退费凭条: money returned for an earlier payment."""

    kind: ClassVar[str] = "refund_receipt"

    hospital_name: str
    patient_name: str
    card_no: str
    refund_id: str
    payment_id: str
    amount_fen: int
    method: PayMethod
    reason: str
    printed_at: datetime
    balance_after_fen: int | None = None
    operator: str = ""
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        if self.amount_fen <= 0:
            raise InvalidDocument(self.kind, "amount_fen", "must be positive")
        _method(self.kind, self.method)
        _non_empty(self.kind, "refund_id", self.refund_id)
        _non_empty(self.kind, "payment_id", self.payment_id)


@dataclass(frozen=True)
class CancellationSlip:
    """退号凭条: a registration given back, and where its fee went (if it was paid)."""

    kind: ClassVar[str] = "cancellation_slip"

    hospital_name: str
    patient_name: str
    card_no: str
    booking_id: str
    dept_name: str
    doctor_name: str
    date: str
    start: str
    end: str
    queue_no: int
    refund_fen: int
    printed_at: datetime
    method: PayMethod | None = None  # None: nothing was paid, nothing refunded
    refund_id: str = ""
    balance_after_fen: int | None = None
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        if self.refund_fen < 0:
            raise InvalidDocument(self.kind, "refund_fen", "must not be negative")
        if self.refund_fen > 0:
            if self.method is None:
                raise InvalidDocument(self.kind, "method", "a refund needs its method")
            _method(self.kind, self.method)
        _non_empty(self.kind, "booking_id", self.booking_id)


@dataclass(frozen=True)
class LabItem:
    """One result line of a lab report; ``flag`` H/L prints as ↑/↓."""

    code: str
    name: str
    value: str
    unit: str
    ref_range: str
    flag: Literal["", "H", "L"] = ""

    def __post_init__(self) -> None:
        _check(self)
        _non_empty("lab_item", "name", self.name)
        if self.flag not in ("", "H", "L"):
            raise InvalidDocument("lab_item", "flag", "must be '', 'H' or 'L'")


@dataclass(frozen=True)
class LabReport:
    """检验报告单 as returned by ``report.fetch``."""

    kind: ClassVar[str] = "lab_report"

    hospital_name: str
    report_no: str
    title: str
    patient_name: str
    sex: Literal["M", "F", "U"]
    age: str
    dept_name: str
    specimen: str
    sampled_at: datetime
    reported_at: datetime
    items: tuple[LabItem, ...]
    doctor: str
    verify_url: str
    printed_at: datetime
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        if not isinstance(self.items, tuple) or not self.items or not all(
            isinstance(i, LabItem) for i in self.items
        ):
            raise InvalidDocument(self.kind, "items", "must be a non-empty tuple of LabItem")
        if self.sex not in ("M", "F", "U"):
            raise InvalidDocument(self.kind, "sex", "must be M, F or U")
        _non_empty(self.kind, "report_no", self.report_no)
        _non_empty(self.kind, "title", self.title)


@dataclass(frozen=True)
class ClosingLine:
    """Per-method totals of a cashier's shift: payments, top-ups and refunds."""

    method: PayMethod
    payment_count: int
    payment_fen: int
    topup_count: int = 0
    topup_fen: int = 0
    refund_count: int = 0
    refund_fen: int = 0

    def __post_init__(self) -> None:
        _check(self)
        _method("closing_line", self.method)
        for f in fields(self):
            if f.name != "method":
                value = getattr(self, f.name)
                if not isinstance(value, int) or isinstance(value, bool):
                    raise InvalidDocument("closing_line", f.name, "must be an integer")
                _non_negative("closing_line", f.name, value)

    @property
    def net_fen(self) -> int:
        """Money in minus money out for this method."""
        return self.payment_fen + self.topup_fen - self.refund_fen


@dataclass(frozen=True)
class ClosingReport:
    """日结报表: a cashier's end-of-day counts and totals per payment method."""

    kind: ClassVar[str] = "closing_report"

    hospital_name: str
    terminal_id: str
    cashier: str
    period_start: datetime
    period_end: datetime
    lines: tuple[ClosingLine, ...]
    printed_at: datetime
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        if not isinstance(self.lines, tuple) or not all(
            isinstance(x, ClosingLine) for x in self.lines
        ):
            raise InvalidDocument(self.kind, "lines", "must be a tuple of ClosingLine")
        if self.period_end < self.period_start:
            raise InvalidDocument(self.kind, "period_end", "is before period_start")
        if len({x.method for x in self.lines}) != len(self.lines):
            raise InvalidDocument(self.kind, "lines", "has a payment method twice")


@dataclass(frozen=True)
class ShiftReport(ClosingReport):
    """交班报表: one cashier's takings since sign-in or the desk's last handover."""

    kind: ClassVar[str] = "shift_report"


@dataclass(frozen=True)
class TestPage:
    """打印测试页 sent by a technician's remote command or at installation."""

    kind: ClassVar[str] = "test_page"
    __test__: ClassVar[bool] = False  # not a pytest test class despite the name

    device_id: str
    version: str
    printed_at: datetime
    note: str = ""
    copy: bool = False
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check(self)
        _non_empty(self.kind, "device_id", self.device_id)


@dataclass(frozen=True)
class PairingSlip:
    """设备配对码 / Pairing code, printed once while the device waits for enrollment: what a
    technician reads to approve it (docs/fleet-trust.md). Times are the site's local time."""

    kind: ClassVar[str] = "pairing_slip"

    hospital_name: str
    code: str
    serial: str
    printed_at: datetime
    expires_at: datetime | None = None
    model: str = ""
    copy: bool = False

    def __post_init__(self) -> None:
        _check(self)
        for name in ("hospital_name", "code", "serial"):
            _non_empty(self.kind, name, getattr(self, name))


Document: TypeAlias = (
    RegistrationSlip
    | PaymentReceipt
    | TopUpReceipt
    | RefundReceipt
    | CancellationSlip
    | LabReport
    | ClosingReport
    | ShiftReport
    | TestPage
    | PairingSlip
)
