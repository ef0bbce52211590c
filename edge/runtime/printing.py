"""Documents by reference: the kiosk names a document, the daemon builds it and prints it.

The kiosk sends a kind and a reference (booking id, payment id, refund id, report number);
the document is built from the platform's typed replies this card session received
(``SessionMemory``) and the holder's name, card and ID numbers from the card session — so
what is on paper is what the platform said, never what the kiosk sent (docs/architecture.md,
step 8). A reference this session never saw is a typed ``unknown_reference`` (404).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.card_session import CardSessions, CardSessionState
from edge.runtime.errors import DocumentNotFound, SessionError
from edge.runtime.events import EventBus
from edge.runtime.ledger import Ledger
from edge.runtime.link import PlatformLink
from edge.runtime.memory import SessionMemory
from edge.runtime.payments import PaymentDesk
from edge.runtime.ports import Clock, PrinterPort, PrintOutcome, UplinkPort
from edge.runtime.staff import StaffDesk
from edge.runtime.terminal import Terminal
from yikatong.protocol.messages import PaymentResult, Report

__all__ = ["DOCUMENT_KINDS", "PrintDesk"]

#: What the kiosk may ask to print, and whether it names a reference.
DOCUMENT_KINDS = {"registration_slip": True, "payment_receipt": True, "topup_receipt": True,
                  "refund_receipt": True, "cancellation_slip": True, "lab_report": True,
                  "closing_report": False}


class PrintDesk:
    """Builds and prints this terminal's documents; keeps the last one for a desk copy."""

    def __init__(self, *, terminal: Terminal, printer: PrinterPort, uplink: UplinkPort,
                 link: PlatformLink, cards: CardSessions, staff: StaffDesk,
                 payments: PaymentDesk, ledger: Ledger, shipper: AuditShipper, bus: EventBus,
                 clock: Clock, memory: SessionMemory) -> None:
        self.terminal = terminal
        self.printer = printer
        self.uplink = uplink
        self.link = link
        self.cards = cards
        self.staff = staff
        self.payments = payments
        self.ledger = ledger
        self.shipper = shipper
        self.bus = bus
        self.clock = clock
        self.memory = memory
        self.last_job: str | None = None
        # The last document printed, for the desk's "reprint last (copy)"; it holds personal
        # data, so it lives in memory only and goes at sign-out (kiosks: at session end).
        self._last_doc: tuple[str, Any, str] | None = None
        # The last idle printer status (event body), for telemetry; None until the first poll.
        self.printer_state: dict[str, Any] | None = None

    def forget_last(self) -> None:
        """Drop the last document (sign-out)."""
        self._last_doc = None

    def session_wiped(self) -> None:
        """The card session ended: a kiosk forgets its last document with it."""
        if not self.terminal.is_desk:
            self._last_doc = None

    # -- printing by reference -------------------------------------------------------------

    async def print_document(self, kind: str, ref: str | None, *, copy: bool) -> PrintOutcome:
        """Print one document for the current session, named by ``kind`` and ``ref``."""
        from edge.devices.printer.errors import InvalidDocument

        try:
            doc, job_id = await self._build(kind, ref, copy)
        except (InvalidDocument, ValueError) as exc:
            raise SessionError("bad_document", f"Cannot print this {kind}: {exc}",
                               "凭条内容不完整，无法打印，请到人工窗口办理。") from exc
        job = getattr(self.printer, "job", None)
        existing = job(job_id) if job is not None else None
        if existing is not None and existing.state == "printed":
            copy = True  # it is on paper already: any second print is a marked copy
            doc, _ = await self._build(kind, ref, copy)
        if copy:
            job_id += f"-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(doc, job_id=job_id, copy=copy)
        self.last_job = job_id
        self._last_doc = (kind, doc, job_id)
        await self.report_print(outcome, kind, copy)
        if kind == "lab_report" and outcome.state == "printed" and not copy:
            with contextlib.suppress(Exception):
                await self.link.call("report.printed", {"report_no": ref}, 20)
        return outcome

    async def _build(self, kind: str, ref: str | None, copy: bool) -> tuple[Any, str]:
        from edge.devices.printer import documents as docs

        tz = self.terminal.tz
        now = self.clock.now().astimezone(tz)
        staff = self.staff.current
        operator = staff.name if staff is not None else ""
        if kind == "closing_report":
            return await self._closing(now, copy)
        if kind not in DOCUMENT_KINDS:
            raise ValueError(f"unknown document kind {kind}")
        if not ref:
            raise DocumentNotFound(kind, "")
        if kind == "lab_report":
            # Printing by specimen barcode needs no card: the barcode slip is the credential.
            r = await self.link.call("report.fetch", {"report_no": ref}, 20)
            if not isinstance(r, Report):  # the uplink validated it as this model
                raise TypeError(f"report.fetch answered with {type(r).__name__}")
            return docs.LabReport(
                hospital_name=self.terminal.hospital_name, report_no=r.report_no,
                title=r.title, patient_name=r.patient_name, sex=r.sex, age=r.age,
                dept_name=r.dept_name, specimen=r.specimen,
                sampled_at=_local(r.sampled_at, tz), reported_at=_local(r.reported_at, tz),
                items=tuple(docs.LabItem(**i.model_dump()) for i in r.items),
                doctor=r.doctor, verify_url=r.verify_url, printed_at=now, copy=copy,
            ), f"report-{r.report_no}"
        s = self.cards.require_identity()
        name, card = s.holder_name, s.card_no
        if kind == "registration_slip":
            b = self.memory.bookings.get(ref)
            if b is None:
                raise DocumentNotFound(kind, ref)
            insured = b.insured if b.insured is not None else (
                s.patient.insured if s.patient is not None else False)
            return docs.RegistrationSlip(
                hospital_name=self.terminal.hospital_name, patient_name=name,
                id_number=s.id_number, card_no=card, dept_name=b.dept_name,
                doctor_name=b.doctor_name, doctor_title=b.title, date=b.date, start=b.start,
                end=b.end, queue_no=b.queue_no, location=b.location, fee_fen=b.fee_fen,
                visit_no=b.visit_no, insured=insured, printed_at=now, copy=copy,
            ), f"slip-{b.booking_id}"
        if kind in ("payment_receipt", "topup_receipt"):
            return self._receipt(kind, ref, s, now, operator=operator, copy=copy)
        if kind == "cancellation_slip":
            return self._cancellation(ref, s, now, copy)
        done = self.memory.refunds.get(ref)  # refund_receipt
        if done is None:
            raise DocumentNotFound(kind, ref)
        rr = done.result
        return docs.RefundReceipt(
            hospital_name=self.terminal.hospital_name, patient_name=name, card_no=card,
            refund_id=rr.refund_id, payment_id=rr.payment_id, amount_fen=rr.amount_fen,
            method=done.method, reason=done.reason, printed_at=now, balance_after_fen=None,
            operator=operator, copy=copy,
        ), f"refund-{rr.refund_id}"

    async def _closing(self, now: datetime, copy: bool) -> tuple[Any, str]:
        from edge.devices.printer import documents as docs

        staff = self.staff.require()
        # The day's takings go on paper only for a session central still holds.
        await self.link.call("staff.session", {}, 10)
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        lines = tuple(docs.ClosingLine(**x) for x in self.ledger.totals(
            start, now + timedelta(seconds=1)))
        return docs.ClosingReport(
            hospital_name=self.terminal.hospital_name, terminal_id=self.terminal.device_id,
            cashier=staff.name, period_start=start, period_end=now, lines=lines,
            printed_at=now, copy=copy), f"closing-{now:%Y%m%d%H%M%S}"

    def _paid(self, kind: str, ref: str) -> tuple[PaymentResult, Any]:
        entry = self.memory.payments.get(ref)
        if entry is None:
            raise DocumentNotFound(kind, ref)
        result, intent = entry
        if result.state != "approved":
            # A receipt prints only for a confirmed outcome (docs/architecture.md).
            raise SessionError("not_paid", "This payment did not go through: no receipt.",
                               "该笔支付未成功，没有凭条可打印。")
        return result, intent

    def _receipt(self, kind: str, ref: str, s: CardSessionState, now: datetime, *,
                 operator: str, copy: bool) -> tuple[Any, str]:
        from edge.devices.printer import documents as docs

        p, intent = self._paid(kind, ref)
        name, card = s.holder_name, s.card_no
        txn = p.txn_id or p.payment_id
        if kind == "topup_receipt":
            return docs.TopUpReceipt(
                hospital_name=self.terminal.hospital_name, patient_name=name, card_no=card,
                amount_fen=p.amount_fen, method=p.method, txn_id=txn,
                balance_after_fen=p.balance_fen or 0, printed_at=now, operator=operator,
                copy=copy, **self._cash(p),
                # the desk reprints by payment number: it goes on the desk's receipts
                payment_id=p.payment_id if self.terminal.is_desk else "",
            ), f"topup-{p.payment_id}"
        refs = set(intent.refs) if intent is not None else set()
        chosen = [b for b in self.memory.bills.values() if b.bill_id in refs]
        if not chosen or len(chosen) != len(refs):
            raise DocumentNotFound(kind, ref)  # the bills it paid are not known here
        items = tuple(docs.ReceiptItem(name=i.name, qty=i.qty, unit_price_fen=i.unit_price_fen,
                                       amount_fen=i.amount_fen)
                      for b in chosen for i in b.items)
        depts = sorted({b.dept_name for b in chosen})
        return docs.PaymentReceipt(
            hospital_name=self.terminal.hospital_name, patient_name=name, card_no=card,
            items=items, total_fen=sum(i.amount_fen for i in items), method=p.method,
            txn_id=txn, printed_at=now, balance_after_fen=p.balance_fen,
            payment_id=p.payment_id, dept_name="、".join(depts)[:40], operator=operator,
            copy=copy, **self._cash(p),
        ), f"receipt-{p.payment_id}"

    def _cancellation(self, ref: str, s: CardSessionState, now: datetime,
                      copy: bool) -> tuple[Any, str]:
        from edge.devices.printer import documents as docs

        entry, b = self.memory.cancellations.get(ref), self.memory.bookings.get(ref)
        if entry is None or b is None:
            raise DocumentNotFound("cancellation_slip", ref)
        c, seq = entry
        refund = c.refund_fen
        balance = c.balance_fen
        if (balance is None and refund and c.refund_method in (None, "prepaid")
                and s.patient is not None and s.patient_seq > seq):
            # The platform did not say; the record read after the refund has the new one.
            balance = s.patient.balance_fen
        return docs.CancellationSlip(
            hospital_name=self.terminal.hospital_name, patient_name=s.holder_name,
            card_no=s.card_no, booking_id=c.booking_id, dept_name=b.dept_name,
            doctor_name=b.doctor_name, date=b.date, start=b.start, end=b.end,
            queue_no=b.queue_no, refund_fen=refund,
            method=c.refund_method if refund else None, refund_id=c.refund_id or "",
            balance_after_fen=balance, printed_at=now, copy=copy,
        ), f"cancel-{c.booking_id}"

    def _cash(self, p: PaymentResult) -> dict[str, int]:
        """实收/找零 of a cash payment taken at this desk (kept in the ledger)."""
        if p.method != "cash" or not self.terminal.is_desk:
            return {}
        cash = self.ledger.cash_of(p.payment_id)
        if cash is None:
            return {}
        return {"tendered_fen": cash[0], "change_fen": cash[1]}

    # -- reprints --------------------------------------------------------------------------

    async def reprint_failed(self, job_id: str) -> PrintOutcome:
        """Print a job that failed once more (paid but no slip); a copy only if an original
        may be on paper (see PrinterService.reprint)."""
        # The one reprint a job is allowed must not be spent on a printer that cannot print
        # now (paper out, cover open): say so, and let the patient try again once fixed.
        check = await self.printer_check()
        if not check["ready"]:
            raise SessionError("printer_not_ready", check["message"], check["message_zh"])
        outcome = await self.printer.reprint(job_id)
        await self.report_print(outcome, outcome.doc_kind, bool(outcome.copy))
        return outcome

    async def reprint_last(self) -> PrintOutcome:
        """Cashier: print the last document again, marked as a copy."""
        self.staff.require()
        if self._last_doc is None:
            raise SessionError("nothing_printed", "Nothing has been printed yet.",
                               "尚无可补打的凭条。")
        kind, doc, job_id = self._last_doc
        job_id = f"{job_id.split('-copy-')[0]}-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(dataclasses.replace(doc, copy=True), job_id=job_id,
                                           copy=True)
        await self.report_print(outcome, kind, True)
        return outcome

    async def reprint_payment(self, payment_id: str) -> PrintOutcome:
        """A copy of an earlier receipt of the identified patient, by payment number.

        The last document is still in memory and is printed again as it was; any earlier
        one (printed bytes are dropped) is rebuilt from the platform's ``pay.list`` answer
        and the ledger (cash tendered and change), marked as a copy.
        """
        from edge.devices.printer import documents as docs

        staff = self.staff.require()
        s, _ = self.cards.require_patient()
        entry = next((p for p in await self.payments.pay_list() if p.payment_id == payment_id),
                     None)
        if entry is None:
            raise SessionError("not_this_patient",
                               "This payment number is not one of this patient's payments.",
                               "该支付编号不属于当前读卡的患者。")
        if entry.state != "approved":
            raise SessionError("not_paid", "This payment did not go through: no receipt.",
                               "该笔支付未成功，没有凭条可补打。")
        topup = entry.purpose == "topup"
        base = f"{'topup' if topup else 'receipt'}-{payment_id}"
        last = self._last_doc
        if last is not None and last[2].split("-copy-")[0] == base:
            doc = dataclasses.replace(last[1], copy=True)
        else:
            now = self.clock.now().astimezone(self.terminal.tz)
            cash = self.ledger.cash_of(payment_id) if entry.method == "cash" else None
            tendered, change = cash if cash is not None else (None, None)
            amount = entry.amount_fen
            txn = entry.txn_id or payment_id
            if topup:
                doc = docs.TopUpReceipt(
                    hospital_name=self.terminal.hospital_name, patient_name=s.holder_name,
                    card_no=s.card_no, amount_fen=amount, method=entry.method, txn_id=txn,
                    balance_after_fen=None, printed_at=now, operator=staff.name, copy=True,
                    tendered_fen=tendered, change_fen=change, payment_id=payment_id)
            else:
                what = "挂号费" if entry.purpose == "registration" else "门诊费用"
                doc = docs.PaymentReceipt(
                    hospital_name=self.terminal.hospital_name, patient_name=s.holder_name,
                    card_no=s.card_no, items=(docs.ReceiptItem(what, 1, amount, amount),),
                    total_fen=amount, method=entry.method, txn_id=txn, printed_at=now,
                    payment_id=payment_id, operator=staff.name, copy=True,
                    tendered_fen=tendered, change_fen=change)
        job_id = f"{base}-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(doc, job_id=job_id, copy=True)
        self.shipper.record("receipt.reprinted", {"payment_id": payment_id, "job_id": job_id})
        await self.report_print(outcome, doc.kind, True)
        return outcome

    # -- printer status --------------------------------------------------------------------

    async def report_print(self, outcome: PrintOutcome, kind: str, copy: bool) -> None:
        """``print.done``/``print.failed`` to the kiosk, the audit chain and central."""
        ev = "print.done" if outcome.state == "printed" else "print.failed"
        body: dict[str, Any] = {"job_id": outcome.job_id, "doc_kind": kind, "copy": copy}
        if outcome.state != "printed":
            body = {"job_id": outcome.job_id, "reason": outcome.reason or "unknown"}
        self.bus.publish(ev, body)
        self.shipper.record(ev, body)
        with contextlib.suppress(Exception):
            await self.uplink.publish_event(ev, body)

    async def printer_status_changed(self, status: Any) -> None:
        """Publish an idle printer status change to the kiosk and to central."""
        body = status.event_body()
        self.printer_state = dict(body)
        self.bus.publish("printer.status", {**body, "paper_near_end": body["paper"] == "near_end",
                                            "paper_out": body["paper"] == "out"})
        with contextlib.suppress(Exception):
            await self.uplink.publish_event("printer.status", body)

    async def printer_check(self) -> dict[str, Any]:
        """Can a job sent now print completely? Asked before taking money."""
        from edge.devices.printer.errors import PrinterError

        try:
            st = await self.printer.status()
        except PrinterError as exc:
            reason = getattr(exc, "reason", None) or "offline"
            return {"ready": False, "problem": reason, "paper": "unknown",
                    **_printer_text(reason)}
        problem = None if st.ready else (st.problem or "printer_error")
        return {"ready": st.ready, "problem": problem, "paper": st.paper,
                "online": st.online, "cover_open": st.cover_open,
                **(_printer_text(problem) if problem else {})}


def _local(ts: str, tz: ZoneInfo) -> datetime:
    """An RFC 3339 timestamp from the platform as hospital-local time."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(tz)


_PRINTER_TEXT = {
    "paper_out": ("The printer is out of paper.", "打印机缺纸。"),
    "cover_open": ("The printer cover is open.", "打印机上盖未关闭。"),
    "offline": ("The printer is not responding.", "打印机无响应。"),
}


def _printer_text(reason: str) -> dict[str, str]:
    en, zh = _PRINTER_TEXT.get(reason, ("The printer has a fault.", "打印机故障。"))
    return {"message": en, "message_zh": zh}
