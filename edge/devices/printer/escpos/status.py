"""DLE EOT status bytes (pure), per the Epson ESC/POS Command Reference, "DLE EOT n".

Every reply byte has fixed bits: bit 0 = 0, bit 1 = 1, bit 4 = 1, bit 7 = 0 (so
``byte & 0x93 == 0x12``); that is how a status byte is told apart from other traffic.

n=1 printer status:   bit 3 offline, bit 5 waiting for online recovery, bit 6 feed button
n=2 offline cause:    bit 2 cover open, bit 3 paper fed by button, bit 5 stopped by
                      paper end, bit 6 error occurred
n=3 error cause:      bit 2 mechanical (recoverable) error, bit 3 autocutter error,
                      bit 5 unrecoverable error, bit 6 automatically recoverable error
n=4 roll paper:       bits 2-3 near-end sensor (paper near end), bits 5-6 end sensor (out)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edge.devices.printer.errors import StatusParseError

__all__ = [
    "PaperState",
    "PrinterStatus",
    "is_status_byte",
    "parse_gs_r_paper",
    "parse_status",
    "status_reply",
]

PaperState = Literal["ok", "near_end", "out", "unknown"]

_FIXED_MASK = 0x93
_FIXED_VALUE = 0x12


@dataclass(frozen=True)
class PrinterStatus:
    """The printer's state as read through DLE EOT 1..4."""

    online: bool
    cover_open: bool
    paper: PaperState
    cutter_error: bool = False
    recoverable_error: bool = False
    unrecoverable_error: bool = False
    auto_recoverable_error: bool = False
    waiting_online_recovery: bool = False
    feed_button: bool = False

    @property
    def ready(self) -> bool:
        """True when a job sent now should print completely."""
        return (
            self.online
            and not self.cover_open
            and self.paper != "out"
            and not (self.cutter_error or self.recoverable_error or self.unrecoverable_error)
        )

    def event_body(self) -> dict[str, bool | str]:
        """The ``printer.status`` event body (yikatong/protocol/messages.py ``PrinterStatus``)."""
        return {"online": self.online, "paper": self.paper, "cover_open": self.cover_open,
                "cutter_error": self.cutter_error}

    @property
    def problem(self) -> str | None:
        """A reason code for the first thing that stops printing, or None."""
        if self.cover_open:
            return "cover_open"
        if self.paper == "out":
            return "paper_out"
        if self.cutter_error:
            return "cutter_error"
        if self.unrecoverable_error or self.recoverable_error:
            return "printer_error"
        if not self.online:
            return "offline"
        return None


def is_status_byte(value: int) -> bool:
    """Whether a byte has the fixed bits of a DLE EOT reply."""
    return (value & _FIXED_MASK) == _FIXED_VALUE


def _checked(n: int, value: int) -> int:
    if not 0 <= value <= 0xFF or not is_status_byte(value):
        raise StatusParseError(n, value & 0xFF)
    return value


def parse_status(replies: Mapping[int, int]) -> PrinterStatus:
    """Combine DLE EOT replies keyed by n (1..4) into a PrinterStatus; missing n are 'ok'."""
    b1 = _checked(1, replies.get(1, _FIXED_VALUE))
    b2 = _checked(2, replies.get(2, _FIXED_VALUE))
    b3 = _checked(3, replies.get(3, _FIXED_VALUE))
    paper: PaperState
    if 4 in replies:
        b4 = _checked(4, replies[4])
        if b4 & 0x60:
            paper = "out"
        elif b4 & 0x0C:
            paper = "near_end"
        else:
            paper = "ok"
    else:
        paper = "unknown"
    if b2 & 0x20:  # printing stopped by paper end, even without a DLE EOT 4 reply
        paper = "out"
    return PrinterStatus(
        online=not (b1 & 0x08),
        cover_open=bool(b2 & 0x04),
        paper=paper,
        cutter_error=bool(b3 & 0x08),
        recoverable_error=bool(b3 & 0x04),
        unrecoverable_error=bool(b3 & 0x20),
        auto_recoverable_error=bool(b3 & 0x40),
        waiting_online_recovery=bool(b1 & 0x20),
        feed_button=bool(b1 & 0x40),
    )


def status_reply(
    n: int,
    *,
    paper_out: bool = False,
    near_end: bool = False,
    cover_open: bool = False,
    cutter_error: bool = False,
) -> int:
    """The byte a printer in the given state answers to DLE EOT n (used by the simulator)."""
    offline = paper_out or cover_open or cutter_error
    value = _FIXED_VALUE
    if n == 1:
        value |= 0x08 if offline else 0
    elif n == 2:
        value |= (0x04 if cover_open else 0) | (0x20 if paper_out else 0)
        value |= 0x40 if cutter_error else 0
    elif n == 3:
        value |= 0x08 if cutter_error else 0
    elif n == 4:
        value |= (0x60 if paper_out else 0) | (0x0C if (near_end or paper_out) else 0)
    else:
        raise ValueError(f"DLE EOT {n} is not a status query")
    return value


def parse_gs_r_paper(value: int) -> PaperState:
    """Paper state from the GS r 1 reply (bits 0-1 near end, bits 2-3 paper end)."""
    if value & 0x90:
        raise StatusParseError(0x31, value)
    if value & 0x0C:
        return "out"
    if value & 0x03:
        return "near_end"
    return "ok"
