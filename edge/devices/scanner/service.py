"""Scanner service: runs the configured scanners, classifies, collapses repeats, hands out scans.

Driver threads post ``DriverEvent`` values onto the loop (``LoopDoor``); ``_on_event`` runs on
the loop, classifies and de-duplicates at once and queues ``ScanEvent`` values for
``scans()``. Privacy: the text of a scan is never logged — only its kind, and for a payment
code its masked form; repeats are recognised by a keyed hash, so no payment code is kept
for de-duplication; queued scans older than ``max_age_s`` are dropped unread, so a payment
code scanned while nothing was listening cannot be charged later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.devices.scanner.base import (
    DeviceInfo,
    DriverEvent,
    ScanFailed,
    Scanner,
    ScannerConnected,
    ScannerLost,
    ScanRead,
)
from edge.devices.scanner.classify import (
    ClassifierRules,
    PaymentCode,
    Scan,
    UnknownScan,
    classify,
)
from edge.devices.scanner.config import ScannerConfig, ScannerDeviceConfig
from edge.devices.scanner.errors import InvalidScanText
from edge.devices.scanner.models import ScannerModel
from edge.devices.scanner.watcher import (
    DRIVERS,
    DeviceWatcher,
    HidDriver,
    Lister,
    ScannerAdded,
    ScannerRemoved,
    SerialDriver,
    registry_matcher,
)
from yikatong.common.tasks import BackgroundTask

__all__ = ["ScanEvent", "ScannerService"]

log = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True, slots=True)
class ScanEvent:
    """A classified scan with where and when it was read; repr masks payment codes."""

    scan: Scan
    source: str
    symbology: str | None
    ts: float


class ScannerService:
    """Owns every scanner of the terminal; ``async for s in service.scans()`` to consume."""

    def __init__(
        self,
        config: ScannerConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        drivers: Mapping[str, SerialDriver | HidDriver] | None = None,
        listers: Mapping[str, Lister] | None = None,
        queue_size: int = 32,
        max_age_s: float = 30.0,
        dedup_key: bytes | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._drivers = drivers if drivers is not None else DRIVERS
        self._rules: ClassifierRules = config.rules()
        self._listers = listers
        self._watcher: DeviceWatcher | None = None
        self._queue_size = queue_size
        self._max_age = max_age_s
        self._key = dedup_key if dedup_key is not None else os.urandom(16)
        self._recent: dict[bytes, float] = {}
        self._queue: asyncio.Queue[ScanEvent | object] | None = None
        self._scanners: dict[str, Scanner] = {}
        self._connected: dict[str, bool] = {}
        self._discovery: BackgroundTask | None = None
        self.dropped = 0  # frames or texts rejected, for the health report

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start every configured scanner, and discovery if any needs it."""
        if self._queue is not None:
            return
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        if not self._config.enabled:
            log.info("scanners disabled in config")
            return
        needs_discovery = self._config.autodiscover
        for dev in self._config.devices:
            path = dev.port if dev.kind == "serial" else dev.evdev_path
            if path is None:
                needs_discovery = True  # found by usb_id when it shows up
                continue
            await self._start_scanner(dev.name, dev.kind, path, dev.profile(), dev)
        if needs_discovery:
            # listers=None means the real buses (pyserial ports and evdev nodes).
            self._watcher = DeviceWatcher(self._listers, matcher=self._match,
                                          interval_s=self._config.discovery_interval_s)
            watcher = self._watcher
            self._discovery = BackgroundTask(lambda: self._watch(watcher),
                                             name="scanner-discovery")
            self._discovery.start()

    async def stop(self) -> None:
        """Stop discovery and every scanner; ends ``scans()``."""
        discovery, self._discovery = self._discovery, None
        if discovery is not None:
            await discovery.stop()
        scanners, self._scanners = self._scanners, {}
        for scanner in scanners.values():
            await scanner.stop()
        self._recent.clear()
        if self._queue is not None:
            self._drain_queue()  # unread scans (payment codes) must not outlive the service
            self._queue.put_nowait(_STOP)

    async def scans(self) -> AsyncIterator[ScanEvent]:
        """Classified, de-duplicated scans until ``stop()``."""
        if self._queue is None:
            raise RuntimeError("ScannerService.start() must be awaited before scans()")
        queue = self._queue
        while True:
            item = await queue.get()
            if item is _STOP:
                self._queue = None
                return
            if not isinstance(item, ScanEvent):
                continue
            if self._clock() - item.ts > self._max_age:
                log.info("dropped a %s scan from %s read %.0fs ago and never consumed",
                         _kind(item.scan), item.source, self._clock() - item.ts)
                continue
            yield item

    def connected(self) -> dict[str, bool]:
        """Each scanner's connection state, by name."""
        return dict(self._connected)

    # ---- discovery -------------------------------------------------------------------

    def _configured_for(self, info: DeviceInfo) -> ScannerDeviceConfig | None:
        for dev in self._config.devices:
            if dev.kind == info.bus and dev.vid_pid == (info.vid, info.pid):
                return dev
        return None

    def _match(self, info: DeviceInfo) -> ScannerModel | None:
        dev = self._configured_for(info)
        if dev is not None:
            # A usb_id given in config beats the registry: the site knows this device.
            return dev.profile()
        if self._config.autodiscover:
            return registry_matcher(self._drivers)(info)
        return None

    async def _watch(self, watcher: DeviceWatcher) -> None:
        async for event in watcher.events():
            try:
                if isinstance(event, ScannerAdded):
                    dev = self._configured_for(event.device)
                    name = dev.name if dev is not None else (
                        f"{event.device.bus}:{event.device.usb_id}:{event.device.path}")
                    log.info("scanner %s found at %s (%s)", name, event.device.path,
                             event.model.name)
                    await self._start_scanner(name, event.device.bus, event.device.path,
                                              event.model, dev)
                elif isinstance(event, ScannerRemoved):
                    await self._stop_path(event.device.path)
            except Exception:  # one odd device must not end discovery for the others
                log.exception("handling discovery event failed")

    async def _start_scanner(self, name: str, kind: str, path: str, model: ScannerModel,
                             dev: ScannerDeviceConfig | None) -> None:
        if any(s.path == path for s in self._scanners.values()):
            return
        options: dict[str, Any] = {
            "name": name, "clock": self._clock,
            "reconnect_delay_s": self._config.reconnect_delay_s,
        }
        if dev is not None and dev.layout is not None:
            options["layout"] = dev.layout
        if dev is not None and dev.baudrate is not None:
            options["baudrate"] = dev.baudrate
        scanner = self._drivers[kind].create(path, model, self._on_event, **options)
        self._scanners[name] = scanner
        self._connected.setdefault(name, False)
        await scanner.start()

    async def _stop_path(self, path: str) -> None:
        for name, scanner in list(self._scanners.items()):
            if scanner.path == path:
                del self._scanners[name]
                self._connected[name] = False
                await scanner.stop()
                log.info("scanner %s removed", name)

    # ---- events from driver threads (runs on the loop) ---------------------------------

    def _on_event(self, event: DriverEvent) -> None:
        if isinstance(event, ScannerConnected):
            self._connected[event.device] = True
            log.info("scanner %s connected", event.device)
        elif isinstance(event, ScannerLost):
            self._connected[event.device] = False
            log.warning("scanner %s lost: %s", event.device, event.error.detail or "gone")
        elif isinstance(event, ScanFailed):
            self.dropped += 1
            log.warning("scanner %s dropped a frame: %s", event.device, event.error.message)
        elif isinstance(event, ScanRead):
            self._on_scan(event)

    def _on_scan(self, event: ScanRead) -> None:
        raw = event.raw
        try:
            scan = classify(raw.text, self._rules)
        except InvalidScanText as exc:
            self.dropped += 1
            log.warning("scanner %s: %s", event.device, exc.message)
            return
        if self._is_repeat(raw.text, raw.ts):
            log.debug("scanner %s: repeated %s collapsed", event.device, _kind(scan))
            return
        if isinstance(scan, PaymentCode):
            log.info("scanner %s read a %s payment code %s", event.device, scan.wallet,
                     scan.masked)
        elif isinstance(scan, UnknownScan):
            log.info("scanner %s read an unrecognised code (%d chars): %s", event.device,
                     scan.length, scan.raw_masked)
        else:
            log.info("scanner %s read %s (%s)", event.device, _kind(scan), raw.symbology)
        self._enqueue(ScanEvent(scan=scan, source=event.device, symbology=raw.symbology,
                                ts=raw.ts))

    def _is_repeat(self, text: str, ts: float) -> bool:
        window = self._config.dedup_window_s
        if window <= 0:
            return False
        # Sliding window: a scanner in presentation mode keeps re-reading a phone held in
        # front of it; every repeat extends the window, so one held code is one scan.
        self._recent = {k: t for k, t in self._recent.items() if ts - t <= window}
        digest = hmac.new(self._key, text.strip().encode("utf-8", "surrogatepass"),
                          hashlib.sha256).digest()
        seen = digest in self._recent
        self._recent[digest] = ts
        return seen

    def _enqueue(self, item: ScanEvent) -> None:
        if self._queue is None:
            return
        if self._queue.full():
            # Nobody is consuming: the oldest scan is the least likely to be wanted.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self.dropped += 1
            log.warning("scan queue full; dropped the oldest scan")
        self._queue.put_nowait(item)

    def _drain_queue(self) -> None:
        queue = self._queue
        while queue is not None and not queue.empty():
            queue.get_nowait()


def _kind(scan: Scan) -> str:
    return type(scan).__name__
