"""The running parts central's config can adjust, each behind an apply function.

Every :class:`~edge.fleet.remote.Part` takes the whole :class:`RemoteSettings` and applies
its own fields over the device's base (its TOML): a field central leaves unset (None) gets
the local value back. A part that cannot take a value raises; the config service then puts
the previous settings back everywhere (docs/fleet-trust.md).

Parts whose setting is read once when they start (the printer's status poll interval, the
scanners being on) are restarted here: :class:`PrinterPoll` and :class:`ScannerSupervisor`
own the loops the daemon used to spawn directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from edge.fleet.remote import Part
from yikatong.common.errors import LocalizedError
from yikatong.protocol.fleet import RemoteSettings

__all__ = [
    "PartRefused",
    "PrinterPoll",
    "ScannerSupervisor",
    "card_part",
    "log_level_part",
    "printer_part",
    "scanner_part",
    "telemetry_part",
    "ui_part",
]

log = logging.getLogger(__name__)


class PartRefused(LocalizedError):
    """A running part cannot take a setting (``code`` goes into the config report)."""

    code = "apply_refused"


def _set(model: Any) -> dict[str, Any]:
    """The fields of a settings model that central set."""
    return {} if model is None else model.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- simple parts


def telemetry_part(telemetry: Any, base_interval_s: float) -> Part:
    """``telemetry_interval_s`` → the publisher's interval (read at every tick)."""
    def apply(s: RemoteSettings) -> None:
        telemetry.interval_s = float(s.telemetry_interval_s or base_interval_s)
    return Part("telemetry", apply)


def log_level_part(base_level: str, logger: logging.Logger | None = None) -> Part:
    """``log_level`` → the root logger's level."""
    def apply(s: RemoteSettings) -> None:
        (logger or logging.getLogger()).setLevel((s.log_level or base_level).upper())
    return Part("log_level", apply)


def card_part(cards: Any) -> Part:
    """``card.poll_interval_s`` / ``reject_expired`` → the card service (and its watcher)."""
    base = cards.config

    def apply(s: RemoteSettings) -> None:
        cfg = base.model_copy(update=_set(s.card))
        cards.config = cfg
        watcher = getattr(cards, "_watcher", None)
        if watcher is not None and hasattr(watcher, "_poll_ms"):
            watcher._poll_ms = int(cfg.poll_interval_s * 1000)  # read every wait round
    return Part("card", apply)


def ui_part(runtime: Any) -> Part:
    """``ui`` → served to the kiosk (``/v1/health`` ``ui``, ``/v1/ui-settings``, an event)."""
    def apply(s: RemoteSettings) -> None:
        runtime.set_ui_settings(_set(s.ui))
    return Part("ui", apply)


# --------------------------------------------------------------------------- printer


class PrinterPoll:
    """The printer's idle status poll, restartable (its interval is read when it starts).

    :meth:`run` is a daemon task that never ends on its own: a poll that is off waits for
    a restart; a poll that fails raises (the daemon then stops, as before).
    """

    def __init__(self, printer: Any, on_status: Callable[[Any], Awaitable[None]]) -> None:
        self.printer = printer
        self._on_status = on_status
        self._restart = asyncio.Event()

    def restart(self) -> None:
        """Start the poll again with the printer's current config."""
        self._restart.set()

    async def _pump(self) -> None:
        async for status in self.printer.status_changes():
            await self._on_status(status)

    async def run(self) -> None:
        """Poll until cancelled, restarting on :meth:`restart`."""
        while True:
            self._restart.clear()
            pump = asyncio.create_task(self._pump(), name="printer-status")
            waiter = asyncio.create_task(self._restart.wait())
            try:
                await asyncio.wait({pump, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not pump.done():
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                waiter.cancel()
            if pump.done() and not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
            if not self._restart.is_set():
                await self._restart.wait()  # the poll is off: wait to be turned on


def printer_part(printer: Any, poll: PrinterPoll | None = None) -> Part:
    """``printer.*`` → the printer service's config; the poll restarts on a new interval."""
    base = printer.config

    def apply(s: RemoteSettings) -> None:
        before = printer.config
        printer.config = base.model_copy(update=_set(s.printer))
        if poll is not None and before.status_poll_s != printer.config.status_poll_s:
            poll.restart()
    return Part("printer", apply)


# --------------------------------------------------------------------------- scanner


class ScannerSupervisor:
    """The scanner service and the pump feeding its scans to the runtime, restartable.

    ``start_service(cfg)`` starts a service for a config (None: it could not start, fail
    soft at boot); ``pump(service)`` consumes its scans.
    """

    def __init__(self, base: Any, *, start_service: Callable[[Any], Awaitable[Any]],
                 pump: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
        self.base = base
        self.cfg = base
        self._start_service = start_service
        self._pump_fn = pump
        self.service: Any = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """A scanner service is up."""
        return self.service is not None

    async def start(self) -> None:
        """Start per the current config (nothing if scanners are off or none configured)."""
        if self.cfg is None or not self.cfg.enabled or self.service is not None:
            return
        self.service = await self._start_service(self.cfg)
        if self.service is not None:
            self._pump = asyncio.create_task(self._pump_fn(self.service), name="scans")

    async def stop(self) -> None:
        """Stop the service and its pump."""
        service, self.service = self.service, None
        if service is not None:
            await service.stop()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def apply(self, s: RemoteSettings) -> None:
        """Take ``scanner.enabled`` / ``dedup_window_s``; raises PartRefused if it cannot."""
        if self.base is None:
            if s.scanner is not None and s.scanner.enabled:
                log.info("scanner settings ignored: no [scanner] in this device's config")
            return
        cfg = self.base.model_copy(update=_set(s.scanner))
        was, self.cfg = self.cfg, cfg
        if not cfg.enabled:
            await self.stop()
            return
        if self.service is None:
            self.service = await self._start_service(cfg)
            if self.service is None:
                self.cfg = was
                raise PartRefused("the scanners could not be started", "扫码器无法启动")
            self._pump = asyncio.create_task(self._pump_fn(self.service), name="scans")
        elif hasattr(self.service, "_config"):
            # The dedup window is read for every scan: no restart (no port reopened).
            self.service._config = cfg


def scanner_part(supervisor: ScannerSupervisor) -> Part:
    """``scanner.*`` → the scanner supervisor."""
    return Part("scanner", supervisor.apply)
