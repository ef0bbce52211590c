"""Business rules of the reference platform (synchronous; called from a worker thread).

Every operation runs in one ``BEGIN IMMEDIATE`` transaction. Mutating operations are keyed:
the stored outcome of a key is replayed, a different body under the same key is refused
with ``duplicate_mismatch``, and business refusals roll back to a savepoint so a refusal
never leaves half an effect behind.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from pydantic import BaseModel

from central.platform.sim import data
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.errors import SimError, business, not_found
from central.platform.sim.ids import is_valid_id_number, parse_ehc_qr, wallet_of
from central.platform.sim.models import Schema, migrate
from central.platform.sim.schemas import (
    AdminPatientList,
    AdminPatientOut,
    BillItemOut,
    BillOut,
    BillsOut,
    BookingOut,
    BookingsOut,
    BookRequest,
    CancelOut,
    DepartmentOut,
    DepartmentsOut,
    HotlistDeltaOut,
    HotlistUpdateOut,
    HotlistUpdateRequest,
    IdentifyRequest,
    PatientCreateRequest,
    PatientOut,
    PaymentCreateRequest,
    PaymentOut,
    PaymentsOut,
    PaymentSummaryOut,
    PrintedOut,
    RefundOut,
    RefundRequest,
    ReportItemOut,
    ReportOut,
    ReportsOut,
    ReportSummaryOut,
    SlipPrintedOut,
    SlotOut,
    SlotsOut,
    StaffCreateRequest,
    StaffLoginRequest,
    StaffOut,
)
from central.platform.sim.security import hash_pin, mask_auth_code, verify_pin
from central.platform.sim.seed import ensure_schedule, iso_utc, seed_database, seed_demo_records

__all__ = ["Clock", "Outcome", "PlatformService"]

Clock = Callable[[], datetime]
#: What an operation returns: a result, or an error to answer *after* committing.
Outcome = BaseModel | SimError

_TOPUP_MAX_FEN = 1_000_000
#: ``body_hash`` of a pay.create key closed before any payment was taken under it.
_CLOSED = "closed-by-reverse"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


class PlatformService:
    """The platform's operations over one database."""

    def __init__(self, schema: Schema, settings: PlatformSimSettings, clock: Clock) -> None:
        self.s = schema
        self.settings = settings
        self.zone = settings.zone
        self._clock = clock

    # --- time ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """The injected clock, as an aware datetime."""
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the platform clock must return aware datetimes")
        return moment

    def today(self) -> date:
        """Today in the platform's time zone."""
        return self.now().astimezone(self.zone).date()

    def _local(self, day: str, hhmm: str) -> datetime:
        return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmm), self.zone)

    # --- lifecycle and transactions ---------------------------------------------------------

    def prepare(self) -> int:
        """Run migrations and seed an empty database; return the schema version."""
        version = migrate(self.s, iso_utc(self.now()))
        with self.s.db.connection_context(), self.s.db.atomic("IMMEDIATE"):
            seed_database(self.s, seed=self.settings.seed, now=self.now(), zone=self.zone,
                          demo_pin=self.settings.demo_staff_pin)
        return version

    def execute(
        self,
        op: str,
        fn: Callable[[], Outcome],
        *,
        key: str | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """Run ``fn`` in a transaction; with a ``fingerprint`` it is keyed (idempotent)."""
        s = self.s
        with s.db.connection_context(), s.db.atomic("IMMEDIATE"):
            body_hash = ""
            if fingerprint is not None:
                if not key:
                    raise SimError(400, "missing_idempotency_key",
                                   f"{op} needs an Idempotency-Key header",
                                   "缺少幂等键（Idempotency-Key）")
                body_hash = hashlib.sha256(_canonical([op, fingerprint]).encode()).hexdigest()
                stored = s.IdempotencyRow.get_or_none(s.IdempotencyRow.key == key)
                if stored is not None:
                    # A payment key closed by reverse-by-key refuses every later create.
                    closed = stored.body_hash == _CLOSED and stored.op == op
                    if stored.body_hash != body_hash and not closed:
                        raise SimError(409, "duplicate_mismatch",
                                       "this Idempotency-Key was used with a different request",
                                       "同一幂等键对应了不同的请求内容")
                    return stored.status_code, json.loads(stored.response)
            try:
                with s.db.savepoint():
                    outcome = fn()
            except SimError as exc:
                outcome = exc
            payload: Any
            if isinstance(outcome, SimError):
                status, payload = outcome.status, outcome.body()
            else:
                status, payload = 200, outcome.model_dump(mode="json")
            if fingerprint is not None and status < 500:
                s.IdempotencyRow.create(key=key, op=op, body_hash=body_hash,
                                        status_code=status, response=_canonical(payload),
                                        created_at=iso_utc(self.now()))
            return status, payload

    def _effect(self, op: str) -> None:
        c = self.s.EffectCounter
        if c.update(count=c.count + 1).where(c.op == op).execute() == 0:
            c.create(op=op, count=1)

    def _next(self, name: str) -> int:
        st = self.s.Setting
        row = st.get_or_none(st.key == f"seq:{name}")
        value = int(row.value) + 1 if row else 1
        st.insert(key=f"seq:{name}", value=str(value)).on_conflict_replace().execute()
        return value

    # --- patients -----------------------------------------------------------------------

    def _card_blocked(self, card_no: str) -> bool:
        h = self.s.HotlistChange
        last = h.select().where(h.card_no == card_no).order_by(h.version.desc()).first()
        return last is not None and last.action == "add"

    def _patient(self, patient_id: str) -> Any:
        p = self.s.PatientRow.get_or_none(self.s.PatientRow.patient_id == patient_id)
        if p is None:
            raise not_found("patient", "患者", patient_id)
        return p

    @staticmethod
    def _patient_out(p: Any) -> PatientOut:
        return PatientOut(patient_id=p.patient_id, name=p.name, sex=p.sex,
                          birth_date=p.birth_date, id_number=p.id_number, card_no=p.card_no,
                          phone=p.phone, balance_fen=p.balance_fen, insured=p.insured)

    def identify(self, req: IdentifyRequest) -> PatientOut:
        """``patient.identify``: by card number, ID number or e-health QR."""
        P = self.s.PatientRow
        if req.by == "card":
            patient = P.get_or_none(P.card_no == req.value)
        elif req.by == "id_number":
            if not is_valid_id_number(req.value.upper()):
                raise business("invalid_id_number", "ID number fails the GB 11643 check",
                               "身份证号码校验位错误")
            patient = P.get_or_none(P.id_number == req.value.upper())
        else:
            ehc_id = parse_ehc_qr(req.value)
            if ehc_id is None:
                raise business("invalid_qr", "not an e-health card QR code",
                               "不是有效的电子健康卡二维码")
            patient = P.get_or_none(P.ehc_id == ehc_id)
        if patient is None:
            raise not_found("patient", "患者", req.value if req.by != "id_number" else "***")
        if self._card_blocked(patient.card_no):
            raise business("card_blocked", "this card is on the lost-card list",
                           "该卡已挂失，请到人工窗口办理")
        return self._patient_out(patient)

    # --- departments, slots -------------------------------------------------------------------

    def departments(self) -> DepartmentsOut:
        """``reg.departments``."""
        d = self.s.DepartmentRow
        return DepartmentsOut(departments=[
            DepartmentOut(code=r.code, name=r.name, name_en=r.name_en, location=r.location,
                          floor=r.floor)
            for r in d.select().order_by(d.position)
        ])

    def _check_day(self, day: date) -> None:
        today = self.today()
        if not today <= day < today + timedelta(days=data.SCHEDULE_DAYS):
            raise business("date_out_of_range",
                           f"schedules are published for {today} to "
                           f"{today + timedelta(days=data.SCHEDULE_DAYS - 1)}",
                           "只能预约今天起7天内的号源")
        ensure_schedule(self.s, self.settings.seed, day)

    def _closed(self, slot: Any) -> bool:
        return self.now() >= self._local(slot.date, slot.closes_at)

    def slots(self, dept_code: str, day: date) -> SlotsOut:
        """``reg.slots``: a department's sessions on one day (remaining 0 once closed)."""
        s = self.s
        if s.DepartmentRow.get_or_none(s.DepartmentRow.code == dept_code) is None:
            raise not_found("department", "科室", dept_code)
        self._check_day(day)
        rank = {t.name: i for i, t in enumerate(data.TITLES)}
        rows = []
        query = (s.SlotRow.select(s.SlotRow, s.DoctorRow)
                 .join(s.DoctorRow, on=(s.SlotRow.doctor_id == s.DoctorRow.doctor_id))
                 .where((s.SlotRow.dept_code == dept_code) & (s.SlotRow.date == day.isoformat()))
                 .objects())
        for r in query:
            remaining = 0 if self._closed(r) else max(0, r.capacity - r.booked)
            rows.append((r.period, rank.get(r.title, 9), r.doctor_id, SlotOut(
                slot_id=r.slot_id, doctor_id=r.doctor_id, doctor_name=r.name, title=r.title,
                specialty=r.specialty, date=r.date, period=r.period, start=r.start, end=r.end,
                remaining=remaining, fee_fen=r.fee_fen, closes_at=r.closes_at,
                insured_fee_fen=self._insured_share(r.fee_fen))))
        rows.sort(key=lambda t: t[:3])
        return SlotsOut(slots=[t[3] for t in rows])

    # --- bookings -------------------------------------------------------------------------

    def _insured_share(self, fee_fen: int) -> int:
        """What an insured patient pays of ``fee_fen`` (rounded half up to the fen)."""
        return (fee_fen * self.settings.insured_share_pct + 50) // 100

    def _slot(self, slot_id: str) -> Any:
        s = self.s
        try:
            day = datetime.strptime(slot_id[:8], "%Y%m%d").date()
        except ValueError:
            raise not_found("slot", "号源", slot_id) from None
        today = self.today()
        if today <= day < today + timedelta(days=data.SCHEDULE_DAYS):
            ensure_schedule(s, self.settings.seed, day)
        slot = s.SlotRow.get_or_none(s.SlotRow.slot_id == slot_id)
        if slot is None:
            raise not_found("slot", "号源", slot_id)
        return slot

    def _booking_out(self, b: Any) -> BookingOut:
        s = self.s
        slot = s.SlotRow.get(s.SlotRow.slot_id == b.slot_id)
        doctor = s.DoctorRow.get(s.DoctorRow.doctor_id == slot.doctor_id)
        dept = s.DepartmentRow.get(s.DepartmentRow.code == slot.dept_code)
        return BookingOut(booking_id=b.booking_id, visit_no=b.visit_no, queue_no=b.queue_no,
                          dept_code=dept.code, dept_name=dept.name, doctor_name=doctor.name,
                          title=doctor.title, date=slot.date, start=slot.start, end=slot.end,
                          location=dept.location, fee_fen=b.fee_fen, status=b.status,
                          insured=b.insured, insurance_fen=b.insurance_fen,
                          checked_in_at=b.checked_in_at, slip_printed=b.slip_printed)

    def book(self, req: BookRequest) -> BookingOut:
        """``reg.book``: take one number of a session (prepaid bookings are paid at once)."""
        s = self.s
        patient = self._patient(req.patient_id)
        if self._card_blocked(patient.card_no):
            raise business("card_blocked", "this card is on the lost-card list", "该卡已挂失")
        slot = self._slot(req.slot_id)
        if self._closed(slot):
            raise business("slot_closed", "booking for this session has closed", "该时段已停止挂号")
        if req.insured and not patient.insured:
            raise business("not_insured", "the patient has no medical insurance on file",
                           "该患者未参加医保")
        B = s.BookingRow
        if B.select().where((B.patient_id == patient.patient_id) & (B.slot_id == slot.slot_id)
                            & (B.status != "cancelled")).exists():
            raise business("already_booked", "the patient already holds a number here",
                           "您已预约该医生该时段")
        # The conditional UPDATE is the atomic decrement: it cannot oversell even if two
        # writers raced (the IMMEDIATE transaction already serialises them).
        taken = (s.SlotRow.update(booked=s.SlotRow.booked + 1,
                                  next_queue_no=s.SlotRow.next_queue_no + 1)
                 .where((s.SlotRow.slot_id == slot.slot_id)
                        & (s.SlotRow.booked < s.SlotRow.capacity))
                 .execute())
        if taken == 0:
            raise business("slot_full", "no numbers left in this session", "该时段号源已满")
        now = self.now()
        booking_id = f"BK{self.today():%Y%m%d}{self._next('booking'):05d}"
        # Insured: the patient pays only their share; the fund's part is settled with
        # the insurer, not at the terminal.
        fee = self._insured_share(slot.fee_fen) if req.insured else slot.fee_fen
        status, payment_id = "booked", None
        if req.pay_method == "prepaid" and fee > 0:
            if patient.balance_fen < fee:
                raise business("insufficient_balance",
                               f"prepaid balance {patient.balance_fen} < fee {fee}",
                               "预交金余额不足")
            self._adjust_balance(patient.patient_id, -fee)
            payment_id = self._new_payment_row(
                patient.patient_id, "registration", [booking_id], fee, "prepaid",
                state="approved").payment_id
            status = "paid"
        booking = B.create(
            booking_id=booking_id,
            visit_no=f"{date.fromisoformat(slot.date):%Y%m%d}{self._next('visit'):06d}",
            patient_id=patient.patient_id, slot_id=slot.slot_id, queue_no=slot.next_queue_no,
            pay_method=req.pay_method, insured=req.insured, fee_fen=fee,
            insurance_fen=slot.fee_fen - fee, status=status, payment_id=payment_id,
            created_at=iso_utc(now))
        self._effect("reg.book")
        return self._booking_out(booking)

    def cancel(self, booking_id: str) -> CancelOut:
        """``reg.cancel``: give the number back and refund a paid fee."""
        s = self.s
        b = s.BookingRow.get_or_none(s.BookingRow.booking_id == booking_id)
        if b is None:
            raise not_found("booking", "挂号记录", booking_id)
        if b.status == "cancelled":
            raise business("already_cancelled", "the booking is already cancelled", "该挂号已取消")
        if b.checked_in_at:
            raise business("checked_in", "the patient has checked in for this visit",
                           "已取号签到，无法退号，请到人工窗口办理")
        slot = s.SlotRow.get(s.SlotRow.slot_id == b.slot_id)
        if self.now() >= self._local(slot.date, slot.start):
            raise business("too_late_to_cancel", "the session has started",
                           "就诊时段已开始，无法退号")
        refund = 0
        refund_id = method = balance = None
        if b.status == "paid" and b.payment_id:
            pay = s.PaymentRow.get(s.PaymentRow.payment_id == b.payment_id)
            refund, method = b.fee_fen, pay.method
            if pay.method == "prepaid":
                balance = self._adjust_balance(b.patient_id, refund)
            refund_id = f"RF{self.today():%Y%m%d}{self._next('refund'):05d}"
            s.RefundRow.create(refund_id=refund_id,
                               payment_id=pay.payment_id, amount_fen=refund,
                               reason="registration cancelled", created_at=iso_utc(self.now()))
            pay.refunded_fen += refund
            pay.save()
        elif b.payment_id:
            # A wallet payment still in flight for this booking: the booking leaves it.
            b.payment_id = None
        s.SlotRow.update(booked=s.SlotRow.booked - 1).where(
            s.SlotRow.slot_id == slot.slot_id).execute()
        b.status = "cancelled"
        b.save()
        self._effect("reg.cancel")
        return CancelOut(booking_id=b.booking_id, status="cancelled", refund_fen=refund,
                         refund_id=refund_id, refund_method=method, balance_fen=balance)

    def _live_booking(self, booking_id: str) -> Any:
        b = self.s.BookingRow.get_or_none(self.s.BookingRow.booking_id == booking_id)
        if b is None:
            raise not_found("booking", "挂号记录", booking_id)
        if b.status == "cancelled":
            raise business("already_cancelled", "the booking is already cancelled", "该挂号已取消")
        return b

    def checkin(self, booking_id: str) -> BookingOut:
        """``reg.checkin``: 预约取号 — a paid (or free) booking of today joins the queue."""
        s = self.s
        b = self._live_booking(booking_id)
        slot = s.SlotRow.get(s.SlotRow.slot_id == b.slot_id)
        if slot.date != self.today().isoformat():
            raise business("not_today", f"the booking is for {slot.date}",
                           "只能在就诊当天取号")
        if b.status != "paid" and b.fee_fen > 0:
            raise business("not_paid", "the registration fee is not paid yet", "挂号费尚未支付")
        if not b.checked_in_at:  # a second check-in keeps the first time
            b.checked_in_at = iso_utc(self.now())
            b.save()
            self._effect("reg.checkin")
        return self._booking_out(b)

    def slip_printed(self, booking_id: str) -> SlipPrintedOut:
        """``reg.printed``: the slip came out; any later slip is a copy."""
        b = self._live_booking(booking_id)
        if not b.slip_printed:
            b.slip_printed = True
            b.save()
            self._effect("reg.printed")
        return SlipPrintedOut(booking_id=booking_id, printed=True)

    def bookings(self, patient_id: str, day: date | None) -> BookingsOut:
        """``reg.bookings``: a patient's bookings, optionally of one day."""
        s = self.s
        self._patient(patient_id)
        query = (s.BookingRow.select(s.BookingRow)
                 .join(s.SlotRow, on=(s.BookingRow.slot_id == s.SlotRow.slot_id))
                 .where(s.BookingRow.patient_id == patient_id))
        if day is not None:
            query = query.where(s.SlotRow.date == day.isoformat())
        return BookingsOut(bookings=[self._booking_out(b)
                                     for b in query.order_by(s.BookingRow.created_at,
                                                             s.BookingRow.booking_id)])

    # --- bills ----------------------------------------------------------------------------

    def bills(self, patient_id: str) -> BillsOut:
        """``bill.list``: unpaid bills (those over the kiosk limit go to the desk)."""
        s = self.s
        self._patient(patient_id)
        out = []
        bills = s.BillRow.select().where((s.BillRow.patient_id == patient_id)
                                         & (s.BillRow.status == "unpaid"))
        for bill in bills.order_by(s.BillRow.bill_id):
            items = (s.BillItemRow.select().where(s.BillItemRow.bill_id == bill.bill_id)
                     .order_by(s.BillItemRow.position))
            out.append(BillOut(
                bill_id=bill.bill_id, date=bill.date, dept_name=bill.dept_name,
                items=[BillItemOut(name=i.name, qty=i.qty, unit_price_fen=i.unit_price_fen,
                                   amount_fen=i.amount_fen) for i in items],
                total_fen=bill.total_fen,
                payable_here=bill.total_fen <= data.KIOSK_BILL_LIMIT_FEN))
        return BillsOut(bills=out)

    # --- payments -------------------------------------------------------------------------

    def _adjust_balance(self, patient_id: str, delta: int) -> int:
        P = self.s.PatientRow
        if delta < 0:
            changed = (P.update(balance_fen=P.balance_fen + delta)
                       .where((P.patient_id == patient_id) & (P.balance_fen >= -delta))
                       .execute())
            if not changed:
                raise business("insufficient_balance", "prepaid balance is too low",
                               "预交金余额不足")
        else:
            P.update(balance_fen=P.balance_fen + delta).where(P.patient_id == patient_id).execute()
        return P.get(P.patient_id == patient_id).balance_fen

    def _new_payment_row(self, patient_id: str, purpose: str, refs: list[str], amount: int,
                         method: str, *, state: str, resolves_to: str | None = None,
                         reason: str | None = None, auth_code: str | None = None) -> Any:
        now = self.now()
        seq = self._next("payment")
        payment_id = f"PAY{now.astimezone(self.zone):%Y%m%d}{seq:06d}"
        resolves_at = None
        if resolves_to is not None:
            resolves_at = iso_utc(now + timedelta(seconds=self.settings.wallet_pending_s))
        row = self.s.PaymentRow.create(
            payment_id=payment_id, patient_id=patient_id, purpose=purpose,
            refs=json.dumps(refs), amount_fen=amount, method=method, state=state,
            resolves_to=resolves_to, resolves_at=resolves_at, reason=reason,
            auth_code_masked=mask_auth_code(auth_code) if auth_code else None,
            created_at=iso_utc(now), local_date=now.astimezone(self.zone).date().isoformat())
        if state == "approved":
            row.txn_id = self._txn_id(row)
            row.save()
        return row

    def _txn_id(self, pay: Any) -> str:
        day = self.now().astimezone(self.zone)
        digest = int(hashlib.sha256(pay.payment_id.encode()).hexdigest()[:12], 16) % 10**10
        if pay.method == "wechat":
            return f"42000{day:%Y%m%d}{digest:010d}"
        if pay.method == "alipay":
            return f"{day:%Y%m%d}22001{digest:010d}"
        return f"HIS{pay.payment_id[3:]}"

    def _ref_rows(self, purpose: str, patient_id: str, refs: list[str]) -> tuple[list[Any], int]:
        s = self.s
        if purpose == "topup":
            if refs:
                raise SimError(400, "invalid_request", "a top-up takes no refs",
                               "充值不应附带单据号")
            return [], 0
        if not refs or len(set(refs)) != len(refs):
            raise SimError(400, "invalid_request", "refs must list distinct ids",
                           "请指定要支付的单据（不可重复）")
        model = s.BookingRow if purpose == "registration" else s.BillRow
        key = model.booking_id if purpose == "registration" else model.bill_id
        rows = list(model.select().where(key.in_(refs)))
        found = {r.booking_id if purpose == "registration" else r.bill_id for r in rows}
        missing = [r for r in refs if r not in found]
        if missing:
            raise not_found("booking" if purpose == "registration" else "bill",
                            "挂号记录" if purpose == "registration" else "账单", missing[0])
        total = 0
        for r in rows:
            if r.patient_id != patient_id:
                raise business("invalid_refs", "a ref belongs to another patient",
                               "单据不属于该患者")
            if r.status != ("booked" if purpose == "registration" else "unpaid"):
                raise business("already_paid", "a ref is already paid or cancelled",
                               "单据已支付或已取消")
            if r.payment_id:
                raise business("payment_in_progress", "another payment for this is in progress",
                               "该单据有正在确认中的支付，请勿重复支付")
            total += r.fee_fen if purpose == "registration" else r.total_fen
        return rows, total

    def _apply_approved(self, pay: Any) -> None:
        s = self.s
        refs = json.loads(pay.refs)
        if pay.purpose == "registration":
            s.BookingRow.update(status="paid", payment_id=pay.payment_id).where(
                s.BookingRow.booking_id.in_(refs) & (s.BookingRow.status == "booked")).execute()
        elif pay.purpose == "bills":
            s.BillRow.update(status="paid", payment_id=pay.payment_id).where(
                s.BillRow.bill_id.in_(refs)).execute()
        else:
            self._adjust_balance(pay.patient_id, pay.amount_fen)

    def _release_refs(self, pay: Any) -> None:
        s = self.s
        refs = json.loads(pay.refs)
        if pay.purpose == "registration":
            s.BookingRow.update(payment_id=None, status="booked").where(
                s.BookingRow.booking_id.in_(refs) & (s.BookingRow.payment_id == pay.payment_id)
                & (s.BookingRow.status != "cancelled")).execute()
        elif pay.purpose == "bills":
            s.BillRow.update(payment_id=None, status="unpaid").where(
                s.BillRow.bill_id.in_(refs) & (s.BillRow.payment_id == pay.payment_id)).execute()

    def _payment_out(self, pay: Any) -> PaymentOut:
        balance = None
        if pay.method == "prepaid" or pay.purpose == "topup":
            balance = self.s.PatientRow.get(self.s.PatientRow.patient_id == pay.patient_id
                                            ).balance_fen
        return PaymentOut(payment_id=pay.payment_id, state=pay.state, amount_fen=pay.amount_fen,
                          method=pay.method, txn_id=pay.txn_id, balance_fen=balance,
                          reason=pay.reason)

    def pay_create(self, req: PaymentCreateRequest) -> PaymentOut:
        """``pay.create``: charge prepaid balance, record cash, or run a wallet micropay."""
        patient = self._patient(req.patient_id)
        wallet = req.method in ("wechat", "alipay")
        if wallet:
            if not req.auth_code or wallet_of(req.auth_code) != req.method:
                raise business("invalid_auth_code",
                               f"not a valid {req.method} payment code", "付款码无效，请刷新后重试")
        elif req.auth_code is not None:
            raise SimError(400, "invalid_request", "auth_code is only for wechat/alipay",
                           "仅微信/支付宝支付需要付款码")
        if req.purpose == "topup":
            if req.method == "prepaid":
                raise business("invalid_method", "cannot top up from the prepaid balance",
                               "不能用预交金充值")
            if req.amount_fen > _TOPUP_MAX_FEN:
                raise business("amount_too_large", "top-up above the single limit",
                               "超过单笔充值上限")
        rows, due = self._ref_rows(req.purpose, patient.patient_id, req.refs)
        if req.purpose != "topup" and req.amount_fen != due:
            raise business("amount_mismatch", f"amount {req.amount_fen} != due {due}",
                           "支付金额与应付金额不符")
        rule = data.WalletRule("approved", None)
        if wallet and req.auth_code:
            rule = data.WALLET_RULES[req.auth_code[-1]]
        if req.method == "prepaid":
            self._adjust_balance(patient.patient_id, -req.amount_fen)
        pay = self._new_payment_row(patient.patient_id, req.purpose, list(req.refs),
                                    req.amount_fen, req.method, state=rule.state,
                                    resolves_to=rule.resolves_to, reason=rule.reason,
                                    auth_code=req.auth_code)
        if rule.state == "approved":
            self._apply_approved(pay)
        elif rule.state in ("pending", "unknown"):
            # Hold the refs so nobody pays them twice while the patient confirms.
            for r in rows:
                r.payment_id = pay.payment_id
                r.save()
        self._effect("pay.create")
        return self._payment_out(pay)

    def _payment(self, payment_id: str) -> Any:
        pay = self.s.PaymentRow.get_or_none(self.s.PaymentRow.payment_id == payment_id)
        if pay is None:
            raise not_found("payment", "支付记录", payment_id)
        if pay.state in ("pending", "unknown") and pay.resolves_to and pay.resolves_at \
                and iso_utc(self.now()) >= pay.resolves_at:
            pay.state = pay.resolves_to
            pay.resolves_to = pay.resolves_at = None
            if pay.state == "approved":
                pay.txn_id = self._txn_id(pay)
                self._apply_approved(pay)
            else:
                self._release_refs(pay)
            pay.save()
        return pay

    def pay_status(self, payment_id: str) -> PaymentOut:
        """``pay.status``: the current state (a confirmed wallet payment resolves here)."""
        return self._payment_out(self._payment(payment_id))

    def pay_reverse(self, payment_id: str) -> PaymentOut:
        """``pay.reverse``: cancel a pending/unknown or same-day unsettled approved payment."""
        pay = self._payment(payment_id)
        if pay.state == "reversed":
            return self._payment_out(pay)
        if pay.state == "declined":
            raise business("not_reversible", "a declined payment has nothing to reverse",
                           "该支付未成功，无需撤销")
        if pay.state == "approved":
            if pay.local_date < self.today().isoformat():
                raise business("already_settled", "settled payments are refunded, not reversed",
                               "该支付已结算，请走退款流程")
            if pay.refunded_fen:
                raise business("not_reversible", "the payment was partly refunded",
                               "该支付已部分退款，无法撤销")
            if pay.purpose == "topup":
                self._adjust_balance(pay.patient_id, -pay.amount_fen)
            if pay.method == "prepaid":
                self._adjust_balance(pay.patient_id, pay.amount_fen)
        self._release_refs(pay)
        pay.state = "reversed"
        pay.resolves_to = pay.resolves_at = None
        pay.save()
        self._effect("pay.reverse")
        return self._payment_out(pay)

    # Wallets answer orderquery / reverse by the merchant's own order number (out_trade_no);
    # ours is the pay.create Idempotency-Key, which the idempotency table already binds to
    # the stored outcome. Not found here means the platform never took a payment under it.

    def _payment_by_key(self, key: str) -> Any | SimError:
        stored = self.s.IdempotencyRow.get_or_none(self.s.IdempotencyRow.key == key)
        if stored is None or stored.op != "pay.create":
            return not_found("payment with idempotency key", "该订单号的支付", key)
        response = json.loads(stored.response)
        if stored.status_code != 200:
            # Refused (or closed) when it came: nothing was charged under this key.
            return SimError(404, "not_found",
                            f"no payment under key {key!r}: refused with {response['code']}",
                            f"该订单号未产生支付（{response['code']}）")
        return self._payment(response["payment_id"])

    def pay_status_by_key(self, key: str) -> PaymentOut | SimError:
        """``pay.status`` by the pay.create idempotency key (the merchant's order number)."""
        pay = self._payment_by_key(key)
        return pay if isinstance(pay, SimError) else self._payment_out(pay)

    def pay_reverse_by_key(self, key: str) -> PaymentOut | SimError:
        """``pay.reverse`` by idempotency key; an unseen key is closed against later creates."""
        pay = self._payment_by_key(key)
        if not isinstance(pay, SimError):
            return self.pay_reverse(pay.payment_id)
        s = self.s
        if s.IdempotencyRow.get_or_none(s.IdempotencyRow.key == key) is None:
            # Like a wallet reverse of an order still unknown to it: the order number is
            # closed, so a create that arrives late is refused and "not charged" holds.
            closed = SimError(422, "payment_closed",
                              "this payment was reversed before it was taken",
                              "该支付已撤销，请重新发起支付")
            s.IdempotencyRow.create(key=key, op="pay.create", body_hash=_CLOSED,
                                    status_code=closed.status, response=_canonical(closed.body()),
                                    created_at=iso_utc(self.now()))
        # Returned, not raised: the closing row above must commit with the answer.
        return pay

    def pay_list(self, patient_id: str) -> PaymentsOut:
        """``pay.list``: a patient's payments, newest first, with refunded/refundable."""
        s = self.s
        self._patient(patient_id)
        rows = (s.PaymentRow.select().where(s.PaymentRow.patient_id == patient_id)
                .order_by(s.PaymentRow.created_at.desc(), s.PaymentRow.payment_id.desc())
                .limit(200))
        out = []
        for row in rows:
            pay = self._payment(row.payment_id)  # a wallet payment may resolve on reading
            refundable = (pay.amount_fen - pay.refunded_fen
                          if pay.state == "approved" and pay.purpose != "registration" else 0)
            out.append(PaymentSummaryOut(
                payment_id=pay.payment_id, created_at=pay.created_at, purpose=pay.purpose,
                method=pay.method, amount_fen=pay.amount_fen, refunded_fen=pay.refunded_fen,
                refundable_fen=refundable, state=pay.state, txn_id=pay.txn_id))
        return PaymentsOut(payments=out)

    def pay_refund(self, payment_id: str, req: RefundRequest) -> RefundOut:
        """``pay.refund``: return money of an approved bills or top-up payment."""
        pay = self._payment(payment_id)
        if pay.state != "approved":
            raise business("not_refundable", f"payment is {pay.state}", "该支付不可退款")
        if pay.purpose == "registration":
            raise business("use_cancel", "registration fees are refunded by cancelling",
                           "挂号费请通过退号办理退款")
        if req.amount_fen > pay.amount_fen - pay.refunded_fen:
            raise business("refund_exceeds", "refund exceeds the refundable amount",
                           "退款金额超过可退金额")
        if pay.purpose == "topup":
            self._adjust_balance(pay.patient_id, -req.amount_fen)
        elif pay.method == "prepaid":
            self._adjust_balance(pay.patient_id, req.amount_fen)
        refund = self.s.RefundRow.create(
            refund_id=f"RF{self.today():%Y%m%d}{self._next('refund'):05d}",
            payment_id=pay.payment_id, amount_fen=req.amount_fen, reason=req.reason,
            created_at=iso_utc(self.now()))
        pay.refunded_fen += req.amount_fen
        pay.save()
        self._effect("pay.refund")
        return RefundOut(refund_id=refund.refund_id, payment_id=pay.payment_id,
                         amount_fen=req.amount_fen, state="refunded")

    # --- reports --------------------------------------------------------------------------

    def report_list(self, patient_id: str | None, barcode: str | None) -> ReportsOut:
        """``report.list`` by patient or by specimen barcode."""
        R = self.s.ReportRow
        if (patient_id is None) == (barcode is None):
            raise SimError(400, "invalid_request", "give exactly one of patient_id, "
                           "specimen_barcode", "请提供患者号或标本条码之一")
        if patient_id is not None:
            self._patient(patient_id)
            rows = R.select().where(R.patient_id == patient_id)
        else:
            rows = R.select().where(R.specimen_barcode == barcode)
            if not rows.exists():
                raise not_found("specimen", "标本条码", barcode or "")
        return ReportsOut(reports=[
            ReportSummaryOut(report_no=r.report_no, title=r.title, specimen=r.specimen,
                             status="ready" if r.reported_at else "pending",
                             printed=r.printed, reported_at=r.reported_at)
            for r in rows.order_by(R.sampled_at.desc(), R.report_no)
        ])

    def _ready_report(self, report_no: str) -> Any:
        r = self.s.ReportRow.get_or_none(self.s.ReportRow.report_no == report_no)
        if r is None:
            raise not_found("report", "检验报告", report_no)
        if not r.reported_at:
            raise business("report_not_ready", "the report is not ready yet", "报告尚未出具")
        return r

    def report_fetch(self, report_no: str) -> ReportOut:
        """``report.fetch``: the full report for printing."""
        s = self.s
        r = self._ready_report(report_no)
        p = s.PatientRow.get(s.PatientRow.patient_id == r.patient_id)
        born, today = date.fromisoformat(p.birth_date), self.today()
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        if years >= 1:
            age = f"{years}岁"
        else:  # infants: Chinese reports give months (or days) instead of 0岁
            months = (today.year - born.year) * 12 + today.month - born.month
            age = f"{months}个月" if months >= 1 else f"{(today - born).days}天"
        items = (s.ReportItemRow.select().where(s.ReportItemRow.report_no == report_no)
                 .order_by(s.ReportItemRow.position))
        return ReportOut(
            report_no=r.report_no, title=r.title, patient_name=p.name, sex=p.sex, age=age,
            dept_name=r.dept_name, specimen=r.specimen, sampled_at=r.sampled_at,
            reported_at=r.reported_at,
            items=[ReportItemOut(code=i.code, name=i.name, value=i.value, unit=i.unit,
                                 ref_range=i.ref_range, flag=i.flag) for i in items],
            doctor=r.doctor,
            verify_url=f"{self.settings.verify_base_url.rstrip('/')}/{r.report_no}"
                       f"?t={r.verify_token}")

    def report_printed(self, report_no: str) -> PrintedOut:
        """``report.printed``: mark a report printed (repeat prints are copies)."""
        r = self._ready_report(report_no)
        if not r.printed:
            r.printed = True
            r.save()
            self._effect("report.printed")
        return PrintedOut(report_no=report_no, printed=True)

    # --- hot list -------------------------------------------------------------------------

    def _hotlist_version(self) -> int:
        h = self.s.HotlistChange
        return h.select(h.version).order_by(h.version.desc()).scalar() or 0

    def _listed_cards(self) -> list[str]:
        h = self.s.HotlistChange
        last: dict[str, str] = {}
        for c in h.select().order_by(h.version):
            last[c.card_no] = c.action
        return sorted(card for card, action in last.items() if action == "add")

    def hotlist_delta(self, since: int) -> HotlistDeltaOut:
        """``hotlist.delta``: net changes after ``since``; the full list for 0 or a reset."""
        version = self._hotlist_version()
        if since <= 0 or since > version:
            return HotlistDeltaOut(version=version, full=True, added=self._listed_cards(),
                                   removed=[])
        h = self.s.HotlistChange
        net: dict[str, str] = {}
        for c in h.select().where(h.version > since).order_by(h.version):
            net[c.card_no] = c.action
        return HotlistDeltaOut(
            version=version, full=False,
            added=sorted(c for c, a in net.items() if a == "add"),
            removed=sorted(c for c, a in net.items() if a == "remove"))

    # --- staff ----------------------------------------------------------------------------

    def staff_login(self, req: StaffLoginRequest) -> Outcome:
        """``staff.login``: badge + PIN; locks for a while after repeated failures."""
        s = self.s
        staff = s.StaffRow.get_or_none(s.StaffRow.badge == req.badge)
        bad = business("invalid_credentials", "badge or PIN is wrong", "工号或密码错误")
        if staff is None:
            return bad
        t = self.now().timestamp()
        if staff.locked_until is not None:
            if t < staff.locked_until:
                return business("staff_locked", "too many failed attempts; try again later "
                                "or ask a supervisor", "密码错误次数过多，账号暂时锁定")
            staff.failures, staff.locked_until = 0, None  # the lock ran out
            staff.save()
        if not verify_pin(req.pin, staff.pin_hash):
            # Returned, not raised: the failure count must be committed.
            staff.failures += 1
            if staff.failures >= data.STAFF_MAX_FAILURES:
                staff.locked_until = t + data.STAFF_LOCK_S
            staff.save()
            return bad
        if staff.failures:
            staff.failures = 0
            staff.save()
        return StaffOut(staff_id=staff.staff_id, name=staff.name, role=staff.role)

    # --- admin ----------------------------------------------------------------------------

    def admin_patients(self) -> AdminPatientList:
        """All patients with their e-health QR text."""
        P = self.s.PatientRow
        return AdminPatientList([AdminPatientOut(patient=self._patient_out(p), ehc_id=p.ehc_id,
                                ehc_qr_static=f"{p.ehc_id}:1")
                for p in P.select().order_by(P.patient_id)])

    def admin_create_patient(self, req: PatientCreateRequest) -> AdminPatientOut:
        """Register a patient with a given card and ID number."""
        P = self.s.PatientRow
        if P.select().where((P.card_no == req.card_no) | (P.id_number == req.id_number)).exists():
            raise SimError(409, "conflict", "a patient with this card or ID number exists",
                           "该卡号或身份证号已登记")
        ehc_id = (req.ehc_id or hashlib.sha256(f"ehc:card:{req.card_no}".encode()).hexdigest())
        if P.select().where(P.ehc_id == ehc_id.lower()).exists():
            raise SimError(409, "conflict", "this e-health card id is taken",
                           "电子健康卡号已被使用")
        last = P.select(P.patient_id).order_by(P.patient_id.desc()).scalar()
        number = int(last[1:]) + 1 if last else 1
        p = P.create(patient_id=f"P{number:06d}", card_no=req.card_no, id_number=req.id_number,
                     ehc_id=ehc_id.lower(), name=req.name, sex=req.sex,
                     birth_date=req.birth_date.isoformat(), phone=req.phone,
                     balance_fen=req.balance_fen, insured=req.insured)
        if req.demo_records:
            seed_demo_records(self.s, seed=self.settings.seed, patient_id=p.patient_id,
                              sex=p.sex, now=self.now(), zone=self.zone)
            self._demo_booking(p)
        return AdminPatientOut(patient=self._patient_out(p), ehc_id=p.ehc_id,
                               ehc_qr_static=f"{p.ehc_id}:1")

    def _demo_booking(self, patient: Any) -> None:
        """A prepaid booking of today's last session with room (预约取号 at the kiosk).

        Taken in the last department of the list, so a patient trying registration from
        the panel (who starts at the first department) does not meet it as "already booked".
        """
        s = self.s
        ensure_schedule(s, self.settings.seed, self.today())
        slot = (s.SlotRow.select().where((s.SlotRow.date == self.today().isoformat())
                                         & (s.SlotRow.booked < s.SlotRow.capacity))
                .order_by(s.SlotRow.dept_code.desc(), s.SlotRow.start.desc()).first())
        if slot is None:
            return
        s.SlotRow.update(booked=s.SlotRow.booked + 1,
                         next_queue_no=s.SlotRow.next_queue_no + 1).where(
            s.SlotRow.slot_id == slot.slot_id).execute()
        booking_id = f"BK{self.today():%Y%m%d}{self._next('booking'):05d}"
        payment_id = self._new_payment_row(patient.patient_id, "registration", [booking_id],
                                           slot.fee_fen, "prepaid", state="approved").payment_id
        s.BookingRow.create(
            booking_id=booking_id,
            visit_no=f"{self.today():%Y%m%d}{self._next('visit'):06d}",
            patient_id=patient.patient_id, slot_id=slot.slot_id, queue_no=slot.next_queue_no,
            pay_method="prepaid", insured=False, fee_fen=slot.fee_fen, insurance_fen=0,
            status="paid", payment_id=payment_id, created_at=iso_utc(self.now()))

    def admin_hotlist(self, req: HotlistUpdateRequest) -> HotlistUpdateOut:
        """Add or remove a card; a no-op change does not bump the version."""
        listed = self._card_blocked(req.card_no)
        if listed != (req.action == "add"):
            self.s.HotlistChange.create(version=self._hotlist_version() + 1,
                                        card_no=req.card_no, action=req.action,
                                        reason=req.reason, created_at=iso_utc(self.now()))
        return HotlistUpdateOut(version=self._hotlist_version(), card_no=req.card_no,
                                listed=req.action == "add")

    def admin_staff(self, req: StaffCreateRequest) -> StaffOut:
        """Create or reset a staff account."""
        S = self.s.StaffRow
        pin_hash = hash_pin(req.pin, secrets.token_bytes(16))
        staff = S.get_or_none(S.badge == req.badge)
        if staff is None:
            staff = S.create(staff_id=f"ST{req.badge}", badge=req.badge, name=req.name,
                             role=req.role, pin_hash=pin_hash)
        else:
            staff.name, staff.role, staff.pin_hash, staff.failures, staff.locked_until = (
                req.name, req.role, pin_hash, 0, None)
            staff.save()
        return StaffOut(staff_id=staff.staff_id, name=staff.name, role=staff.role)

    def effects(self) -> dict[str, int]:
        """Committed effects per operation."""
        with self.s.db.connection_context():
            return {r.op: r.count for r in self.s.EffectCounter.select()}
