"""The reader thread both scanner drivers share: one report per outage, retry, clean stop."""

from __future__ import annotations

import asyncio
import threading

from edge.devices.scanner.base import DriverEvent, LoopDoor, ScannerConnected, ScannerLost
from edge.devices.scanner.reader import ReconnectingReader


class FlakyReader(ReconnectingReader[str]):
    """Fails to open twice, then fails to prepare once, then reads until stopped."""

    kind = "fake"
    poll_s = 0.01

    def __init__(self, sink) -> None:
        super().__init__("fake0", sink, reconnect_delay_s=0.01)
        self.opens = 0
        self.closed: list[str] = []
        self.thread_names: set[str] = set()
        self.reading = threading.Event()

    def _open(self) -> str:
        self.thread_names.add(threading.current_thread().name)
        self.opens += 1
        if self.opens <= 2:
            raise FileNotFoundError(f"no device (try {self.opens})")
        return f"dev{self.opens}"

    def _prepare(self, dev: str) -> None:
        if dev == "dev3":
            raise OSError(16, "busy")

    def _describe(self, exc: OSError) -> str:
        return f"described: {exc.strerror}"

    def _read_until_error(self, dev: str, door: LoopDoor) -> None:
        self.reading.set()
        self._stop.wait()

    def _close(self, dev: str) -> None:
        self.closed.append(dev)


async def test_an_outage_is_reported_once_and_retried_until_it_ends() -> None:
    events: list[DriverEvent] = []
    reader = FlakyReader(events.append)
    await reader.start()
    await reader.start()  # idempotent: still one thread
    assert await asyncio.to_thread(reader.reading.wait, 5)
    await reader.stop()
    await reader.stop()
    assert reader.thread_names == {"scanner-fake:fake0"}
    lost, connected = events  # two failed opens and a failed grab: one outage
    assert isinstance(lost, ScannerLost) and "try 1" in lost.error.message
    assert connected == ScannerConnected("fake0")
    assert reader.opens == 4
    assert reader.closed == ["dev3", "dev4"]  # a device that failed to prepare is released


async def test_a_failure_after_opening_uses_the_drivers_description() -> None:
    events: list[DriverEvent] = []
    reader = FlakyReader(events.append)
    reader.opens = 2  # the next open succeeds and its prepare fails
    await reader.start()
    assert await asyncio.to_thread(reader.reading.wait, 5)
    await reader.stop()
    lost, connected = events
    assert isinstance(lost, ScannerLost) and "described: busy" in lost.error.message
    assert connected == ScannerConnected("fake0")
