"""The terminal's SAM session: PIN verified once, then key diversification and cryptograms.

The PIN is presented at most once per PIN — never with one try or fewer left, never again
after a rejection (in memory and, with a ``SamPinLedger``, across processes): a wrong PIN
can block the SAM and only the issuer can unblock it (docs/healthcard.md).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.devices.card import errors as E
from edge.devices.card.exchange import ApduCounter, send_apdu
from edge.devices.card.pinstate import PinFailure, SamPinLedger
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol.status import retries_left
from edge.devices.card.transport import CardTransport

__all__ = ["SamSession"]


log = logging.getLogger(__name__)


# The builder (frozen Command, range checks, to_bytes) costs ≈1 µs warm, several µs over
# pcscd; the read path sends this command per card, so its header is cached.
@functools.cache
def _sam_dc_head(key_ref: int) -> bytes:
    """``80 DE 01 <key> 18``: 80DE P1=01 without factor ‖ challenge and Le."""
    return A.sam_diversify_cryptogram(key_ref, bytes(16), bytes(8)).to_bytes()[:5]


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

    def _x(self, cmd: A.Command | bytes, action: str, counter: ApduCounter | None = None,
           check: bool = True) -> A.Response:
        c = counter or ApduCounter()
        try:
            return send_apdu(self.transport, cmd, action=action, c=c, side="sam", file=None,
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

    def open(self, counter: ApduCounter | None = None) -> None:
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

    def diversify(self, key_ref: int, factor: bytes, counter: ApduCounter) -> None:
        """Load the card key for ``key_ref`` (skipped when already loaded)."""
        if self._loaded == (key_ref, factor):
            return
        self._x(A.sam_diversify(key_ref, factor), "DIVERSIFY", counter)
        self._loaded = (key_ref, factor)

    def diversify_cryptogram(self, key_ref: int, factor: bytes, challenge: bytes,
                             counter: ApduCounter) -> bytes:
        """One 80DE P1=01 (+ 00C0): load the card key and get the challenge's cryptogram."""
        self._loaded = None  # a failure half-way leaves the SAM's key register unknown
        if len(factor) == 16 and len(challenge) == 8:  # what the builder checks
            cmd: A.Command | bytes = _sam_dc_head(key_ref) + factor + challenge + b"\x00"
        else:
            cmd = A.sam_diversify_cryptogram(key_ref, factor, challenge)  # the typed error
        crypt = self._x(cmd, "DIVERSIFY+CRYPTOGRAM", counter).data
        self._loaded = (key_ref, factor)
        return crypt

    def compute(self, mode: int, data: bytes, counter: ApduCounter) -> bytes:
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

