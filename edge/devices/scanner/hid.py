"""HID keyboard-wedge scanners through evdev: exclusive grab, reader thread, one door.

The device is grabbed (EVIOCGRAB) so its key presses reach only us and do not also type
into the kiosk browser. The reader thread (``reader.py``) waits on the device fd with a short
select timeout (so ``stop()`` is noticed), converts each evdev event to our ``KeyEvent`` at
once, and feeds a ``KeyDecoder``. An unplug (ENODEV) reports ``ScannerLost``; the path is
retried until it returns — use ``/dev/input/by-id/...`` in config, since eventN numbers
change on replug.
"""

from __future__ import annotations

import errno
import logging
import select
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from edge.devices.scanner.base import LoopDoor, ScanFailed, ScanRead, Sink
from edge.devices.scanner.frames import RawScan, split_aim
from edge.devices.scanner.keymaps import KeyDecoder, KeyEvent, Keymap
from edge.devices.scanner.reader import ReconnectingReader

__all__ = ["EvdevDevice", "HidScanner", "open_evdev"]

log = logging.getLogger(__name__)

_POLL_S = 0.2
_LED_CAPSL = 0x01  # linux/input-event-codes.h


class EvdevDevice(Protocol):
    """The part of ``evdev.InputDevice`` we use."""

    @property
    def fd(self) -> int:
        """File descriptor to wait on."""

    def read(self) -> Iterable[Any]:
        """Pending events; raises BlockingIOError when there are none."""

    def grab(self) -> None:
        """Take the device exclusively."""

    def ungrab(self) -> None:
        """Release the exclusive grab."""

    def leds(self) -> list[int]:
        """LEDs currently lit."""

    def close(self) -> None:
        """Close the device."""


def open_evdev(path: str) -> EvdevDevice:
    """Open an evdev input device (imported lazily: only HID setups need python-evdev)."""
    import evdev

    device: Any = evdev.InputDevice(path)
    return device  # type: ignore[no-any-return]


def to_key_event(ev: Any) -> KeyEvent:
    """Convert an evdev ``InputEvent`` (or anything shaped like one) to our ``KeyEvent``."""
    return KeyEvent(type=int(ev.type), code=int(ev.code), value=int(ev.value),
                    ts=float(ev.sec) + float(ev.usec) / 1e6)


class HidScanner(ReconnectingReader[EvdevDevice]):
    """A keyboard-wedge scanner on an evdev path; scans arrive at ``sink`` on the loop."""

    kind = "hid"
    poll_s = _POLL_S

    def __init__(
        self,
        path: str,
        keymap: Keymap,
        sink: Sink,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        reconnect_delay_s: float = 1.0,
        max_length: int = 1024,
        aim: bool = True,
        opener: Callable[[str], EvdevDevice] = open_evdev,
    ) -> None:
        super().__init__(name or path, sink, reconnect_delay_s=reconnect_delay_s)
        self.path = path
        self.keymap = keymap
        self._clock = clock
        self._max = max_length
        # Scanners programmed to send AIM ids type them too ("]Q1" + data): strip and keep
        # the symbology, as the serial framing does, or the classifier sees "]Q1<qr>".
        self._aim = aim
        self._opener = opener
        # Made again on every connection (``_prepare``): the Caps Lock state may differ.
        self._decoder = KeyDecoder(keymap, max_length=max_length)

    def _open(self) -> EvdevDevice:
        return self._opener(self.path)

    def _prepare(self, dev: EvdevDevice) -> None:
        # EBUSY here means another process holds the grab: retrying is right, reading
        # without the grab would type the codes into the browser as well.
        dev.grab()
        self._decoder = KeyDecoder(self.keymap, max_length=self._max,
                                   caps_lock=_LED_CAPSL in dev.leds())

    def _describe(self, exc: OSError) -> str:
        return "device busy (grabbed elsewhere)" if exc.errno == errno.EBUSY else str(exc)

    def _close(self, dev: EvdevDevice) -> None:
        for step in (dev.ungrab, dev.close):
            try:
                step()
            except OSError:
                log.debug("releasing %s: %s failed", self.name, step.__name__, exc_info=True)

    def _read_until_error(self, dev: EvdevDevice, door: LoopDoor) -> None:
        decoder = self._decoder
        while not self._stop.is_set():
            ready, _, _ = select.select([dev.fd], [], [], _POLL_S)
            if not ready:
                continue
            try:
                events = list(dev.read())
            except BlockingIOError:
                continue
            for ev in events:
                result = decoder.feed(to_key_event(ev))
                if result is None:
                    continue
                if isinstance(result, str):
                    aim_id, symbology, text = split_aim(result) if self._aim else (
                        None, None, result)
                    if not text:
                        continue  # an AIM id with no data: nothing was read
                    raw = RawScan(text=text, symbology=symbology, ts=self._clock(),
                                  aim_id=aim_id, source=self.name)
                    door.post(ScanRead(self.name, raw))
                else:
                    door.post(ScanFailed(self.name, result))
