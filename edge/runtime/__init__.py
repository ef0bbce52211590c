"""The daemon's live state: one terminal's card session, staff session, money and printing.

``EdgeRuntime`` is a thin façade over its parts, each in its own module:

* ``card_session`` — the patient's card session (personal data, memory only);
* ``scans`` — classified scans; payment codes and e-health QRs held here;
* ``staff`` — the desk's staff session and the shift handover;
* ``payments`` — ``pay.*``, the ledger, payments settled after the screen gave up;
* ``memory`` and ``printing`` — the platform's typed replies kept for the session, and
  documents built from them by reference;
* ``audit_ship`` — the device audit chain and events to central;
* ``link`` — requests through the uplink and the platform's up/down status;
* ``ports`` — what the runtime needs of the uplink, printer, audit log, card service.

See docs/architecture.md ("One registration, end to end") and docs/privacy.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.card_session import CardSessions, CardSessionState
from edge.runtime.errors import DocumentNotFound, SessionError
from edge.runtime.events import EventBus
from edge.runtime.ledger import Ledger
from edge.runtime.link import PlatformLink
from edge.runtime.memory import RefundDone, SessionMemory
from edge.runtime.payments import PaymentDesk
from edge.runtime.ports import (
    AuditLogPort,
    CardHealth,
    CardIdentity,
    Clock,
    PrinterPort,
    PrintOutcome,
    UplinkPort,
)
from edge.runtime.printing import PrintDesk
from edge.runtime.scans import PAY_CODE_TTL_S, HeldCode, ScanDesk
from edge.runtime.staff import StaffDesk, StaffSession
from edge.runtime.terminal import Terminal
from yikatong.protocol.messages import PaymentResult, PaymentSummary

if TYPE_CHECKING:
    from edge.devices.scanner.classify import ClassifierRules

__all__ = ["PAY_CODE_TTL_S", "CardSessionState", "DocumentNotFound", "EdgeRuntime",
           "EventBus", "HeldCode", "Ledger", "RefundDone", "SessionError", "StaffSession"]


class EdgeRuntime:
    """Glue between the card service, the printer, the uplink and the local API."""

    def __init__(
        self,
        *,
        device_id: str,
        role: str,
        hospital_name: str,
        timezone: str = "Asia/Shanghai",
        uplink: UplinkPort,
        printer: PrinterPort,
        clock: Clock,
        rules: ClassifierRules | None = None,
        ledger: Ledger | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        audit: AuditLogPort | None = None,
    ) -> None:
        self.terminal = Terminal(device_id, role, hospital_name, ZoneInfo(timezone))
        self.uplink = uplink
        self.clock = clock
        self.bus = EventBus()
        self.ledger = ledger or Ledger()
        self.memory = SessionMemory()
        self.started = clock.now()
        # The card service's health (reader, SAM state, last fault); set by the daemon.
        self.card_health: CardHealth | None = None
        self.shipper = AuditShipper(uplink, audit, self._actor)
        # The staff desk is built below: the link reaches it through these two methods.
        self.link = PlatformLink(uplink, self.bus, staff=self._current_staff,
                                 session_expired=self._staff_expired, on_result=self._remember)
        self.cards = CardSessions(bus=self.bus, clock=clock, shipper=self.shipper,
                                  link=self.link)
        self.scans = ScanDesk(self.bus, rules, monotonic)
        self.staff_desk = StaffDesk(terminal=self.terminal, link=self.link,
                                    shipper=self.shipper, bus=self.bus, clock=clock,
                                    ledger=self.ledger, end_card_session=self.cards.end)
        self.payments = PaymentDesk(terminal=self.terminal, link=self.link, cards=self.cards,
                                    scans=self.scans, staff=self.staff_desk,
                                    ledger=self.ledger, shipper=self.shipper, bus=self.bus,
                                    clock=clock, memory=self.memory)
        self.printing = PrintDesk(terminal=self.terminal, printer=printer, uplink=uplink,
                                  link=self.link, cards=self.cards, staff=self.staff_desk,
                                  payments=self.payments, ledger=self.ledger,
                                  shipper=self.shipper, bus=self.bus, clock=clock,
                                  memory=self.memory)
        self.staff_desk.printing = self.printing
        # What was kept for the card session goes with it.
        self.cards.on_wipe += [self.scans.clear_codes, self.memory.clear,
                               self.printing.session_wiped]
        #: Kiosk screen settings central set (``UiSettings`` fields that are set), served to
        #: ``ykt kiosk`` in /v1/health and /v1/ui-settings over its own TOML.
        self.ui_settings: dict[str, Any] = {}
        if hasattr(uplink, "on_settled"):
            # A payment whose outcome was unknown when its screen gave up is asked again by
            # the uplink in the background; its final answer lands here (ledger, audit, and
            # an event the desk and central can act on), also after the patient left.
            uplink.on_settled = self.payments.settled_later

    def _current_staff(self) -> StaffSession | None:
        return self.staff_desk.current

    def _staff_expired(self, reason: str) -> None:
        self.staff_desk.end(reason)

    def _actor(self) -> str:
        staff = self.staff_desk.current
        return staff.staff_id if staff is not None else self.terminal.role

    def _remember(self, _type: str, result: BaseModel) -> None:
        s = self.cards.session
        self.memory.remember(result, s.patient_seq if s is not None else 0)

    # -- state the API, the daemon and telemetry read --------------------------------------

    @property
    def device_id(self) -> str:
        """This terminal's device id."""
        return self.terminal.device_id

    @property
    def role(self) -> str:
        """``kiosk`` or ``cashier``."""
        return self.terminal.role

    @role.setter
    def role(self, value: str) -> None:
        self.terminal.role = value

    @property
    def hospital_name(self) -> str:
        """The hospital's name as printed."""
        return self.terminal.hospital_name

    @property
    def tz(self) -> ZoneInfo:
        """The hospital's time zone."""
        return self.terminal.tz

    @property
    def printer(self) -> PrinterPort:
        """The printer service."""
        return self.printing.printer

    @property
    def audit(self) -> AuditLogPort | None:
        """The device audit log (None: nothing is audited)."""
        return self.shipper.audit

    @property
    def session(self) -> CardSessionState | None:
        """The current card session, if any."""
        return self.cards.session

    @property
    def reader_present(self) -> bool:
        """The patient card reader is connected."""
        return self.cards.reader_present

    @reader_present.setter
    def reader_present(self, value: bool) -> None:
        self.cards.reader_present = value

    @property
    def staff(self) -> StaffSession | None:
        """The cashier signed in at this desk, if any."""
        return self.staff_desk.current

    @property
    def codes(self) -> dict[str, HeldCode]:
        """Payment codes held by scan id (at most one, fresh)."""
        return self.scans.codes

    @property
    def rules(self) -> ClassifierRules:
        """The scanner classifier's rules."""
        return self.scans.rules

    @property
    def platform_ok(self) -> bool | None:
        """The last request's verdict on the platform link (None: not asked yet)."""
        return self.link.ok

    @property
    def printer_state(self) -> dict[str, Any] | None:
        """The last idle printer status (telemetry)."""
        return self.printing.printer_state

    @property
    def last_job(self) -> str | None:
        """The job id of the last document printed."""
        return self.printing.last_job

    # -- audit -----------------------------------------------------------------------------

    async def resend_audit(self) -> int:
        """Queue the audit records a crash left out of the outbox; returns how many."""
        return await self.shipper.resend()

    # -- card session ----------------------------------------------------------------------

    def card_inserted(self, reader: str, atr: bytes | None = None) -> None:
        """A card went into the patient slot: open a session in the reading state."""
        self.cards.inserted(reader, atr)

    def identity_read(self, reader: str, identity: CardIdentity) -> None:
        """The card's identity was read and passed the hot-list check."""
        self.cards.identity_read(reader, identity)

    def card_failed(self, reader: str, code: str, message: str, message_zh: str) -> None:
        """Reading failed (not a health card, blocked, removed mid-read, SAM fault...)."""
        self.cards.failed(reader, code, message, message_zh)

    def card_removed(self, reader: str) -> None:
        """The card left the slot: the session and its personal data end now."""
        self.cards.removed(reader)

    def end_session(self) -> None:
        """The kiosk ended the session (timeout, done): wipe personal data."""
        self.cards.end()

    async def identify_patient(self) -> dict[str, Any]:
        """Ask the platform who the card in the slot belongs to."""
        return await self.cards.identify_patient()

    async def identify_by_qr(self) -> dict[str, Any]:
        """Open a session for the e-health QR scanned last (no card in the slot)."""
        return await self.cards.identify_by_qr(self.scans.take_qr())

    # -- requests and scans ----------------------------------------------------------------

    async def request(self, type_: str, body: dict[str, Any], timeout_s: float | None,
                      request_id: str | None = None) -> BaseModel:
        """Forward a non-personal request (slots, booking...) through the uplink."""
        return await self.link.call(type_, body, timeout_s, request_id)

    async def request_result(self, request_id: str, wait_s: float) -> BaseModel:
        """The outcome of an earlier request whose caller gave up (OutcomeUnknown)."""
        result = await self.uplink.result_of(request_id, wait_s=wait_s)
        self._remember("", result)
        self.payments.outcome(request_id, result)
        return result

    def scan_text(self, text: str, source: str = "ui") -> dict[str, Any]:
        """Classify text typed into the kiosk's scan field (a keyboard-wedge scanner)."""
        return self.scans.scan_text(text, source)

    def scan_received(self, scan: Any, source: str = "scanner") -> dict[str, Any]:
        """Handle one classified scan; publish a ``scan`` event without secrets; return it."""
        return self.scans.scan_received(scan, source)

    # -- money -----------------------------------------------------------------------------

    async def pay(self, *, purpose: str, refs: list[str], amount_fen: int, method: str,
                  scan_id: str | None, request_id: str, timeout_s: float | None,
                  tendered_fen: int | None = None) -> PaymentResult:
        """``pay.create`` for the session's patient (see ``PaymentDesk.pay``)."""
        return await self.payments.pay(purpose=purpose, refs=refs, amount_fen=amount_fen,
                                       method=method, scan_id=scan_id, request_id=request_id,
                                       timeout_s=timeout_s, tendered_fen=tendered_fen)

    async def pay_status(self, payment_id: str) -> PaymentResult:
        """``pay.status``; a payment seen approved here is written to the ledger."""
        return await self.payments.status(payment_id)

    async def pay_reverse(self, payment_id: str) -> PaymentResult:
        """``pay.reverse`` of a payment that never resolved (the wallet deadline passed)."""
        return await self.payments.reverse(payment_id)

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> RefundDone:
        """Cashier refund to the original method."""
        return await self.payments.refund(payment_id, amount_fen, reason)

    async def pay_list(self) -> list[PaymentSummary]:
        """The identified patient's payments, newest first (the desk refunds or reprints one)."""
        return await self.payments.pay_list()

    # -- staff -----------------------------------------------------------------------------

    async def staff_login(self, badge: str, pin: str) -> dict[str, Any]:
        """``staff.login`` at central; the PIN is passed through, never kept or logged."""
        return await self.staff_desk.login(badge, pin)

    def staff_logout(self) -> None:
        """Lock the desk: the staff session ends at central and here (patient session too)."""
        self.staff_desk.logout()

    def shift_summary(self) -> dict[str, Any]:
        """What the handover report will say, for the desk's screen before it prints."""
        return self.staff_desk.shift_summary()

    async def shift_handover(self) -> PrintOutcome:
        """交班: print the shift report, record it, then sign the desk out."""
        return await self.staff_desk.shift_handover()

    # -- printing --------------------------------------------------------------------------

    async def print_document(self, kind: str, ref: str | None = None, *,
                             copy: bool = False) -> PrintOutcome:
        """Print one document named by kind and reference (see ``PrintDesk``)."""
        return await self.printing.print_document(kind, ref, copy=copy)

    async def reprint_failed(self, job_id: str) -> PrintOutcome:
        """Print a job that failed once more (paid but no slip)."""
        return await self.printing.reprint_failed(job_id)

    async def reprint_last(self) -> PrintOutcome:
        """Cashier: print the last document again, marked as a copy."""
        return await self.printing.reprint_last()

    async def reprint_payment(self, payment_id: str) -> PrintOutcome:
        """A copy of an earlier receipt of the identified patient, by payment number."""
        return await self.printing.reprint_payment(payment_id)

    async def printer_status_changed(self, status: Any) -> None:
        """Publish an idle printer status change to the kiosk and to central."""
        await self.printing.printer_status_changed(status)

    async def printer_check(self) -> dict[str, Any]:
        """Can a job sent now print completely? Asked before taking money."""
        return await self.printing.printer_check()

    # -- fleet: idle and screen settings ------------------------------------------------------

    def busy_reason(self) -> str | None:
        """Why a disruptive command (reboot, restart, test print…) must wait now, or None.

        ``card_session``: a card (or e-health QR) session is open — a patient is served.
        ``payment_unresolved``: a payment was sent and has no final outcome yet — known to
        this run, or in the uplink's durable outbox (a restart forgets nothing).
        """
        if self.cards.session is not None:
            return "card_session"
        if self.payments.unresolved:
            return "payment_unresolved"
        if self.uplink.unresolved_payments():
            return "payment_unresolved"
        return None

    def set_ui_settings(self, settings: dict[str, Any]) -> None:
        """Central's screen settings (only the fields it set); the kiosk is told at once."""
        if settings != self.ui_settings:
            self.ui_settings = dict(settings)
            self.bus.publish("ui.settings", dict(settings))

    # -- health ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """A snapshot for the kiosk's status bar and the API's /health."""
        staff = self.staff
        return {
            "device_id": self.device_id,
            "role": self.role,
            "uplink_connected": bool(getattr(self.uplink, "connected", False)),
            "reader_present": self.reader_present,
            "card": self.card_health() if self.card_health is not None else None,
            "session": self.session.masked() if self.session else None,
            "platform_ok": self.platform_ok,
            "staff": {"name": staff.name, "role": staff.role} if staff else None,
            "uptime_s": self.uptime_s(),
            "ui": dict(self.ui_settings),
        }

    def uptime_s(self) -> int:
        """Seconds since the daemon started (by the injected clock)."""
        return int((self.clock.now() - self.started).total_seconds())
