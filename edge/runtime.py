"""The daemon's live state: the patient session, the event bus and the actions the API offers.

Personal data (the cardholder's name and ID number) stays here, in memory, for the length
of one card session; the kiosk only ever gets masked values. Card removal wipes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from edge.common.logging import known_names
from edge.common.privacy import mask_card_number, mask_id_number, mask_name

log = logging.getLogger("edge.runtime")

__all__ = ["EdgeRuntime", "EventBus", "SessionError"]


class SessionError(Exception):
    """An API action that needs a card session (or a patient) found none."""

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_zh = message_zh


class Clock(Protocol):
    """Wall clock, injectable for tests."""

    def now(self) -> datetime:
        """Return an aware datetime."""
        ...


class EventBus:
    """Fan-out of daemon events to API subscribers; a slow subscriber loses old events only."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._maxsize = maxsize
        self._seq = 0

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber (never blocks)."""
        self._seq += 1
        event = {"seq": self._seq, "kind": kind, "data": data}
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Yield a queue receiving every event published while the context is open."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs.add(q)
        try:
            yield q
        finally:
            self._subs.discard(q)


@dataclass
class CardSessionState:
    """One inserted card, from insertion to removal."""

    session_id: str
    reader: str
    state: str  # "reading" | "ready" | "error"
    identity: Any = None  # edge.devices.card.protocol.records.Identity (full, in memory only)
    error: dict[str, str] | None = None
    patient: dict[str, Any] | None = None  # platform's patient record (full)
    started: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def masked(self) -> dict[str, Any]:
        """What the kiosk may see."""
        out: dict[str, Any] = {"session_id": self.session_id, "state": self.state}
        if self.identity is not None:
            out["identity"] = self.identity.masked()
        if self.error:
            out["error"] = self.error
        if self.patient:
            p = self.patient
            out["patient"] = {
                "patient_id": p["patient_id"],
                "name": mask_name(p["name"]),
                "sex": p.get("sex", "U"),
                "id_number": mask_id_number(p["id_number"]),
                "card_no": mask_card_number(p["card_no"]),
                "balance_fen": p.get("balance_fen", 0),
                "insured": p.get("insured", False),
            }
        return out


class EdgeRuntime:
    """Glue between the card service, the printer, the uplink and the local API."""

    def __init__(
        self,
        *,
        device_id: str,
        role: str,
        hospital_name: str,
        timezone: str = "Asia/Shanghai",
        uplink: Any,
        printer: Any,
        clock: Clock,
    ) -> None:
        self.device_id = device_id
        self.role = role
        self.hospital_name = hospital_name
        self.tz = ZoneInfo(timezone)
        self.uplink = uplink
        self.printer = printer
        self.clock = clock
        self.bus = EventBus()
        self.session: CardSessionState | None = None
        self.reader_present = False
        self.started = clock.now()

    # -- card events ---------------------------------------------------------------------

    def card_inserted(self, reader: str) -> None:
        """A card went into the patient slot: open a session in the reading state."""
        self._wipe()
        self.session = CardSessionState(
            session_id=secrets.token_hex(8), reader=reader, state="reading",
            started=self.clock.now(),
        )
        self.bus.publish("card.inserted", {"session_id": self.session.session_id})

    def identity_read(self, reader: str, identity: Any) -> None:
        """The card's identity was read and passed the hot-list check."""
        if self.session is None or self.session.reader != reader:
            self.card_inserted(reader)
        assert self.session is not None
        self.session.identity = identity
        self.session.state = "ready"
        known_names.add(identity.name)
        self.bus.publish("card.identity", self.session.masked())
        log.info("card read", extra={"session": self.session.session_id})

    def card_failed(self, reader: str, code: str, message: str, message_zh: str) -> None:
        """Reading failed (not a health card, blocked, removed mid-read, SAM fault...)."""
        if self.session is None or self.session.reader != reader:
            self.card_inserted(reader)
        assert self.session is not None
        self.session.state = "error"
        self.session.error = {"code": code, "message": message, "message_zh": message_zh}
        self.bus.publish("card.error", self.session.masked())

    def card_removed(self, reader: str) -> None:
        """The card left the slot: the session and its personal data end now."""
        if self.session is not None and self.session.reader == reader:
            sid = self.session.session_id
            self._wipe()
            self.bus.publish("card.removed", {"session_id": sid})

    def end_session(self) -> None:
        """The kiosk ended the session (timeout, done): wipe personal data."""
        if self.session is not None:
            sid = self.session.session_id
            self._wipe()
            self.bus.publish("session.ended", {"session_id": sid})

    def _wipe(self) -> None:
        if self.session is not None and self.session.identity is not None:
            known_names.discard(self.session.identity.name)
        self.session = None

    # -- actions -------------------------------------------------------------------------

    def _require_identity(self) -> CardSessionState:
        s = self.session
        if s is None or s.state != "ready" or s.identity is None:
            raise SessionError(
                "no_card", "Please insert your health card.", "请插入您的居民健康卡。"
            )
        return s

    async def identify_patient(self) -> dict[str, Any]:
        """Ask the platform who the card in the slot belongs to."""
        s = self._require_identity()
        result = await self.uplink.request(
            "patient.identify", {"by": "card", "value": s.identity.card_number}
        )
        if self.session is not s:  # card pulled while we waited: drop the answer
            raise SessionError("card_removed", "The card was removed.", "卡已被取出。")
        s.patient = dict(result)
        known_names.add(result["name"])
        return s.masked()

    async def request(self, type_: str, body: dict[str, Any], timeout_s: float | None) -> Any:
        """Forward a non-personal request (slots, booking, payment...) through the uplink."""
        return await self.uplink.request(type_, body, timeout=timeout_s)

    async def print_registration_slip(self, booking: dict[str, Any], *, copy: bool) -> Any:
        """Print the slip of a confirmed booking for the patient in the slot."""
        from edge.devices.printer.documents import RegistrationSlip

        s = self._require_identity()
        ident = s.identity
        slip = RegistrationSlip(
            hospital_name=self.hospital_name,
            patient_name=ident.name,
            id_number=ident.id_number,
            card_no=ident.card_number,
            dept_name=booking["dept_name"],
            doctor_name=booking["doctor_name"],
            doctor_title=booking.get("title", ""),
            date=booking["date"],
            start=booking["start"],
            end=booking["end"],
            queue_no=int(booking["queue_no"]),
            location=booking.get("location", ""),
            fee_fen=int(booking["fee_fen"]),
            visit_no=booking["visit_no"],
            insured=bool(booking.get("insured", False)),
            printed_at=self.clock.now().astimezone(self.tz),
            copy=copy,
        )
        job_id = f"slip-{booking['booking_id']}" + ("-copy" if copy else "")
        outcome = await self.printer.print(slip, job_id=job_id, copy=copy)
        kind = "print.done" if outcome.state == "printed" else "print.failed"
        body = {"job_id": job_id, "doc_kind": "registration_slip", "copy": copy}
        if outcome.state != "printed":
            body["reason"] = outcome.reason or "unknown"
        self.bus.publish(kind, body)
        with contextlib.suppress(Exception):
            await self.uplink.publish_event(kind, body)
        return outcome

    def health(self) -> dict[str, Any]:
        """A snapshot for the kiosk's status bar and the API's /health."""
        return {
            "device_id": self.device_id,
            "role": self.role,
            "uplink_connected": bool(getattr(self.uplink, "connected", False)),
            "reader_present": self.reader_present,
            "session": self.session.masked() if self.session else None,
            "uptime_s": int((self.clock.now() - self.started).total_seconds()),
        }
