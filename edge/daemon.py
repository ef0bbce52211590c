"""``ykt edge``: the device daemon. Wires the card service, printer, uplink and local API."""

from __future__ import annotations

import argparse
import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from edge.api import create_api
from edge.config import EdgeConfig
from edge.runtime import EdgeRuntime
from yikatong.common.config import load_config, read_secret
from yikatong.common.logging import setup_logging
from yikatong.common.service import Daemon
from yikatong.version import installed_version

log = logging.getLogger("edge.daemon")

__all__ = ["add_edge_arguments", "main", "run"]


class SystemClock:
    """The real wall clock (UTC)."""

    def now(self) -> datetime:
        """Return the current aware UTC time."""
        return datetime.now(UTC)


def add_edge_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ykt edge``."""
    p.add_argument("--config", default="/etc/yikatong/edge.toml", help="edge TOML config file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None,
                   help="override [log].level")


def main(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    cfg = load_config(args.config, EdgeConfig)
    setup_logging("edge", args.log_level or cfg.log.level)
    token = read_secret(cfg.api.token_file, cfg.api.token_env, what="api.token_file")
    asyncio.run(run(cfg, token))
    return 0



async def _pump_cards(cards: Any, runtime: EdgeRuntime,
                      on_reader_change: Any = None) -> None:
    """Turn card-service events into runtime state changes."""
    from edge.devices.card import service as cs

    async for ev in cards.events():
        if isinstance(ev, cs.CardInsertedEvent):
            runtime.card_inserted(ev.reader, ev.atr)
        elif isinstance(ev, cs.IdentityRead):
            runtime.identity_read(ev.reader, ev.identity)
        elif isinstance(ev, cs.CardReadFailed):
            err = ev.error
            runtime.card_failed(ev.reader, getattr(err, "code", type(err).__name__),
                                getattr(err, "message", str(err)),
                                getattr(err, "message_zh", "读卡失败，请重新插卡。"))
        elif isinstance(ev, cs.CardRemovedEvent):
            runtime.card_removed(ev.reader)
        elif isinstance(ev, cs.ReaderAddedEvent | cs.ReaderRemovedEvent):
            kind = "reader.added" if isinstance(ev, cs.ReaderAddedEvent) else "reader.removed"
            runtime.bus.publish(kind, {"reader": ev.reader})
            if on_reader_change is not None:
                on_reader_change()  # central sees the reader come or go now, not in 30 s
        runtime.reader_present = cards.reader_present  # the patient reader, not the SAM's


async def _pump_scans(scanners: Any, runtime: EdgeRuntime) -> None:
    """Hand classified scans to the runtime (payment codes stay in the daemon)."""
    async for ev in scanners.scans():
        runtime.scan_received(ev.scan, ev.source)


async def _pump_printer_status(printer: Any, runtime: EdgeRuntime) -> None:
    """Hand idle printer status changes (paper near end, cover open…) to the runtime."""
    async for status in printer.status_changes():
        await runtime.printer_status_changed(status)


async def _start_scanners(scanner_cfg: Any) -> Any:
    """The scanner service, started; None when scanners are off or cannot start (fail soft)."""
    if scanner_cfg is None or not scanner_cfg.enabled:
        log.info("scanners disabled in config")
        return None
    from edge.devices.scanner.service import ScannerService

    scanners = ScannerService(scanner_cfg)
    try:
        await scanners.start()
    except Exception as exc:  # a scanner fault must not keep the card reader and printer down
        log.error("scanners not started: %s", exc)
        return None
    return scanners


async def run(cfg: EdgeConfig, token: str, *, stop: asyncio.Event | None = None) -> None:
    """Run every part of the daemon until ``stop`` is set (or a signal arrives)."""
    from edge.devices.card.hotlist import HotList
    from edge.devices.card.service import CardService
    from edge.devices.printer.driver import PrinterService
    from edge.fleet.audit import AuditLog
    from edge.fleet.hotlist_sync import HotlistSync
    from edge.fleet.telemetry import LocalReadings, TelemetryPublisher
    from edge.uplink.client import Uplink

    daemon = Daemon("edge", stop)  # signals end the daemon even while it is still starting

    cfg.device.data_dir.mkdir(parents=True, exist_ok=True)
    clock = SystemClock()
    uplink = Uplink(cfg.uplink, cfg.device.id, role=cfg.device.role, version=installed_version())
    printer = PrinterService(cfg.printer, store_path=cfg.device.data_dir / "print-jobs.db")
    hotlist = HotList(cfg.card.hotlist_path)
    cards = CardService(cfg.card, hotlist)
    hotlist_sync = HotlistSync(uplink, hotlist)  # before uplink.start(): the retained notice
    from edge.runtime import Ledger

    scanner_cfg = cfg.scanner  # None: no scanners, the runtime's built-in scan patterns
    runtime = EdgeRuntime(device_id=cfg.device.id, role=cfg.device.role,
                          hospital_name=cfg.device.hospital_name,
                          timezone=cfg.device.timezone, uplink=uplink,
                          printer=printer, clock=clock,
                          rules=scanner_cfg.rules() if scanner_cfg is not None else None,
                          ledger=Ledger(cfg.device.data_dir / "ledger.db"),
                          audit=AuditLog(cfg.device.data_dir / "audit.db", clock=clock))

    await uplink.start()
    await runtime.resend_audit()  # records a crash left out of the durable outbox
    await hotlist_sync.start()
    await printer.resume()
    await cards.start()
    runtime.card_health = cards.health  # reader + SAM state for /v1/health
    telemetry = TelemetryPublisher(
        uplink, interval_s=cfg.telemetry_interval_s,
        local=LocalReadings(cfg.device.data_dir, uplink.outbox.pending_count),
        uptime_s=runtime.uptime_s, printer=lambda: runtime.printer_state,
        reader_present=lambda: cards.reader_present,
        sam_state=lambda: cards.sam_status().get("state"))
    daemon.spawn(_pump_cards(cards, runtime, telemetry.poke), name="cards")
    daemon.serve_http(create_api(runtime, token), cfg.api.host, cfg.api.port, name="api")
    if cfg.printer.enabled and cfg.printer.status_poll_s > 0:  # a pump that ends stops the daemon
        daemon.spawn(_pump_printer_status(printer, runtime), name="printer-status")
    scanners = await _start_scanners(scanner_cfg)
    if scanners is not None:
        daemon.spawn(_pump_scans(scanners, runtime), name="scans")
    log.info("edge daemon started", extra={"device": cfg.device.id, "role": cfg.device.role,
                                            "api": f"{cfg.api.host}:{cfg.api.port}"})
    # After every (re)connect central gets fresh health at once, not an interval later
    # (a sample taken while offline was dropped, as QoS 0 telemetry should be).
    uplink.add_connect_listener(telemetry.poke)
    await telemetry.start()

    async def stop_producers() -> None:  # the sources, before the pumps reading them end
        await telemetry.stop()
        await cards.stop()
        if scanners is not None:
            await scanners.stop()

    try:
        await daemon.run(before_cancel=stop_producers)
    finally:
        await hotlist_sync.stop()
        await uplink.stop()
        log.info("edge daemon stopped")
