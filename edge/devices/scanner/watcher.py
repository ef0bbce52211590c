"""Scanner discovery, apart from the drivers: list buses, diff, emit added/removed events.

We poll (default every 2 s) instead of listening to udev: pyudev is not a dependency, and a
kiosk's USB tree changes only when someone plugs a cable, so a 2 s delay is invisible while
polling costs a few sysfs reads. Listing runs in a worker thread (``asyncio.to_thread``):
opening evdev nodes and walking sysfs can block briefly.

Which devices are scanners is decided by the driver registry (``DRIVERS``), an explicit
dict built here with no work at import time: a driver says it supports a device when a
model profile of its interface lists the device's USB vid:pid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.devices.scanner.base import DeviceInfo, Scanner, Sink
from edge.devices.scanner.hid import HidScanner
from edge.devices.scanner.keymaps import KEYMAPS
from edge.devices.scanner.models import MODELS, ScannerModel, match_usb
from edge.devices.scanner.serial_port import SerialScanner

__all__ = [
    "DRIVERS",
    "DeviceWatcher",
    "HidDriver",
    "Lister",
    "ScannerAdded",
    "ScannerRemoved",
    "SerialDriver",
    "diff_devices",
    "list_input_devices",
    "list_serial_ports",
]

log = logging.getLogger(__name__)

_EV_KEY = 0x01
_KEY_ENTER = 28


@dataclass(frozen=True, slots=True)
class ScannerAdded:
    """A device a driver supports appeared."""

    device: DeviceInfo
    model: ScannerModel


@dataclass(frozen=True, slots=True)
class ScannerRemoved:
    """A previously added device disappeared."""

    device: DeviceInfo


WatchEvent = ScannerAdded | ScannerRemoved


def list_serial_ports() -> list[DeviceInfo]:
    """Serial ports as pyserial sees them, with USB ids where the port is USB."""
    from serial.tools import list_ports

    return [
        DeviceInfo(bus="serial", path=p.device, vid=p.vid, pid=p.pid,
                   name=p.description or "", serial_number=p.serial_number)
        for p in list_ports.comports()
    ]


def list_input_devices() -> list[DeviceInfo]:
    """evdev input devices that can type Enter (keyboards and keyboard-wedge scanners)."""
    try:
        import evdev
    except ImportError:
        return []
    out: list[DeviceInfo] = []
    for path in evdev.list_devices():
        try:
            dev: Any = evdev.InputDevice(path)
        except OSError:
            continue  # vanished or not readable by us: not ours to use
        try:
            keys = dev.capabilities().get(_EV_KEY, [])
            if _KEY_ENTER in keys:
                out.append(DeviceInfo(bus="hid", path=path, vid=dev.info.vendor,
                                      pid=dev.info.product, name=dev.name or "",
                                      serial_number=dev.uniq or None))
        finally:
            dev.close()
    return out


class SerialDriver:
    """Driver for scanners on serial ports."""

    bus = "serial"

    def supports(self, info: DeviceInfo, models: Mapping[str, ScannerModel] = MODELS
                 ) -> ScannerModel | None:
        """Model profile for ``info`` if it is a serial scanner we know."""
        return match_usb("serial", info.vid, info.pid, models) if info.bus == "serial" else None

    def create(self, path: str, model: ScannerModel, sink: Sink, **options: Any) -> Scanner:
        """A ``SerialScanner`` for ``path``; options: name, baudrate, clock, reconnect_delay_s."""
        options.pop("layout", None)
        return SerialScanner(path, model, sink, **options)


class HidDriver:
    """Driver for keyboard-wedge scanners on evdev."""

    bus = "hid"

    def supports(self, info: DeviceInfo, models: Mapping[str, ScannerModel] = MODELS
                 ) -> ScannerModel | None:
        """Model profile for ``info`` if it is a HID scanner we know."""
        return match_usb("hid", info.vid, info.pid, models) if info.bus == "hid" else None

    def create(self, path: str, model: ScannerModel, sink: Sink, **options: Any) -> Scanner:
        """A ``HidScanner`` for ``path``; options: name, layout, clock, reconnect_delay_s."""
        options.pop("baudrate", None)
        layout = options.pop("layout", None) or model.keyboard_layout
        options.setdefault("aim", model.frame.aim)
        return HidScanner(path, KEYMAPS[layout], sink, **options)


DRIVERS: dict[str, SerialDriver | HidDriver] = {"serial": SerialDriver(), "hid": HidDriver()}

Lister = Callable[[], Iterable[DeviceInfo]]
Matcher = Callable[[DeviceInfo], ScannerModel | None]


def registry_matcher(drivers: Mapping[str, SerialDriver | HidDriver] = DRIVERS) -> Matcher:
    """A matcher that asks the driver for the device's bus."""
    def match(info: DeviceInfo) -> ScannerModel | None:
        driver = drivers.get(info.bus)
        return driver.supports(info) if driver is not None else None
    return match


def _materialize(lister: Lister) -> list[DeviceInfo]:
    return list(lister())


def diff_devices(
    before: Mapping[str, DeviceInfo], after: Mapping[str, DeviceInfo]
) -> tuple[list[DeviceInfo], list[DeviceInfo]]:
    """(added, removed) between two snapshots keyed by ``bus:path``; a changed id counts as both."""
    added = [d for k, d in after.items() if before.get(k) != d]
    removed = [d for k, d in before.items() if after.get(k) != d]
    return added, removed


class DeviceWatcher:
    """Polls the bus listers and yields ``ScannerAdded``/``ScannerRemoved`` for scanners."""

    def __init__(
        self,
        listers: Mapping[str, Lister] | None = None,
        *,
        matcher: Matcher | None = None,
        interval_s: float = 2.0,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._listers = listers if listers is not None else {
            "serial": list_serial_ports, "hid": list_input_devices}
        self._match = matcher or registry_matcher()
        self._interval = interval_s
        self._sleep = sleep
        self._known: dict[str, tuple[DeviceInfo, ScannerModel]] = {}

    async def poll(self) -> list[WatchEvent]:
        """List every bus once and return the changes since the last poll."""
        seen: dict[str, DeviceInfo] = {}
        for bus, lister in self._listers.items():
            started = time.monotonic()
            try:
                devices = await asyncio.to_thread(_materialize, lister)
            except Exception:  # a broken bus must not stop discovery on the others
                log.warning("listing %s devices failed", bus, exc_info=True)
                # Keep what we knew on this bus rather than reporting everything removed.
                seen.update({k: d for k, (d, _) in self._known.items() if d.bus == bus})
                continue
            log.debug("listed %d %s devices in %.3fs", len(devices), bus,
                      time.monotonic() - started)
            for d in devices:
                seen[f"{d.bus}:{d.path}"] = d
        before = {k: d for k, (d, _) in self._known.items()}
        # Only scanners are tracked, so non-scanners never produce events.
        scanners: dict[str, tuple[DeviceInfo, ScannerModel]] = {}
        for k, d in seen.items():
            model = self._known[k][1] if k in self._known and before[k] == d else self._match(d)
            if model is not None:
                scanners[k] = (d, model)
        added, removed = diff_devices(before, {k: d for k, (d, _) in scanners.items()})
        events: list[WatchEvent] = [ScannerRemoved(d) for d in removed]
        events += [ScannerAdded(d, scanners[f"{d.bus}:{d.path}"][1]) for d in added]
        self._known = scanners
        return events

    async def events(self) -> AsyncIterator[WatchEvent]:
        """Poll forever, yielding changes; cancel the consuming task to stop."""
        while True:
            for event in await self.poll():
                yield event
            await self._sleep(self._interval)
