"""Serial scanner output framing (pure, no I/O): bytes in, complete scans out.

On the wire a serial scanner sends, per read: ``[prefix][AIM id][data][suffix][terminator]``.
Prefix, suffix and terminator are per model profile (see ``models.py``); the AIM symbology
identifier (ISO/IEC 15424: ``]`` + code letter + modifier, e.g. ``]Q1`` for QR) is present
only when the scanner is programmed to send it. Chinese scanners are often left in GBK
output mode, so text is decoded as UTF-8 first and GB18030 (a superset of GBK) second.

The decoder never holds more than ``max_frame`` bytes plus a few: an over-long frame is
reported once as ``FrameTooLong`` and everything up to the next terminator is discarded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from edge.devices.scanner.classify import mask_scan_text
from edge.devices.scanner.errors import FrameDecodeError, FrameTooLong

__all__ = [
    "AIM_SYMBOLOGIES",
    "FrameDecoder",
    "FrameError",
    "FrameFormat",
    "RawScan",
    "split_aim",
]

# ISO/IEC 15424 code letters (first character after "]") → our symbology names.
# Modifier-specific names first: "]E4" is EAN-8, "]C1" and "]d2" are the GS1 variants.
AIM_SYMBOLOGIES: dict[str, str] = {
    "A": "code39",
    "C": "code128",
    "C1": "gs1_128",
    "E": "ean13",
    "E4": "ean8",
    "F": "codabar",
    "G": "code93",
    "H": "code11",
    "I": "itf",
    "L": "pdf417",
    "M": "msi",
    "Q": "qr",
    "X": "other",
    "d": "datamatrix",
    "d2": "gs1_datamatrix",
    "e": "gs1_databar",
    "z": "aztec",
}

_AIM_RE = re.compile(r"\]([A-Za-z])([0-9A-Za-z])")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff"


def split_aim(text: str) -> tuple[str | None, str | None, str]:
    """Split a leading AIM id off ``text``: ``(aim_id, symbology, rest)``; Nones if absent."""
    m = _AIM_RE.match(text)
    if m is None:
        return None, None, text
    letter, modifier = m.group(1), m.group(2)
    name = AIM_SYMBOLOGIES.get(letter + modifier) or AIM_SYMBOLOGIES.get(letter, "other")
    return m.group(0), name, text[m.end():]


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """How one scanner model frames its output; rows of these live in ``models.py``."""

    terminator: bytes = b"\r"
    prefix: bytes = b""
    suffix: bytes = b""
    aim: bool = True
    # Accept any of CR, LF, CRLF as the end of a frame: scanners are often reprogrammed on
    # site and CR vs CRLF is the setting most often changed without telling anyone.
    lenient_line_end: bool = True
    max_frame: int = 1024
    encodings: tuple[str, ...] = ("utf-8", "gb18030")

    def __post_init__(self) -> None:
        if not self.terminator:
            raise ValueError("terminator must not be empty")
        if self.max_frame < 16:
            raise ValueError("max_frame must be at least 16 bytes")
        if not self.encodings:
            raise ValueError("at least one encoding is required")

    @property
    def line_terminated(self) -> bool:
        """True when frames end at CR/LF and lenient splitting applies."""
        return self.lenient_line_end and self.terminator in (b"\r", b"\n", b"\r\n")


@dataclass(frozen=True, slots=True, repr=False)
class RawScan:
    """One complete scan as text, before classification; repr is masked."""

    text: str
    symbology: str | None
    ts: float
    aim_id: str | None = None
    source: str = field(default="")

    def __repr__(self) -> str:
        return (
            f"RawScan(text={mask_scan_text(self.text)!r}, symbology={self.symbology!r}, "
            f"aim_id={self.aim_id!r}, ts={self.ts!r}, source={self.source!r})"
        )


FrameError = FrameTooLong | FrameDecodeError


class FrameDecoder:
    """Feed arbitrary byte chunks; get complete ``RawScan`` values and frame errors back."""

    def __init__(
        self, fmt: FrameFormat, clock: Callable[[], float], *, source: str = ""
    ) -> None:
        self._fmt = fmt
        self._clock = clock
        self._source = source
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[RawScan | FrameError]:
        """Consume ``data``; return scans and errors completed by it, in wire order."""
        out: list[RawScan | FrameError] = []
        step = self._fmt.max_frame
        # Slice the input so even one huge chunk never grows the buffer past the limit.
        for start in range(0, len(data), step):
            self._buf += data[start:start + step]
            self._drain(out)
        return out

    def reset(self) -> None:
        """Forget any partial frame (the port was reopened)."""
        self._buf.clear()
        self._discarding = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame currently held."""
        return len(self._buf)

    def _next_frame(self) -> bytes | None:
        if self._fmt.line_terminated:
            m = _LINE_END.search(self._buf)
            if m is None:
                return None
            # A lone CR at the very end may be the first half of CRLF: it still ends the frame,
            # and the LF that follows becomes an empty frame, which is skipped.
            frame = bytes(self._buf[:m.start()])
            del self._buf[:m.end()]
            return frame
        idx = self._buf.find(self._fmt.terminator)
        if idx < 0:
            return None
        frame = bytes(self._buf[:idx])
        del self._buf[:idx + len(self._fmt.terminator)]
        return frame

    def _drain(self, out: list[RawScan | FrameError]) -> None:
        while (frame := self._next_frame()) is not None:
            if self._discarding:
                # The tail of an over-long frame: already reported, drop it.
                self._discarding = False
                continue
            if len(frame) > self._fmt.max_frame:
                out.append(FrameTooLong(self._fmt.max_frame))
                continue
            item = self._decode(frame)
            if item is not None:
                out.append(item)
        keep = len(self._fmt.terminator) - 1  # a terminator may be split across chunks
        if len(self._buf) > self._fmt.max_frame + keep:
            if not self._discarding:
                out.append(FrameTooLong(self._fmt.max_frame))
                self._discarding = True
            tail = bytes(self._buf[len(self._buf) - keep:]) if keep else b""
            self._buf[:] = tail

    def _decode(self, frame: bytes) -> RawScan | FrameError | None:
        fmt = self._fmt
        if fmt.prefix and frame.startswith(fmt.prefix):
            frame = frame[len(fmt.prefix):]
        if fmt.suffix and frame.endswith(fmt.suffix):
            frame = frame[:-len(fmt.suffix)]
        if not frame:
            return None  # a bare terminator: some scanners send one on a no-read
        text: str | None = None
        for encoding in fmt.encodings:
            try:
                text = frame.decode(encoding)
                break
            except (UnicodeDecodeError, LookupError):
                continue
        if text is None:
            return FrameDecodeError(len(frame), fmt.encodings)
        text = text.removeprefix(_BOM)
        aim_id: str | None = None
        symbology: str | None = None
        if fmt.aim:
            aim_id, symbology, text = split_aim(text)
        if not text:
            return None
        return RawScan(
            text=text, symbology=symbology, ts=self._clock(), aim_id=aim_id, source=self._source
        )
