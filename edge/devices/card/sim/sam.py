"""A terminal SAM (PSAM) simulator.

MF files 0015 (serial/version, 14 bytes) and 0016 (terminal number, 6 bytes), DF01 with
001A (key info, 25), 001B (issuer certificate, 180), 001C (SAM certificate, 190). VERIFY
PIN with a retry counter (63Cx, blocked at 0 → 6983); VERIFY without data asks the
counter without spending a try (ISO 7816-4). After the PIN and SELECT DF01:
``80 DE 00`` diversifies an issuer master key with the card factors, ``80 FA`` computes a
cryptogram / cipher text / MAC (see ``protocol.security``); ``80 DE 01`` (factor ‖ card
challenge) does both and answers the cryptogram — ``combined=False`` makes the SAM refuse
that form (6A86) like a SAM that only knows the two-step one. Like most PSAMs it speaks
T=0 by default, so results come back as ``61xx`` and are fetched with ``00 C0``; with
``t0=False`` it answers case-4 commands directly (T=1).
"""

from __future__ import annotations

import hashlib
import threading

from edge.devices.card.errors import CardParameterError
from edge.devices.card.protocol import security as sec
from edge.devices.card.protocol.apdu import (
    SAM_DIVERSIFY_CRYPTOGRAM,
    SAM_DIVERSIFY_LOAD,
    SAM_MODE_CRYPTOGRAM,
    SAM_MODE_ENCRYPT,
    SAM_MODE_MAC,
    Command,
)
from edge.devices.card.sim.issuer import IssuerKeys

__all__ = ["SAM_ATR_T0", "SAM_ATR_T1", "SamSim"]

SAM_ATR_T0 = bytes.fromhex("3B6C00020A0400000000000000005053414D")[:16]
SAM_ATR_T1 = bytes.fromhex("3B8C8001") + b"PSAM" + bytes.fromhex("0102030405060708")
SW_OK = b"\x90\x00"


def _sw(v: int) -> bytes:
    return v.to_bytes(2, "big")


