"""Command APDU builders and response parsing for the health card and its SAM.

Layouts from docs/healthcard.md "Commands seen in public implementations" and "The terminal's
SAM". SFI forms (P2 = SFI<<3 | mode) are ISO 7816-4 and used only when the card profile
allows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.devices.card.errors import CardDataError, CardParameterError

__all__ = [
    "DDF1_EF05_LE",
    "Command",
    "Response",
    "append_record_sm",
    "erase_record_flag",
    "external_authenticate",
    "get_challenge",
    "get_response",
    "read_binary",
    "read_record",
    "read_record_by_tag",
    "sam_compute",
    "sam_diversify",
    "sam_diversify_cryptogram",
    "sam_select_df01",
    "select_fid",
    "set_record_valid_flag",
    "update_binary",
    "update_record_sm",
    "verify_pin",
    "verify_pin_status",
]

#: Le per tag for READ RECORD of DDF1/EF05 (docs/healthcard.md: "Le for tags 01,02,03,04,05,06,
#: 08,09,0A,39 = 03,06,20,0D,B6,06,14,05,0C,05") — element length + 2.
DDF1_EF05_LE: dict[int, int] = {
    0x01: 0x03, 0x02: 0x06, 0x03: 0x20, 0x04: 0x0D, 0x05: 0xB6,
    0x06: 0x06, 0x08: 0x14, 0x09: 0x05, 0x0A: 0x0C, 0x39: 0x05,
}

BINARY_CHUNK = 0x80


@dataclass(frozen=True, slots=True)
class Command:
    """A command APDU; ``le`` None means no Le field, 0 means Le=00 (up to 256)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def to_bytes(self) -> bytes:
        """Serialise as a short APDU (cases 1–4)."""
        data, le = self.data, self.le
        if len(data) > 255 or (le is not None and not 0 <= le <= 256):
            raise CardParameterError("APDU too long for a short APDU", "指令数据过长")
        try:  # bytes() range-checks the header (cheaper than four comparisons)
            out = bytes((self.cla, self.ins, self.p1, self.p2))
        except ValueError:
            raise CardParameterError("APDU header byte out of range", "指令参数错误") from None
        if data:
            out += bytes((len(data),)) + data
        if le is not None:
            out += bytes((le & 0xFF,))
        return out

    @classmethod
    def parse(cls, raw: bytes) -> Command:
        """Parse a short command APDU (as a card sees it)."""
        if len(raw) < 4:
            raise CardParameterError("APDU shorter than 4 bytes", "指令格式错误")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, b"", body[0] or 256)
        lc = body[0]
        if lc == 0 or len(body) not in (1 + lc, 2 + lc):
            raise CardParameterError("APDU Lc does not match the data", "指令长度错误")
        data = body[1:1 + lc]
        le = (body[1 + lc] or 256) if len(body) == 2 + lc else None
        return cls(cla, ins, p1, p2, data, le)


@dataclass(frozen=True, slots=True)
class Response:
    """A response APDU split into data and status word."""

    data: bytes
    sw1: int
    sw2: int

    @property
    def sw(self) -> int:
        """Status word as an int (0x9000)."""
        return (self.sw1 << 8) | self.sw2

    @property
    def ok(self) -> bool:
        """9000 or 61xx."""
        sw1 = self.sw1
        return (sw1 == 0x90 and self.sw2 == 0x00) or sw1 == 0x61

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        """Split raw response bytes; fewer than 2 bytes is a data error."""
        if len(raw) < 2:
            raise CardDataError("Response shorter than a status word", "卡片响应格式错误")
        return cls(bytes(raw[:-2]), raw[-2], raw[-1])

    def to_bytes(self) -> bytes:
        """Serialise (as a card sends it)."""
        return self.data + bytes((self.sw1, self.sw2))


def _u8(value: int, what: str) -> int:
    if not 0 <= value <= 0xFF:
        raise CardParameterError(f"{what} out of range", "指令参数错误")
    return value


def select_fid(fid: int) -> Command:
    """SELECT by file identifier: ``00 A4 00 00 02 <FID>``."""
    if not 0 <= fid <= 0xFFFF:
        raise CardParameterError("FID out of range", "文件标识错误")
    return Command(0x00, 0xA4, 0x00, 0x00, fid.to_bytes(2, "big"))


def read_record_by_tag(tag: int, le: int | None = None, *, sfi: int | None = None) -> Command:
    """DDF1/EF05 form: ``00 B2 <tag> 00 <Le>`` (P1 is the record identifier)."""
    _u8(tag, "tag")
    if le is None:
        le = DDF1_EF05_LE.get(tag, 0)
    p2 = 0x00 if sfi is None else (sfi << 3)
    return Command(0x00, 0xB2, tag, p2, b"", le)


def read_record(record: int, *, sfi: int | None = None, le: int = 0) -> Command:
    """Other record files: ``00 B2 <rec> 04 00`` (or the SFI form ``<SFI<<3|4>``)."""
    _u8(record, "record")
    p2 = 0x04 if sfi is None else ((sfi << 3) | 0x04)
    return Command(0x00, 0xB2, record, p2, b"", le)


def read_binary(offset: int, length: int = BINARY_CHUNK) -> Command:
    """READ BINARY: ``00 B0 <off-hi> <off-lo> <Le>`` (offset < 0x8000)."""
    if not 0 <= offset < 0x8000 or not 1 <= length <= 256:
        raise CardParameterError("READ BINARY offset/length out of range", "读取参数错误")
    return Command(0x00, 0xB0, offset >> 8, offset & 0xFF, b"", length)


