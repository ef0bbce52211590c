"""Virtual printer over real TCP on loopback, and the decoder on arbitrary bytes."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.printer.documents import Document
from edge.devices.printer.escpos import get_profile, render
from edge.devices.printer.sim import VirtualPrinter, decode
from edge.devices.printer.sim.decoder import EscPosDecoder

Samples = dict[str, Callable[[], Document]]


@pytest.fixture
def printer(tmp_path: Path) -> Iterator[VirtualPrinter]:
    vp = VirtualPrinter(out_dir=tmp_path / "paper").start()
    try:
        yield vp
    finally:
        vp.stop()


def test_printer_sim_round_trip_shows_masked_slip(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    data = render(samples["slip"](), get_profile("xprinter_xp80"))
    with socket.create_connection(("127.0.0.1", printer.port), timeout=5) as s:
        s.sendall(data)
    (job,) = printer.wait_for_jobs(1)
    assert job.cut and job.raw == data
    assert "患者姓名：张*丰" in job.lines
    assert "110105199001011234" not in job.text and "张三丰" not in job.text
    assert job.qr_payloads == ["MZ20240520000123"]
    png = tmp_path / "paper" / "job-0001.png"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_printer_sim_answers_status_in_real_time(printer: VirtualPrinter) -> None:
    with socket.create_connection(("127.0.0.1", printer.port), timeout=5) as s:
        s.sendall(b"\x10\x04\x04")
        assert s.recv(1) == b"\x12"
        printer.set_fault(paper_out=True)
        s.sendall(b"\x10\x04\x04")
        assert s.recv(1) == b"\x7e"
        printer.set_fault(paper_out=False, cover_open=True)
        s.sendall(b"\x10\x04\x02")
        assert s.recv(1) == b"\x16"


def test_printer_sim_splits_jobs_at_cuts(printer: VirtualPrinter, samples: Samples) -> None:
    prof = get_profile("xprinter_xp80")
    data = render(samples["topup"](), prof) + render(samples["refund"](), prof)
    with socket.create_connection(("127.0.0.1", printer.port), timeout=5) as s:
        s.sendall(data[:100])
        s.sendall(data[100:])
    jobs = printer.wait_for_jobs(2)
    assert "预交金充值凭条" in jobs[0].text and "退费凭条" in jobs[1].text


def test_printer_sim_drop_after_bytes_closes_the_link(printer: VirtualPrinter) -> None:
    printer.set_fault(drop_after_bytes=10)
    with socket.create_connection(("127.0.0.1", printer.port), timeout=5) as s:
        s.sendall(b"\x1b@" + b"A" * 20 + b"\n")
        assert s.recv(1) == b""  # the printer hung up, as a power cut does
    assert printer.faults.drop_after_bytes is None  # one-shot


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_printer_decoder_never_crashes(data: bytes, chunk: int) -> None:
    whole = decode(data)
    dec = EscPosDecoder()
    for i in range(0, len(data), chunk):
        dec.feed(data[i : i + chunk])
    dec.finish()
    assert all(isinstance(line, str) for job in whole for line in job.lines)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50))
def test_printer_decoder_chunking_does_not_change_result(chunk: int) -> None:
    from datetime import datetime

    from edge.devices.printer.documents import TestPage

    data = render(TestPage("KIOSK-1", "0.1", datetime(2024, 1, 1)), get_profile("sunmi_80"))
    dec = EscPosDecoder()
    events = []
    for i in range(0, len(data), chunk):
        events += dec.feed(data[i : i + chunk])
    jobs = [e.job for e in events if hasattr(e, "job")]
    assert len(jobs) == 1 and jobs[0].lines == decode(data)[0].lines


def test_printer_sim_cli_serves_until_stopped(tmp_path: Path) -> None:
    import argparse
    import threading

    from edge.devices.printer.sim.cli import add_sim_printer_commands, run_sim_printer

    parser = argparse.ArgumentParser()
    add_sim_printer_commands(parser.add_subparsers())
    args = parser.parse_args(["printer", "--port", "0", "--out", str(tmp_path), "--paper-out"])
    assert args.func is run_sim_printer
    stop = threading.Event()
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(args.func(args, stop)))
    t.start()
    stop.set()
    t.join(5)
    assert codes == [0]
