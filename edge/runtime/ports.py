"""What the runtime needs of its collaborators, as ``typing.Protocol``s.

The daemon passes the real ones (``edge.uplink.client.Uplink``,
``edge.devices.printer.driver.PrinterService``, ``edge.fleet.audit.AuditLog``, the card
service's health and identities); tests pass small fakes with the same shape. Scans arrive
already classified (``edge.devices.scanner.classify``), so the scanner needs no port
(docs/architecture.md, "Packages and what may import what").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

__all__ = ["AuditLogPort", "AuditRow", "CardHealth", "CardIdentity", "Clock", "PrintOutcome",
           "PrinterPort", "UplinkPort"]


class Clock(Protocol):
    """Wall clock, injectable for tests."""

    def now(self) -> datetime:
        """Return an aware datetime."""
        ...


class UplinkPort(Protocol):
    """What the runtime uses of :class:`edge.uplink.client.Uplink`."""

    @property
    def connected(self) -> bool:
        """True while the MQTT session is up."""
        ...

    async def request(self, type: str, body: dict[str, Any], *,
                      timeout: float | None = None,  # noqa: ASYNC109 - the caller's deadline
                      id: str | None = None,
                      auth: str | None = None) -> BaseModel:
        """Send a request durably; its validated result model, or a typed UplinkError."""
        ...

    async def result_of(self, request_id: str, *, wait_s: float = 0.0) -> BaseModel:
        """The outcome of an earlier request whose caller gave up."""
        ...

    async def publish_event(self, type: str, body: dict[str, Any]) -> str:
        """Queue an event for central durably; its id."""
        ...

    def unresolved_payments(self) -> list[str]:
        """Request ids of payments without a final outcome (durable: survives a restart)."""
        ...


class PrintOutcome(Protocol):
    """What happened to a print job (``edge.devices.printer.driver.PrintOutcome``)."""

    job_id: str
    state: str  # "printed" | "failed"
    reason: str | None
    copy: bool
    doc_kind: str

    @property
    def message(self) -> str:
        """English text for the screen."""
        ...

    @property
    def message_zh(self) -> str:
        """Chinese text for the screen."""
        ...


class PrinterPort(Protocol):
    """What the runtime uses of the printer service (durable jobs, status)."""

    async def print(self, doc: Any, *, job_id: str, copy: bool = False) -> PrintOutcome:
        """Print a document once per job id."""
        ...

    async def reprint(self, job_id: str) -> PrintOutcome:
        """Print a failed job again (a copy when an original may be on paper)."""
        ...

    async def status(self) -> Any:
        """The printer's status now (``ready``, ``problem``, ``paper``…)."""
        ...


class AuditRow(Protocol):
    """One record of the device audit chain."""

    seq: int

    def wire_body(self) -> dict[str, Any]:
        """The ``audit`` event body."""
        ...


class AuditLogPort(Protocol):
    """What the runtime uses of :class:`edge.fleet.audit.AuditLog`."""

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> AuditRow:
        """Append one masked record."""
        ...

    def mark_shipped(self, seq: int) -> None:
        """The record is in the uplink's outbox."""
        ...

    def unshipped(self) -> Sequence[AuditRow]:
        """Records not yet in the outbox (a crash in between)."""
        ...


class CardIdentity(Protocol):
    """The card's identity (``edge.devices.card.protocol.records.Identity``), full."""

    name: str
    id_number: str
    card_number: str

    def masked(self) -> dict[str, Any]:
        """The screen-safe view."""
        ...


class CardHealth(Protocol):
    """The card service's health (reader, SAM state, last fault) for /v1/health."""

    def __call__(self) -> dict[str, Any]:
        """A snapshot."""
        ...


class DocumentDesk(Protocol):
    """What the staff desk needs of the printing desk (edge/runtime/printing.py): the
    printer, the last-document memory and the print report, without importing it."""

    printer: PrinterPort

    def forget_last(self) -> None:
        """Forget the last document (a new cashier may not reprint the previous one's)."""
        ...

    async def report_print(self, outcome: PrintOutcome, kind: str, copy: bool) -> None:
        """Report a print's outcome to central and the kiosk."""
        ...
