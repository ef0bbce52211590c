"""The patient's card session: from insertion to removal, with the full identity in memory.

Personal data (the cardholder's name and ID number) stays here, in memory, for the length
of one card session; the kiosk only ever gets masked values (docs/privacy.md). Card removal
wipes it, and everything kept for the session with it (``on_wipe``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.errors import SessionError
from edge.runtime.events import EventBus
from edge.runtime.link import PlatformLink
from edge.runtime.ports import CardIdentity, Clock
from yikatong.common.logging import known_names
from yikatong.common.privacy import mask_card_number, mask_id_number, mask_name
from yikatong.protocol.messages import PatientInfo

__all__ = ["CardSessionState", "CardSessions"]

log = logging.getLogger("edge.runtime")


@dataclass
class CardSessionState:
    """One inserted card (or e-health QR), from insertion to removal."""

    session_id: str
    reader: str
    state: str  # "reading" | "ready" | "error"
    identity: CardIdentity | None = None  # full, in memory only
    error: dict[str, str] | None = None
    patient: PatientInfo | None = None  # the platform's patient record, as central shaped it
    started: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    via: str = "card"  # "card" | "ehc_qr"
    #: Bumped each time the platform's patient record is read (balance after a refund).
    patient_seq: int = 0

    @property
    def holder_name(self) -> str:
        """The full name for paper (masked by the layout), from the card or the platform."""
        if self.identity is not None:
            return str(self.identity.name)
        return self.patient.name if self.patient is not None else ""

    @property
    def card_no(self) -> str:
        """The health card number (full; masked on paper)."""
        if self.identity is not None:
            return str(self.identity.card_number)
        return self.patient.card_no if self.patient is not None else ""

    @property
    def id_number(self) -> str:
        """The ID number for a registration slip (full; masked on paper)."""
        if self.identity is not None:
            return str(self.identity.id_number)
        return self.patient.id_number if self.patient is not None else ""

    def masked(self) -> dict[str, Any]:
        """What the kiosk may see."""
        out: dict[str, Any] = {"session_id": self.session_id, "state": self.state,
                               "via": self.via}
        if self.identity is not None:
            out["identity"] = self.identity.masked()
        if self.error:
            out["error"] = self.error
        if self.patient is not None:
            p = self.patient
            out["patient"] = {
                "patient_id": p.patient_id,
                "name": mask_name(p.name),
                "sex": p.sex,
                "id_number": mask_id_number(p.id_number),
                "card_no": mask_card_number(p.card_no),
                "balance_fen": p.balance_fen,
                "insured": p.insured,
            }
        return out


class CardSessions:
    """The card session of this terminal's patient slot (one at a time)."""

    def __init__(self, *, bus: EventBus, clock: Clock, shipper: AuditShipper,
                 link: PlatformLink) -> None:
        self.bus = bus
        self.clock = clock
        self.shipper = shipper
        self.link = link
        self.session: CardSessionState | None = None
        self.reader_present = False
        #: Called after every wipe: what was kept for the session goes with it.
        self.on_wipe: list[Callable[[], None]] = []

    # -- card events -----------------------------------------------------------------------

    def inserted(self, reader: str, atr: bytes | None = None) -> None:
        """A card went into the patient slot: open a session in the reading state."""
        self.wipe()
        self.session = CardSessionState(
            session_id=secrets.token_hex(8), reader=reader, state="reading",
            started=self.clock.now(),
        )
        self.bus.publish("card.inserted", {"session_id": self.session.session_id})
        self.shipper.record("card.inserted",
                            {"reader": reader, "session_id": self.session.session_id})
        if atr:
            self.shipper.ship("card.inserted", {"reader": reader, "atr": atr.hex().upper()})

    def _session_for(self, reader: str) -> CardSessionState:
        if self.session is None or self.session.reader != reader:
            self.inserted(reader)
        if self.session is None:  # inserted() always opens one
            raise RuntimeError("no card session after insertion")
        return self.session

    def identity_read(self, reader: str, identity: CardIdentity) -> None:
        """The card's identity was read and passed the hot-list check."""
        s = self._session_for(reader)
        s.identity = identity
        s.state = "ready"
        known_names.add(identity.name)
        self.bus.publish("card.identity", s.masked())
        self.shipper.record("card.read", {"reader": reader, "session_id": s.session_id,
                                          "card_masked": mask_card_number(
                                              str(identity.card_number))})
        log.info("card read", extra={"session": s.session_id})

    def failed(self, reader: str, code: str, message: str, message_zh: str) -> None:
        """Reading failed (not a health card, blocked, removed mid-read, SAM fault...)."""
        s = self._session_for(reader)
        s.state = "error"
        s.error = {"code": code, "message": message, "message_zh": message_zh}
        self.bus.publish("card.error", s.masked())
        self.shipper.record("card.read_failed", {"reader": reader, "code": code})
        self.shipper.ship("card.read_failed", {"reader": reader, "code": code})

    def removed(self, reader: str) -> None:
        """The card left the slot: the session and its personal data end now."""
        if self.session is not None and self.session.reader == reader:
            sid = self.session.session_id
            self.wipe()
            self.bus.publish("card.removed", {"session_id": sid})
            self.shipper.record("card.removed", {"reader": reader, "session_id": sid})
            self.shipper.ship("card.removed", {"reader": reader})

    def end(self) -> None:
        """The kiosk ended the session (timeout, done): wipe personal data."""
        if self.session is not None:
            sid = self.session.session_id
            self.wipe()
            self.bus.publish("session.ended", {"session_id": sid})

    def wipe(self) -> None:
        """Forget the session's personal data and everything kept for it."""
        if self.session is not None:
            if self.session.identity is not None:
                known_names.discard(self.session.identity.name)
            if self.session.patient is not None:
                known_names.discard(self.session.patient.name)
        self.session = None
        for hook in self.on_wipe:
            hook()

    # -- checks ----------------------------------------------------------------------------

    def require_identity(self) -> CardSessionState:
        """The ready session, or ``no_card``."""
        s = self.session
        if s is None or s.state != "ready" or (s.identity is None and s.patient is None):
            raise SessionError(
                "no_card", "Please insert your health card.", "请插入您的居民健康卡。"
            )
        return s

    def require_patient(self) -> tuple[CardSessionState, PatientInfo]:
        """The session and its platform record, or ``not_identified``."""
        s = self.require_identity()
        if s.patient is None:
            raise SessionError("not_identified", "Your record has not been looked up yet.",
                               "尚未查询到您的就诊信息。")
        return s, s.patient

    def still(self, s: CardSessionState) -> None:
        """Raise ``card_removed`` when ``s`` is no longer the session (pulled while waiting)."""
        if self.session is not s:
            raise SessionError("card_removed", "The card was removed.", "卡已被取出。")

    # -- identification --------------------------------------------------------------------

    async def identify_patient(self) -> dict[str, Any]:
        """Ask the platform who the card in the slot belongs to."""
        s = self.require_identity()
        if s.identity is None:  # opened by an e-health QR: already identified
            return s.masked()
        result = await self.link.call(
            "patient.identify", {"by": "card", "value": s.identity.card_number, "scene": "0200"}
        )
        self.still(s)  # card pulled while we waited: drop the answer
        s.patient = _patient(result)
        s.patient_seq += 1
        known_names.add(s.patient.name)
        return s.masked()

    async def identify_by_qr(self, raw: str | None) -> dict[str, Any]:
        """Open a session for an e-health QR (no card in the slot)."""
        if not raw:
            raise SessionError("no_qr", "Please show your e-health card QR code again.",
                               "请重新出示电子健康卡二维码。")
        if self.session is not None and self.session.identity is not None:
            raise SessionError("card_in_slot", "A card is in the slot.", "读卡器中已有卡片。")
        result = await self.link.call("patient.identify",
                                      {"by": "ehc_qr", "value": raw, "scene": "0200"})
        self.wipe()
        patient = _patient(result)
        self.session = CardSessionState(session_id=secrets.token_hex(8), reader="qr",
                                        state="ready", started=self.clock.now(), via="ehc_qr",
                                        patient=patient, patient_seq=1)
        known_names.add(patient.name)
        masked = self.session.masked()
        self.bus.publish("card.identity", masked)
        return masked


def _patient(result: Any) -> PatientInfo:
    if not isinstance(result, PatientInfo):  # the uplink validated it as this model
        raise TypeError(f"patient.identify answered with {type(result).__name__}")
    return result
