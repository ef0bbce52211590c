"""The one small interface a card or SAM session talks through, and its transports.

``CardTransport`` is all a session needs (``transmit``, ``atr``, ``reader``, ``close``).
``PyscardTransport`` talks PC/SC through pyscard's low-level ``scard`` module and turns its
result codes into our errors at the boundary (docs/healthcard.md); ``PcscContext`` shares
one PC/SC context between the transports of one owner; ``InProcessTransport`` wraps a
simulator (tests, benches).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge.devices.card import errors as E

__all__ = [
    "CardTransport",
    "InProcessTransport",
    "PcscContext",
    "PyscardTransport",
    "load_scard",
]


class CardTransport(Protocol):
    """A connected card: send an APDU, get the response (data + SW)."""

    @property
    def atr(self) -> bytes:
        """The card's ATR."""
        ...

    @property
    def reader(self) -> str | None:
        """Reader name, for errors."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU; CardRemoved when the card is gone."""
        ...

    def close(self) -> None:
        """Release the card."""
        ...


class _SimCard(Protocol):
    atr: bytes

    def process_apdu(self, apdu: bytes) -> bytes: ...


class InProcessTransport:
    """A simulator called directly (tier-1 tests, benches)."""

    def __init__(self, card: _SimCard, reader: str = "in-process",
                 apdu_timeout: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._card = card
        self._reader = reader
        self._closed = False
        self.apdu_timeout = apdu_timeout
        self._monotonic = monotonic
        self.apdu_count = 0

    @property
    def atr(self) -> bytes:
        """The simulator's ATR."""
        return self._card.atr

    @property
    def reader(self) -> str | None:
        """Pseudo reader name."""
        return self._reader

    def transmit(self, apdu: bytes) -> bytes:
        """Call the simulator; an empty answer means the card was pulled."""
        if self._closed:
            raise E.CardRemoved(reader=self._reader)
        self.apdu_count += 1
        start = self._monotonic()
        resp = self._card.process_apdu(apdu)
        if not resp:
            self._closed = True
            raise E.CardRemoved(reader=self._reader)
        if self.apdu_timeout is not None and self._monotonic() - start > self.apdu_timeout:
            raise E.CardTimeout(reader=self._reader)
        return resp

    def close(self) -> None:
        """Mark closed."""
        self._closed = True


@functools.cache  # ``from smartcard import scard`` runs importlib's Python-level fromlist
def load_scard() -> Any:  # handling on every call, and a transport is built per card
    """pyscard's low-level ``scard`` module, imported on first use (not at import time)."""
    from smartcard import scard

    return scard


class PcscContext:
    """A PC/SC context shared by the transports of one owner (the card service, a bench).

    Establishing and releasing a context are two pcscd round trips (≈150 µs together,
    measured over pcscd+vpcd) — about 7 % of a whole ``read_identity``; one context per
    owner avoids paying them per card. Transports using it must not run concurrently (the
    service serialises card and SAM work); the watcher keeps its own context because
    SCardGetStatusChange holds a context for the whole wait. A context pcscd no longer
    knows (daemon restarted) is re-established by the next connect.
    """

    def __init__(self) -> None:
        self._s = load_scard()
        self._ctx: Any = None
        self._lock = threading.Lock()

    def acquire(self) -> tuple[int, Any]:
        """(result code, context handle), establishing the context on first use."""
        with self._lock:
            if self._ctx is None:
                hr, ctx = self._s.SCardEstablishContext(self._s.SCARD_SCOPE_USER)
                if hr != self._s.SCARD_S_SUCCESS:
                    return hr, None
                self._ctx = ctx
            return self._s.SCARD_S_SUCCESS, self._ctx

    def invalidate(self, ctx: Any) -> None:
        """Drop ``ctx`` (if still current) so the next ``acquire`` establishes a new one."""
        with self._lock:
            if self._ctx is not None and self._ctx == ctx:
                with contextlib.suppress(Exception):
                    self._s.SCardReleaseContext(ctx)
                self._ctx = None

    def close(self) -> None:
        """Release the context (transports still using it fail with a PC/SC error)."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
        if ctx is not None:
            with contextlib.suppress(Exception):
                self._s.SCardReleaseContext(ctx)


#: pyscard takes each APDU as a list of ints. The short APDUs of the read path (SELECT,
#: READ RECORD, GET CHALLENGE, GET RESPONSE: at most 7 bytes) recur on every card, so their
#: lists are built once (≈50 ns saved per APDU, measured); longer ones carry cryptograms or
#: data and never repeat. Bounded, in case a caller sends many distinct short APDUs.
_APDU_LISTS: dict[bytes, list[int]] = {}
_now = time.monotonic  # bound once: read twice per APDU
_APDU_LISTS_MAX = 512
_SHORT_APDU = 7


class PyscardTransport:
    """A PC/SC card connection (pyscard ``scard``), errors converted at this boundary.

    With ``context`` the connection uses that shared context; without, it owns one and
    releases it on ``close``. The ATR is asked from pcscd (SCardStatus) only when someone
    needs it — ``read_identity`` with the default scheme does not.
    """

    def __init__(self, reader: str, *, apdu_timeout: float = 5.0, exclusive: bool = True,
                 context: PcscContext | None = None) -> None:
        s = load_scard()
        self._s = s
        self._reader = reader
        self.apdu_timeout = apdu_timeout
        self._broken = False
        self._closed = False
        self._atr: bytes | None = None
        self._own_context = context is None
        self._context = context or PcscContext()
        self._success = s.SCARD_S_SUCCESS
        self._transmit = s.SCardTransmit
        try:
            self._hcard, self._proto = self._connect(exclusive)
        except BaseException:
            if self._own_context:
                self._context.close()
            raise

    def _connect(self, exclusive: bool) -> tuple[Any, int]:
        s = self._s
        protocols = s.SCARD_PROTOCOL_T0 | s.SCARD_PROTOCOL_T1
        for attempt in (1, 2):
            hr, ctx = self._context.acquire()
            if hr != s.SCARD_S_SUCCESS:
                raise self._error(hr, "establish context")
            mode = s.SCARD_SHARE_EXCLUSIVE if exclusive else s.SCARD_SHARE_SHARED
            hr, hcard, proto = s.SCardConnect(ctx, self._reader, mode, protocols)
            if hr == s.SCARD_E_SHARING_VIOLATION and exclusive:
                # Another process holds the card (e.g. a diagnostic tool): shared is fine.
                hr, hcard, proto = s.SCardConnect(ctx, self._reader, s.SCARD_SHARE_SHARED,
                                                  protocols)
            if hr == s.SCARD_S_SUCCESS:
                return hcard, int(proto)
            stale = (s.SCARD_E_INVALID_HANDLE, s.SCARD_E_NO_SERVICE, s.SCARD_E_SERVICE_STOPPED)
            if hr in stale and attempt == 1:
                self._context.invalidate(ctx)  # pcscd restarted: one fresh context, once
                continue
            break
        if hr in (s.SCARD_E_NO_SMARTCARD, s.SCARD_W_REMOVED_CARD):
            # Nothing was being read: say "insert", not "removed before reading finished".
            raise E.CardRemoved("No card in the reader", "请插入居民健康卡。",
                                reader=self._reader)
        raise self._error(hr, "connect")

    @property
    def atr(self) -> bytes:
        """ATR reported by pcscd (asked once, on first use)."""
        if self._atr is None:
            s = self._s
            try:
                hr, _name, _state, _p, atr = s.SCardStatus(self._hcard)
            except Exception as exc:  # pyscard raises on a handle freed under it
                raise E.CardRemoved(f"Status failed: {exc}", reader=self._reader) from exc
            if hr != s.SCARD_S_SUCCESS:
                raise self._error(hr, "status")
            self._atr = bytes(atr)
        return self._atr

    @property
    def reader(self) -> str | None:
        """PC/SC reader name."""
        return self._reader

    @property
    def pcsc_handle(self) -> tuple[Any, int]:
        """(card handle, protocol) — for benchmarks replaying raw SCardTransmit on it."""
        return self._hcard, self._proto

    def _error(self, hr: int, action: str) -> E.CardError:
        s = self._s
        removed = {s.SCARD_W_REMOVED_CARD, s.SCARD_E_NO_SMARTCARD, s.SCARD_W_RESET_CARD,
                   s.SCARD_E_NOT_TRANSACTED, s.SCARD_W_UNPOWERED_CARD,
                   s.SCARD_E_COMM_DATA_LOST, s.SCARD_E_INVALID_HANDLE}
        reader_gone = {s.SCARD_E_UNKNOWN_READER, s.SCARD_E_READER_UNAVAILABLE,
                       s.SCARD_E_NO_SERVICE, s.SCARD_E_SERVICE_STOPPED,
                       s.SCARD_E_NO_READERS_AVAILABLE}
        text = f"{action}: {s.SCardGetErrorMessage(hr)} (0x{hr & 0xFFFFFFFF:08X})"
        if hr in removed:
            return E.CardRemoved(f"Card removed or reset ({text})", reader=self._reader)
        if hr in reader_gone:
            return E.ReaderUnavailable(f"Reader not available ({text})", reader=self._reader)
        if hr == s.SCARD_W_UNRESPONSIVE_CARD:
            return E.CardError(f"The card does not respond ({text})",
                               "卡片无响应，请检查插卡方向。", reader=self._reader)
        return E.CardError(f"PC/SC error ({text})", reader=self._reader)

    def transmit(self, apdu: bytes) -> bytes:
        """Send one APDU; an answer slower than ``apdu_timeout`` is discarded as a timeout.

        SCardTransmit is called directly: pcscd and the reader driver bound a dead card
        (card waiting time), and the service bounds the whole operation from asyncio, so a
        helper thread per APDU (≈75 µs each) would buy nothing.
        """
        if self._broken:
            raise E.CardRemoved("The connection to the card is broken", reader=self._reader)
        as_list = _APDU_LISTS.get(apdu)
        if as_list is None:
            as_list = list(apdu)
            if len(apdu) <= _SHORT_APDU and len(_APDU_LISTS) < _APDU_LISTS_MAX:
                _APDU_LISTS[apdu] = as_list
        start = _now()
        try:
            hr, resp = self._transmit(self._hcard, self._proto, as_list)
        except Exception as exc:  # pyscard raises on a handle freed under it
            self._broken = True
            raise E.CardRemoved(f"Transmit failed: {exc}", reader=self._reader) from exc
        if _now() - start > self.apdu_timeout:
            self._broken = True
            raise E.CardTimeout(reader=self._reader)
        if hr != self._success:
            raise self._error(hr, "transmit")
        if len(resp) < 2:
            # vpcd/pcscd hand back an empty answer when the card vanished mid-command;
            # a present card always answers at least a status word.
            self._broken = True
            raise E.CardRemoved("The card gave no answer (removed mid-command)",
                                reader=self._reader)
        return bytes(resp)

    def close(self) -> None:
        """Disconnect (resetting the card so no security state outlives us)."""
        if self._closed:
            return
        self._closed = True
        s = self._s
        with contextlib.suppress(Exception):
            s.SCardDisconnect(self._hcard, s.SCARD_RESET_CARD)
        if self._own_context:
            self._context.close()

