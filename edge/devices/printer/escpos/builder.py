"""ESC/POS byte builder (pure): commands per the Epson ESC/POS Command Reference.

Text is encoded here rather than with python-escpos's ``text()``: python-escpos picks a
single-byte code page (ESC t) per character through its magic encoder, but Chinese printers
print Chinese only in "Chinese mode" (FS &) from GB2312/GBK/GB18030 double-byte codes,
which python-escpos does not emit. python-escpos is still used for the transports.
"""

from __future__ import annotations

from typing import Literal

from edge.devices.printer.errors import LayoutError
from edge.devices.printer.escpos.profiles import PrinterProfile

__all__ = [
    "CUT_FULL",
    "CUT_PARTIAL",
    "DLE_EOT",
    "ESC",
    "FS",
    "GS",
    "GS_R_PAPER",
    "EscPosBuilder",
    "QrErrorLevel",
]

ESC = b"\x1b"
GS = b"\x1d"
FS = b"\x1c"
DLE_EOT = b"\x10\x04"
LF = b"\n"
CUT_FULL = GS + b"V\x00"
CUT_PARTIAL = GS + b"V\x01"
# GS r 1: transmit paper sensor status. Processed in sequence with print data, so its
# reply arrives only after everything sent before it has been printed.
GS_R_PAPER = GS + b"r\x01"

QrErrorLevel = Literal["L", "M", "Q", "H"]
_QR_EC = {"L": 48, "M": 49, "Q": 50, "H": 51}
_ALIGN = {"left": 0, "center": 1, "right": 2}
QR_MAX_BYTES = 7089 - 3  # GS ( k store: pL/pH cover data + 3 bytes (cn fn m)

# Characters outside GBK that have a GBK look-alike of the same printed width (2 columns),
# used on printers without four-byte GB18030 codes.
_GBK_SUBSTITUTES = {"¥": "￥", "€": "EUR", "\u00a0": " "}
_GBK_FALLBACK = "□"  # printed for a rare character the printer's GBK font lacks


class EscPosBuilder:
    """Accumulate ESC/POS commands and text for one printer profile."""

    def __init__(self, profile: PrinterProfile) -> None:
        self.profile = profile
        self._buf = bytearray()
        self._chinese = False

    def build(self) -> bytes:
        """The bytes built so far."""
        return bytes(self._buf)

    def raw(self, data: bytes) -> EscPosBuilder:
        """Append bytes as they are."""
        self._buf += data
        return self

    def init(self) -> EscPosBuilder:
        """ESC @: reset modes (alignment, emphasis, size, Chinese mode) to power-on state."""
        self._buf += ESC + b"@"
        self._chinese = False
        return self

    def chinese(self, on: bool = True) -> EscPosBuilder:
        """FS & / FS .: select or cancel Chinese (Kanji) character mode."""
        if on and not self.profile.chinese_mode:
            raise LayoutError(f"profile {self.profile.name} has no Chinese font")
        self._buf += FS + (b"&" if on else b".")
        self._chinese = on
        return self

    def align(self, where: Literal["left", "center", "right"]) -> EscPosBuilder:
        """ESC a n: justification (effective at the start of a line)."""
        self._buf += ESC + b"a" + bytes([_ALIGN[where]])
        return self

    def bold(self, on: bool = True) -> EscPosBuilder:
        """ESC E n: emphasized mode."""
        self._buf += ESC + b"E" + (b"\x01" if on else b"\x00")
        return self

    def size(self, width: int = 1, height: int = 1) -> EscPosBuilder:
        """GS ! n: character width and height multipliers (1..8)."""
        if not (1 <= width <= 8 and 1 <= height <= 8):
            raise LayoutError(f"character size {width}x{height} out of range 1..8")
        self._buf += GS + b"!" + bytes([((width - 1) << 4) | (height - 1)])
        return self

    def text(self, s: str) -> EscPosBuilder:
        """Append text: ASCII as is, other characters as GB codes (Chinese mode required)."""
        self._buf += self.encode(s)
        return self

    def line(self, s: str = "") -> EscPosBuilder:
        """Text followed by LF (print and line feed)."""
        return self.text(s).lf()

    def lf(self) -> EscPosBuilder:
        """LF: print the buffer and feed one line."""
        self._buf += LF
        return self

    def feed(self, lines: int) -> EscPosBuilder:
        """ESC d n: print and feed n lines."""
        if not 0 <= lines <= 255:
            raise LayoutError(f"feed of {lines} lines out of range")
        self._buf += ESC + b"d" + bytes([lines])
        return self

    def encode(self, s: str) -> bytes:
        """Encode text for the current mode; control characters and unprintables raise."""
        out = bytearray()
        for ch in s:
            o = ord(ch)
            if 0x20 <= o < 0x7F:
                out.append(o)
                continue
            if o < 0x20 or o == 0x7F or 0x80 <= o < 0xA0:
                raise LayoutError(f"control character U+{o:04X} in receipt text")
            if not self._chinese:
                raise LayoutError(f"non-ASCII {ch!r} outside Chinese mode")
            out += self._encode_gb(ch)
        return bytes(out)

    def _encode_gb(self, ch: str) -> bytes:
        try:
            code = ch.encode("gb18030")
        except UnicodeEncodeError:  # lone surrogates
            raise LayoutError(f"cannot encode U+{ord(ch):04X}") from None
        if len(code) == 4 and not self.profile.gb18030_four_byte:
            sub = _GBK_SUBSTITUTES.get(ch, _GBK_FALLBACK)
            return sub.encode("gb18030")
        return code

    def qr(
        self, data: str, *, module_size: int | None = None, ec: QrErrorLevel = "M"
    ) -> EscPosBuilder:
        """GS ( k: QR Code model 2 — select model, module size, error level, store, print."""
        payload = data.encode("utf-8")
        if not payload:
            raise LayoutError("empty QR payload")
        if len(payload) > QR_MAX_BYTES:
            raise LayoutError(f"QR payload of {len(payload)} bytes is too long")
        if not self.profile.qr:
            raise LayoutError(f"profile {self.profile.name} cannot print QR codes")
        size = module_size or self.profile.qr_module_size
        if not 1 <= size <= 16:
            raise LayoutError(f"QR module size {size} out of range 1..16")
        self._buf += GS + b"(k\x04\x001A2\x00"  # fn 165: model 2
        self._buf += GS + b"(k\x03\x001C" + bytes([size])  # fn 167: module size
        self._buf += GS + b"(k\x03\x001E" + bytes([_QR_EC[ec]])  # fn 169: error level
        n = len(payload) + 3
        self._buf += GS + b"(k" + bytes([n & 0xFF, n >> 8]) + b"1P0" + payload  # fn 180
        self._buf += GS + b"(k\x03\x001Q0"  # fn 181: print the stored symbol
        return self

    def cut(self) -> EscPosBuilder:
        """Feed to the cutter and cut (GS V), or just feed past the tear bar without one."""
        self.feed(self.profile.feed_before_cut)
        if self.profile.cutter == "partial":
            self._buf += CUT_PARTIAL
        elif self.profile.cutter == "full":
            self._buf += CUT_FULL
        return self

    def status_query(self, n: int) -> EscPosBuilder:
        """DLE EOT n: real-time status transmission (n = 1..4)."""
        if n not in (1, 2, 3, 4):
            raise LayoutError(f"DLE EOT {n} is not a status query")
        self._buf += DLE_EOT + bytes([n])
        return self
