"""Body models of every request, result, reply, event, telemetry and state message (pure).

This module is the source of truth of the message catalogue in docs/protocol.md. Rules
shared by all models: unknown fields are refused (``extra="forbid"``); validation is
strict (an int is an int — ``"5"``, ``5.0`` and ``true`` are not); money is integer fen
≥ 0; text fields are bounded and may not hold control characters (they end up on screens
and ESC/POS printers); dates are ``YYYY-MM-DD``, times ``HH:MM``, timestamps RFC 3339 UTC
``…T…\\.mmmZ``; optional fields are omitted on the wire when absent (null is accepted).
Secrets (payment codes, PINs) never appear in ``repr``/``str`` but go on the wire in clear,
inside the TLS connection; personal data is masked in ``repr``/``str``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    SecretStr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from yikatong.protocol.envelope import (
    MAX_SAFE_INT,
    TS_PATTERN,
    Envelope,
    new_envelope,
    parse_ts,
    redact,
)
from yikatong.protocol.errors import (
    InvalidBody,
    MalformedEnvelope,
    ProtocolError,
    UnknownMessageType,
)

__all__ = [
    "CENTRAL_REQUESTS",
    "EVENTS",
    "HOTLIST_NOTICE_TYPE",
    "REPLY_TYPE",
    "REQUESTS",
    "STATE_TYPE",
    "TELEMETRY_TYPE",
    "Alarm",
    "AuditRecord",
    "Bill",
    "BillItem",
    "BillList",
    "BillListReq",
    "Booking",
    "BookingList",
    "CancelResult",
    "CardInserted",
    "CardReadFailed",
    "CardRemoved",
    "CertRenewReq",
    "CertRenewResult",
    "Department",
    "DepartmentList",
    "ErrorCode",
    "ErrorInfo",
    "HotlistDelta",
    "HotlistDeltaReq",
    "HotlistNotice",
    "LogBundleReq",
    "LogBundleResult",
    "PatientIdentifyReq",
    "PatientInfo",
    "PayCreateReq",
    "PayListReq",
    "PayRefundReq",
    "PayReverseReq",
    "PayStatusReq",
    "PaymentList",
    "PaymentResult",
    "PaymentSummary",
    "PrintDone",
    "PrintFailed",
    "PrinterStatus",
    "RefundResult",
    "RegBookReq",
    "RegBookingsReq",
    "RegCancelReq",
    "RegCheckinReq",
    "RegDepartmentsReq",
    "RegPrintedReq",
    "RegPrintedResult",
    "RegSlotsReq",
    "ReplyError",
    "ReplyOk",
    "Report",
    "ReportFetchReq",
    "ReportItem",
    "ReportList",
    "ReportListReq",
    "ReportPrintedReq",
    "ReportPrintedResult",
    "ReportSummary",
    "Slot",
    "SlotList",
    "StaffInfo",
    "StaffLoginReq",
    "StaffLogoutReq",
    "StaffLogoutResult",
    "StaffSessionInfo",
    "StaffSessionReq",
    "StateBirth",
    "StateWill",
    "Telemetry",
    "WireModel",
    "dump_body",
    "make_event",
    "make_reply_error",
    "make_reply_for_error",
    "make_reply_ok",
    "make_request",
    "parse_event",
    "parse_reply",
    "parse_request",
    "parse_result",
    "parse_state",
    "parse_telemetry",
]

REPLY_TYPE: Final = "resp"
TELEMETRY_TYPE: Final = "telemetry"
STATE_TYPE: Final = "state"
HOTLIST_NOTICE_TYPE: Final = "hotlist.notice"

#: Upper bound of any amount: 10 million yuan. Far above any bill; catches unit mix-ups.
MAX_FEN: Final = 1_000_000_000

# --------------------------------------------------------------------------- field types

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"


def _real_date(s: str) -> str:
    date.fromisoformat(s)  # raises ValueError for 2024-02-30
    return s


def _real_ts(s: str) -> str:
    try:
        parse_ts(s)
    except MalformedEnvelope as e:
        raise ValueError("not a valid timestamp") from e
    return s


def _digits_secret(min_len: int, max_len: int, what: str) -> Any:
    def check(v: SecretStr) -> SecretStr:
        s = v.get_secret_value()
        # The message names the rule, never the value.
        if not (min_len <= len(s) <= max_len and s.isascii() and s.isdigit()):
            raise ValueError(f"{what} must be {min_len}-{max_len} ASCII digits")
        return v

    return AfterValidator(check)


# Wire form is the plain value; repr/str show SecretStr('**********').
_PLAIN = PlainSerializer(lambda v: v.get_secret_value(), return_type=str, when_used="always")

Ident = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,64}$")]
Code = Annotated[str, StringConstraints(pattern=r"^[\x21-\x7e]{1,32}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]
OptText = Annotated[str, StringConstraints(max_length=256, pattern=_NO_CONTROL)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=_NO_CONTROL)]
Fen = Annotated[int, Field(ge=0, le=MAX_FEN)]
PosFen = Annotated[int, Field(ge=1, le=MAX_FEN)]
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]
DateStr = Annotated[
    str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"), AfterValidator(_real_date)
]
HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
Timestamp = Annotated[str, StringConstraints(pattern=TS_PATTERN), AfterValidator(_real_ts)]
Hash256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
CardNo = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z]{4,32}$")]
AuthCode = Annotated[SecretStr, _digits_secret(10, 32, "payment code"), _PLAIN]
Pin = Annotated[SecretStr, _digits_secret(4, 12, "PIN"), _PLAIN]
Sex = Literal["M", "F", "U"]
PayMethod = Literal["prepaid", "cash", "wechat", "alipay"]


class WireModel(BaseModel):
    """Base of every body model: strict, frozen, no extra fields, safe to log."""

    # hide_input_in_errors: a failing payment code or ID number must not reach a log line
    # through str(ValidationError).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (value if isinstance(value, BaseModel | SecretStr) else redact(value, name))


def dump_body(model: BaseModel) -> dict[str, Any]:
    """Return the wire form of a body model (JSON types, None fields omitted, secrets plain)."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- requests


