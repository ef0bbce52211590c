"""The reader thread every scanner driver runs: open, read until error, report, retry.

A driver (``serial_port.py``, ``hid.py``) says how to open, prepare, read and close its
device; this base class owns the thread, the stop flag and the reconnect loop, and talks
to asyncio only through the ``LoopDoor`` (``base.py``). An outage is reported once, not once
per retry, and the same path is retried every ``reconnect_delay_s`` until it opens again or
``stop()`` is called.
"""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar, Generic, TypeVar

from edge.devices.scanner.base import LoopDoor, ScannerConnected, ScannerLost, Sink
from edge.devices.scanner.errors import ScannerDisconnected

__all__ = ["ReconnectingReader"]

D = TypeVar("D")


class ReconnectingReader(Generic[D]):
    """Runs one device's reader thread; subclasses fill in ``_open`` … ``_close``."""

    #: names the thread: ``scanner-{kind}:{name}``
    kind: ClassVar[str] = "device"
    #: how long one blocking wait in ``_read_until_error`` may take before the stop flag
    #: is looked at again; ``stop()`` waits ten of these plus the reconnect delay
    poll_s: ClassVar[float] = 0.2
    #: what ``_open`` raises when the device is not there (yet)
    open_errors: ClassVar[tuple[type[Exception], ...]] = (OSError,)

    def __init__(self, name: str, sink: Sink, *, reconnect_delay_s: float) -> None:
        self.name = name
        self._sink = sink
        self._delay = reconnect_delay_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the reader thread (idempotent)."""
        if self._thread is not None:
            return
        door = LoopDoor(asyncio.get_running_loop(), self._sink)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(door,), name=f"scanner-{self.kind}:{self.name}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop the reader thread; it releases the device on its way out."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join, self.poll_s * 10 + self._delay)

    # ---- the thread --------------------------------------------------------------------

    def _run(self, door: LoopDoor) -> None:
        reported_down = False

        def lost(detail: str) -> None:
            nonlocal reported_down
            if not reported_down:  # one line per outage, not one per retry
                door.post(ScannerLost(self.name, ScannerDisconnected(self.name, detail)))
                reported_down = True
            self._stop.wait(self._delay)

        while not self._stop.is_set():
            try:
                dev = self._open()
            except self.open_errors as exc:
                lost(str(exc))
                continue
            try:
                self._prepare(dev)
                reported_down = False
                door.post(ScannerConnected(self.name))
                self._read_until_error(dev, door)
            except OSError as exc:
                lost(self._describe(exc))
            finally:
                self._close(dev)

    # ---- what a driver provides (all called on the reader thread) -----------------------

    def _open(self) -> D:
        """Open the device; raise one of ``open_errors`` when it is not there."""
        raise NotImplementedError

    def _prepare(self, dev: D) -> None:
        """Make an opened device ready to read (grab, reset decoders); OSError = lost."""

    def _read_until_error(self, dev: D, door: LoopDoor) -> None:
        """Read and post scans until ``self._stop`` is set or the device fails (OSError)."""
        raise NotImplementedError

    def _close(self, dev: D) -> None:
        """Release the device; must not raise."""
        raise NotImplementedError

    def _describe(self, exc: OSError) -> str:
        """The detail of a ``ScannerLost`` for an error after opening."""
        return str(exc)
