"""Serial (RS-232 / USB CDC) scanners: blocking pyserial reads in a thread, one door to asyncio.

The thread (``reader.py``) opens the port, feeds whatever bytes arrive to a ``FrameDecoder``
and posts each scan or frame error through the ``LoopDoor``. When the port errors (USB
unplug; for a pty, the other end closing) it reports ``ScannerLost``, closes, and retries the
same path every ``reconnect_delay_s`` until it opens again or ``stop()`` is called. Use a
stable path (``/dev/serial/by-id/...``) in config so the scanner is found again after
re-enumeration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import serial

from edge.devices.scanner.base import LoopDoor, ScanFailed, ScanRead, Sink
from edge.devices.scanner.frames import FrameDecoder, RawScan
from edge.devices.scanner.models import ScannerModel
from edge.devices.scanner.reader import ReconnectingReader

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


class SerialScanner(ReconnectingReader[SerialPort]):
    """A scanner on a serial port; scans arrive at ``sink`` on the event loop."""

    kind = "serial"
    poll_s = _READ_TIMEOUT_S
    # SerialException is an OSError; ValueError: a baud rate the port does not take.
    open_errors = (serial.SerialException, OSError, ValueError)

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
        super().__init__(name or port, sink, reconnect_delay_s=reconnect_delay_s)
        self.port = port
        self.path = port
        self.profile = profile
        self._baudrate = baudrate or profile.baudrate
        self._opener = opener
        self._decoder = FrameDecoder(profile.frame, clock, source=self.name)

    def _open(self) -> SerialPort:
        return self._opener(self.port, self._baudrate)

    def _prepare(self, dev: SerialPort) -> None:
        self._decoder.reset()  # a frame cut by the outage is not glued to the next one

    def _close(self, dev: SerialPort) -> None:
        try:
            dev.close()
        except OSError:  # SerialException included
            log.debug("closing %s failed", self.name, exc_info=True)

    def _read_until_error(self, dev: SerialPort, door: LoopDoor) -> None:
        while not self._stop.is_set():
            data = dev.read(max(1, min(dev.in_waiting, 4096)))
            if not data:
                continue
            for item in self._decoder.feed(data):
                if isinstance(item, RawScan):
                    door.post(ScanRead(self.name, item))
                else:
                    door.post(ScanFailed(self.name, item))