class PatientIdentifyReq(WireModel):
    """``patient.identify``: find the patient behind a card, ID number or e-health QR code."""

    by: Literal["card", "id_number", "ehc_qr"]
    value: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=_NO_CONTROL)]
    scene: Short | None = None


class PatientInfo(WireModel):
    """Result of ``patient.identify``.

    From the platform to central in full; from central to a device minimised (docs/privacy.md):
    ``patient_id`` is then an opaque reference bound to that device, name, ID and card
    numbers come masked (``*``), and ``phone``/``birth_date`` are left out.
    """

    patient_id: Ident
    name: Name
    sex: Sex
    birth_date: DateStr | None = None
    id_number: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z*]{6,32}$")]
    card_no: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z*]{4,32}$")]
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9-]{5,20}$")] | None = None
    balance_fen: Fen
    insured: bool


class RegDepartmentsReq(WireModel):
    """``reg.departments``: list the departments open for registration (empty body)."""


class Department(WireModel):
    """One department."""

    code: Code
    name: Name
    name_en: Name
    location: Text
    floor: Short | None = None


class DepartmentList(WireModel):
    """Result of ``reg.departments``."""

    departments: Annotated[list[Department], Field(max_length=1000)]


class RegSlotsReq(WireModel):
    """``reg.slots``: the bookable slots of a department on a date."""

    dept_code: Code
    date: DateStr


class Slot(WireModel):
    """One bookable time slot of a doctor."""

    slot_id: Ident
    doctor_id: Ident
    doctor_name: Name
    title: Short
    specialty: OptText
    date: DateStr
    period: Literal["am", "pm"]
    start: HHMM
    end: HHMM
    remaining: Annotated[int, Field(ge=0, le=100_000)]
    fee_fen: Fen
    closes_at: HHMM  # hospital local time on `date`, when booking for the session stops
    #: What an insured patient pays (医保个人自付); absent when the platform does not say.
    insured_fee_fen: Fen | None = None

    @model_validator(mode="after")
    def _start_before_end(self) -> Slot:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        return self


