"""What every scanner driver reports, and the one door from its thread into asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from edge.devices.scanner.errors import ScannerDisconnected, ScannerError
from edge.devices.scanner.frames import RawScan

__all__ = [
    "DeviceInfo",
    "DriverEvent",
    "LoopDoor",
    "ScanFailed",
    "ScanRead",
    "Scanner",
    "ScannerConnected",
    "ScannerLost",
    "Sink",
]


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device seen on a bus: serial port or evdev input device."""

    bus: Literal["serial", "hid"]
    path: str
    vid: int | None = None
    pid: int | None = None
    name: str = ""
    serial_number: str | None = None

    @property
    def usb_id(self) -> str | None:
        """``"vvvv:pppp"`` in lsusb form, or None for non-USB devices."""
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"


@dataclass(frozen=True, slots=True)
class ScannerConnected:
    """The driver opened its device."""

    device: str


@dataclass(frozen=True, slots=True)
class ScannerLost:
    """The device went away (or could not be opened); the driver keeps retrying."""

    device: str
    error: ScannerDisconnected


@dataclass(frozen=True, slots=True)
class ScanRead:
    """A complete scan from ``device``."""

    device: str
    raw: RawScan


@dataclass(frozen=True, slots=True)
class ScanFailed:
    """A frame was dropped (too long, undecodable, wrong layout)."""

    device: str
    error: ScannerError


DriverEvent = ScannerConnected | ScannerLost | ScanRead | ScanFailed
Sink = Callable[[DriverEvent], None]


class Scanner(Protocol):
    """A running scanner driver."""

    name: str
    path: str

    async def start(self) -> None:
        """Open the device in a reader thread; events go to the sink on the loop."""

    async def stop(self) -> None:
        """Stop the reader thread and release the device."""


class LoopDoor:
    """The only way a reader thread talks to asyncio: ``call_soon_threadsafe(sink, event)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Sink) -> None:
        self._loop = loop
        self._sink = sink

    def post(self, event: DriverEvent) -> None:
        """Hand ``event`` to the sink on the loop thread; never blocks."""
        # The loop may already be closed while the thread winds down at shutdown.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._sink, event)
