"""ESC/POS decoder (pure): bytes → printed lines, QR codes and cuts, split into jobs.

Used by the virtual printer, by previews and by tests. It understands what the layouts emit
plus the common commands of the Epson ESC/POS reference; anything else is skipped by its
documented length and listed in ``DecodedJob.unknown``. It never raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DecodedJob",
    "EscPosDecoder",
    "Feed",
    "JobDone",
    "PrintedLine",
    "PrintedQr",
    "SequencedQuery",
    "StatusQuery",
    "TextRun",
    "decode",
]

Align = Literal["left", "center", "right"]
_ALIGNS: dict[int, Align] = {
    0: "left", 1: "center", 2: "right", 48: "left", 49: "center", 50: "right"
}
_EC = {48: "L", 49: "M", 50: "Q", 51: "H"}


@dataclass(frozen=True)
class TextRun:
    """Text printed with one set of attributes."""

    text: str
    bold: bool = False
    width: int = 1
    height: int = 1


@dataclass(frozen=True)
class PrintedLine:
    """One printed line: its runs and justification."""

    runs: tuple[TextRun, ...]
    align: Align = "left"

    @property
    def text(self) -> str:
        """The line's text without attributes."""
        return "".join(r.text for r in self.runs)

    @property
    def height(self) -> int:
        """Largest height multiplier on the line (1 for an empty line)."""
        return max((r.height for r in self.runs), default=1)


@dataclass(frozen=True)
class PrintedQr:
    """A printed QR code symbol."""

    payload: str
    module_size: int
    ec_level: str
    align: Align


@dataclass(frozen=True)
class Feed:
    """Blank paper fed by ESC d / ESC J, in lines."""

    lines: float


Element = PrintedLine | PrintedQr | Feed