class SlotList(WireModel):
    """Result of ``reg.slots``."""

    slots: Annotated[list[Slot], Field(max_length=1000)]


class RegBookReq(WireModel):
    """``reg.book``: book a slot for a patient."""

    patient_id: Ident
    slot_id: Ident
    pay_method: Literal["prepaid", "cash", "wechat", "alipay", "later"]
    insured: bool


class Booking(WireModel):
    """Result of ``reg.book``; also an item of ``reg.bookings``."""

    booking_id: Ident
    visit_no: Ident
    queue_no: Annotated[int, Field(ge=0, le=100_000)]
    dept_code: Code
    dept_name: Name
    doctor_name: Name
    title: Short
    date: DateStr
    start: HHMM
    end: HHMM
    location: Text
    #: What the patient pays (for an insured booking: the patient's share only).
    fee_fen: Fen
    # "cancelled" appears in reg.bookings once a booking was cancelled or abandoned.
    status: Literal["booked", "paid", "cancelled"]
    insured: bool | None = None
    #: The part of the fee medical insurance pays (insured bookings).
    insurance_fen: Fen | None = None
    #: When a terminal checked the booking in (预约取号); absent: not checked in.
    checked_in_at: Timestamp | None = None
    #: True once a slip was printed; any later slip is a copy. Absent: the platform
    #: does not say.
    slip_printed: bool | None = None


class RegCancelReq(WireModel):
    """``reg.cancel``: cancel a booking."""

    booking_id: Ident


class CancelResult(WireModel):
    """Result of ``reg.cancel``."""

    booking_id: Ident
    status: Literal["cancelled"]
    refund_fen: Fen
    # The refund, the way it went back, and the prepaid balance after it (when the fee went
    # back to the card): the kiosk shows the new balance and prints a cancellation slip.
    refund_id: Ident | None = None
    refund_method: PayMethod | None = None
    balance_fen: Fen | None = None


class RegCheckinReq(WireModel):
    """``reg.checkin``: check a paid (or free) booking of today in at a terminal (取号)."""

    booking_id: Ident


class RegPrintedReq(WireModel):
    """``reg.printed``: the terminal printed the booking's slip."""

    booking_id: Ident


class RegPrintedResult(WireModel):
    """Result of ``reg.printed``."""

    booking_id: Ident
    printed: Literal[True]


class RegBookingsReq(WireModel):
    """``reg.bookings``: a patient's bookings, optionally on one date."""

    patient_id: Ident
    date: DateStr | None = None


class BookingList(WireModel):
    """Result of ``reg.bookings``."""

    bookings: Annotated[list[Booking], Field(max_length=200)]


class BillListReq(WireModel):
    """``bill.list``: a patient's outstanding bills."""

    patient_id: Ident


class BillItem(WireModel):
    """One line of a bill."""

    name: Text
    qty: Annotated[int, Field(ge=0, le=100_000)]
    unit_price_fen: Fen
    amount_fen: Fen


class Bill(WireModel):
    """One outstanding bill."""

    bill_id: Ident
    date: DateStr
    dept_name: Name
    items: Annotated[list[BillItem], Field(max_length=500)]
    total_fen: Fen
    payable_here: bool


class BillList(WireModel):
    """Result of ``bill.list``."""

    bills: Annotated[list[Bill], Field(max_length=200)]


