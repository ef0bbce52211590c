"""PC/SC reader and card watcher: one polling thread, events into asyncio through one door.

We poll ``SCardGetStatusChange`` ourselves instead of using pyscard's CardMonitor because
a restarted pcscd invalidates the context and CardMonitor never recovers. Here any
failure other than a timeout drops the context, reports every known reader (and its
card) as removed, and re-establishes the context with a back-off — our daemon keeps
running. The thread only converts pyscard values into our frozen dataclasses and hands
them to the loop with ``loop.call_soon_threadsafe(queue.put_nowait, event)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["CardInserted", "CardRemoved", "ReaderAdded", "ReaderRemoved", "ReaderWatcher",
           "WatchEvent"]

log = logging.getLogger(__name__)

_PNP = "\\\\?PnP?\\Notification"


@dataclass(frozen=True, slots=True)
class ReaderAdded:
    """A reader appeared."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReaderRemoved:
    """A reader disappeared (unplugged, or pcscd went away)."""

    reader: str


@dataclass(frozen=True, slots=True)
class CardInserted:
    """A card is present in ``reader``."""

    reader: str
    atr: bytes


@dataclass(frozen=True, slots=True)
class CardRemoved:
    """The card left ``reader``."""

    reader: str


WatchEvent = ReaderAdded | ReaderRemoved | CardInserted | CardRemoved


class ReaderWatcher:
    """Watches PC/SC readers on a daemon thread; events go to an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[WatchEvent], *,
                 poll_timeout_ms: int = 500, retry_s: float = 0.5, max_retry_s: float = 5.0,
                 scard: Any = None) -> None:
        self._loop = loop
        self._queue = queue
        self._poll_ms = poll_timeout_ms
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        if scard is None:
            from smartcard import scard as _s
            scard = _s
        self._s = scard
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: Any = None
        self._ctx_lock = threading.Lock()
        # reader → last event state (without CHANGED); cards present → ATR
        self._states: dict[str, int] = {}
        self._cards: dict[str, bytes] = {}
        self.reconnects = 0

    # --- the one door ---------------------------------------------------------------------
    def _emit(self, event: WatchEvent) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def start(self) -> None:
        """Start the polling thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pcsc-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the thread (cancels a pending GetStatusChange)."""
        self._stop.set()
        with self._ctx_lock:
            if self._ctx is not None:
                with contextlib.suppress(Exception):
                    self._s.SCardCancel(self._ctx)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- thread -------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._retry_s
        while not self._stop.is_set():
            try:
                ok = self._cycle()
            except Exception:  # never let the watcher thread die
                log.exception("card watcher cycle failed")
                ok = False
            if ok:
                delay = self._retry_s
                continue
            self._drop_context()
            self._stop.wait(delay)
            delay = min(delay * 2, self._max_retry_s)
        self._drop_context(report=False)

    def _drop_context(self, report: bool = True) -> None:
        with self._ctx_lock:
            ctx, self._ctx = self._ctx, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                self._s.SCardReleaseContext(ctx)
        if report:
            for reader in list(self._states):
                self._forget(reader)

    def _forget(self, reader: str) -> None:
        if self._cards.pop(reader, None) is not None:
            self._emit(CardRemoved(reader))
        if self._states.pop(reader, None) is not None:
            self._emit(ReaderRemoved(reader))

    def _cycle(self) -> bool:
        """One round; False when the context must be re-established."""
        s = self._s
        if self._ctx is None:
            hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
            if hr != s.SCARD_S_SUCCESS:
                return False
            with self._ctx_lock:
                self._ctx = ctx
            self.reconnects += 1
        hr, readers = s.SCardListReaders(self._ctx, [])
        if hr == s.SCARD_E_NO_READERS_AVAILABLE:
            readers = []
        elif hr != s.SCARD_S_SUCCESS:
            return False
        for gone in [r for r in self._states if r not in readers]:
            self._forget(gone)
        for new in [r for r in readers if r not in self._states]:
            self._states[new] = s.SCARD_STATE_UNAWARE
            self._emit(ReaderAdded(new))
        query = [(r, self._states[r]) for r in readers]
        # The PnP pseudo reader wakes us up when readers come and go.
        query.append((_PNP, len(readers) << 16))
        hr, result = s.SCardGetStatusChange(self._ctx, self._poll_ms, query)
        if hr in (s.SCARD_E_TIMEOUT, s.SCARD_E_CANCELLED):
            return True
        if hr == s.SCARD_E_UNKNOWN_READER:
            return True  # a reader vanished between list and wait; next cycle re-lists
        if hr != s.SCARD_S_SUCCESS:
            return False
        for reader, state, atr in result:
            if reader == _PNP or reader not in self._states:
                continue
            self._update(reader, state, bytes(atr))
        return True

    def _update(self, reader: str, state: int, atr: bytes) -> None:
        s = self._s
        old = self._states.get(reader, s.SCARD_STATE_UNAWARE)
        present = bool(state & s.SCARD_STATE_PRESENT) and not state & s.SCARD_STATE_MUTE
        was = reader in self._cards
        # pcsc-lite keeps a per-reader card event counter in the high 16 bits: a change
        # there with a card present both times means a quick swap we must report.
        swapped = was and present and (old >> 16) != (state >> 16) and old != 0
        if was and (not present or swapped):
            del self._cards[reader]
            self._emit(CardRemoved(reader))
        if present and (not was or swapped):
            self._cards[reader] = atr
            self._emit(CardInserted(reader, atr))
        self._states[reader] = state & ~s.SCARD_STATE_CHANGED

    # --- snapshot helpers (read from the loop thread; dict reads are atomic) ------------
    def cards(self) -> dict[str, bytes]:
        """Readers with a card, and the ATRs, as last seen."""
        return dict(self._cards)

    def readers(self) -> list[str]:
        """Known readers."""
        return list(self._states)

