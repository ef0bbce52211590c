"""Request and response models of the reference platform's HTTP API.

Response shapes follow docs/message-catalogue.md (the adapter hands them on unchanged).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from central.platform.sim.ids import is_valid_id_number

PayMethod = Literal["prepaid", "cash", "wechat", "alipay"]
PaymentState = Literal["approved", "declined", "pending", "unknown", "reversed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors and admin -----------------------------------------------------------------------

class ErrorOut(_Response):
    """Every 4xx/5xx body."""

    code: str
    message: str
    message_zh: str


# --- patients -------------------------------------------------------------------------------

class IdentifyRequest(_Request):
    """Identify a patient by card number, ID number or e-health QR text."""

    by: Literal["card", "id_number", "ehc_qr"]
    value: str = Field(min_length=1, max_length=256)
    scene: str | None = Field(None, max_length=16)


class PatientOut(_Response):
    """The ``patient.identify`` result."""

    patient_id: str
    name: str
    sex: Literal["M", "F", "U"]
    birth_date: str
    id_number: str
    card_no: str
    phone: str | None = None
    balance_fen: int
    insured: bool


# --- departments and slots --------------------------------------------------------------------

class DepartmentOut(_Response):
    """A department."""

    code: str
    name: str
    name_en: str
    location: str
    floor: str | None = None


class DepartmentsOut(_Response):
    """The ``reg.departments`` result."""

    departments: list[DepartmentOut]


class SlotOut(_Response):
    """A bookable doctor session."""

    slot_id: str
    doctor_id: str
    doctor_name: str
    title: str
    specialty: str
    date: str
    period: Literal["am", "pm"]
    start: str
    end: str
    remaining: int
    fee_fen: int
    closes_at: str
    #: what an insured patient pays of ``fee_fen`` (the rest is paid by insurance)
    insured_fee_fen: int | None = None


class SlotsOut(_Response):
    """The ``reg.slots`` result."""

    slots: list[SlotOut]


# --- bookings -------------------------------------------------------------------------------

class BookRequest(_Request):
    """Book a slot for a patient."""

    patient_id: str = Field(min_length=1, max_length=32)
    slot_id: str = Field(min_length=1, max_length=64)
    pay_method: Literal["prepaid", "cash", "wechat", "alipay", "later"]
    insured: bool = False


class BookingOut(_Response):
    """The ``reg.book`` result (and an element of ``reg.bookings``)."""

    booking_id: str
    visit_no: str
    queue_no: int
    dept_code: str
    dept_name: str
    doctor_name: str
    title: str
    date: str
    start: str
    end: str
    location: str
    fee_fen: int
    status: Literal["booked", "paid", "cancelled"]
    insured: bool = False
    insurance_fen: int = 0
    checked_in_at: str | None = None
    slip_printed: bool = False


class BookingsOut(_Response):
    """The ``reg.bookings`` result."""

    bookings: list[BookingOut]


class CancelOut(_Response):
    """The ``reg.cancel`` result."""

    booking_id: str
    status: Literal["cancelled"]
    refund_fen: int
    refund_id: str | None = None
    refund_method: str | None = None
    balance_fen: int | None = None  # the prepaid balance after a refund to it


# --- bills ----------------------------------------------------------------------------------

class BillItemOut(_Response):
    """A bill line."""

    name: str
    qty: int
    unit_price_fen: int
    amount_fen: int


class BillOut(_Response):
    """An unpaid bill."""

    bill_id: str
    date: str
    dept_name: str
    items: list[BillItemOut]
    total_fen: int
    payable_here: bool


class BillsOut(_Response):
    """The ``bill.list`` result."""

    bills: list[BillOut]


# --- payments -------------------------------------------------------------------------------

class PaymentCreateRequest(_Request):
    """Create a payment; wallet methods need the scanned ``auth_code``."""

    patient_id: str = Field(min_length=1, max_length=32)
    purpose: Literal["registration", "bills", "topup"]
    refs: list[str] = Field(default_factory=list, max_length=50)
    amount_fen: int = Field(gt=0, le=10_000_000)
    method: PayMethod
    auth_code: str | None = Field(None, max_length=32)


class PaymentOut(_Response):
    """The ``pay.create`` / ``pay.status`` / ``pay.reverse`` result."""

    payment_id: str
    state: PaymentState
    amount_fen: int
    method: PayMethod
    txn_id: str | None = None
    balance_fen: int | None = None
    reason: str | None = None


class PaymentSummaryOut(_Response):
    """A payment in a patient's list, with what was refunded and what still may be."""

    payment_id: str
    created_at: str
    purpose: Literal["registration", "bills", "topup"]
    method: PayMethod
    amount_fen: int
    refunded_fen: int
    refundable_fen: int
    state: PaymentState
    txn_id: str | None = None


class PaymentsOut(_Response):
    """The ``pay.list`` result: newest first."""

    payments: list[PaymentSummaryOut]