class PayCreateReq(WireModel):
    """``pay.create``: take a payment; ``auth_code`` is a scanned wallet payment code."""

    patient_id: Ident
    purpose: Literal["registration", "bills", "topup"]
    refs: Annotated[list[Ident], Field(max_length=100)]
    amount_fen: PosFen
    method: PayMethod
    auth_code: AuthCode | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PayCreateReq:
        if self.auth_code is not None and self.method not in ("wechat", "alipay"):
            raise ValueError("auth_code is only for wechat/alipay payments")
        if self.purpose == "topup" and self.method == "prepaid":
            raise ValueError("a top-up cannot be paid from the prepaid balance")
        if self.purpose != "topup" and not self.refs:
            raise ValueError("refs must name the booking or bills being paid")
        return self


class PayStatusReq(WireModel):
    """``pay.status``: the current state of a payment (resolves ``unknown``)."""

    payment_id: Ident


class PayReverseReq(WireModel):
    """``pay.reverse``: reverse (void) a payment whose outcome could not be confirmed."""

    payment_id: Ident


class PaymentResult(WireModel):
    """Result of ``pay.create``, ``pay.status`` and ``pay.reverse``."""

    payment_id: Ident
    state: Literal["approved", "declined", "pending", "unknown", "reversed"]
    amount_fen: Fen
    method: PayMethod
    txn_id: Ident | None = None
    balance_fen: Fen | None = None
    reason: Text | None = None


class PayRefundReq(WireModel):
    """``pay.refund``: refund all or part of a payment."""

    payment_id: Ident
    amount_fen: PosFen
    reason: Text


class RefundResult(WireModel):
    """Result of ``pay.refund``."""

    refund_id: Ident
    payment_id: Ident
    amount_fen: Fen
    state: Literal["refunded"]


class PayListReq(WireModel):
    """``pay.list``: a patient's payments, newest first (a desk picks one to refund or reprint)."""

    patient_id: Ident


class PaymentSummary(WireModel):
    """One payment in a ``pay.list`` result; ``refundable_fen`` is what may still go back."""

    payment_id: Ident
    created_at: Timestamp
    purpose: Literal["registration", "bills", "topup"]
    method: PayMethod
    amount_fen: Fen
    refunded_fen: Fen
    refundable_fen: Fen
    state: Literal["approved", "declined", "pending", "unknown", "reversed"]
    txn_id: Ident | None = None


class PaymentList(WireModel):
    """Result of ``pay.list``."""

    payments: Annotated[list[PaymentSummary], Field(max_length=200)]


class ReportListReq(WireModel):
    """``report.list``: by patient, or by the barcode on a specimen tube (exactly one)."""

    patient_id: Ident | None = None
    specimen_barcode: Ident | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ReportListReq:
        if (self.patient_id is None) == (self.specimen_barcode is None):
            raise ValueError("give exactly one of patient_id and specimen_barcode")
        return self


class ReportSummary(WireModel):
    """One report in a list."""

    report_no: Ident
    title: Text
    specimen: Name
    status: Literal["pending", "ready"]
    printed: bool
    reported_at: Timestamp | None = None


class ReportList(WireModel):
    """Result of ``report.list``."""

    reports: Annotated[list[ReportSummary], Field(max_length=500)]


class ReportFetchReq(WireModel):
    """``report.fetch``: the full content of a ready report."""

    report_no: Ident


class ReportItem(WireModel):
    """One measured item of a lab report; value/range are text as printed (``<0.5``)."""

    code: Code
    name: Text
    value: Annotated[str, StringConstraints(max_length=64, pattern=_NO_CONTROL)]
    unit: Annotated[str, StringConstraints(max_length=32, pattern=_NO_CONTROL)]
    ref_range: Annotated[str, StringConstraints(max_length=64, pattern=_NO_CONTROL)]
    flag: Literal["", "H", "L"]


class Report(WireModel):
    """Result of ``report.fetch``; ``age`` is text as the lab prints it (``35岁``, ``3月``)."""

    report_no: Ident
    title: Text
    patient_name: Name
    sex: Sex
    age: Short
    dept_name: Name
    specimen: Name
    sampled_at: Timestamp
    reported_at: Timestamp
    items: Annotated[list[ReportItem], Field(max_length=500)]
    doctor: Name
    verify_url: Annotated[
        str, StringConstraints(max_length=512, pattern=r"^https?://[\x21-\x7e]+$")
    ]


