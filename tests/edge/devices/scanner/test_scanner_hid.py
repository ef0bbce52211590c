"""HidScanner with a stateful fake evdev device (pipe fd + real evdev.InputEvent values)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable

import evdev
import pytest

from edge.devices.scanner.base import (
    DriverEvent,
    ScanFailed,
    ScannerConnected,
    ScannerLost,
    ScanRead,
)
from edge.devices.scanner.errors import UnmappedKey
from edge.devices.scanner.hid import HidScanner, to_key_event
from edge.devices.scanner.keymaps import DE, US

Typist = Callable[..., list[tuple[int, int, int]]]


class FakeInputDevice:
    """Behaves like evdev.InputDevice: a pollable fd, read() batches, grab, LEDs, unplug."""

    def __init__(self, leds: list[int] | None = None, grab_error: int | None = None) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._lock = threading.Lock()
        self._pending: list[evdev.InputEvent] = []
        self._leds = leds or []
        self._grab_error = grab_error
        self.grabbed = False
        self.closed = False
        self.unplugged = False

    @property
    def fd(self) -> int:
        return self._r

    def inject(self, events: Iterable[tuple[int, int, int]]) -> None:
        with self._lock:
            self._pending += [evdev.InputEvent(1700000000, i, t, c, v)
                              for i, (t, c, v) in enumerate(events)]
        os.write(self._w, b"x")

    def unplug(self) -> None:
        self.unplugged = True
        os.write(self._w, b"x")

    def read(self) -> list[evdev.InputEvent]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        if self.unplugged:
            raise OSError(errno.ENODEV, "No such device")
        with self._lock:
            out, self._pending = self._pending, []
        if not out:
            raise BlockingIOError
        return out

    def grab(self) -> None:
        if self._grab_error is not None:
            raise OSError(self._grab_error, os.strerror(self._grab_error))
        self.grabbed = True

    def ungrab(self) -> None:
        if self.unplugged:
            raise OSError(errno.ENODEV, "No such device")
        self.grabbed = False

    def leds(self) -> list[int]:
        return list(self._leds)

    def close(self) -> None:
        if not self.closed:
            os.close(self._r)
            os.close(self._w)
            self.closed = True


class Opener:
    """Hands out devices in turn; raises FileNotFoundError while "unplugged"."""

    def __init__(self, *devices: FakeInputDevice) -> None:
        self.devices = list(devices)
        self.opened: list[FakeInputDevice] = []
        self.paths: list[str] = []

    def __call__(self, path: str) -> FakeInputDevice:
        self.paths.append(path)
        if not self.devices:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        dev = self.devices.pop(0)
        self.opened.append(dev)
        return dev


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[DriverEvent] = asyncio.Queue()

    def sink(self, event: DriverEvent) -> None:
        self.queue.put_nowait(event)

    async def next(self, kind: type, within: float = 5.0) -> DriverEvent:
        async with asyncio.timeout(within):
            while True:
                ev = await self.queue.get()
                if isinstance(ev, kind):
                    return ev


def test_to_key_event_converts_evdev_events() -> None:
    ev = to_key_event(evdev.InputEvent(12, 500000, 1, 30, 1))
    assert (ev.type, ev.code, ev.value, ev.ts) == (1, 30, 1, 12.5)


async def test_grabs_and_decodes_a_german_scan(typist: Typist) -> None:
    dev = FakeInputDevice()
    events = Events()
    scanner = HidScanner("/dev/input/by-id/usb-scanner-kbd", DE, events.sink, name="kiosk",
                         opener=Opener(dev), clock=lambda: 7.0)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        assert dev.grabbed  # codes must not also type into the kiosk browser
        text = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2 + ":1"
        dev.inject(typist(DE, text))
        read = await events.next(ScanRead)
    finally:
        await scanner.stop()
    assert read.raw.text == text and read.raw.ts == 7.0  # type: ignore[attr-defined]
    assert read.raw.symbology is None and read.device == "kiosk"  # type: ignore[attr-defined]
    assert dev.closed and not dev.grabbed


async def test_caps_lock_led_is_respected(typist: Typist) -> None:
    dev = FakeInputDevice(leds=[0x01])  # LED_CAPSL lit
    events = Events()
    scanner = HidScanner("/dev/input/event5", US, events.sink, opener=Opener(dev))
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        dev.inject(typist(US, "yg"))
        read = await events.next(ScanRead)
    finally:
        await scanner.stop()
    assert read.raw.text == "YG"  # type: ignore[attr-defined]


async def test_wrong_layout_frame_error_is_posted() -> None:
    dev = FakeInputDevice()
    events = Events()
    scanner = HidScanner("/dev/input/event5", US, events.sink, opener=Opener(dev))
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        dev.inject([(1, 59, 1), (1, 59, 0), (1, 28, 1), (1, 28, 0)])
        failed = await events.next(ScanFailed)
    finally:
        await scanner.stop()
    assert isinstance(failed.error, UnmappedKey)  # type: ignore[attr-defined]


async def test_unplug_and_replug(typist: Typist) -> None:
    first, second = FakeInputDevice(), FakeInputDevice()
    opener = Opener(first)
    events = Events()
    scanner = HidScanner("/dev/input/by-id/x", US, events.sink, opener=opener,
                         reconnect_delay_s=0.05)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        dev_partial = typist(US, "LOST")[:8]  # half a frame, then the cable is pulled
        first.inject(dev_partial)
        first.unplug()
        lost = await events.next(ScannerLost)
        assert "No such device" in lost.error.detail  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)  # retries fail quietly while unplugged
        assert first.closed  # released before the first retry
        opener.devices.append(second)
        await events.next(ScannerConnected)
        second.inject(typist(US, "BACK"))
        read = await events.next(ScanRead)
    finally:
        await scanner.stop()
    assert read.raw.text == "BACK"  # type: ignore[attr-defined]
    assert set(opener.paths) == {"/dev/input/by-id/x"}


async def test_busy_device_is_reported_and_not_read_ungrabbed() -> None:
    dev = FakeInputDevice(grab_error=errno.EBUSY)
    events = Events()
    scanner = HidScanner("/dev/input/event9", US, events.sink, opener=Opener(dev),
                         reconnect_delay_s=0.05)
    await scanner.start()
    try:
        lost = await events.next(ScannerLost)
    finally:
        await scanner.stop()
    assert "busy" in lost.error.detail  # type: ignore[attr-defined]
    assert dev.closed


@pytest.mark.parametrize("missing", ["/dev/input/event-none"])
async def test_open_evdev_on_a_missing_path_is_an_oserror(missing: str) -> None:
    from edge.devices.scanner.hid import open_evdev

    with pytest.raises(OSError):
        open_evdev(missing)


async def test_aim_prefix_is_stripped_and_dynamic_ehc_qr_classifies(typist: Typist) -> None:
    from edge.devices.scanner.classify import ClassifierRules, EhcQr, classify

    dev = FakeInputDevice()
    events = Events()
    scanner = HidScanner("/dev/input/event5", US, events.sink, opener=Opener(dev))
    qr = "0123456789abcdef" * 4 + ":0:" + "fedcba9876543210" * 2
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        dev.inject(typist(US, "]Q1" + qr))
        read = await events.next(ScanRead)
    finally:
        await scanner.stop()
    raw = read.raw  # type: ignore[attr-defined]
    assert (raw.text, raw.aim_id, raw.symbology) == (qr, "]Q1", "qr")
    scan = classify(raw.text, ClassifierRules())
    assert isinstance(scan, EhcQr) and scan.kind == "dynamic"


async def test_aim_stripping_can_be_switched_off(typist: Typist) -> None:
    dev = FakeInputDevice()
    events = Events()
    scanner = HidScanner("/dev/input/event5", US, events.sink, opener=Opener(dev), aim=False)
    await scanner.start()
    try:
        await events.next(ScannerConnected)
        dev.inject(typist(US, "]C1ABC"))
        read = await events.next(ScanRead)
    finally:
        await scanner.stop()
    assert read.raw.text == "]C1ABC" and read.raw.symbology is None  # type: ignore[attr-defined]
