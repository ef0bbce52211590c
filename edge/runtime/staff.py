"""The desk's staff session: sign-in at central, sign-out, and the shift handover (交班)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.errors import SessionError
from edge.runtime.events import EventBus
from edge.runtime.ledger import Ledger
from edge.runtime.link import PlatformLink
from edge.runtime.ports import Clock, DocumentDesk, PrintOutcome
from edge.runtime.terminal import Terminal
from yikatong.protocol.messages import StaffInfo

__all__ = ["StaffDesk", "StaffSession"]

log = logging.getLogger("edge.runtime")


@dataclass
class StaffSession:
    """The cashier signed in at this desk; the session token is memory only."""

    staff_id: str
    name: str
    role: str
    badge: str
    since: str
    session_token: str | None = field(default=None, repr=False)  # sent as ``auth``
    expires_at: str | None = None

    def public(self) -> dict[str, Any]:
        """What the kiosk may see (everything but the token)."""
        return {"staff_id": self.staff_id, "name": self.name, "role": self.role,
                "badge": self.badge, "since": self.since, "expires_at": self.expires_at}


class StaffDesk:
    """One cashier at a time per desk (docs/security.md: staff sessions)."""

    def __init__(self, *, terminal: Terminal, link: PlatformLink, shipper: AuditShipper,
                 bus: EventBus, clock: Clock, ledger: Ledger,
                 end_card_session: Callable[[], None]) -> None:
        self.terminal = terminal
        self.link = link
        self.shipper = shipper
        self.bus = bus
        self.clock = clock
        self.ledger = ledger
        self._end_card_session = end_card_session
        self.current: StaffSession | None = None
        self.printing: DocumentDesk | None = None  # set by the runtime once built

    def require(self) -> StaffSession:
        """The signed-in cashier of this desk, or ``staff_only``."""
        if not self.terminal.is_desk or self.current is None:
            raise SessionError("staff_only", "Only a signed-in cashier can do this.",
                               "此操作需要收费员登录。")
        return self.current

    async def login(self, badge: str, pin: str) -> dict[str, Any]:
        """``staff.login`` at central; the PIN is passed through, never kept or logged."""
        if not self.terminal.is_desk:
            raise SessionError("not_a_desk", "Staff sign-in is for desk terminals.",
                               "仅收费终端可登录。")
        result = await self.link.call("staff.login", {"badge": badge, "pin": pin}, 20)
        if not isinstance(result, StaffInfo):  # the uplink validated it as this model
            raise TypeError(f"staff.login answered with {type(result).__name__}")
        if self.current is not None:
            self.logout()  # one cashier at a time; central ended the old session too
        self.current = StaffSession(
            staff_id=result.staff_id, name=result.name, role=result.role, badge=badge,
            since=self.clock.now().isoformat(), session_token=result.session_token,
            expires_at=result.expires_at)
        self.bus.publish("staff.login", {"name": result.name, "role": result.role})
        self.shipper.record("staff.login", {"staff_id": result.staff_id})
        return self.current.public()

    def logout(self) -> None:
        """Lock the desk: the staff session ends at central and here (patient session too)."""
        token = self.current.session_token if self.current is not None else None
        self.end("logout")
        if token:
            self.shipper.spawn(self._logout_at_central(token))

    def end(self, reason: str) -> None:
        """The staff session ended (logout, expired at central, handover)."""
        if self.current is not None:
            self.shipper.record("staff.logout",
                                {"staff_id": self.current.staff_id, "reason": reason})
        self.current = None
        if self.printing is not None:
            self.printing.forget_last()
        self._end_card_session()
        self.bus.publish("staff.logout", {"reason": reason})

    async def _logout_at_central(self, token: str) -> None:
        try:
            await self.link.uplink.request("staff.logout", {}, timeout=10, auth=token)
        except Exception as exc:  # the session still ends at central by its idle limit
            log.info("staff.logout not confirmed by central: %s", type(exc).__name__)

    # -- shift handover --------------------------------------------------------------------

    def _shift(self, staff: StaffSession) -> Any:
        """This cashier's takings since the desk's last handover (else since midnight)."""
        from edge.devices.printer import documents as docs

        tz = self.terminal.tz
        now = self.clock.now().astimezone(tz)
        last = self.ledger.last_handover()
        start = (last.astimezone(tz) if last is not None
                 else now.replace(hour=0, minute=0, second=0, microsecond=0))
        lines = tuple(docs.ClosingLine(**x) for x in self.ledger.totals(
            start, now + timedelta(seconds=1), operator=staff.staff_id))
        return docs.ShiftReport(
            hospital_name=self.terminal.hospital_name, terminal_id=self.terminal.device_id,
            cashier=f"{staff.name} ({staff.badge})", period_start=min(start, now),
            period_end=now, lines=lines, printed_at=now)

    def shift_summary(self) -> dict[str, Any]:
        """What the handover report will say, for the desk's screen before it prints."""
        report = self._shift(self.require())
        return {"cashier": report.cashier, "period_start": report.period_start.isoformat(),
                "period_end": report.period_end.isoformat(),
                "lines": [{**dataclasses.asdict(x), "net_fen": x.net_fen}
                          for x in report.lines]}

    async def shift_handover(self) -> PrintOutcome:
        """交班: print this cashier's shift report, record it, then sign the desk out.

        Central is asked first whether the session is still live (as for the closing
        report). A report that did not print hands nothing over: the cashier stays signed
        in and can print it again once the printer is fixed.
        """
        staff = self.require()
        if self.printing is None:
            raise RuntimeError("no printing desk")
        await self.link.call("staff.session", {}, 10)
        report = self._shift(staff)
        # Unique per handover: two within one second must not look like one job to the
        # printer's job store (which prints a known job id only once).
        job_id = f"shift-{report.printed_at:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        outcome = await self.printing.printer.print(report, job_id=job_id, copy=False)
        await self.printing.report_print(outcome, report.kind, False)
        if outcome.state != "printed":
            return outcome
        self.ledger.record_handover(report.period_end, staff.staff_id)
        self.shipper.record("shift.handover", {
            "staff_id": staff.staff_id, "job_id": job_id,
            "period_start": report.period_start.isoformat(),
            "period_end": report.period_end.isoformat(),
            "count": sum(x.payment_count + x.topup_count + x.refund_count for x in report.lines),
            "net_fen": sum(x.net_fen for x in report.lines)})
        self.end("handover")
        if staff.session_token:
            self.shipper.spawn(self._logout_at_central(staff.session_token))
        return outcome