class ReportPrintedReq(WireModel):
    """``report.printed``: the device printed the report."""

    report_no: Ident


class ReportPrintedResult(WireModel):
    """Result of ``report.printed``."""

    report_no: Ident
    printed: Literal[True]


class HotlistDeltaReq(WireModel):
    """``hotlist.delta``: changes to the lost-card list since a version."""

    since_version: Count


class HotlistDelta(WireModel):
    """Result of ``hotlist.delta``; with ``full`` the device replaces its list by ``added``."""

    version: Count
    full: bool
    added: Annotated[list[CardNo], Field(max_length=10_000)]
    removed: Annotated[list[CardNo], Field(max_length=10_000)]

    @model_validator(mode="after")
    def _full_has_no_removals(self) -> HotlistDelta:
        if self.full and self.removed:
            raise ValueError("a full list has no removals")
        return self


class StaffLoginReq(WireModel):
    """``staff.login``: a cashier signs in with badge and PIN."""

    badge: Ident
    pin: Pin


class StaffInfo(WireModel):
    """Result of ``staff.login``; central adds the session every staff request then carries.

    ``session_token`` goes in the ``auth`` field of the desk's later envelopes; it is bound
    to the device and the badge, and ends at ``staff.logout``, after ``expires_at`` or when
    it stays unused for central's idle limit.
    """

    staff_id: Ident
    name: Name
    role: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")]
    session_token: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,128}$")] | None = (
        None)
    expires_at: Timestamp | None = None


class StaffLogoutReq(WireModel):
    """``staff.logout``: end the staff session named by the envelope's ``auth`` (empty body)."""


class StaffLogoutResult(WireModel):
    """Result of ``staff.logout``."""

    ended: bool


class StaffSessionReq(WireModel):
    """``staff.session``: is the session in the envelope's ``auth`` still live? (empty body)"""


class StaffSessionInfo(WireModel):
    """Result of ``staff.session``: who is signed in at this desk, until when."""

    staff_id: Ident
    name: Name
    expires_at: Timestamp


_Pem = Annotated[str, StringConstraints(min_length=64, max_length=16_384)]
_CommandId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]


class CertRenewReq(WireModel):
    """``device.cert_renew``: a new CSR from a device's new key (``cert.rotate``)."""

    csr: _Pem
    command_id: _CommandId | None = None


class CertRenewResult(WireModel):
    """The new certificate, the chain to trust, and when it expires."""

    cert: _Pem
    chain: Annotated[str, StringConstraints(min_length=64, max_length=65_536)]
    not_after: Timestamp


class LogBundleReq(WireModel):
    """``device.log_bundle``: a masked, gzip'd, base64 log excerpt (``logs.collect``)."""

    command_id: _CommandId
    lines: Annotated[int, Field(ge=0, le=5000)]
    gzip_b64: Annotated[str, StringConstraints(max_length=180_000,
                                               pattern=r"^[A-Za-z0-9+/]*={0,2}$")]


class LogBundleResult(WireModel):
    """Central kept the bundle: its size and SHA-256."""

    size: Annotated[int, Field(ge=0)]
    sha256: Hash256


