"""Serial (RS-232 / USB CDC) scanners: blocking pyserial reads in a thread, one door to asyncio.

The thread opens the port, feeds whatever bytes arrive to a ``FrameDecoder`` and posts
each scan or frame error through the ``LoopDoor``. When the port errors (USB unplug; for a
pty, the other end closing) it reports ``ScannerLost``, closes, and retries the same path
every ``reconnect_delay_s`` until it opens again or ``stop()`` is called. Use a stable path
(``/dev/serial/by-id/...``) in config so the scanner is found again after re-enumeration.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import serial

from edge.devices.scanner.base import (
    LoopDoor,
    ScanFailed,
    ScannerConnected,
    ScannerLost,
    ScanRead,
    Sink,
)
from edge.devices.scanner.errors import ScannerDisconnected
from edge.devices.scanner.frames import FrameDecoder, RawScan
from edge.devices.scanner.models import ScannerModel

__all__ = ["SerialPort", "SerialScanner"]

log = logging.getLogger(__name__)

# How long one blocking read waits before checking the stop flag.
_READ_TIMEOUT_S = 0.2


class SerialPort(Protocol):
    """The part of ``serial.Serial`` we use: the one small transport interface."""

    @property
    def in_waiting(self) -> int:
        """Bytes ready to read."""

    def read(self, size: int = 1) -> bytes:
        """Read up to ``size`` bytes, waiting at most the port timeout."""

    def close(self) -> None:
        """Release the port."""


def _open_pyserial(port: str, baudrate: int) -> SerialPort:
    # exclusive=True: a second process (or a stray `cat`) on the port would steal frames.
    port_obj: Any = serial.Serial(port, baudrate=baudrate, timeout=_READ_TIMEOUT_S,
                                  exclusive=True)
    return port_obj  # type: ignore[no-any-return]


class SerialScanner:
    """A scanner on a serial port; scans arrive at ``sink`` on the event loop."""

    def __init__(
        self,
        port: str,
        profile: ScannerModel,
        sink: Sink,
        *,
        name: str | None = None,
        baudrate: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        reconnect_delay_s: float = 1.0,
        opener: Callable[[str, int], SerialPort] = _open_pyserial,
    ) -> None:
        self.port = port
        self.path = port
        self.profile = profile
        self.name = name or port
        self._sink = sink
        self._baudrate = baudrate or profile.baudrate
        self._clock = clock
        self._delay = reconnect_delay_s
        self._opener = opener
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the reader thread (idempotent)."""
        if self._thread is not None:
            return
        door = LoopDoor(asyncio.get_running_loop(), self._sink)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(door,), name=f"scanner-serial:{self.name}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop the reader thread and close the port."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join, _READ_TIMEOUT_S * 10 + self._delay)

    def _run(self, door: LoopDoor) -> None:
        decoder = FrameDecoder(self.profile.frame, self._clock, source=self.name)
        reported_down = False
        while not self._stop.is_set():
            try:
                port = self._opener(self.port, self._baudrate)
            except (serial.SerialException, OSError, ValueError) as exc:
                if not reported_down:  # one line per outage, not one per retry
                    door.post(ScannerLost(self.name, ScannerDisconnected(self.name, str(exc))))
                    reported_down = True
                self._stop.wait(self._delay)
                continue
            reported_down = False
            decoder.reset()
            door.post(ScannerConnected(self.name))
            try:
                self._read_until_error(port, decoder, door)
            except (serial.SerialException, OSError) as exc:
                door.post(ScannerLost(self.name, ScannerDisconnected(self.name, str(exc))))
                reported_down = True
                self._stop.wait(self._delay)
            finally:
                try:
                    port.close()
                except (serial.SerialException, OSError):
                    log.debug("closing %s failed", self.name, exc_info=True)

    def _read_until_error(self, port: SerialPort, decoder: FrameDecoder, door: LoopDoor) -> None:
        while not self._stop.is_set():
            data = port.read(max(1, min(port.in_waiting, 4096)))
            if not data:
                continue
            for item in decoder.feed(data):
                if isinstance(item, RawScan):
                    door.post(ScanRead(self.name, item))
                else:
                    door.post(ScanFailed(self.name, item))
