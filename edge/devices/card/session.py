"""Card and SAM sessions over one small transport interface.

``CardTransport`` is all a session needs (``transmit``, ``atr``, ``reader``, ``close``).
``PyscardTransport`` talks PC/SC through pyscard's low-level ``scard`` module and turns its
result codes into our errors at the boundary; ``InProcessTransport`` wraps a simulator.

``read_identity`` sends, on a card that accepts short-EF-identifier reads (SFI):
SELECT DDF1, READ ×3 of DDF1/EF05 (card type, card number, city), GET CHALLENGE,
SAM 80DE P1=01 (diversify + cryptogram in one command; + 00C0 on a T=0 SAM), EXTERNAL
AUTHENTICATE, READ ×5 of EF06, READ of EF08 record 1 (expiry): 12 card APDUs + 2 SAM
APDUs = 14 with a T=0 SAM, 13 with a T=1 SAM. With ``AuthScheme(sam_auth="split")``
(SAMs that only know 80DE P1=00 then 80FA) it is one SAM APDU more. The SAM PIN VERIFY,
its file reads and SELECT DF01 happen once per SAM session and are not counted. Without
SFI three EF SELECTs are added. The hot list is checked right after the card number is
read, before EF06.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.devices.card import errors as E
from edge.devices.card.pinstate import PinFailure, SamPinLedger
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol import records as R
from edge.devices.card.protocol import security as sec
from edge.devices.card.protocol.files import ADF_FIDS, FILES, ElementSpec, FileKind, FileSpec
from edge.devices.card.protocol.status import SFI_NOT_SUPPORTED, error_for, retries_left
from yikatong.common.privacy import mask_card_number

__all__ = [
    "MAX_GET_RESPONSES",
    "CardProfile",
    "CardSession",
    "CardTransport",
    "InProcessTransport",
    "LocalToday",
    "PcscContext",
    "PyscardTransport",
    "SamSession",
    "Timeouts",
]


log = logging.getLogger(__name__)


class HotListLike(Protocol):
    """What the session needs from the hot list."""

    def is_blocked(self, card_no: str) -> bool:
        """True when the card number is on the lost/stolen list."""
        ...


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
def _scard() -> Any:  # handling on every call, and a transport is built per card
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
        self._s = _scard()
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
        s = _scard()
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


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-APDU and per-operation limits in seconds."""

    apdu_s: float = 5.0
    operation_s: float = 20.0


@dataclass(frozen=True, slots=True)
class CardProfile:
    """Card quirks: how to address record files (SFI support varies by COS)."""

    read_mode: Literal["auto", "sfi", "select"] = "auto"


#: Constant APDUs of the read path, serialised once.
_SELECT_DF: dict[str, bytes] = {df: A.select_fid(fid).to_bytes() for df, fid in ADF_FIDS.items()}
_SELECT_ACTION: dict[str, str] = {df: f"SELECT {df}" for df in ADF_FIDS}
_GET_CHALLENGE_8 = A.get_challenge(8).to_bytes()
_READ_CMDS: dict[tuple[str, int, bool, bool], bytes] = {}


def _read_cmd(spec: FileSpec, p1: int, by_tag: bool, *, sfi: bool) -> bytes:
    """READ RECORD APDU bytes, built once per (file, record, form) — they never change."""
    key = (spec.path, p1, by_tag, sfi)
    apdu = _READ_CMDS.get(key)
    if apdu is None:
        le = spec.record_len(spec.record_of(p1)) if by_tag else 0
        s = spec.sfi if sfi else None
        cmd = A.read_record_by_tag(p1, le, sfi=s) if by_tag else A.read_record(p1, sfi=s)
        apdu = _READ_CMDS[key] = cmd.to_bytes()
    return apdu


#: (element, P1, by tag, READ RECORD of the current EF, READ RECORD by SFI or b"" when the
#: file has none, action) per record to read, per (file, element selection): built once,
#: so the hot loop only sends and decodes.
_ReadStep = tuple[ElementSpec, int, bool, bytes, bytes, str]
_READ_PLANS: dict[tuple[str, tuple[str, ...] | None], tuple[_ReadStep, ...]] = {}


def _read_plan(spec: FileSpec, names: tuple[str, ...] | None) -> tuple[_ReadStep, ...]:
    """The records ``_read_elements`` reads for ``names`` (all when None), cached."""
    by_tag = spec.path == "DDF1/EF05"
    plan = []
    for i, el in enumerate(spec.elements, 1):
        if names is not None and el.name not in names:
            continue
        p1 = el.tag if by_tag else i
        plan.append((el, p1, by_tag, _read_cmd(spec, p1, by_tag, sfi=False),
                     _read_cmd(spec, p1, by_tag, sfi=True) if spec.sfi is not None else b"",
                     f"READ RECORD {spec.path}"))
    out = _READ_PLANS[(spec.path, names)] = tuple(plan)
    return out