#: type → (body model, result model) of every request a device may send.
REQUESTS: Final[dict[str, tuple[type[BaseModel], type[BaseModel]]]] = {
    "patient.identify": (PatientIdentifyReq, PatientInfo),
    "reg.departments": (RegDepartmentsReq, DepartmentList),
    "reg.slots": (RegSlotsReq, SlotList),
    "reg.book": (RegBookReq, Booking),
    "reg.cancel": (RegCancelReq, CancelResult),
    "reg.bookings": (RegBookingsReq, BookingList),
    "reg.checkin": (RegCheckinReq, Booking),
    "reg.printed": (RegPrintedReq, RegPrintedResult),
    "bill.list": (BillListReq, BillList),
    "pay.create": (PayCreateReq, PaymentResult),
    "pay.status": (PayStatusReq, PaymentResult),
    "pay.reverse": (PayReverseReq, PaymentResult),
    "pay.refund": (PayRefundReq, RefundResult),
    "pay.list": (PayListReq, PaymentList),
    "report.list": (ReportListReq, ReportList),
    "report.fetch": (ReportFetchReq, Report),
    "report.printed": (ReportPrintedReq, ReportPrintedResult),
    "hotlist.delta": (HotlistDeltaReq, HotlistDelta),
    "staff.login": (StaffLoginReq, StaffInfo),
    "staff.logout": (StaffLogoutReq, StaffLogoutResult),
    "staff.session": (StaffSessionReq, StaffSessionInfo),
    "device.cert_renew": (CertRenewReq, CertRenewResult),
    "device.log_bundle": (LogBundleReq, LogBundleResult),
}

#: Requests central answers itself (its own state), never forwarded to the platform.
CENTRAL_REQUESTS: Final = frozenset({"staff.logout", "staff.session", "device.cert_renew",
                                     "device.log_bundle"})

# --------------------------------------------------------------------------- replies


class ErrorCode(StrEnum):
    """Error codes of an error reply (docs/protocol.md, "Reply envelope")."""

    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TYPE = "unknown_type"
    UNAUTHORIZED = "unauthorized"
    DUPLICATE_MISMATCH = "duplicate_mismatch"
    EXPIRED = "expired"
    REJECTED = "rejected"
    PLATFORM_UNAVAILABLE = "platform_unavailable"
    OUTCOME_UNKNOWN = "outcome_unknown"
    #: Central's policy does not allow this device (by its role) or this staff session to
    #: make the request (central/authz.py).
    FORBIDDEN = "forbidden"
    #: A staff request without a valid session: sign in again.
    SESSION_EXPIRED = "session_expired"
    #: Too many failed sign-ins for this badge or device: wait, or ask an administrator.
    THROTTLED = "throttled"


class ErrorInfo(WireModel):
    """The ``error`` object of an error reply."""

    # Not strict: the wire carries the code as a string and the model holds the enum.
    code: ErrorCode = Field(strict=False)
    message: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=_NO_CONTROL)]
    message_zh: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=_NO_CONTROL)]
    retryable: bool


class ReplyOk(WireModel):
    """Body of a successful reply: ``{"status": "ok", "result": {...}}``."""

    status: Literal["ok"] = "ok"
    result: dict[str, JsonValue]


class ReplyError(WireModel):
    """Body of an error reply: ``{"status": "error", "error": {...}}``."""

    status: Literal["error"] = "error"
    error: ErrorInfo


# --------------------------------------------------------------------------- events


class CardInserted(WireModel):
    """``card.inserted``: a card was put into a reader."""

    reader: Text
    atr: Annotated[str, StringConstraints(pattern=r"^(?:[0-9A-Fa-f]{2}){2,33}$")]


class CardRemoved(WireModel):
    """``card.removed``: the card left the reader."""

    reader: Text


class CardReadFailed(WireModel):
    """``card.read_failed``: reading the card failed; ``code`` is the card layer's error code."""

    reader: Text
    code: Code


class PrintDone(WireModel):
    """``print.done``: a document came out of the printer."""

    # "copy" on the wire; renamed here because BaseModel.copy() exists.
    model_config = ConfigDict(populate_by_name=True)

    job_id: Ident
    doc_kind: Short
    is_copy: bool = Field(alias="copy")


class PrintFailed(WireModel):
    """``print.failed``: a print job failed."""

    job_id: Ident
    reason: Text


class PrinterStatus(WireModel):
    """``printer.status`` event and the ``printer`` part of telemetry.

    ``paper`` may also be ``unknown`` (printer offline) — an addition to the first catalogue.
    """

    online: bool
    paper: Literal["ok", "near_end", "out", "unknown"]
    cover_open: bool
    cutter_error: bool


