"""A Resident Health Card simulator: the whole file map, access rules, faults.

It behaves like a COS answering ISO 7816-4 commands: SELECT by FID (children, parent and
siblings searched), READ RECORD by identifier (DDF1/EF05 form) or number, optionally by
SFI, READ BINARY, GET CHALLENGE, EXTERNAL AUTHENTICATE with a retry counter, SM UPDATE
RECORD / cyclic append, UPDATE BINARY and the DF03 flag commands. DDF1/EF05 is free; every
other read needs EXTERNAL AUTHENTICATE with the DF's read key; every write needs
EXTERNAL AUTHENTICATE with the file's update key, and record writes an SM MAC as well. Card keys are
diversified from ``IssuerKeys`` with the same ``AuthScheme`` the SAM simulator uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from edge.devices.card.errors import CardParameterError
from edge.devices.card.protocol import records as rec
from edge.devices.card.protocol import security as sec
from edge.devices.card.protocol.apdu import Command
from edge.devices.card.protocol.files import ADF_FIDS, FILES, FileKind, FileSpec
from edge.devices.card.sim.issuer import IssuerKeys

__all__ = [
    "BANK_ATR",
    "BLANK_ATR",
    "HEALTH_ATR",
    "HEALTH_CONTACTLESS_ATR",
    "BankCardSim",
    "BlankCardSim",
    "Faults",
    "HealthCardSim",
    "contactless_atr",
    "with_tck",
]


def with_tck(atr_wo_tck: bytes) -> bytes:
    """Append the ISO 7816-3 check byte (XOR of T0…last) to an ATR."""
    x = 0
    for b in atr_wo_tck[1:]:
        x ^= b
    return atr_wo_tck + bytes((x,))


# T=0 CPU card ATR shaped like domestic COS health cards: TS 3B, T0 6D (TB1, TC1, 13
# historical bytes): "HC" marker, COS version, 8-byte chip serial.
HEALTH_ATR = bytes.fromhex("3B6D0000") + b"HC" + bytes.fromhex("020101") + \
    bytes.fromhex("8601122334455667")


def contactless_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC reader makes up for an ISO 14443-4 card (PC/SC part 3, 3.1.3.2.3.1).

    3B 8n 80 01 <n historical bytes> TCK: T0 says TD1 follows and n historical bytes,
    TD1 = 80 (TD2 follows, T=0), TD2 = 01 (T=1, nothing more). A type A card's
    historical bytes come from its ATS; the reader has no contact ATR to report.
    """
    if len(historical) > 15:
        raise CardParameterError("at most 15 historical bytes", "ATR 历史字节过长")
    return with_tck(bytes((0x3B, 0x80 | len(historical), 0x80, 0x01)) + historical)


# A PBOC/UnionPay debit card ATR (T=1), as seen on domestic bank IC cards.
BANK_ATR = with_tck(bytes.fromhex("3B8E800180318066B1840C016E0183009000"))
# The same health card held to a contactless reader: its historical bytes behind the
# PC/SC contactless header (so an ATR-based card factor is the same on both interfaces).
HEALTH_CONTACTLESS_ATR = contactless_atr(HEALTH_ATR[4:])
# A blank (unpersonalised) JavaCard-like ATR.
BLANK_ATR = bytes.fromhex("3B021450")

SW_OK = b"\x90\x00"


def _sw(v: int) -> bytes:
    return v.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Faults:
    """Scriptable faults. APDU indexes count from 1 since insertion (or ``reset_count``)."""

    delay_s: float = 0.0
    disconnect_at: int | None = None
    wrong_sw_at: tuple[int, int] | None = None  # (apdu index, status word)
    # (apdu index, status word): from that APDU on, every answer is this SW alone — e.g.
    # 0x6110 makes a card that keeps saying "16 more bytes" to every GET RESPONSE.
    stuck_sw_from: tuple[int, int] | None = None
    corrupt_tlv: str | None = None  # file path, e.g. "DDF1/EF06": first record's length broken
    expired: bool = False
    auth_blocked: bool = False
    supports_sfi: bool = True
    # What a COS without SFI support answers an SFI-form READ RECORD: 6A81 on most, but
    # some say 6986 (no current EF: they ignore the SFI), 6A86, 6A82, 6981… (``no-sfi=SW``).
    sfi_refusal_sw: int = 0x6A81


