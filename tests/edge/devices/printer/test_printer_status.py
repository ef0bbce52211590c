"""DLE EOT status bits parsed from recorded reply bytes (Epson ESC/POS reference)."""

from __future__ import annotations

import pytest

from edge.devices.printer.errors import StatusParseError
from edge.devices.printer.escpos.status import (
    is_status_byte,
    parse_gs_r_paper,
    parse_status,
    status_reply,
)

# Replies recorded as (DLE EOT 1, 2, 3, 4) bytes.
HEALTHY = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x12}
PAPER_OUT = {1: 0x1A, 2: 0x32, 3: 0x12, 4: 0x7E}
NEAR_END = {1: 0x12, 2: 0x12, 3: 0x12, 4: 0x1E}
COVER_OPEN = {1: 0x1A, 2: 0x16, 3: 0x12, 4: 0x12}
CUTTER = {1: 0x1A, 2: 0x52, 3: 0x1A, 4: 0x12}


def test_printer_status_healthy() -> None:
    s = parse_status(HEALTHY)
    assert s.online and not s.cover_open and s.paper == "ok" and s.ready and s.problem is None


def test_printer_status_paper_out() -> None:
    s = parse_status(PAPER_OUT)
    assert not s.online and s.paper == "out" and not s.ready and s.problem == "paper_out"


def test_printer_status_near_end_still_ready() -> None:
    s = parse_status(NEAR_END)
    assert s.paper == "near_end" and s.ready


def test_printer_status_cover_open() -> None:
    s = parse_status(COVER_OPEN)
    assert s.cover_open and s.problem == "cover_open" and not s.ready


def test_printer_status_cutter_error() -> None:
    s = parse_status(CUTTER)
    assert s.cutter_error and s.problem == "cutter_error"


def test_printer_status_error_bits() -> None:
    s = parse_status({1: 0x32, 3: 0x12 | 0x20 | 0x40 | 0x04})
    assert s.waiting_online_recovery and s.unrecoverable_error
    assert s.auto_recoverable_error and s.recoverable_error and s.paper == "unknown"


@pytest.mark.parametrize("bad", [0x00, 0xFF, 0x10, 0x02, 0x92])
def test_printer_status_rejects_non_status_bytes(bad: int) -> None:
    assert not is_status_byte(bad)
    with pytest.raises(StatusParseError) as err:
        parse_status({1: bad})
    assert err.value.n == 1 and err.value.value == bad


@pytest.mark.parametrize(
    "state",
    [{}, {"paper_out": True}, {"near_end": True}, {"cover_open": True}, {"cutter_error": True}],
)
def test_printer_status_reply_round_trips(state: dict[str, bool]) -> None:
    replies = {n: status_reply(n, **state) for n in (1, 2, 3, 4)}
    s = parse_status(replies)
    assert s.cover_open == state.get("cover_open", False)
    assert s.cutter_error == state.get("cutter_error", False)
    assert (s.paper == "out") == state.get("paper_out", False)
    assert s.online == (not state)  or state == {"near_end": True}


def test_printer_gs_r_paper() -> None:
    assert parse_gs_r_paper(0x00) == "ok"
    assert parse_gs_r_paper(0x03) == "near_end"
    assert parse_gs_r_paper(0x0C) == "out"
    with pytest.raises(StatusParseError):
        parse_gs_r_paper(0x12)