# The two variable APDUs of the read path, as a cached header + their data: the builders
# (frozen Command, range checks, to_bytes) cost ≈1 µs each warm, several µs over pcscd.
@functools.cache
def _ext_auth_head(key_ref: int) -> bytes:
    """``00 82 00 <key> 11``: EXTERNAL AUTHENTICATE without its 17 data bytes."""
    return A.external_authenticate(key_ref, bytes(17)).to_bytes()[:5]


@functools.cache
def _sam_dc_head(key_ref: int) -> bytes:
    """``80 DE 01 <key> 18``: 80DE P1=01 without factor ‖ challenge and Le."""
    return A.sam_diversify_cryptogram(key_ref, bytes(16), bytes(8)).to_bytes()[:5]


@dataclass
class _Counter:
    card: int = 0
    sam: int = 0
    started: float = 0.0
    deadline: float = float("inf")


# Sending a command: check the operation deadline, transmit, count, and return a plain
# 9000 answer at once; everything else (61xx / 6Cxx chaining, the typed error for a failing
# SW) goes through ``_exchange_rest``. That first part is written out in CardSession._x,
# CardSession._x_data and SamSession._x rather than shared: it runs for every APDU,
# and one keyword-heavy call layer less per APDU is measurable over pcscd (≈0.3 µs warm,
# where each warm µs costs 4-9 µs between PC/SC waits: docs/performance.md "Card read").


#: GET RESPONSEs followed after one command. Our longest answer is a 128-byte READ BINARY
#: chunk or a 16-byte SAM result (one 61xx each); a card still saying 61xx after this many
#: is broken, and following it for ever would hold the card lock for ever.
MAX_GET_RESPONSES = 16

#: GET RESPONSE APDUs by Le (one per T=0 SAM answer on the read path), built once.
_GET_RESPONSE: dict[int, bytes] = {}


def _send(transport: CardTransport, cmd: A.Command | bytes, *, action: str, c: _Counter,
          side: Literal["card", "sam"], file: str | None, check: bool,
          monotonic: Callable[[], float]) -> A.Response:
    """Send one APDU to the card or the SAM (see "Sending a command" above)."""
    if monotonic() > c.deadline:
        raise E.CardTimeout("Operation took too long", reader=transport.reader)
    apdu = cmd if isinstance(cmd, bytes) else cmd.to_bytes()
    raw = transport.transmit(apdu)
    if side == "card":
        c.card += 1
    else:
        c.sam += 1
    if raw[-2:] == b"\x90\x00":  # the common case, without the chaining machinery
        return A.Response(raw[:-2], 0x90, 0x00)
    return _exchange_rest(transport, apdu, raw, action=action, counter=c, side=side,
                          file=file, check=check, monotonic=monotonic)


def _exchange_rest(transport: CardTransport, apdu: bytes, raw: bytes, *, action: str,
                   counter: _Counter, side: Literal["card", "sam"], file: str | None,
                   check: bool, monotonic: Callable[[], float] = time.monotonic
                   ) -> A.Response:
    """The answer ``raw`` to ``apdu`` was not a plain 9000: follow 6Cxx / 61xx, check the SW.

    Works on the raw answers and builds one Response at the end (a T=0 SAM answers 61xx
    to every 80DE of the read path).
    """
    def send(cmd: bytes) -> bytes:
        if monotonic() > counter.deadline:
            raise E.CardTimeout(f"Operation took too long ({action}: response chaining)",
                                reader=transport.reader)
        answer = transport.transmit(cmd)
        if side == "card":
            counter.card += 1
        else:
            counter.sam += 1
        if len(answer) < 2:
            A.Response.parse(answer)  # raises the typed "shorter than a status word" error
        return answer

    if len(raw) < 2:
        A.Response.parse(raw)  # raises, as above
    data, sw1, sw2 = bytes(raw[:-2]), raw[-2], raw[-1]
    if sw1 == 0x6C:  # wrong Le: resend once with the exact length (not followed again)
        cmd = A.Command.parse(apdu)
        if cmd.le is not None:
            cmd = A.Command(cmd.cla, cmd.ins, cmd.p1, cmd.p2, cmd.data, sw2 or 256)
            raw = send(cmd.to_bytes())
            data, sw1, sw2 = bytes(raw[:-2]), raw[-2], raw[-1]
    fetched = 0
    while sw1 == 0x61:
        if fetched == MAX_GET_RESPONSES:
            raise E.CardCommandError(
                f"{action}: still {sw1:02X}{sw2:02X} after {fetched} GET RESPONSE",
                "卡片响应异常，请重新插卡。", reader=transport.reader, sw1=sw1, sw2=sw2)
        get = _GET_RESPONSE.get(sw2)
        if get is None:
            get = _GET_RESPONSE[sw2] = A.get_response(sw2).to_bytes()
        raw = send(get)
        fetched += 1
        data += raw[:-2]
        sw1, sw2 = raw[-2], raw[-1]
    resp = A.Response(data, sw1, sw2)
    if check and not resp.ok:
        raise error_for(sw1, sw2, action=action, file=file, reader=transport.reader)
    return resp