class Alarm(WireModel):
    """``alarm``: something a technician must look at."""

    code: Code
    severity: Literal["info", "warning", "error", "critical"]
    message: Text


class AuditRecord(WireModel):
    """``audit``: one record of the device's hash-chained audit log."""

    seq: Count
    prev_hash: Hash256
    hash: Hash256
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
    detail: dict[str, JsonValue]
    # Added after the first catalogue, optional so older devices stay valid: the hashed
    # record's time (RFC 3339 UTC) and actor, without which central cannot recompute the hash.
    ts: Short | None = None
    actor: Ident | None = None


#: type → body model of every event on ``up/event``.
EVENTS: Final[dict[str, type[BaseModel]]] = {
    "card.inserted": CardInserted,
    "card.removed": CardRemoved,
    "card.read_failed": CardReadFailed,
    "print.done": PrintDone,
    "print.failed": PrintFailed,
    "printer.status": PrinterStatus,
    "alarm": Alarm,
    "audit": AuditRecord,
}

# --------------------------------------------------------------------------- telemetry, state


class Telemetry(WireModel):
    """``telemetry`` on ``up/telemetry`` (QoS 0): periodic health metrics."""

    uptime_s: Count
    cpu_temp_c: Annotated[float, Field(ge=-50, le=150)] | None = None
    disk_free_mb: Count
    outbox_depth: Count
    printer: PrinterStatus
    reader_present: bool
    # Added after the first catalogue, optional so older devices stay valid: the SAM's state
    # as the card service reports it (ok, missing, pin_blocked…) and the 1-minute load average.
    sam_state: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] | None = None
    load_1m: Annotated[float, Field(ge=0, le=10_000)] | None = None


class StateBirth(WireModel):
    """Retained ``state`` published on connect."""

    online: Literal[True]
    boot_seq: Count
    version: Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z.+_-]{1,32}$")]
    role: Literal["kiosk", "cashier"]


class StateWill(WireModel):
    """Retained ``state`` the broker publishes as the Will when the device drops."""

    online: Literal[False]
    boot_seq: Count


class HotlistNotice(WireModel):
    """``hotlist.notice`` on ``fleet/hotlist`` (retained): the current lost-card list version."""

    version: Count


# --------------------------------------------------------------------------- helpers

_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, type_: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidBody(type_, e.errors()) from e


def _body_dict(type_: str, model: type[BaseModel], body: Mapping[str, Any] | BaseModel) -> Any:
    if isinstance(body, BaseModel) and not isinstance(body, model):
        raise InvalidBody(
            type_, [{"loc": (), "type": "model_type", "msg": f"expected {model.__name__}"}]
        )
    data = body if isinstance(body, BaseModel) else _validate(model, dict(body), type_)
    return dump_body(data)


def parse_request(env: Envelope) -> BaseModel:
    """Validate a request body against its model; raise UnknownMessageType/InvalidBody."""
    entry = REQUESTS.get(env.type)
    if entry is None:
        raise UnknownMessageType(env.type, expected="request")
    return _validate(entry[0], env.body, env.type)


def make_request(
    type_: str,
    dev: str,
    body: Mapping[str, Any] | BaseModel,
    *,
    now: datetime,
    id: str | None = None,
    exp: datetime | str | None = None,
    auth: str | None = None,
) -> Envelope:
    """Build a request envelope after checking the body against the request model."""
    entry = REQUESTS.get(type_)
    if entry is None:
        raise UnknownMessageType(type_, expected="request")
    return new_envelope(type_, dev, _body_dict(type_, entry[0], body), now=now, id=id, exp=exp,
                        auth=auth)


def parse_event(env: Envelope) -> BaseModel:
    """Validate an event envelope's body; raise UnknownMessageType/InvalidBody."""
    model = EVENTS.get(env.type)
    if model is None:
        raise UnknownMessageType(env.type, expected="event")
    return _validate(model, env.body, env.type)


