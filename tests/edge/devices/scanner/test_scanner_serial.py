"""SerialScanner over real pseudo-terminals made by socat, including unplug and replug."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.devices.scanner.base import (
    DriverEvent,
    ScanFailed,
    ScannerConnected,
    ScannerLost,
    ScanRead,
)
from edge.devices.scanner.errors import FrameTooLong
from edge.devices.scanner.frames import FrameFormat
from edge.devices.scanner.models import MODELS, ScannerModel
from edge.devices.scanner.serial_port import SerialScanner

EMPI = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2


class PtyPair:
    """Two linked pseudo-terminals: the test writes at ``scanner_end``, we read at ``port``."""

    def __init__(self, directory: Path) -> None:
        self.scanner_end = str(directory / "scanner")
        self.port = str(directory / "port")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.scanner_end}",
             f"pty,raw,echo=0,link={self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not (os.path.exists(self.scanner_end) and os.path.exists(self.port)):
            if time.monotonic() > deadline:
                raise RuntimeError("socat did not create the ptys")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
            self.proc = None

    def write(self, data: bytes) -> None:
        fd = os.open(self.scanner_end, os.O_WRONLY | os.O_NOCTTY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path)
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[DriverEvent] = asyncio.Queue()

    def sink(self, event: DriverEvent) -> None:
        # Runs on the loop thread (posted by LoopDoor); assert that too.
        asyncio.get_running_loop()
        self.queue.put_nowait(event)

    async def next(self, kind: type, within: float = 5.0) -> DriverEvent:
        async with asyncio.timeout(within):
            while True:
                ev = await self.queue.get()
                if isinstance(ev, kind):
                    return ev


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    yield Events()


async def test_reads_frames_from_a_real_pty(ptys: PtyPair, events: Events) -> None:
    scanner = SerialScanner(ptys.port, MODELS["honeywell_xenon_1900_serial"], events.sink,
                            name="counter-1", clock=lambda: 42.0)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        ptys.write(f"]Q1{EMPI}:1\r".encode())
        ptys.write(b"]C0S2024")  # a frame split across writes
        await asyncio.sleep(0.05)
        ptys.write("000001\r检验\r".encode("gbk"))
        got = [await events.next(ScanRead) for _ in range(3)]
    finally:
        await scanner.stop()
    raws = [e.raw for e in got]  # type: ignore[attr-defined]
    assert [(r.text, r.symbology) for r in raws] == [
        (f"{EMPI}:1", "qr"), ("S2024000001", "code128"), ("检验", None)]
    assert all(r.source == "counter-1" and r.ts == 42.0 for r in raws)
    assert {e.device for e in got} == {"counter-1"}  # type: ignore[attr-defined]


async def test_over_long_frame_is_reported_not_buffered(ptys: PtyPair, events: Events) -> None:
    profile = ScannerModel(name="t", vendor="t", interface="serial",
                           frame=FrameFormat(max_frame=64))
    scanner = SerialScanner(ptys.port, profile, events.sink)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        ptys.write(b"X" * 300 + b"\rOK\r")
        failed = await events.next(ScanFailed)
        ok = await events.next(ScanRead)
    finally:
        await scanner.stop()
    assert isinstance(failed.error, FrameTooLong)  # type: ignore[attr-defined]
    assert ok.raw.text == "OK"  # type: ignore[attr-defined]


async def test_reconnects_after_unplug(ptys: PtyPair, events: Events) -> None:
    scanner = SerialScanner(ptys.port, MODELS["generic_serial"], events.sink,
                            reconnect_delay_s=0.1)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        ptys.write(b"BEFORE\r")
        assert (await events.next(ScanRead)).raw.text == "BEFORE"  # type: ignore[attr-defined]
        ptys.stop()  # the USB cable is pulled: the pty vanishes
        lost = await events.next(ScannerLost)
        assert lost.error.device == ptys.port  # type: ignore[attr-defined]
        assert lost.error.message_zh  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)  # retries meanwhile fail; only one ScannerLost is posted
        assert all(not isinstance(e, ScannerLost) for e in _drain(events))
        ptys.start()  # ...and plugged back in
        await events.next(ScannerConnected)
        ptys.write(b"AFTER\r")
        assert (await events.next(ScanRead)).raw.text == "AFTER"  # type: ignore[attr-defined]
    finally:
        await scanner.stop()


async def test_missing_port_reports_lost_and_stop_is_prompt(tmp_path: Path,
                                                            events: Events) -> None:
    scanner = SerialScanner(str(tmp_path / "nope"), MODELS["generic_serial"], events.sink,
                            reconnect_delay_s=0.05)
    await scanner.start()
    lost = await events.next(ScannerLost)
    assert "nope" in lost.error.detail  # type: ignore[attr-defined]
    started = time.monotonic()
    await scanner.stop()
    assert time.monotonic() - started < 2


def _drain(events: Events) -> list[DriverEvent]:
    out = []
    while not events.queue.empty():
        out.append(events.queue.get_nowait())
    return out