class SamSession:
    """The terminal's SAM: PIN verified once, DF01 selected, then diversify/compute.

    The PIN is presented at most once per PIN (see ``open``): never when the SAM has one
    try or fewer left, never again after a rejection — in memory for this session and, with
    a ``ledger``, across processes.
    """

    def __init__(self, transport: CardTransport, pin: str, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 ledger: SamPinLedger | None = None) -> None:
        self.transport = transport
        self._pin = pin
        self._monotonic = monotonic
        self._ledger = ledger
        self._opened = False
        self._failure: E.SamError | None = None
        self.serial: bytes = b""
        self.terminal_number: bytes = b""
        self.pin_tries_left: int | None = None
        self.pin_fault: PinFailure | None = None  # the ledger's record of a rejected PIN
        self._loaded: tuple[int, bytes] | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        """True after a successful PIN verification."""
        return self._opened

    @property
    def failure(self) -> E.SamError | None:
        """The sticky PIN failure, if any (the PIN is never re-sent automatically)."""
        return self._failure

    def _x(self, cmd: A.Command | bytes, action: str, counter: _Counter | None = None,
           check: bool = True) -> A.Response:
        c = counter or _Counter()
        try:
            return _send(self.transport, cmd, action=action, c=c, side="sam", file=None,
                         check=check, monotonic=self._monotonic)
        except (E.CardRemoved, E.ReaderUnavailable) as exc:
            self._opened = False
            raise E.SamUnavailable(f"SAM lost: {exc.message}",
                                   reader=self.transport.reader) from exc
        except (E.SamError, E.CardTimeout):
            raise
        except E.CardError as exc:
            raise E.SamError(f"SAM {action} failed: {exc.message}", reader=exc.reader,
                             sw1=exc.sw1, sw2=exc.sw2) from exc

    def _fail(self, err: E.SamError) -> E.SamError:
        self._failure = err
        return err

    def open(self, counter: _Counter | None = None) -> None:
        """Read 0015, ask the tries left, verify the PIN (at most once), select DF01.

        The serial is read before VERIFY (0015 is free on PSAMs) because the persisted
        failure record is keyed on it. VERIFY without data asks the tries left without
        spending one: 6983 is blocked, and with one try left (or none) the PIN is not
        presented — a wrong PIN would block the SAM and only the issuer can unblock it.
        A SAM that does not answer the query with 63Cx/9000 gets the PIN once, as before.
        """
        if self._opened:  # once per card: skip the lock (it only goes True fully opened)
            return
        with self._lock:
            if self._opened:
                return
            if self._failure is not None:
                raise self._failure
            reader = self.transport.reader
            try:
                verify = A.verify_pin(self._pin)
            except E.CardParameterError as exc:
                raise self._fail(E.SamPinError("SAM PIN file content is not 4-12 digits",
                                               reader=reader)) from exc
            self._x(A.select_fid(0x0015), "SELECT 0015", counter)
            self.serial = self._x(A.read_binary(0, 14), "READ 0015", counter).data
            if self._ledger is not None:
                known = self._ledger.failure_for(self.serial, self._pin)
                self.pin_fault = known
                if known is not None:
                    self.pin_tries_left = known.retries_left
                    raise self._fail(E.SamPinError(
                        f"SAM PIN was rejected at {known.at} (SW {known.sw}; "
                        f"{known.retries_left} tries left then); the same PIN is not "
                        "presented again: fix the PIN file",
                        "PSAM 卡密码错误（已记录），请更正密码文件后重试。",
                        retries_left=known.retries_left, reader=reader))
            query = self._x(A.verify_pin_status(), "VERIFY (tries left)", counter,
                            check=False)
            left = retries_left(query.sw1, query.sw2)
            self.pin_tries_left = left
            if left == 0:
                raise self._fail(E.SamPinBlocked(
                    f"SAM PIN is blocked (SW {query.sw:04X}); not presented",
                    retries_left=0, reader=reader, sw1=query.sw1, sw2=query.sw2))
            if left is not None and left <= 1:
                raise self._fail(E.SamPinTriesLow(
                    f"SAM has {left} PIN try left; the PIN is not presented (a wrong one "
                    "would block the SAM): check the PIN file, then verify it with the "
                    "issuer's tool", retries_left=left, reader=reader,
                    sw1=query.sw1, sw2=query.sw2))
            if query.sw != 0x9000:  # 9000: already verified in this card session
                resp = self._x(verify, "VERIFY", counter, check=False)
                if not resp.ok:
                    self._reject(resp)
            if self._ledger is not None:
                self._ledger.clear(self.serial)
            self.pin_fault = None
            self._x(A.select_fid(0x0016), "SELECT 0016", counter)
            self.terminal_number = self._x(A.read_binary(0, 6), "READ 0016", counter).data
            self._x(A.sam_select_df01(), "SELECT DF01", counter)
            self._loaded = None
            self._opened = True

    def _reject(self, resp: A.Response) -> None:
        left = retries_left(resp.sw1, resp.sw2)
        self.pin_tries_left = left
        sw = f"{resp.sw1:02X}{resp.sw2:02X}"
        if self._ledger is not None:
            try:
                self.pin_fault = self._ledger.record(self.serial, self._pin,
                                                     retries_left=left, sw=sw)
            except OSError as exc:  # the in-memory failure still holds for this process
                log.error("cannot persist the SAM PIN failure in %s: %s",
                          self._ledger.path, exc)
        cls = E.SamPinBlocked if left == 0 else E.SamPinError
        raise self._fail(cls(
            f"SAM PIN rejected (SW {sw}); "
            f"{'blocked' if left == 0 else f'{left} tries left'}; not retried",
            retries_left=left, reader=self.transport.reader, sw1=resp.sw1, sw2=resp.sw2))

    def diversify(self, key_ref: int, factor: bytes, counter: _Counter) -> None:
        """Load the card key for ``key_ref`` (skipped when already loaded)."""
        if self._loaded == (key_ref, factor):
            return
        self._x(A.sam_diversify(key_ref, factor), "DIVERSIFY", counter)
        self._loaded = (key_ref, factor)

    def diversify_cryptogram(self, key_ref: int, factor: bytes, challenge: bytes,
                             counter: _Counter) -> bytes:
        """One 80DE P1=01 (+ 00C0): load the card key and get the challenge's cryptogram."""
        self._loaded = None  # a failure half-way leaves the SAM's key register unknown
        if len(factor) == 16 and len(challenge) == 8:  # what the builder checks
            cmd: A.Command | bytes = _sam_dc_head(key_ref) + factor + challenge + b"\x00"
        else:
            cmd = A.sam_diversify_cryptogram(key_ref, factor, challenge)  # the typed error
        crypt = self._x(cmd, "DIVERSIFY+CRYPTOGRAM", counter).data
        self._loaded = (key_ref, factor)
        return crypt

    def compute(self, mode: int, data: bytes, counter: _Counter) -> bytes:
        """80FA (+ 00C0) with the loaded key."""
        return self._x(A.sam_compute(mode, data), "COMPUTE", counter).data

    def status(self) -> dict[str, Any]:
        """Screen/log-safe status (no PIN, no PIN fingerprint).

        ``pin_tries_left`` is what the SAM answered to VERIFY without data before the PIN
        was presented (None: it did not say); a correct PIN resets the SAM's counter.
        ``pin_fault`` is the persisted record of a rejected PIN, if any.
        """
        out: dict[str, Any] = {"reader": self.transport.reader, "opened": self._opened,
                               "pin_verified": self._opened,
                               "pin_tries_left": self.pin_tries_left,
                               "pin_fault": None}
        if self._failure is not None:
            out["error"] = self._failure.to_dict()
        if self.terminal_number:
            out["terminal_number"] = self.terminal_number.hex().upper()
        if self.serial:
            out["serial"] = self.serial.hex().upper()
        if self.pin_fault is not None:
            out["pin_fault"] = {"at": self.pin_fault.at, "sw": self.pin_fault.sw,
                                "retries_left": self.pin_fault.retries_left}
        return out

    def close(self) -> None:
        """Release the SAM."""
        self._opened = False
        self.transport.close()