def make_event(
    type_: str,
    dev: str,
    body: Mapping[str, Any] | BaseModel,
    *,
    now: datetime,
    id: str | None = None,
) -> Envelope:
    """Build an event envelope after checking the body against the event model."""
    model = EVENTS.get(type_)
    if model is None:
        raise UnknownMessageType(type_, expected="event")
    return new_envelope(type_, dev, _body_dict(type_, model, body), now=now, id=id)


def parse_telemetry(env: Envelope) -> Telemetry:
    """Validate a telemetry envelope's body."""
    if env.type != TELEMETRY_TYPE:
        raise UnknownMessageType(env.type, expected="telemetry")
    return _validate(Telemetry, env.body, env.type)


def parse_state(env: Envelope) -> StateBirth | StateWill:
    """Validate a state envelope's body as a birth (online) or a will (offline)."""
    if env.type != STATE_TYPE:
        raise UnknownMessageType(env.type, expected="state")
    online = env.body.get("online")
    if online is True:
        return _validate(StateBirth, env.body, env.type)
    if online is False:
        return _validate(StateWill, env.body, env.type)
    raise InvalidBody(env.type, [{"loc": ("online",), "type": "bool_type", "msg": "need bool"}])


def _reply(req_env: Envelope, body: dict[str, Any], now: datetime, id: str | None) -> Envelope:
    return new_envelope(REPLY_TYPE, req_env.dev, body, now=now, id=id, corr=req_env.id)


def make_reply_ok(
    req_env: Envelope,
    result: Mapping[str, Any] | BaseModel,
    *,
    now: datetime,
    id: str | None = None,
) -> Envelope:
    """Build the ok reply to a request; the result is checked against the request's result model."""
    entry = REQUESTS.get(req_env.type)
    if entry is None:
        raise UnknownMessageType(req_env.type, expected="request")
    result_type = f"{req_env.type}.result"
    result_dict = _body_dict(result_type, entry[1], result)
    return _reply(req_env, {"status": "ok", "result": result_dict}, now, id)


def make_reply_error(
    req_env: Envelope,
    code: ErrorCode | str,
    message: str,
    message_zh: str,
    retryable: bool,
    *,
    now: datetime,
    id: str | None = None,
) -> Envelope:
    """Build the error reply to a request (works for any request type, even unknown ones)."""
    info = _validate(
        ErrorInfo,
        {"code": code, "message": message, "message_zh": message_zh, "retryable": retryable},
        REPLY_TYPE,
    )
    return _reply(req_env, {"status": "error", "error": dump_body(info)}, now, id)


def make_reply_for_error(
    req_env: Envelope,
    err: ProtocolError,
    *,
    now: datetime,
    id: str | None = None,
) -> Envelope:
    """Build the error reply for a ProtocolError raised while handling ``req_env``."""
    return make_reply_error(
        req_env, err.reply_code, err.message, err.message_zh, err.retryable, now=now, id=id
    )


def parse_reply(env: Envelope) -> ReplyOk | ReplyError:
    """Validate a reply envelope; raise UnknownMessageType, MalformedEnvelope or InvalidBody."""
    if env.type != REPLY_TYPE:
        raise UnknownMessageType(env.type, expected="reply")
    if env.corr is None:
        raise MalformedEnvelope(
            "reply without corr", errors=[{"loc": ("corr",), "type": "missing"}]
        )
    status = env.body.get("status")
    if status == "ok":
        return _validate(ReplyOk, env.body, REPLY_TYPE)
    if status == "error":
        return _validate(ReplyError, env.body, REPLY_TYPE)
    raise InvalidBody(
        REPLY_TYPE, [{"loc": ("status",), "type": "literal_error", "msg": "need 'ok' or 'error'"}]
    )


def parse_result(request_type: str, reply: ReplyOk) -> BaseModel:
    """Validate an ok reply's result against the result model of ``request_type``."""
    entry = REQUESTS.get(request_type)
    if entry is None:
        raise UnknownMessageType(request_type, expected="request")
    return _validate(entry[1], reply.result, f"{request_type}.result")
