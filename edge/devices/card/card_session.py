"""The card session: reads and writes one inserted health card over a ``CardTransport``.

Card authentication goes through the terminal's ``SamSession``; the APDUs, file map and
record codecs are the pure code in ``protocol/`` (docs/healthcard.md).

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

import datetime as dt
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.devices.card import errors as E
from edge.devices.card.exchange import ApduCounter, exchange_rest, send_apdu
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol import records as R
from edge.devices.card.protocol import security as sec
from edge.devices.card.protocol.files import ADF_FIDS, FILES, ElementSpec, FileKind, FileSpec
from edge.devices.card.protocol.status import SFI_NOT_SUPPORTED, error_for, retries_left
from edge.devices.card.sam_session import SamSession
from edge.devices.card.transport import CardTransport
from yikatong.common.privacy import mask_card_number

__all__ = [
    "CardProfile",
    "CardSession",
    "HotListLike",
    "LocalToday",
    "Timeouts",
]


class HotListLike(Protocol):
    """What the session needs from the hot list."""

    def is_blocked(self, card_no: str) -> bool:
        """True when the card number is on the lost/stolen list."""
        ...


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


def _medical_path(kind: str, index: int) -> str:
    """DF03/EE0n for an inpatient record, DF03/ED0n for an outpatient one."""
    return f"DF03/{'EE' if kind == 'inpatient' else 'ED'}{index:02d}"


def _flags_path(kind: str) -> str:
    """The DF03 file holding the valid flags of ``kind`` records."""
    return "DF03/EF05" if kind == "inpatient" else "DF03/EF06"


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
        self._c = ApduCounter()
        self.last_apdus: dict[str, int] = {"card": 0, "sam": 0}

    # --- plumbing ---------------------------------------------------------------------
    def _begin(self) -> None:
        now = self._monotonic()
        self._c = ApduCounter(started=now, deadline=now + self.timeouts.operation_s)

    def _end(self) -> None:
        self.last_apdus = {"card": self._c.card, "sam": self._c.sam}

    def _x(self, cmd: A.Command | bytes, action: str, *, file: str | None = None,
           check: bool = True) -> A.Response:
        return send_apdu(self.transport, cmd, action=action, c=self._c, side="card",
                         file=file, check=check, monotonic=self._monotonic)

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
        return exchange_rest(self.transport, apdu, raw, action=action,
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
        spec = FILES[_medical_path(kind, index)]
        return R.parse_medical_record(kind, index, valid, self._read_binary(spec, spec.size))

    def read_medical_record(self, kind: Literal["inpatient", "outpatient"], index: int
                            ) -> R.InpatientRecord | R.OutpatientRecord:
        """One DF03 record; RecordErased when its flag is not 00."""
        def run() -> Any:
            self._card_ids()
            self._authenticate("DF03", 0x84)
            spec = self._medical_spec(kind, index)
            flags = self._read_flags(_flags_path(kind))
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
        return FILES[_medical_path(kind, index)]

    def _set_flag(self, kind: str, index: int, valid: bool) -> None:
        spec = FILES[_flags_path(kind)]
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