class LocalToday:
    """``dt.date.today()``, recomputed only when the wall clock leaves the cached local day.

    The expiry check needs today's date once per card; ``date.today()`` (localtime) costs
    ≈0.6 µs warm but ≈10 µs right after a PC/SC wait (measured over pcscd+vpcd), about
    0.7 % of a ``read_identity``. ``time.time()`` against the day's
    bounds is a vDSO read. The bounds come from ``mktime`` (DST-aware); a clock set back or
    forward just falls outside them and recomputes.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._day: tuple[float, float, dt.date] = (0.0, 0.0, dt.date.min)

    def __call__(self) -> dt.date:
        """Today's local date."""
        now = self._clock()
        start, end, day = self._day  # one tuple: threads see a consistent triple
        if start <= now < end:
            return day
        day = dt.date.fromtimestamp(now)
        start = time.mktime((day.year, day.month, day.day, 0, 0, 0, 0, 0, -1))
        nxt = day + dt.timedelta(days=1)
        end = time.mktime((nxt.year, nxt.month, nxt.day, 0, 0, 0, 0, 0, -1))
        self._day = (start, end, day)
        return day


_local_today = LocalToday()
_DEFAULT_SCHEME = sec.AuthScheme()
_DEFAULT_TIMEOUTS = Timeouts()
_DEFAULT_PROFILE = CardProfile()


@dataclass
class _CardState:
    df: str | None = None
    ef: str | None = None
    authed: set[tuple[str, int]] = field(default_factory=set)
    sfi: bool | None = None
    card_number: str = ""
    city_code: str = ""