class SamSim:
    """A PSAM holding the (test) issuer master keys."""

    def __init__(self, pin: str, *, terminal_number: bytes = bytes.fromhex("110100000001"),
                 keys: IssuerKeys | None = None, scheme: sec.AuthScheme | None = None,
                 pin_tries: int = 3, t0: bool = True, serial: bytes | None = None,
                 combined: bool = True) -> None:
        if not pin.isdigit() or not 4 <= len(pin) <= 12:
            raise CardParameterError("SAM PIN must be 4-12 digits", "PSAM 密码格式错误")
        if len(terminal_number) != 6:
            raise CardParameterError("terminal number must be 6 bytes", "终端编号错误")
        self.atr = SAM_ATR_T0 if t0 else with_tck_t1(SAM_ATR_T1)
        self._pin = pin
        self.t0 = t0
        self.combined = combined
        self.scheme = scheme or sec.AuthScheme()
        self._keys = keys or IssuerKeys.for_tests()
        self.max_tries = pin_tries
        self.pin_tries_left = pin_tries
        self.verify_count = 0  # VERIFY commands carrying a PIN (each may spend a try)
        self.verify_queries = 0  # VERIFY without data (asks the tries left, spends none)
        self.apdu_count = 0
        self._lock = threading.Lock()
        serial = serial or bytes.fromhex("0102") + hashlib.sha256(pin.encode()).digest()[:12]
        key_info = bytes((self.scheme.key_version,)) + bytes(range(24))
        self._files: dict[tuple[str, int], bytes] = {
            ("MF", 0x0015): serial[:14].ljust(14, b"\x00"),
            ("MF", 0x0016): terminal_number,
            ("DF01", 0x001A): key_info,
            ("DF01", 0x001B): (hashlib.sha512(b"issuer-cert").digest() * 3)[:180],
            ("DF01", 0x001C): (hashlib.sha512(b"sam-cert").digest() * 3)[:190],
        }
        self._reset()

    def _reset(self) -> None:
        self._df = "MF"
        self._ef: tuple[str, int] | None = None
        self._pin_ok = False
        self._work_key: bytes | None = None
        self._pending: bytes | None = None

    def power_event(self, code: int) -> None:
        """Power off/on/reset clears the PIN state, as on a real SAM."""
        with self._lock:
            self._reset()

    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one command APDU."""
        with self._lock:
            self.apdu_count += 1
            try:
                c = Command.parse(apdu)
            except CardParameterError:
                return _sw(0x6700)
            if (c.cla, c.ins) == (0x00, 0x20):
                return self._verify(c)
            if (c.cla, c.ins) == (0x00, 0xA4):
                return self._select(c)
            if (c.cla, c.ins) == (0x00, 0xB0):
                return self._read_binary(c)
            if (c.cla, c.ins) == (0x00, 0xC0):
                return self._get_response(c)
            if (c.cla, c.ins) == (0x80, 0xDE):
                return self._diversify(c)
            if (c.cla, c.ins) == (0x80, 0xFA):
                return self._compute(c)
            if c.cla not in (0x00, 0x80):
                return _sw(0x6E00)
            return _sw(0x6D00)

    def _verify(self, c: Command) -> bytes:
        if not c.data:
            # ISO 7816-4 VERIFY without data: a status query that spends no try —
            # 9000 when already verified, 63Cx (x = tries left) otherwise, 6983 blocked.
            self.verify_queries += 1
            if self.pin_tries_left <= 0:
                return _sw(0x6983)
            return SW_OK if self._pin_ok else _sw(0x63C0 | min(self.pin_tries_left, 15))
        self.verify_count += 1
        if self.pin_tries_left <= 0:
            return _sw(0x6983)
        given = c.data.hex().upper().rstrip("F")
        if given == self._pin:
            self.pin_tries_left = self.max_tries
            self._pin_ok = True
            return SW_OK
        self.pin_tries_left -= 1
        self._pin_ok = False
        return _sw(0x6983) if self.pin_tries_left == 0 else _sw(0x63C0 | self.pin_tries_left)

    def _select(self, c: Command) -> bytes:
        if len(c.data) != 2:
            return _sw(0x6700)
        fid = int.from_bytes(c.data, "big")
        if fid == 0x3F00:
            self._df, self._ef = "MF", None
            return SW_OK
        if fid == 0xDF01:
            self._df, self._ef = "DF01", None
            return SW_OK
        # ISO 7816-4 FID search: children of the current DF, then (from DF01) its
        # siblings under the MF — so 0015/0016 stay selectable after SELECT DF01.
        for df in (self._df, "MF"):
            if (df, fid) in self._files:
                self._df, self._ef = df, (df, fid)
                return SW_OK
        return _sw(0x6A82)

    def _read_binary(self, c: Command) -> bytes:
        if self._ef is None:
            return _sw(0x6986)
        data = self._files[self._ef]
        off = (c.p1 << 8) | c.p2
        if off >= len(data):
            return _sw(0x6B00)
        le = c.le or 256
        chunk = data[off:off + le]
        return chunk + (SW_OK if len(chunk) == le or c.le in (None, 256) else _sw(0x6282))

    def _ready(self) -> bytes | None:
        if not self._pin_ok or self._df != "DF01":
            return _sw(0x6982)
        return None

    def _diversify(self, c: Command) -> bytes:
        if (err := self._ready()) is not None:
            return err
        if c.p1 == SAM_DIVERSIFY_LOAD:
            factor, challenge = c.data, None
            if len(factor) != 16:
                return _sw(0x6700)
        elif c.p1 == SAM_DIVERSIFY_CRYPTOGRAM and self.combined:
            if len(c.data) != 24:
                return _sw(0x6700)
            factor, challenge = c.data[:16], c.data[16:]
        else:
            return _sw(0x6A86)
        master = self._keys.masters.get(c.p2)
        if master is None:
            return _sw(0x6A88)
        self._work_key = sec.diversify(self.scheme, master, factor)
        if challenge is None:
            return SW_OK
        return self._answer(c, sec.cryptogram(self.scheme, self._work_key, challenge))

    def _compute(self, c: Command) -> bytes:
        if (err := self._ready()) is not None:
            return err
        if self._work_key is None:
            return _sw(0x6985)
        key = self._work_key
        if c.p1 == SAM_MODE_CRYPTOGRAM:
            if len(c.data) != 8:
                return _sw(0x6700)
            out = sec.cryptogram(self.scheme, key, c.data)
        elif c.p1 == SAM_MODE_ENCRYPT:
            out = sec.encrypt(self.scheme, key, c.data)
        elif c.p1 == SAM_MODE_MAC:
            if len(c.data) <= 16:
                return _sw(0x6700)
            out = sec.mac(self.scheme, key, c.data[:16], c.data[16:])
        else:
            return _sw(0x6A86)
        return self._answer(c, out)

    def _answer(self, c: Command, out: bytes) -> bytes:
        """T=0 (or no Le): 61xx and the data kept for 00C0; T=1: the data directly."""
        if self.t0 or c.le is None:
            self._pending = out
            return _sw(0x6100 | (len(out) & 0xFF))
        return out + SW_OK

    def _get_response(self, c: Command) -> bytes:
        pending, self._pending = self._pending, None
        if pending is None:
            return _sw(0x6985)
        le = c.le or 256
        if le != len(pending) and c.le != 256:
            self._pending = pending
            return _sw(0x6C00 | len(pending))
        return pending + SW_OK


def with_tck_t1(atr: bytes) -> bytes:
    """Append TCK (needed when T=1 is indicated)."""
    x = 0
    for b in atr[1:]:
        x ^= b
    return atr + bytes((x,))