def get_challenge(length: int = 8) -> Command:
    """GET CHALLENGE: ``00 84 00 00 08``."""
    return Command(0x00, 0x84, 0x00, 0x00, b"", length)


def external_authenticate(key_ref: int, data: bytes) -> Command:
    """EXTERNAL AUTHENTICATE: ``00 82 00 <key> 11 <17 bytes>``."""
    if len(data) != 17:
        raise CardParameterError("EXTERNAL AUTHENTICATE data must be 17 bytes", "认证数据错误")
    return Command(0x00, 0x82, 0x00, _u8(key_ref, "key"), data)


def update_record_sm(record: int, sm_data: bytes) -> Command:
    """Secure-messaging UPDATE RECORD: ``04 DC <rec> 04 Lc`` (cipher text + 4-byte MAC)."""
    if len(sm_data) < 20 or (len(sm_data) - 4) % 16:
        raise CardParameterError("SM data must be 16n+4 bytes", "安全报文长度错误")
    return Command(0x04, 0xDC, _u8(record, "record"), 0x04, sm_data)


def append_record_sm(sm_data: bytes) -> Command:
    """Cyclic append with SM: ``04 DC 00 03 Lc`` (the oldest record becomes the newest)."""
    if len(sm_data) < 20 or (len(sm_data) - 4) % 16:
        raise CardParameterError("SM data must be 16n+4 bytes", "安全报文长度错误")
    return Command(0x04, 0xDC, 0x00, 0x03, sm_data)


def update_binary(offset: int, data: bytes) -> Command:
    """UPDATE BINARY ``00 D6 <off-hi> <off-lo> Lc`` (after EXTERNAL AUTHENTICATE)."""
    if not 0 <= offset < 0x8000 or not 1 <= len(data) <= 255:
        raise CardParameterError("UPDATE BINARY offset/length out of range", "写入参数错误")
    return Command(0x00, 0xD6, offset >> 8, offset & 0xFF, data)


def set_record_valid_flag(record: int) -> Command:
    """DF03 flag ``84 D2 <rec> 04 00``: mark record valid (00)."""
    return Command(0x84, 0xD2, _u8(record, "record"), 0x04, b"", 0)


def erase_record_flag(record: int) -> Command:
    """DF03 flag ``84 0C <rec> 04 00``: mark record erased (FF)."""
    return Command(0x84, 0x0C, _u8(record, "record"), 0x04, b"", 0)


def get_response(length: int) -> Command:
    """GET RESPONSE ``00 C0 00 00 <Le>`` (after 61xx)."""
    return Command(0x00, 0xC0, 0x00, 0x00, b"", length or 256)


def verify_pin(pin: str) -> Command:
    """SAM VERIFY ``00 20 00 00 <len> <BCD PIN>`` (F-padded to whole bytes)."""
    if not pin.isascii() or not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise CardParameterError("SAM PIN must be 4-12 digits", "PSAM 密码格式错误")
    digits = pin + ("F" if len(pin) % 2 else "")
    return Command(0x00, 0x20, 0x00, 0x00, bytes.fromhex(digits))


def verify_pin_status() -> Command:
    """VERIFY without data ``00 20 00 00``: asks the tries left (63Cx), spends none (ISO 7816-4)."""
    return Command(0x00, 0x20, 0x00, 0x00)


def sam_select_df01() -> Command:
    """SAM SELECT DF01."""
    return select_fid(0xDF01)


def sam_diversify(key_ref: int, factor: bytes) -> Command:
    """SAM ``80 DE 00 <key> Lc <card factor ‖ city factor>``: load the diversified key."""
    if len(factor) != 16:
        raise CardParameterError("diversification factor must be 16 bytes", "分散因子错误")
    return Command(0x80, 0xDE, 0x00, _u8(key_ref, "key"), factor)


#: 80DE P1: 00 loads the diversified key only; 01 (our combined form, see
#: ``sam_diversify_cryptogram``) loads it and returns the cryptogram of a card challenge.
SAM_DIVERSIFY_LOAD, SAM_DIVERSIFY_CRYPTOGRAM = 0x00, 0x01


def sam_diversify_cryptogram(key_ref: int, factor: bytes, challenge: bytes) -> Command:
    """SAM ``80 DE 01 <key> 18 <factor ‖ challenge> 00``: diversify and compute in one go.

    docs/healthcard.md describes 80DE data as "card number ‖ city factor ‖ random": this form
    sends the random with the factors and gets the 16-byte cryptogram back (61 10 + 00C0
    on a T=0 SAM), saving the separate 80FA. The key stays loaded for later 80FA calls.
    """
    if len(factor) != 16:
        raise CardParameterError("diversification factor must be 16 bytes", "分散因子错误")
    if len(challenge) != 8:
        raise CardParameterError("challenge must be 8 bytes", "随机数长度错误")
    return Command(0x80, 0xDE, SAM_DIVERSIFY_CRYPTOGRAM, _u8(key_ref, "key"),
                   factor + challenge, 0)


#: 80FA P1 modes of our scheme: single-block cryptogram, encrypt (padded), MAC (IV ‖ data).
SAM_MODE_CRYPTOGRAM, SAM_MODE_ENCRYPT, SAM_MODE_MAC = 0x00, 0x01, 0x05


def sam_compute(mode: int, data: bytes) -> Command:
    """SAM ``80 FA <mode> 00 Lc <data> 00``; the result may come back as 61xx."""
    if not data or len(data) > 255:
        raise CardParameterError("SAM compute data length out of range", "安全计算数据长度错误")
    return Command(0x80, 0xFA, _u8(mode, "mode"), 0x00, data, 0)