class CardSession:
    """Reads and writes one inserted health card."""

    def __init__(self, transport: CardTransport, sam: SamSession | None,
                 scheme: sec.AuthScheme | None = None, timeouts: Timeouts | None = None, *,
                 profile: CardProfile | None = None, hotlist: HotListLike | None = None,
                 today: Callable[[], dt.date] = _local_today,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.transport = transport
        self.sam = sam
        # Shared frozen defaults: a session is built per card, on the read path.
        self.scheme = scheme or _DEFAULT_SCHEME
        self.timeouts = timeouts or _DEFAULT_TIMEOUTS
        self.profile = profile or _DEFAULT_PROFILE
        self.hotlist = hotlist
        self._today = today
        self._monotonic = monotonic
        self._st = _CardState()
        self._c = _Counter()
        self.last_apdus: dict[str, int] = {"card": 0, "sam": 0}

    # --- plumbing ---------------------------------------------------------------------
    def _begin(self) -> None:
        now = self._monotonic()
        self._c = _Counter(started=now, deadline=now + self.timeouts.operation_s)

    def _end(self) -> None:
        self.last_apdus = {"card": self._c.card, "sam": self._c.sam}

    def _x(self, cmd: A.Command | bytes, action: str, *, file: str | None = None,
           check: bool = True) -> A.Response:
        return _send(self.transport, cmd, action=action, c=self._c, side="card", file=file,
                     check=check, monotonic=self._monotonic)

    def _select_df(self, df: str) -> None:
        if self._st.df == df:
            return
        resp = self._x(_SELECT_DF[df], _SELECT_ACTION[df], file=df, check=False)
        if not resp.ok:
            if df == "DDF1" and resp.sw not in (0x6982, 0x6983):
                # Bank cards, blank cards, other applications: no DDF1 here.
                raise E.NotAHealthCard(
                    f"No health-card application (SELECT DDF1 → {resp.sw:04X})",
                    atr=self.transport.atr, reader=self.transport.reader,
                    sw1=resp.sw1, sw2=resp.sw2)
            raise error_for(resp.sw1, resp.sw2, action=f"SELECT {df}", file=df,
                            reader=self.transport.reader)
        self._st.df, self._st.ef = df, None

    def _select_ef(self, spec: FileSpec) -> None:
        self._select_df(spec.df)
        if self._st.ef == spec.path:
            return
        self._x(A.select_fid(spec.fid), f"SELECT {spec.path}", file=spec.path)
        self._st.ef = spec.path

    def _use_sfi(self, spec: FileSpec) -> bool:
        if spec.sfi is None or self.profile.read_mode == "select":
            return False
        if self.profile.read_mode == "sfi":
            return True
        return self._st.sfi is not False

    def _read_rec(self, spec: FileSpec, p1: int, *, by_tag: bool) -> bytes:
        """One READ RECORD, by SFI when possible (auto mode falls back once to SELECT)."""
        self._select_df(spec.df)
        if self._use_sfi(spec) and self._st.ef != spec.path:
            cmd = _read_cmd(spec, p1, by_tag, sfi=True)
            resp = self._x(cmd, f"READ RECORD {spec.path}", file=spec.path, check=False)
            if resp.ok:
                self._st.sfi = True
                self._st.ef = spec.path  # an SFI read makes the EF current (ISO 7816-4)
                return resp.data
            if self.profile.read_mode == "auto" and self._st.sfi is None and \
                    resp.sw in SFI_NOT_SUPPORTED:
                self._st.sfi = False
            else:
                raise error_for(resp.sw1, resp.sw2, action=f"READ RECORD {spec.path}",
                                file=spec.path, reader=self.transport.reader)
        self._select_ef(spec)
        return self._x(_read_cmd(spec, p1, by_tag, sfi=False), f"READ RECORD {spec.path}",
                       file=spec.path).data

    def _x_data(self, apdu: bytes, action: str, file: str | None = None) -> bytes:
        """``_x(apdu, action, file=file).data``, without a Response for a plain 9000.

        Most card APDUs of ``read_identity`` go here; anything but 9000 takes the same
        ``_exchange_rest`` path as ``_x``.
        """
        c = self._c
        if self._monotonic() > c.deadline:
            raise E.CardTimeout("Operation took too long", reader=self.transport.reader)
        raw = self.transport.transmit(apdu)
        c.card += 1
        if raw[-2:] == b"\x90\x00":
            return raw[:-2]
        return _exchange_rest(self.transport, apdu, raw, action=action,
                              counter=c, side="card", file=file, check=True,
                              monotonic=self._monotonic).data

    def _read_elements(self, path: str, names: tuple[str, ...] | None = None
                       ) -> dict[str, R.Value]:
        spec = FILES[path]
        plan = _READ_PLANS.get((path, names)) or _read_plan(spec, names)
        st = self._st
        out: dict[str, R.Value] = {}
        for el, p1, by_tag, current_apdu, sfi_apdu, action in plan:
            if st.ef == path:  # the EF is current (so is its DF): plain READ RECORD
                raw = self._x_data(current_apdu, action, path)
            elif st.sfi and sfi_apdu and st.df == spec.df:
                # This card is known to take SFI reads: what ``_read_rec`` would do, leaner.
                raw = self._x_data(sfi_apdu, action, path)
                st.ef = path  # an SFI read makes the EF current (ISO 7816-4)
            else:
                raw = self._read_rec(spec, p1, by_tag=by_tag)
            out[el.name] = R.decode_element_record(spec, el, raw)
        return out

    def _card_ids(self) -> tuple[str, str, str]:
        v = self._read_elements("DDF1/EF05", ("card_type", "card_number", "city_code"))
        card_number, city = str(v["card_number"]), str(v["city_code"])
        if not card_number:
            raise E.CardDataError("Card number is empty", file="DDF1/EF05", tag=0x08)
        self._st.card_number, self._st.city_code = card_number, city
        self._check_hotlist(card_number)
        return str(v["card_type"]), card_number, city

    def _check_hotlist(self, card_number: str) -> None:
        if self.hotlist is not None and self.hotlist.is_blocked(card_number):
            raise E.CardBlocked(card_number_masked=mask_card_number(card_number),
                                reader=self.transport.reader)

    def _need_sam(self) -> SamSession:
        if self.sam is None:
            raise E.SamUnavailable("No SAM configured or present", reader=None)
        self.sam.open(self._c)
        return self.sam

    def _factor(self) -> bytes:
        if not self._st.card_number:
            self._card_ids()
        # Only an ATR-based card factor needs the ATR (a PC/SC status round trip).
        atr = self.transport.atr if self.scheme.card_factor_source == "atr_historical" else b""
        return sec.diversification_factor(self.scheme, self._st.card_number,
                                          self._st.city_code, atr)

    def _authenticate(self, df: str, key_ref: int) -> None:
        if (df, key_ref) in self._st.authed:
            return
        factor = self._factor()
        sam = self._need_sam()
        self._select_df(df)
        challenge = self._x_data(_GET_CHALLENGE_8, "GET CHALLENGE")
        if len(challenge) != 8:
            raise E.CardDataError("Challenge is not 8 bytes", file=df)
        if self.scheme.sam_auth == "combined":
            crypt = sam.diversify_cryptogram(key_ref, factor, challenge, self._c)
        else:
            sam.diversify(key_ref, factor, self._c)
            crypt = sam.compute(A.SAM_MODE_CRYPTOGRAM, challenge, self._c)
        if len(crypt) != 16:
            raise E.SamError(f"SAM cryptogram is {len(crypt)} bytes, not 16",
                             reader=sam.transport.reader)
        # crypt is 16 bytes (checked above), so the data is the 17 bytes the header says.
        resp = self._x(_ext_auth_head(key_ref) + sec.ext_auth_data(self.scheme, crypt),
                       "EXTERNAL AUTHENTICATE", check=False)
        if not resp.ok:
            if resp.sw == 0x6983:
                raise E.CardAuthBlocked(reader=self.transport.reader, sw1=resp.sw1,
                                        sw2=resp.sw2)
            raise E.CardAuthFailed(
                f"EXTERNAL AUTHENTICATE rejected (SW {resp.sw:04X})",
                retries_left=retries_left(resp.sw1, resp.sw2),
                reader=self.transport.reader, sw1=resp.sw1, sw2=resp.sw2)
        self._st.authed.add((df, key_ref))

    def _run(self, fn: Callable[[], Any]) -> Any:
        self._begin()
        try:
            return fn()
        finally:
            self._end()

    # --- reading ----------------------------------------------------------------------
    def read_identity(self, *, reject_expired: bool = False) -> R.Identity:
        """Identity with the fewest APDUs; hot list checked before EF06 is read."""
        self._begin()  # _run, written out: this is the hot path
        try:
            return self._read_identity(reject_expired)
        finally:
            self._end()

    def _read_identity(self, reject_expired: bool) -> R.Identity:
        card_type, card_number, city = self._card_ids()
        self._authenticate("DDF1", 0x04)
        h = self._read_elements("DDF1/EF06")  # as Holder.from_values, without the object
        extras = self._read_elements("DDF1/EF08", ("expiry",))
        expiry = str(extras["expiry"])
        expired = self._is_expired(expiry)
        if expired and reject_expired:
            raise E.CardExpired(f"The card expired on {expiry}", expiry=expiry,
                                reader=self.transport.reader)
        return R.Identity(card_number=card_number, card_type=card_type, expiry=expiry,
                          city_code=city, name=str(h["name"]), sex=R.sex_code(h["sex"]),
                          ethnicity=str(h["ethnicity"]), birth_date=str(h["birth_date"]),
                          id_number=str(h["id_number"]), expired=expired)

    def _is_expired(self, expiry: str) -> bool:
        if not expiry:
            return False  # no expiry written: the card does not expire
        return R.parse_date(expiry, file="DDF1/EF08", tag=0x07) < self._today()

    def _read_cyclic(self, path: str) -> list[bytes]:
        spec = FILES[path]
        out: list[bytes] = []
        for n in range(1, 256):
            self._select_df(spec.df)
            self._select_ef(spec)
            resp = self._x(A.read_record(n), f"READ RECORD {path}", file=path, check=False)
            if resp.sw in (0x6A83, 0x6A82) or (resp.sw1 == 0x6A and n > 1):
                break
            if not resp.ok:
                raise error_for(resp.sw1, resp.sw2, action=f"READ RECORD {path}", file=path,
                                reader=self.transport.reader)
            out.append(resp.data)
        return out

    def _read_binary(self, spec: FileSpec, length: int, offset: int = 0) -> bytes:
        self._select_ef(spec)
        out = bytearray()
        while len(out) < length:
            n = min(A.BINARY_CHUNK, length - len(out))
            data = self._x(A.read_binary(offset + len(out), n), f"READ BINARY {spec.path}",
                           file=spec.path).data
            if not data:
                raise E.CardDataError("Empty READ BINARY answer", file=spec.path)
            out += data
        return bytes(out[:length])

    def _read_flags(self, path: str) -> tuple[bool, ...]:
        spec = FILES[path]
        return tuple(self._read_rec(spec, n, by_tag=False)[:1] == b"\x00"
                     for n in range(1, spec.record_count + 1))

    def read_issuer(self) -> R.IssuerData:
        """DDF1/EF05 only (free to read: works without a SAM)."""
        def run() -> R.IssuerData:
            values = self._read_elements("DDF1/EF05")
            issuer = R.file_values(R.IssuerData, values)
            self._check_hotlist(issuer.card_number)
            return issuer
        return self._run(run)  # type: ignore[no-any-return]

    def read_all(self) -> R.CardContents:
        """Every file except the photo, decoded (no partial result on removal)."""
        return self._run(self._read_all)  # type: ignore[no-any-return]

    def _read_all(self) -> R.CardContents:
        self._card_ids()
        issuer = R.file_values(R.IssuerData, self._read_elements("DDF1/EF05"))
        self._authenticate("DDF1", 0x04)
        holder = R.Holder.from_values(self._read_elements("DDF1/EF06"))
        extras = R.file_values(R.CardExtras, self._read_elements("DDF1/EF08"))
        self._authenticate("DF01", 0x84)
        address = R.file_values(R.Address, self._read_elements("DF01/EF05"))
        contacts = R.file_values(R.Contacts, self._read_elements("DF01/EF06"))
        social = R.file_values(R.Social, self._read_elements("DF01/EF07"))
        documents = R.file_values(R.Documents, self._read_elements("DF01/EF08"))
        self._authenticate("DF02", 0x84)
        clinical = R.file_values(R.ClinicalBasics, self._read_elements("DF02/EF05"))
        special = R.file_values(R.SpecialFlag, self._read_elements("DF02/EF06"))
        allergies = tuple(a for a in map(R.decode_allergy, self._read_cyclic("DF02/EF07"))
                          if a is not None)
        immun = tuple(i for i in map(R.decode_immunisation, self._read_cyclic("DF02/EF08"))
                      if i is not None)
        self._authenticate("DF03", 0x84)
        flags = R.RecordFlags(self._read_flags("DF03/EF05"), self._read_flags("DF03/EF06"))
        inpatient = tuple(self._read_medical("inpatient", i + 1, True)
                          for i, ok in enumerate(flags.inpatient) if ok)
        outpatient = tuple(self._read_medical("outpatient", i + 1, True)
                           for i, ok in enumerate(flags.outpatient) if ok)
        return R.CardContents(issuer, holder, extras, address, contacts, social, documents,
                              clinical, special, allergies, immun, flags,
                              inpatient, outpatient)

    def _read_medical(self, kind: str, index: int, valid: bool) -> Any:
        spec = FILES[f"DF03/{'EE' if kind == 'inpatient' else 'ED'}{index:02d}"]
        return R.parse_medical_record(kind, index, valid, self._read_binary(spec, spec.size))

    def read_medical_record(self, kind: Literal["inpatient", "outpatient"], index: int
                            ) -> R.InpatientRecord | R.OutpatientRecord:
        """One DF03 record; RecordErased when its flag is not 00."""
        def run() -> Any:
            self._card_ids()
            self._authenticate("DF03", 0x84)
            spec = self._medical_spec(kind, index)
            flags = self._read_flags("DF03/EF05" if kind == "inpatient" else "DF03/EF06")
            if not flags[index - 1]:
                raise E.RecordErased(f"{kind} record {index} is erased", file=spec.path)
            return self._read_medical(kind, index, True)
        return self._run(run)  # type: ignore[no-any-return]

    def read_photo(self) -> R.Photo:
        """DDF1/EF07: length prefix, then the image in 0x80-byte chunks."""
        def run() -> R.Photo:
            self._card_ids()
            self._authenticate("DDF1", 0x04)
            spec = FILES["DDF1/EF07"]
            head = self._read_binary(spec, min(A.BINARY_CHUNK, spec.size))
            n = R.parse_photo(head)
            if n + 2 <= len(head):
                return R.Photo(head[2:2 + n])
            rest = self._read_binary(spec, n + 2 - len(head), offset=len(head))
            return R.Photo((head + rest)[2:2 + n])
        return self._run(run)  # type: ignore[no-any-return]

    # --- writing ----------------------------------------------------------------------
    def _sm_write(self, spec: FileSpec, cmd_for: Callable[[bytes], A.Command],
                  plain: bytes) -> None:
        """EXTERNAL AUTHENTICATE with the file's update key, then encrypt + MAC through the
        SAM under that key and send (docs/healthcard.md: the update key is needed before writing).
        """
        factor = self._factor()
        sam = self._need_sam()
        self._authenticate(spec.df, spec.update_key)
        self._select_ef(spec)
        sam.diversify(spec.update_key, factor, self._c)
        cipher_text = sam.compute(A.SAM_MODE_ENCRYPT, plain, self._c)
        probe = cmd_for(cipher_text + b"\x00" * 4)
        challenge = self._x(A.get_challenge(8), "GET CHALLENGE").data
        mac_in = sec.challenge_iv(challenge) + sec.sm_mac_input(
            probe.cla, probe.ins, probe.p1, probe.p2, cipher_text)
        mac = sam.compute(A.SAM_MODE_MAC, mac_in, self._c)
        resp = self._x(cmd_for(cipher_text + mac), f"UPDATE {spec.path}", file=spec.path,
                       check=False)
        if not resp.ok:
            if resp.sw in (0x6988, 0x6982):
                raise E.CardAuthFailed(f"Write to {spec.path} refused (SW {resp.sw:04X})",
                                       reader=self.transport.reader, sw1=resp.sw1,
                                       sw2=resp.sw2)
            raise error_for(resp.sw1, resp.sw2, action=f"UPDATE {spec.path}",
                            file=spec.path, reader=self.transport.reader)

    def append_allergy(self, substance: str, reaction: str) -> None:
        """Add an allergy (cyclic: the oldest record is overwritten when full)."""
        record = R.encode_allergy(R.Allergy(substance, reaction))
        self._run(lambda: self._sm_write(FILES["DF02/EF07"], A.append_record_sm, record))

    def append_immunisation(self, name: str, date: str) -> None:
        """Add an immunisation (name AN 20, date YYYYMMDD)."""
        record = R.encode_immunisation(R.Immunisation(name, date))
        self._run(lambda: self._sm_write(FILES["DF02/EF08"], A.append_record_sm, record))

    def update_element(self, path: str, name: str, value: R.Value) -> None:
        """Rewrite one element of a record file with SM UPDATE RECORD."""
        spec = FILES[path]
        if spec.kind is not FileKind.RECORDS:
            raise E.CardParameterError(f"{path} is not a record file", "文件类型错误")
        try:
            el = next(e for e in spec.elements if e.name == name)
        except StopIteration:
            raise E.CardParameterError(f"{path} has no element {name}", "数据项不存在") from None
        record = R.encode_element_record(el, value)
        n = spec.record_of(el.tag)

        def run() -> None:
            self._card_ids()
            self._sm_write(spec, lambda d: A.update_record_sm(n, d), record)
        self._run(run)

    @staticmethod
    def _medical_spec(kind: str, index: int) -> FileSpec:
        count = 3 if kind == "inpatient" else 5
        if kind not in ("inpatient", "outpatient") or not 1 <= index <= count:
            raise E.CardParameterError(f"{kind} record index must be 1..{count}",
                                       "病历序号错误")
        return FILES[f"DF03/{'EE' if kind == 'inpatient' else 'ED'}{index:02d}"]

    def _set_flag(self, kind: str, index: int, valid: bool) -> None:
        spec = FILES["DF03/EF05" if kind == "inpatient" else "DF03/EF06"]
        self._select_ef(spec)
        cmd = A.set_record_valid_flag(index) if valid else A.erase_record_flag(index)
        self._x(cmd, f"FLAG {spec.path}", file=spec.path)

    def write_outpatient_record(self, index: int, data: bytes, *, signature: bytes = b"",
                                certificate: bytes = b"") -> None:
        """Write DF03/ED0n and mark it valid (erased first, so a pulled card leaves no
        half-written record flagged valid)."""
        self._write_medical("outpatient", index, data, signature, certificate)

    def write_inpatient_record(self, index: int, data: bytes, *, signature: bytes = b"",
                               certificate: bytes = b"") -> None:
        """Write DF03/EE0n and mark it valid."""
        self._write_medical("inpatient", index, data, signature, certificate)

    def _write_medical(self, kind: str, index: int, data: bytes, signature: bytes,
                       certificate: bytes) -> None:
        spec = self._medical_spec(kind, index)
        image = R.encode_medical_record(kind, data, signature, certificate)

        def run() -> None:
            self._card_ids()
            self._authenticate("DF03", 0x87)
            self._set_flag(kind, index, valid=False)
            self._select_ef(spec)
            for off in range(0, len(image), 0xF0):
                self._x(A.update_binary(off, image[off:off + 0xF0]), f"UPDATE {spec.path}",
                        file=spec.path)
            self._set_flag(kind, index, valid=True)
        self._run(run)

    def erase_record(self, kind: Literal["inpatient", "outpatient"], index: int) -> None:
        """Mark a DF03 record erased (flag FF); its data stays but is no longer valid."""
        self._medical_spec(kind, index)

        def run() -> None:
            self._card_ids()
            self._authenticate("DF03", 0x87)
            self._set_flag(kind, index, valid=False)
        self._run(run)

    def close(self) -> None:
        """Release the card (the SAM session stays open for the next card)."""
        self.transport.close()