class RefundRequest(_Request):
    """Refund part or all of an approved payment."""

    amount_fen: int = Field(gt=0, le=10_000_000)
    reason: str = Field(min_length=1, max_length=200)


class RefundOut(_Response):
    """The ``pay.refund`` result."""

    refund_id: str
    payment_id: str
    amount_fen: int
    state: Literal["refunded"]


# --- reports --------------------------------------------------------------------------------

class ReportSummaryOut(_Response):
    """A report in a list."""

    report_no: str
    title: str
    specimen: str
    status: Literal["pending", "ready"]
    printed: bool
    reported_at: str | None = None


class ReportsOut(_Response):
    """The ``report.list`` result."""

    reports: list[ReportSummaryOut]


class ReportItemOut(_Response):
    """One analyte result."""

    code: str
    name: str
    value: str
    unit: str
    ref_range: str
    flag: Literal["", "H", "L"]


class ReportOut(_Response):
    """The ``report.fetch`` result."""

    report_no: str
    title: str
    patient_name: str
    sex: Literal["M", "F", "U"]
    age: str
    dept_name: str
    specimen: str
    sampled_at: str
    reported_at: str
    items: list[ReportItemOut]
    doctor: str
    verify_url: str


class SlipPrintedOut(_Response):
    """The ``reg.printed`` result."""

    booking_id: str
    printed: Literal[True]


class PrintedOut(_Response):
    """The ``report.printed`` result."""

    report_no: str
    printed: Literal[True]


# --- hot list and staff -----------------------------------------------------------------------

class HotlistDeltaOut(_Response):
    """The ``hotlist.delta`` result."""

    version: int
    full: bool
    added: list[str]
    removed: list[str]


class StaffLoginRequest(_Request):
    """Staff badge + PIN."""

    badge: str = Field(min_length=1, max_length=32)
    pin: str = Field(min_length=4, max_length=12)


class StaffOut(_Response):
    """The ``staff.login`` result."""

    staff_id: str
    name: str
    role: str


# --- admin ----------------------------------------------------------------------------------

_CARD = re.compile(r"^[0-9A-Za-z]{6,20}$")


class PatientCreateRequest(_Request):
    """Register a patient (to match a virtual card in tests / the site-in-a-box)."""

    card_no: str
    id_number: str
    name: str = Field(min_length=1, max_length=30)
    sex: Literal["M", "F", "U"]
    birth_date: date
    phone: str | None = Field(None, pattern=r"^1\d{10}$")
    balance_fen: int = Field(0, ge=0, le=100_000_000)
    insured: bool = True
    ehc_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    # Site-in-a-box: also give the patient unpaid bills, ready and pending lab reports and a
    # paid booking of today to pick up, so every kiosk flow can be tried with the card.
    demo_records: bool = False

    @field_validator("card_no")
    @classmethod
    def _card(cls, value: str) -> str:
        if not _CARD.match(value):
            raise ValueError("card_no must be 6-20 letters or digits")
        return value

    @field_validator("id_number")
    @classmethod
    def _id(cls, value: str) -> str:
        value = value.upper()
        if not is_valid_id_number(value):
            raise ValueError("id_number must be 18 characters with a valid GB 11643 check digit")
        return value


class AdminPatientOut(_Response):
    """A patient as the admin sees it, with the QR texts that identify them."""

    patient: PatientOut
    ehc_id: str
    ehc_qr_static: str


class AdminPatientList(RootModel[list[AdminPatientOut]]):
    """Every patient (admin listing)."""


class HotlistUpdateRequest(_Request):
    """Add a card to, or remove it from, the lost-card list."""

    card_no: str = Field(min_length=6, max_length=20, pattern=r"^[0-9A-Za-z]+$")
    action: Literal["add", "remove"]
    reason: str = Field("lost", max_length=40)


class HotlistUpdateOut(_Response):
    """The new hot-list version after an admin change."""

    version: int
    card_no: str
    listed: bool


class StaffCreateRequest(_Request):
    """Create (or reset) a staff account."""

    badge: str = Field(min_length=1, max_length=32, pattern=r"^[0-9A-Za-z_-]+$")
    name: str = Field(min_length=1, max_length=30)
    role: Literal["cashier", "guide", "supervisor", "technician"]
    pin: str = Field(pattern=r"^\d{4,8}$")


class FaultSpec(_Request):
    """Fault injection for one operation (rates are probabilities per request)."""

    op: str
    latency_ms: int = Field(0, ge=0, le=60_000)
    error_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    drop_reply_after_commit_rate: float = Field(0.0, ge=0, le=1)
    seed: int = 0
    hang_ms: int | None = Field(None, ge=1, le=600_000)


class FaultsOut(_Response):
    """Faults currently configured."""

    faults: list[FaultSpec]


class StatsOut(_Response):
    """Committed effects per operation and request counts."""

    effects: dict[str, int]
    requests: dict[str, int]
    faults_injected: dict[str, int]