_DEFAULT_CERT = hashlib.sha512(b"issuer-cert").digest() * 3
_DEFAULT_SAM_CERT = hashlib.sha512(b"sam-cert").digest() * 3


def _default_photo() -> bytes:
    """A small grey JPEG (the card's photo file holds at most 3070 bytes of image)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return b"\xff\xd8\xff\xe0" + b"\x00" * 60 + b"\xff\xd9"
    img = Image.new("L", (60, 80), 200)
    d = ImageDraw.Draw(img)
    d.ellipse((15, 10, 45, 45), fill=120)
    d.rectangle((10, 50, 50, 80), fill=90)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=40)
    return buf.getvalue()


@dataclass
class _DF:
    name: str
    fid: int
    keys: dict[int, bytes] = field(default_factory=dict)


class HealthCardSim:
    """A personalised health card; construct with ``from_holder``."""

    def __init__(self, values: dict[str, dict[str, Any]], *, atr: bytes = HEALTH_ATR,
                 keys: IssuerKeys | None = None, scheme: sec.AuthScheme | None = None,
                 faults: Faults | None = None, photo: bytes | None = None,
                 rng: Callable[[int], bytes] = os.urandom,
                 sleep: Callable[[float], None] = time.sleep, key_tries: int = 3,
                 cyclic_records: int = 10) -> None:
        self.atr = atr
        self.scheme = scheme or sec.AuthScheme()
        self.faults = faults or Faults()
        self._rng = rng
        self._sleep = sleep
        self._lock = threading.Lock()
        self.apdu_count = 0
        self.removed = False
        self.reads: list[str] = []  # paths of every successful read, in order (for tests)
        self.commands: list[bytes] = []  # every command APDU received
        self._records: dict[str, list[bytes]] = {}
        self._binaries: dict[str, bytearray] = {}
        for path, spec in FILES.items():
            if spec.kind is FileKind.RECORDS:
                vals = values.get(path, {})
                self._records[path] = [rec.encode_element_record(e, vals[e.name])
                                       if e.name in vals else b"" for e in spec.elements]
            elif spec.kind is FileKind.CYCLIC:
                self._records[path] = [b"\x00" * spec.record_size] * cyclic_records
            elif spec.kind is FileKind.FLAGS:
                self._records[path] = [b"\xff"] * spec.record_count
            else:
                self._binaries[path] = bytearray(spec.size)
        if photo is not None:
            self.set_binary("DDF1/EF07", rec.encode_photo(photo))
        self.card_number = str(values["DDF1/EF05"]["card_number"])
        self.city_code = str(values["DDF1/EF05"]["city_code"])
        issuer = keys or IssuerKeys.for_tests()
        factor = sec.diversification_factor(self.scheme, self.card_number, self.city_code, atr)
        card_keys = {ref: sec.diversify(self.scheme, m, factor)
                     for ref, m in issuer.masters.items()}
        self._dfs: dict[str, _DF] = {
            "DDF1": _DF("DDF1", 0xDDF1, {r: card_keys[r] for r in (0x04, 0x05)}),
            "DF01": _DF("DF01", 0xDF01, {r: card_keys[r] for r in (0x84, 0x85)}),
            "DF02": _DF("DF02", 0xDF02, {r: card_keys[r] for r in (0x84, 0x86)}),
            "DF03": _DF("DF03", 0xDF03, {r: card_keys[r] for r in (0x84, 0x87)}),
        }
        self._tries: dict[tuple[str, int], int] = {
            (df, ref): key_tries for df, d in self._dfs.items() for ref in d.keys}
        self._max_tries = key_tries
        self._reset_state()

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_holder(cls, *, name: str = "张三", sex: str = "1", ethnicity: str = "01",
                    birth_date: str = "19800101", id_number: str = "110101198001011234",
                    card_number: str | None = None, city_code: str = "110100",
                    card_type: str = "1", expiry: str = "20351231",
                    issue_date: str = "20250101", issuer_name: str = "北京市卫生健康委员会",
                    issuer_code: str = "11000000001", phone: str = "13800138000",
                    photo: bytes | None = None, faults: Faults | None = None,
                    **kwargs: Any) -> HealthCardSim:
        """A card with the given holder and realistic defaults for everything else."""
        faults = faults or Faults()
        _check_holder(sex, ethnicity, birth_date, id_number, expiry)
        if card_number is None:
            card_number = "H" + hashlib.sha256(id_number.encode()).hexdigest().upper()[:17]
        if faults.expired:
            expiry = "20200101"
        values: dict[str, dict[str, Any]] = {
            "DDF1/EF05": {
                "card_type": card_type, "spec_version": "V2.0", "issuer_name": issuer_name,
                "issuer_code": issuer_code, "issuer_certificate": _DEFAULT_CERT[:180],
                "issue_date": issue_date, "card_number": card_number,
                "security_code": "123", "chip_serial": "8601122334", "city_code": city_code,
            },
            "DDF1/EF06": {"name": name, "sex": int(sex), "ethnicity": ethnicity,
                          "birth_date": birth_date, "id_number": id_number},
            "DDF1/EF08": {"expiry": expiry, "phone1": phone, "phone2": "",
                          "payment1": "1", "payment2": "3", "payment3": ""},
            "DF01/EF05": {"address1_type": "1", "address1": "北京市东城区东华门街道1号",
                          "address2_type": "2", "address2": ""},
            "DF01/EF06": {"contact1_name": "李四", "contact1_relation": "1",
                          "contact1_phone": "13900139000", "contact2_name": "",
                          "contact2_relation": "", "contact2_phone": "",
                          "contact3_name": "", "contact3_relation": "", "contact3_phone": ""},
            "DF01/EF07": {"education": "2", "marriage": "2", "occupation": "13"},
            "DF01/EF08": {"document_type": "1", "document_number": id_number,
                          "health_record_number": "11010100000000001",
                          "rural_insurance_number": ""},
            "DF02/EF05": {"abo": 1, "rh": "2", **{e.name: 0 for e in
                          FILES["DF02/EF05"].elements if e.tag not in (0x29, 0x2A, 0x37)},
                          "other_warning": ""},
            "DF02/EF06": {"special_flag": 0},
        }
        for key, value in kwargs.pop("values", {}).items():
            values.setdefault(key, {}).update(value)
        if photo is None:
            photo = _default_photo()
        return cls(values, faults=faults, photo=photo, **kwargs)

    # --- state -------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._df: str | None = None  # None = MF
        self._ef: FileSpec | None = None
        self._challenge: bytes | None = None
        self._granted: set[tuple[str, int]] = set()

    def power_event(self, code: int) -> None:
        """vpcd power off/on/reset: security state is lost, as on a real card."""
        with self._lock:
            self._reset_state()

    def with_faults(self, **changes: Any) -> None:
        """Change the scripted faults (and restart APDU counting)."""
        with self._lock:
            self.faults = replace(self.faults, **changes)
            self.apdu_count = 0

    def records(self, path: str) -> list[bytes]:
        """Raw records of a record file (for tests)."""
        return list(self._records[path])

    def binary(self, path: str) -> bytes:
        """Raw content of a binary file (for tests)."""
        return bytes(self._binaries[path])

    def set_binary(self, path: str, data: bytes, offset: int = 0) -> None:
        """Personalise (or damage, in tests) part of a binary file."""
        buf = self._binaries[path]
        if offset + len(data) > len(buf):
            raise CardParameterError(f"{path}: data beyond the file", "数据超出文件")
        buf[offset:offset + len(data)] = data

    # --- APDU processing ----------------------------------------------------------------
    def process_apdu(self, apdu: bytes) -> bytes:
        """Answer one command APDU; returns b"" when a fault pulls the card."""
        with self._lock:
            if self.removed:
                return b""
            self.apdu_count += 1
            self.commands.append(bytes(apdu))
            f = self.faults
            if f.delay_s:
                self._sleep(f.delay_s)
            if f.disconnect_at is not None and self.apdu_count >= f.disconnect_at:
                self.removed = True
                return b""
            if f.wrong_sw_at is not None and self.apdu_count == f.wrong_sw_at[0]:
                return _sw(f.wrong_sw_at[1])
            if f.stuck_sw_from is not None and self.apdu_count >= f.stuck_sw_from[0]:
                return _sw(f.stuck_sw_from[1])
            try:
                cmd = Command.parse(apdu)
            except CardParameterError:
                return _sw(0x6700)
            return self._dispatch(cmd)

    def _dispatch(self, c: Command) -> bytes:
        if c.cla not in (0x00, 0x04, 0x84):
            return _sw(0x6E00)
        handler = {0xA4: self._select, 0xB2: self._read_record, 0xB0: self._read_binary,
                   0x84: self._get_challenge, 0x82: self._external_auth,
                   0xDC: self._update_record, 0xD6: self._update_binary,
                   0xD2: self._flag, 0x0C: self._flag}.get(c.ins)
        if handler is None:
            return _sw(0x6D00)
        return handler(c)

    def _select(self, c: Command) -> bytes:
        if (c.p1, c.p2) != (0, 0):
            return _sw(0x6A86)
        if len(c.data) != 2:
            return _sw(0x6700)
        fid = int.from_bytes(c.data, "big")
        if fid == 0x3F00:
            self._df, self._ef = None, None
            return SW_OK
        for name, dfid in ADF_FIDS.items():
            if fid == dfid and self._df_reachable(name):
                self._df, self._ef = name, None
                return SW_OK
        if self._df is not None:
            for spec in FILES.values():
                if spec.df == self._df and spec.fid == fid:
                    self._ef = spec
                    return SW_OK
        return _sw(0x6A82)

    def _df_reachable(self, name: str) -> bool:
        # DDF1 sits under the MF, DF01–DF03 under DDF1; FID select searches children,
        # the parent and siblings (ISO 7816-4), which makes every DF reachable from
        # DDF1 or a sibling DF, and DDF1 from the MF.
        if name == "DDF1":
            return True
        return self._df is not None

    def _target_ef(self, p2: int) -> FileSpec | bytes:
        sfi = p2 >> 3
        if sfi:
            if not self.faults.supports_sfi:
                return _sw(self.faults.sfi_refusal_sw)
            for spec in FILES.values():
                if spec.df == self._df and spec.sfi == sfi:
                    self._ef = spec
                    return spec
            return _sw(0x6A82)
        if self._ef is None:
            return _sw(0x6986)
        return self._ef

    def _can_read(self, spec: FileSpec) -> bool:
        return spec.read_key is None or (spec.df, spec.read_key) in self._granted

    def _read_record(self, c: Command) -> bytes:
        target = self._target_ef(c.p2)
        if isinstance(target, bytes):
            return target
        spec = target
        if spec.kind is FileKind.BINARY:
            return _sw(0x6981)
        if not self._can_read(spec):
            return _sw(0x6982)
        recs = self._records[spec.path]
        mode = c.p2 & 0x07
        if mode == 0x00 and spec.kind is FileKind.RECORDS:
            idx = next((i for i, e in enumerate(spec.elements) if e.tag == c.p1), None)
        elif mode == 0x04:
            idx = c.p1 - 1 if 1 <= c.p1 <= len(recs) else None
        else:
            return _sw(0x6A86)
        if idx is None or not recs[idx]:
            return _sw(0x6A83)
        data = recs[idx]
        if self.faults.corrupt_tlv == spec.path and idx == 0 and spec.kind is FileKind.RECORDS:
            data = data[:1] + bytes((0xFE,)) + data[2:]
        if c.le not in (None, 256) and c.le != len(data):
            return _sw(0x6C00 | len(data))
        self.reads.append(spec.path)
        return data + SW_OK

    def _read_binary(self, c: Command) -> bytes:
        spec = self._ef
        if spec is None:
            return _sw(0x6986)
        if spec.kind is not FileKind.BINARY:
            return _sw(0x6981)
        if not self._can_read(spec):
            return _sw(0x6982)
        off = (c.p1 << 8) | c.p2
        buf = self._binaries[spec.path]
        if off >= len(buf):
            return _sw(0x6B00)
        le = c.le or 256
        chunk = bytes(buf[off:off + le])
        self.reads.append(spec.path)
        return chunk + (SW_OK if len(chunk) == le else _sw(0x6282))

    def _get_challenge(self, c: Command) -> bytes:
        if c.le not in (4, 8):
            return _sw(0x6700)
        self._challenge = self._rng(c.le)
        return self._challenge + SW_OK

    def _key(self, ref: int) -> tuple[str, bytes] | None:
        if self._df is None:
            return None
        key = self._dfs[self._df].keys.get(ref)
        return None if key is None else (self._df, key)

    def _external_auth(self, c: Command) -> bytes:
        found = self._key(c.p2)
        if found is None:
            return _sw(0x6A88)
        df, key = found
        if len(c.data) != 17:
            return _sw(0x6700)
        challenge, self._challenge = self._challenge, None
        if self.faults.auth_blocked or self._tries[(df, c.p2)] <= 0:
            return _sw(0x6983)
        if challenge is None or len(challenge) != 8:
            return _sw(0x6985)
        kv, crypt = sec.parse_ext_auth_data(self.scheme, c.data)
        if kv == self.scheme.key_version and crypt == sec.cryptogram(self.scheme, key,
                                                                       challenge):
            self._tries[(df, c.p2)] = self._max_tries
            self._granted.add((df, c.p2))
            return SW_OK
        self._tries[(df, c.p2)] -= 1
        left = self._tries[(df, c.p2)]
        return _sw(0x6983) if left <= 0 else _sw(0x63C0 | left)

    def _unwrap_sm(self, c: Command, spec: FileSpec) -> bytes:
        """Verify the MAC and decrypt; raises _SmError with the SW on failure."""
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise _SmError(0x6985)
        if len(c.data) < 20 or (len(c.data) - 4) % 16:
            raise _SmError(0x6700)
        key = self._dfs[spec.df].keys[spec.update_key]
        cipher_text, mac = c.data[:-4], c.data[-4:]
        expect = sec.mac(self.scheme, key, sec.challenge_iv(challenge),
                         sec.sm_mac_input(c.cla, c.ins, c.p1, c.p2, cipher_text))
        if mac != expect:
            raise _SmError(0x6988)
        try:
            return sec.decrypt(self.scheme, key, cipher_text)
        except Exception as exc:
            raise _SmError(0x6988) from exc

    def _update_record(self, c: Command) -> bytes:
        spec = self._ef
        if spec is None:
            return _sw(0x6986)
        if spec.kind not in (FileKind.RECORDS, FileKind.CYCLIC):
            return _sw(0x6981)
        if (spec.df, spec.update_key) not in self._granted:
            # The MAC alone is not enough: the update key must have been presented with
            # EXTERNAL AUTHENTICATE first (docs/healthcard.md, "Needed … before writing").
            return _sw(0x6982)
        if c.cla == 0x04:
            try:
                data = self._unwrap_sm(c, spec)
            except _SmError as e:
                return _sw(e.sw)
        else:
            data = c.data
        recs = self._records[spec.path]
        if (c.p1, c.p2 & 0x07) == (0, 0x03):
            if spec.kind is not FileKind.CYCLIC:
                return _sw(0x6981)
            if len(data) != spec.record_size:
                return _sw(0x6700)
            recs.insert(0, data)
            recs.pop()
            return SW_OK
        if c.p2 != 0x04 or not 1 <= c.p1 <= len(recs):
            return _sw(0x6A83)
        if len(data) != spec.record_len(c.p1):
            return _sw(0x6700)
        if spec.kind is FileKind.RECORDS and data[0] != spec.elements[c.p1 - 1].tag:
            return _sw(0x6A80)
        recs[c.p1 - 1] = data
        return SW_OK

    def _update_binary(self, c: Command) -> bytes:
        spec = self._ef
        if spec is None:
            return _sw(0x6986)
        if spec.kind is not FileKind.BINARY:
            return _sw(0x6981)
        if (spec.df, spec.update_key) not in self._granted:
            return _sw(0x6982)
        off = (c.p1 << 8) | c.p2
        buf = self._binaries[spec.path]
        if off + len(c.data) > len(buf):
            return _sw(0x6B00)
        buf[off:off + len(c.data)] = c.data
        return SW_OK

    def _flag(self, c: Command) -> bytes:
        spec = self._ef
        if c.cla != 0x84:
            return _sw(0x6E00)
        if spec is None:
            return _sw(0x6986)
        if spec.kind is not FileKind.FLAGS:
            return _sw(0x6981)
        if (spec.df, spec.update_key) not in self._granted:
            return _sw(0x6982)
        recs = self._records[spec.path]
        if c.p2 != 0x04 or not 1 <= c.p1 <= len(recs):
            return _sw(0x6A83)
        recs[c.p1 - 1] = b"\x00" if c.ins == 0xD2 else b"\xff"
        return SW_OK


def _check_holder(sex: str, ethnicity: str, birth_date: str, id_number: str,
                  expiry: str) -> None:
    """Reject values a real issuer would not personalise (clear error, not a broken card)."""
    if sex not in ("0", "1", "2", "9"):
        raise CardParameterError("sex must be 0, 1, 2 or 9 (GB/T 2261.1)", "性别代码错误")
    if not (ethnicity.isdigit() and len(ethnicity) == 2):
        raise CardParameterError("ethnicity must be two digits (GB 3304)", "民族代码错误")
    for value, what, zh in ((birth_date, "birth date", "出生日期"), (expiry, "expiry", "有效期")):
        try:
            if len(value) != 8 or not value.isdigit():
                raise ValueError(value)
            dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError as exc:
            raise CardParameterError(f"{what} must be YYYYMMDD", f"{zh}格式应为 YYYYMMDD") from exc
    if not id_number or len(id_number.encode("gb18030")) > 18:
        raise CardParameterError("ID number must be 1-18 characters", "证件号码长度错误")


class _SmError(Exception):
    def __init__(self, sw: int) -> None:
        self.sw = sw
        super().__init__(f"{sw:04X}")


class BankCardSim:
    """A PBOC bank card: answers our FID selects with 6A82 (it only knows AIDs)."""

    def __init__(self, atr: bytes = BANK_ATR) -> None:
        self.atr = atr
        self.apdu_count = 0

    def process_apdu(self, apdu: bytes) -> bytes:
        """Select by AID succeeds (PSE), select by FID fails, the rest is unknown."""
        self.apdu_count += 1
        if len(apdu) >= 4 and apdu[1] == 0xA4:
            if apdu[2] == 0x04:
                return bytes.fromhex("6F0A840E315041592E5359532E4444463031")[:12] + SW_OK
            return _sw(0x6A82)
        return _sw(0x6D00)


class BlankCardSim:
    """An unpersonalised card: no files at all."""

    def __init__(self, atr: bytes = BLANK_ATR) -> None:
        self.atr = atr
        self.apdu_count = 0

    def process_apdu(self, apdu: bytes) -> bytes:
        """Every select fails with 6A82, everything else is unknown."""
        self.apdu_count += 1
        if len(apdu) >= 4 and apdu[1] == 0xA4:
            return _sw(0x6A82)
        return _sw(0x6D00)