@dataclass
class DecodedJob:
    """One job: everything printed up to (and including) a cut, or to the end of the data."""

    lines: list[str] = field(default_factory=list)
    qr_payloads: list[str] = field(default_factory=list)
    cut: bool = False
    raw: bytes = b""
    elements: list[Element] = field(default_factory=list)
    status_queries: list[int] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    interrupted: bool = False  # paper ran out or the cover opened while it printed

    @property
    def text(self) -> str:
        """All printed lines joined with newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class StatusQuery:
    """DLE EOT n seen in the stream: a real-time status request (answer at once)."""

    n: int


@dataclass(frozen=True)
class SequencedQuery:
    """GS r n seen in the stream: answered after everything before it has printed."""

    n: int


@dataclass(frozen=True)
class JobDone:
    """A job ended at a cut."""

    job: DecodedJob


Event = StatusQuery | SequencedQuery | JobDone | PrintedLine | PrintedQr | Feed

# ESC commands with a fixed number of parameter bytes (Epson ESC/POS reference).
_ESC_ARGS = {
    ord("@"): 0, ord("a"): 1, ord("E"): 1, ord("!"): 1, ord("d"): 1, ord("J"): 1,
    ord("2"): 0, ord("3"): 1, ord("-"): 1, ord("G"): 1, ord("M"): 1, ord("t"): 1,
    ord("R"): 1, ord("p"): 3, ord("{"): 1, ord("V"): 1, ord(" "): 1, ord("$"): 2,
    ord("\\"): 2, ord("e"): 1, ord("K"): 1, ord("c"): 2, ord("="): 1, ord("L"): 0,
    ord("S"): 0, ord("T"): 1, ord("%"): 1, ord("r"): 1, ord("i"): 0, ord("m"): 0,
    ord("U"): 1,
}
_GS_ARGS = {
    ord("!"): 1, ord("B"): 1, ord("H"): 1, ord("h"): 1, ord("w"): 1, ord("f"): 1,
    ord("L"): 2, ord("W"): 2, ord("a"): 1, ord("r"): 1, ord("b"): 1, ord("I"): 1,
    ord("P"): 2, ord("x"): 1, ord("y"): 1, ord("\\"): 2, ord("^"): 3, ord("$"): 2,
}
_FS_ARGS = {
    ord("&"): 0, ord("."): 0, ord("!"): 1, ord("-"): 1, ord("S"): 2, ord("W"): 1,
    ord("C"): 1, ord("p"): 2, ord("?"): 1,
}
_NEED_MORE = -1


class EscPosDecoder:
    """Incremental decoder: ``feed(chunk)`` returns events; partial commands wait for more."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._reset_modes()
        self._chinese = False
        self._job = DecodedJob()
        self._job_raw = bytearray()
        self._runs: list[TextRun] = []
        self._line_align: Align | None = None
        self._text_bytes = bytearray()
        self._qr_data = b""
        self._qr_size = 3
        self._qr_ec = "L"
        self._raw_taken = False

    def _reset_modes(self) -> None:
        self._align: Align = "left"
        self._bold = False
        self._w = 1
        self._h = 1

    # -- public ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Event]:
        """Decode a chunk of the byte stream and return what happened, in order."""
        events: list[Event] = []
        self._pending += data
        i = 0
        buf = bytes(self._pending)
        while i < len(buf):
            n = self._step(buf, i, events)
            if n == _NEED_MORE:
                break
            if self._raw_taken:  # a cut already filed its bytes with the finished job
                self._raw_taken = False
            else:
                self._job_raw += buf[i : i + n]
            i += n
        del self._pending[:i]
        return events

    def finish(self) -> DecodedJob | None:
        """End of data: return the unfinished job (cut=False) if anything was printed."""
        if self._pending:
            self._job.unknown.append(f"truncated command {bytes(self._pending[:8]).hex()}")
            self._job_raw += self._pending
            self._pending.clear()
        self._flush_line(force=False, events=[])
        job = self._job
        job.raw = bytes(self._job_raw)
        self._job = DecodedJob()
        self._job_raw = bytearray()
        return job if job.elements else None

    def mark_interrupted(self) -> None:
        """Record that the current job was hit by paper out / cover open."""
        self._job.interrupted = True

    # -- parsing --------------------------------------------------------------------------

    def _step(self, buf: bytes, i: int, events: list[Event]) -> int:
        b = buf[i]
        if b == 0x1B:
            return self._esc(buf, i, events)
        if b == 0x1D:
            return self._gs(buf, i, events)
        if b == 0x1C:
            return self._fs(buf, i)
        if b == 0x10:
            return self._dle(buf, i, events)
        if b == 0x0A:
            self._flush_line(force=True, events=events)
            return 1
        if b == 0x09:
            self._add_text("    ")
            return 1
        if b < 0x20 or b == 0x7F:
            return 1  # CR, NUL and other controls print nothing
        return self._text(buf, i)

    def _text(self, buf: bytes, i: int) -> int:
        b = buf[i]
        if b < 0x80:
            self._add_text(chr(b))
            return 1
        if not self._chinese:
            self._add_text(bytes([b]).decode("cp437"))
            return 1
        if b in {128, 255}:
            self._add_text("\ufffd")
            return 1
        if i + 1 >= len(buf):
            return _NEED_MORE
        b2 = buf[i + 1]
        if 0x30 <= b2 <= 0x39:  # GB18030 four-byte sequence
            if i + 3 >= len(buf):
                return _NEED_MORE
            seq = buf[i : i + 4]
        else:
            seq = buf[i : i + 2]
        self._add_text(seq.decode("gb18030", errors="replace"))
        return len(seq)

    def _esc(self, buf: bytes, i: int, events: list[Event]) -> int:
        if i + 1 >= len(buf):
            return _NEED_MORE
        cmd = buf[i + 1]
        if cmd == ord("*"):  # bit image: ESC * m nL nH d1..dk
            if i + 4 >= len(buf):
                return _NEED_MORE
            m, nl, nh = buf[i + 2], buf[i + 3], buf[i + 4]
            k = (nl + nh * 256) * (3 if m in (32, 33) else 1)
            return 5 + k if i + 5 + k <= len(buf) else _NEED_MORE
        nargs = _ESC_ARGS.get(cmd)
        if nargs is None:
            self._job.unknown.append(f"ESC {cmd:02X}")
            return 2
        if i + 1 + nargs >= len(buf):
            return _NEED_MORE
        arg = buf[i + 2] if nargs else 0
        if cmd == ord("@"):
            self._flush_line(force=False, events=events)
            self._reset_modes()
            self._chinese = False
        elif cmd == ord("a"):
            self._align = _ALIGNS.get(arg, "left")
        elif cmd == ord("E"):
            self._bold = bool(arg & 1)
        elif cmd == ord("!"):
            self._bold = bool(arg & 0x08)
            self._h = 2 if arg & 0x10 else 1
            self._w = 2 if arg & 0x20 else 1
        elif cmd == ord("d"):
            self._flush_line(force=False, events=events)
            self._element(Feed(float(arg)), events)
        elif cmd == ord("J"):
            self._flush_line(force=False, events=events)
            self._element(Feed(arg / 34.0), events)
        return 2 + nargs

    def _gs(self, buf: bytes, i: int, events: list[Event]) -> int:
        if i + 1 >= len(buf):
            return _NEED_MORE
        cmd = buf[i + 1]
        if cmd == ord("("):
            if i + 4 >= len(buf):
                return _NEED_MORE
            n = buf[i + 3] + buf[i + 4] * 256
            if i + 5 + n > len(buf):
                return _NEED_MORE
            if buf[i + 2] == ord("k"):
                self._qr_function(buf[i + 5 : i + 5 + n], events)
            return 5 + n
        if cmd == ord("V"):
            if i + 2 >= len(buf):
                return _NEED_MORE
            m = buf[i + 2]
            size = 4 if m in (65, 66, 97, 98, 103, 104) else 3
            if i + size > len(buf):
                return _NEED_MORE
            self._cut(events, buf[i : i + size])
            return size
        if cmd == ord("v"):  # GS v 0 m xL xH yL yH raster image
            if i + 7 >= len(buf):
                return _NEED_MORE
            k = (buf[i + 4] + buf[i + 5] * 256) * (buf[i + 6] + buf[i + 7] * 256)
            return 8 + k if i + 8 + k <= len(buf) else _NEED_MORE
        if cmd == ord("k"):  # barcode
            if i + 2 >= len(buf):
                return _NEED_MORE
            m = buf[i + 2]
            if m <= 6:
                end = buf.find(b"\x00", i + 3)
                return _NEED_MORE if end < 0 else end + 1 - i
            if i + 3 >= len(buf):
                return _NEED_MORE
            k = buf[i + 3]
            return 4 + k if i + 4 + k <= len(buf) else _NEED_MORE
        nargs = _GS_ARGS.get(cmd)
        if nargs is None:
            self._job.unknown.append(f"GS {cmd:02X}")
            return 2
        if i + 1 + nargs >= len(buf):
            return _NEED_MORE
        arg = buf[i + 2]
        if cmd == ord("!"):
            self._w = min(8, (arg >> 4) + 1)
            self._h = min(8, (arg & 0x0F) + 1)
        elif cmd == ord("r"):
            self._flush_line(force=False, events=events)
            events.append(SequencedQuery(arg & 0x0F))
        return 2 + nargs

    def _fs(self, buf: bytes, i: int) -> int:
        if i + 1 >= len(buf):
            return _NEED_MORE
        cmd = buf[i + 1]
        nargs = _FS_ARGS.get(cmd)
        if nargs is None:
            self._job.unknown.append(f"FS {cmd:02X}")
            return 2
        if i + 1 + nargs >= len(buf):
            return _NEED_MORE
        if cmd == ord("&"):
            self._chinese = True
        elif cmd == ord("."):
            self._chinese = False
        return 2 + nargs

    def _dle(self, buf: bytes, i: int, events: list[Event]) -> int:
        if i + 2 >= len(buf):
            return _NEED_MORE
        cmd, n = buf[i + 1], buf[i + 2]
        if cmd == 0x04:
            if 1 <= n <= 4:
                self._job.status_queries.append(n)
                events.append(StatusQuery(n))
            return 3
        if cmd == 0x14:  # DLE DC4 fn m t
            return 5 if i + 4 < len(buf) else _NEED_MORE
        return 3 if cmd == 0x05 else 1

    def _qr_function(self, body: bytes, events: list[Event]) -> None:
        if len(body) < 3 or body[0] != 0x31:
            return
        fn, arg = body[1], body[2]
        if fn == 0x43:
            self._qr_size = max(1, min(16, arg))
        elif fn == 0x45:
            self._qr_ec = _EC.get(arg, "L")
        elif fn == 0x50:
            self._qr_data = body[3:]
        elif fn == 0x51:
            self._flush_line(force=False, events=events)
            payload = self._qr_data.decode("utf-8", errors="replace")
            self._job.qr_payloads.append(payload)
            self._element(PrintedQr(payload, self._qr_size, self._qr_ec, self._align), events)

    # -- state ----------------------------------------------------------------------------

    def _add_text(self, text: str) -> None:
        if self._line_align is None:
            self._line_align = self._align  # justification applies from the line start
        run = TextRun(text, self._bold, self._w, self._h)
        if self._runs and (
            (self._runs[-1].bold, self._runs[-1].width, self._runs[-1].height)
            == (run.bold, run.width, run.height)
        ):
            last = self._runs.pop()
            run = TextRun(last.text + text, run.bold, run.width, run.height)
        self._runs.append(run)

    def _flush_line(self, *, force: bool, events: list[Event]) -> None:
        if not self._runs and not force:
            return
        line = PrintedLine(tuple(self._runs), self._line_align or self._align)
        self._runs = []
        self._line_align = None
        self._job.lines.append(line.text)
        self._element(line, events)

    def _element(self, element: Element, events: list[Event]) -> None:
        self._job.elements.append(element)
        events.append(element)

    def _cut(self, events: list[Event], cmd: bytes) -> None:
        self._flush_line(force=False, events=events)
        self._job_raw += cmd
        job = self._job
        job.cut = True
        job.raw = bytes(self._job_raw)
        self._job = DecodedJob()
        self._job_raw = bytearray()
        events.append(JobDone(job))
        self._raw_taken = True


def decode(data: bytes) -> list[DecodedJob]:
    """Decode a whole byte string into jobs (the last one uncut if it did not end in a cut)."""
    dec = EscPosDecoder()
    jobs = [e.job for e in dec.feed(data) if isinstance(e, JobDone)]
    tail = dec.finish()
    if tail is not None:
        jobs.append(tail)
    return jobs
