"""Periodic health telemetry: a sample every ``interval_s`` on ``up/telemetry`` (QoS 0).

Telemetry is state, not history: a sample that cannot be sent is dropped, never queued in
the durable outbox (:meth:`edge.uplink.client.Uplink.publish_telemetry` publishes QoS 0
straight to the session and returns False while offline), because the next sample
supersedes it and a backlog of stale samples would only delay the requests behind it.

Two halves, so the content is testable without I/O:

* :func:`build_telemetry` (pure) turns a :class:`Sample` of raw readings into the wire body,
  validated by :class:`yikatong.protocol.messages.Telemetry`;
* :class:`TelemetryPublisher` collects the readings from injected sources and publishes.

Readings that come from the daemon's live state (printer, reader, SAM, uptime) are taken on
the event loop; the blocking ones (disk, thermal zone files, the outbox count in SQLite,
load average) run in a worker thread and touch no daemon state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from yikatong.common.tasks import BackgroundTask
from yikatong.protocol.messages import Telemetry, dump_body

__all__ = [
    "DEFAULT_THERMAL_ROOT",
    "LocalReadings",
    "Sample",
    "TelemetryLink",
    "TelemetryPublisher",
    "build_telemetry",
    "read_cpu_temp_c",
]

log = logging.getLogger(__name__)

DEFAULT_THERMAL_ROOT = Path("/sys/class/thermal")
#: What a printer we have not heard from yet is reported as.
UNKNOWN_PRINTER: dict[str, Any] = {"online": False, "paper": "unknown", "cover_open": False,
                                   "cutter_error": False}
_TEMP_RANGE = (-50.0, 150.0)  # the Telemetry model's range; outside it the sensor is broken


@dataclass(frozen=True, slots=True)
class Sample:
    """Raw readings for one telemetry message."""

    uptime_s: float
    printer: dict[str, Any] | None
    reader_present: bool
    sam_state: str | None
    disk_free_bytes: int
    cpu_temp_c: float | None
    outbox_depth: int
    load_1m: float | None


def build_telemetry(sample: Sample) -> dict[str, Any]:
    """The ``telemetry`` body for ``sample`` (pure); raises ValidationError if it is invalid."""
    temp = sample.cpu_temp_c
    if temp is not None and not _TEMP_RANGE[0] <= temp <= _TEMP_RANGE[1]:
        temp = None  # a thermal zone reporting 200 °C is a broken sensor, not a reading
    model = Telemetry.model_validate({
        "uptime_s": max(0, int(sample.uptime_s)),
        "cpu_temp_c": None if temp is None else round(temp, 1),
        "disk_free_mb": max(0, sample.disk_free_bytes) // (1024 * 1024),
        "outbox_depth": max(0, sample.outbox_depth),
        "printer": dict(sample.printer) if sample.printer is not None else UNKNOWN_PRINTER,
        "reader_present": sample.reader_present,
        "sam_state": sample.sam_state,
        "load_1m": None if sample.load_1m is None else round(max(0.0, sample.load_1m), 2),
    })
    return dump_body(model)


def read_cpu_temp_c(root: Path = DEFAULT_THERMAL_ROOT) -> float | None:
    """The hottest ``thermal_zone*/temp`` under ``root`` in °C, or None when there is none."""
    best: float | None = None
    for f in sorted(root.glob("thermal_zone*/temp")):
        try:
            milli = int(f.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue  # a zone that cannot be read (driver error, EAGAIN) is skipped
        c = milli / 1000.0
        if _TEMP_RANGE[0] <= c <= _TEMP_RANGE[1] and (best is None or c > best):
            best = c
    return best


class TelemetryLink(Protocol):
    """What we need of :class:`edge.uplink.client.Uplink`."""

    def publish_telemetry(self, body: dict[str, Any]) -> bool:
        """Publish one sample at QoS 0; False when offline (dropped)."""


def _loadavg() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


@dataclass(frozen=True)
class LocalReadings:
    """The blocking readings (run in a worker thread); every part injectable for tests."""

    data_dir: Path
    outbox_depth: Callable[[], int]
    thermal_root: Path = DEFAULT_THERMAL_ROOT
    disk_usage: Callable[[Path], Any] = shutil.disk_usage
    loadavg: Callable[[], float | None] = field(default=_loadavg)

    def read(self) -> tuple[int, float | None, int, float | None]:
        """(disk free bytes, CPU °C or None, outbox backlog, load average or None)."""
        try:
            free = int(self.disk_usage(self.data_dir).free)
        except OSError:
            free = 0  # the data dir is gone: "no space" is the honest report
        try:
            depth = int(self.outbox_depth())
        except (sqlite3.Error, OSError):
            depth = 0  # a locked or damaged outbox must not stop the rest of the report
        return free, read_cpu_temp_c(self.thermal_root), depth, self.loadavg()


class TelemetryPublisher:
    """Publishes a health sample every ``interval_s``, and at once when :meth:`poke`d."""

    def __init__(
        self,
        link: TelemetryLink,
        *,
        interval_s: float,
        local: LocalReadings,
        uptime_s: Callable[[], float],
        printer: Callable[[], dict[str, Any] | None],
        reader_present: Callable[[], bool],
        sam_state: Callable[[], str | None],
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.link = link
        self.interval_s = interval_s
        self.local = local
        self._uptime_s = uptime_s
        self._printer = printer
        self._reader_present = reader_present
        self._sam_state = sam_state
        self._wake = asyncio.Event()
        self._loop = BackgroundTask(self._run, name="telemetry")
        self.stats: dict[str, int] = {"sent": 0, "dropped": 0, "invalid": 0}

    async def sample(self) -> Sample:
        """Collect one :class:`Sample` (live state on the loop, blocking reads in a thread)."""
        uptime, printer = self._uptime_s(), self._printer()
        reader, sam = self._reader_present(), self._sam_state()
        free, temp, depth, load = await asyncio.to_thread(self.local.read)
        return Sample(uptime_s=uptime, printer=printer, reader_present=reader, sam_state=sam,
                      disk_free_bytes=free, cpu_temp_c=temp, outbox_depth=depth, load_1m=load)

    async def publish_once(self) -> bool:
        """Sample and publish now; False when it was dropped (offline) or invalid."""
        try:
            body = build_telemetry(await self.sample())
        except ValidationError as exc:
            self.stats["invalid"] += 1
            log.warning("telemetry sample invalid: %s", exc.errors(include_input=False)[:1])
            return False
        if self.link.publish_telemetry(body):
            self.stats["sent"] += 1
            return True
        self.stats["dropped"] += 1
        return False

    def poke(self) -> None:
        """Send a sample now (e.g. the reader came or went) instead of at the next tick."""
        self._wake.set()

    async def start(self) -> None:
        """Start the periodic loop."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop the loop."""
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            # Cleared before sampling, not after: a poke that arrives while a sample is being
            # taken (the reader appearing during start-up) must cause one more sample.
            self._wake.clear()
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed sample must not end telemetry for good
                log.exception("telemetry sample failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
