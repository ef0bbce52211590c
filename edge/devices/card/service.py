"""The card subsystem of ``ykt edge``: watcher + sessions, events for the kiosk.

Glue only. The watcher reports readers and insertions; for the patient reader the service
publishes ``ReaderAddedEvent`` / ``ReaderRemovedEvent``, reads the identity in a worker
thread (one card operation at a time) and publishes ``IdentityRead`` / ``CardReadFailed``;
removal publishes ``CardRemovedEvent`` and makes any read still in flight for that
insertion be dropped, so no identity outlives its card.

A terminal-side fault (SAM missing, PIN wrong, tries low) is not the patient's business:
``CardReadFailed`` then carries ``CardServiceUnavailable`` (generic screen text) and the
specific error goes to ``health()`` and the log. The SAM session is opened lazily on first
use; a rejected PIN is remembered — in memory and in ``sam-pin-state.json`` in the state
directory — and never sent again until the PIN file changes (or ``reset_sam()``, which
forgets only the in-memory failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from edge.devices.card import errors as E
from edge.devices.card import watcher as W
from edge.devices.card.card_session import CardSession, LocalToday
from edge.devices.card.config import CardConfig, read_sam_pin
from edge.devices.card.hotlist import HotList
from edge.devices.card.pinstate import SamPinLedger
from edge.devices.card.protocol.records import CardContents, Identity
from edge.devices.card.sam_session import SamSession
from edge.devices.card.transport import CardTransport, PcscContext, PyscardTransport

__all__ = [
    "CardInsertedEvent",
    "CardReadFailed",
    "CardRemovedEvent",
    "CardService",
    "IdentityRead",
    "ReaderAddedEvent",
    "ReaderRemovedEvent",
    "ServiceEvent",
    "reader_matches",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CardInsertedEvent:
    """A card entered the patient reader (reading starts)."""

    reader: str
    atr: bytes


@dataclass(frozen=True, slots=True)
class IdentityRead:
    """The identity of the card in ``reader``."""

    reader: str
    identity: Identity


@dataclass(frozen=True, slots=True)
class CardReadFailed:
    """Reading the card in ``reader`` failed; ``error`` says why (screen text included)."""

    reader: str
    error: E.CardError


@dataclass(frozen=True, slots=True)
class CardRemovedEvent:
    """The card left the patient reader."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReaderAddedEvent:
    """A patient reader appeared (plugged in, or pcscd came back)."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReaderRemovedEvent:
    """A patient reader disappeared (unplugged, or pcscd went away)."""

    reader: str


ServiceEvent = (CardInsertedEvent | IdentityRead | CardReadFailed | CardRemovedEvent
                | ReaderAddedEvent | ReaderRemovedEvent)


def reader_matches(pattern: str, reader: str) -> bool:
    """Case-insensitive shell-style match of a PC/SC reader name."""
    return fnmatch.fnmatchcase(reader.lower(), pattern.lower())


#: The local date for the expiry check (cached per day: the read path asks it per card).
_today = LocalToday()


class CardService:
    """Runs the watcher and reads cards; consume with ``async for ev in events()``."""

    def __init__(self, config: CardConfig, hotlist: HotList, clock: Callable[[], dt.date]
                 = _today, *, transport_factory: Callable[[str], CardTransport] | None = None,
                 watcher_factory: Callable[..., W.ReaderWatcher] | None = None) -> None:
        self.config = config
        self.hotlist = hotlist
        self._clock = clock
        # One PC/SC context for every card and SAM connection of the service (they are
        # serialised by _card_lock): a context per card cost two pcscd round trips.
        self._pcsc: PcscContext | None = None
        self._transport_factory = transport_factory or self._pyscard_transport
        self._watcher_factory = watcher_factory or W.ReaderWatcher
        self._watcher: W.ReaderWatcher | None = None
        self._events: asyncio.Queue[ServiceEvent] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()
        self._cards: dict[str, bytes] = {}
        self._readers: set[str] = set()
        self._generation: dict[str, int] = {}
        self._card_lock = threading.Lock()  # one card/SAM operation at a time
        self._sam: SamSession | None = None
        self._sam_failure: E.SamError | None = None
        self._failed_pin: bytes | None = None  # sha256 of the PIN behind _sam_failure
        self._fault: E.CardError | None = None  # last terminal-side fault, for health()
        # Patient readers whose card could not be read because no SAM was there yet (the
        # SAM reader comes up after the patient reader at boot or after a pcscd restart):
        # read again as soon as a SAM card appears, instead of leaving the patient stuck.
        self._waiting_for_sam: dict[str, int] = {}
        self._sam_arrivals = 0  # SAM cards seen so far: did one come while a read ran?

    def _pyscard_transport(self, reader: str) -> CardTransport:
        if self._pcsc is None:
            self._pcsc = PcscContext()
        return PyscardTransport(reader, apdu_timeout=self.config.timeouts.apdu_s,
                                context=self._pcsc)

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Start watching readers (no-op with one log line when disabled)."""
        if not self.config.enabled:
            log.info("card subsystem disabled by config")
            return
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        watch_q: asyncio.Queue[W.WatchEvent] = asyncio.Queue()
        self._watcher = self._watcher_factory(
            loop, watch_q, poll_timeout_ms=int(self.config.poll_interval_s * 1000))
        self._watcher.start()
        self._task = asyncio.create_task(self._consume(watch_q), name="card-service")

    async def stop(self) -> None:
        """Stop the watcher, wait for reads in flight, release the SAM."""
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.stop)
            self._watcher = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)
        await asyncio.to_thread(self._close_sam)
        pcsc, self._pcsc = self._pcsc, None
        if pcsc is not None:
            await asyncio.to_thread(pcsc.close)

    async def events(self) -> AsyncIterator[ServiceEvent]:
        """Service events, in order, until the service stops."""
        if self._events is None:
            return
        while True:
            yield await self._events.get()

    # --- watcher events -----------------------------------------------------------------
    def _is_patient(self, reader: str) -> bool:
        return reader_matches(self.config.patient_reader, reader)

    def _is_sam(self, reader: str) -> bool:
        return reader_matches(self.config.sam_reader, reader)

    def _publish(self, ev: ServiceEvent) -> None:
        if self._events is not None:
            self._events.put_nowait(ev)

    async def _consume(self, q: asyncio.Queue[W.WatchEvent]) -> None:
        while True:
            ev = await q.get()
            if isinstance(ev, W.ReaderAdded):
                self._readers.add(ev.reader)
                if self._is_patient(ev.reader):
                    self._publish(ReaderAddedEvent(ev.reader))
            elif isinstance(ev, W.ReaderRemoved):
                self._readers.discard(ev.reader)
                if self._is_patient(ev.reader):
                    self._publish(ReaderRemovedEvent(ev.reader))
            elif isinstance(ev, W.CardInserted):
                self._cards[ev.reader] = ev.atr
                self._generation[ev.reader] = self._generation.get(ev.reader, 0) + 1
                if self._is_patient(ev.reader):
                    self._publish(CardInsertedEvent(ev.reader, ev.atr))
                    self._start_read(ev.reader)
                elif self._is_sam(ev.reader):
                    self._sam_arrivals += 1
                    waiting, self._waiting_for_sam = self._waiting_for_sam, {}
                    for reader, generation in waiting.items():
                        if self._generation.get(reader) == generation and reader in self._cards:
                            log.info("SAM present: reading the waiting card in %s again", reader)
                            self._start_read(reader)
            elif isinstance(ev, W.CardRemoved):
                self._cards.pop(ev.reader, None)
                self._generation[ev.reader] = self._generation.get(ev.reader, 0) + 1
                if self._is_patient(ev.reader):
                    self._publish(CardRemovedEvent(ev.reader))
                elif self._is_sam(ev.reader):
                    await asyncio.to_thread(self._close_sam)

    def _start_read(self, reader: str) -> None:
        task = asyncio.create_task(self._read_identity(reader, self._generation[reader]))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _limit(self) -> float:
        # Hard bound over the worker thread: the session checks its own deadline between
        # APDUs, this one also covers a driver call that never returns.
        return self.config.timeouts.operation_s + self.config.timeouts.apdu_s

    async def _bounded(self, fn: Callable[[str], Any], reader: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, reader), self._limit())
        except TimeoutError:
            raise E.CardTimeout("The card operation did not finish in time",
                                reader=reader) from None

    async def _read_identity(self, reader: str, generation: int) -> None:
        sam_arrivals = self._sam_arrivals
        try:
            identity = await self._bounded(self._blocking_identity, reader)
            result: ServiceEvent = IdentityRead(reader, identity)
            self._fault = None
        except E.SamError as exc:
            # SAM missing, PIN wrong, tries low: staff's problem, not the patient's. The
            # screen gets the generic text; the reason goes to health() and the log.
            self._fault = exc
            log.error("card service unavailable (%s): %s", exc.code, exc.message)
            if isinstance(exc, E.SamUnavailable):
                same_card = self._generation.get(reader) == generation
                if self._sam_arrivals != sam_arrivals and same_card:
                    self._start_read(reader)  # the SAM came while this read ran: read again
                    return
                self._waiting_for_sam[reader] = generation
            result = CardReadFailed(reader, E.CardServiceUnavailable(reader=reader, cause=exc))
        except E.CardError as exc:
            result = CardReadFailed(reader, exc)
        except Exception as exc:  # a bug must not kill the service; report it typed
            log.exception("unexpected error reading card")
            result = CardReadFailed(reader, E.CardError(f"Internal error: {type(exc).__name__}"))
        if self._generation.get(reader) != generation:
            return  # the card was removed (or swapped) meanwhile: drop the stale result
        self._publish(result)

    # --- blocking work (worker threads) -------------------------------------------------
    def _session(self, transport: CardTransport) -> CardSession:
        return CardSession(transport, self._ensure_sam(), self.config.auth.to_scheme(),
                           self.config.timeouts.to_timeouts(), profile=self.config.profile(),
                           hotlist=self.hotlist, today=self._clock)

    def _acquire(self, reader: str) -> None:
        if not self._card_lock.acquire(timeout=self._limit()):
            raise E.CardTimeout("The reader is busy with a previous operation", reader=reader)

    def _blocking_identity(self, reader: str) -> Identity:
        self._acquire(reader)
        try:
            transport = self._transport_factory(reader)
            try:
                return self._session(transport).read_identity(
                    reject_expired=self.config.reject_expired)
            finally:
                transport.close()
        finally:
            self._card_lock.release()

    def _blocking_all(self, reader: str) -> CardContents:
        self._acquire(reader)
        try:
            transport = self._transport_factory(reader)
            try:
                return self._session(transport).read_all()
            finally:
                transport.close()
        finally:
            self._card_lock.release()

    def _sam_reader(self) -> str | None:
        for reader in sorted(self._cards):
            if self._is_sam(reader):
                return reader
        return None

    def _ensure_sam(self) -> SamSession | None:
        """The open SAM session, or None (the card session then raises SamUnavailable)."""
        if self._sam_failure is not None:
            if self._failed_pin is None or self._pin_digest() == self._failed_pin:
                raise self._sam_failure
            self._sam_failure = self._failed_pin = None  # the PIN file changed: look again
        if self._sam is not None and self._sam.opened:
            return self._sam
        reader = self._sam_reader()
        if reader is None:
            return None
        pin = read_sam_pin(self.config.sam_pin_file)
        sam = SamSession(self._transport_factory(reader), pin,
                         ledger=SamPinLedger(self.config.sam_pin_state_path()))
        try:
            sam.open()
        except E.SamPinError as exc:  # wrong, blocked, or too few tries left
            self._sam_failure = exc  # never send a rejected PIN again by ourselves
            self._failed_pin = hashlib.sha256(pin.encode()).digest()
            sam.close()
            log.error("SAM PIN refused in %s: %s", reader, exc.message)
            raise
        except E.CardError:
            sam.close()
            raise
        self._sam = sam
        return sam

    def _pin_digest(self) -> bytes | None:
        try:
            return hashlib.sha256(read_sam_pin(self.config.sam_pin_file).encode()).digest()
        except E.CardError:
            return None

    def _close_sam(self) -> None:
        locked = self._card_lock.acquire(timeout=self._limit())
        try:
            # Even when a hung operation still holds the lock, drop the SAM (shutdown).
            sam, self._sam = self._sam, None
            if sam is not None:
                sam.close()
        finally:
            if locked:
                self._card_lock.release()

    # --- API ------------------------------------------------------------------------------
    async def read_all(self) -> CardContents:
        """Read everything from the card in the patient reader."""
        reader = next((r for r in sorted(self._cards) if self._is_patient(r)), None)
        if reader is None:
            raise E.CardRemoved("No card in the patient reader", "请插入居民健康卡。")
        return await self._bounded(self._blocking_all, reader)  # type: ignore[no-any-return]

    async def probe_sam(self) -> dict[str, Any]:
        """Open the SAM if it is not open yet (as the first card read would; a PIN it
        refused before is never sent again) and return :meth:`sam_status` — how a reader
        self-test learns the terminal number before any patient came."""
        reader = self._sam_reader()
        if reader is not None and self.config.enabled:
            def blocking(r: str) -> None:
                self._acquire(r)
                try:
                    self._ensure_sam()
                finally:
                    self._card_lock.release()

            try:
                await self._bounded(blocking, reader)
            except E.CardError as exc:  # the state says what is wrong
                log.warning("SAM probe in %s failed (%s)", reader, exc.code)
        return self.sam_status()

    async def reset_sam(self) -> None:
        """Forget the in-memory SAM failure and reopen on next use (the persisted record
        of a rejected PIN stays: the same PIN is still not presented to the same SAM)."""
        self._sam_failure = self._failed_pin = None
        await asyncio.to_thread(self._close_sam)

    def sam_status(self) -> dict[str, Any]:
        """State of the SAM for health reports (never contains the PIN)."""
        reader = self._sam_reader()
        out: dict[str, Any] = {"reader": reader}
        if not self.config.enabled:
            out["state"] = "disabled"
        elif self._sam_failure is not None:
            f = self._sam_failure
            out["state"] = ("pin_blocked" if isinstance(f, E.SamPinBlocked) else
                            "pin_tries_low" if isinstance(f, E.SamPinTriesLow) else
                            "pin_error")
            out["retries_left"] = getattr(f, "retries_left", None)
            out["error"] = f.to_dict()
        elif self._sam is not None and self._sam.opened:
            out.update(self._sam.status())
            out["state"] = "ok"
        elif reader is None:
            out["state"] = "missing"
        else:
            out["state"] = "not_opened"
        return out

    def health(self) -> dict[str, Any]:
        """Reader presence, SAM state and the last terminal-side fault, for /v1/health.

        This is the device's fault report, for staff: it carries the specific reason that
        the patient's screen does not (never the PIN, never card holder data).
        """
        patient = sorted(r for r in self._readers if self._is_patient(r))
        return {"enabled": self.config.enabled, "reader_present": bool(patient),
                "patient_reader": patient[0] if patient else None,
                "sam": self.sam_status(),
                "fault": self._fault.to_dict() if self._fault is not None else None}

    @property
    def reader_present(self) -> bool:
        """True while a reader matching ``patient_reader`` is known."""
        return any(self._is_patient(r) for r in self._readers)

    @property
    def readers(self) -> set[str]:
        """Readers currently known."""
        return set(self._readers)

    @property
    def cards(self) -> dict[str, bytes]:
        """Readers holding a card → ATR."""
        return dict(self._cards)
