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


def _signing_keys(cfg: EdgeConfig) -> list[Any]:
    """Central's signing key(s) from the configured PEM file (none configured: [])."""
    from edge.fleet.remote import load_signing_keys
    from yikatong.common.config import ConfigError

    path = cfg.signing_key_file
    if path is None:
        return []
    try:
        keys = load_signing_keys(path)
    except OSError as exc:
        raise ConfigError(str(path), "signing_public_key", f"cannot read: {exc.strerror}") from None
    except Exception as exc:
        raise ConfigError(str(path), "signing_public_key",
                          f"not an Ed25519 public key ({getattr(exc, 'code', exc)})") from None
    if not keys:
        raise ConfigError(str(path), "signing_public_key", "no public key in the file")
    return keys


async def _enroll(cfg: EdgeConfig, daemon: Daemon, enrollment: Any) -> Any:
    """Run enrollment until it returns the identity; None when the daemon was told to stop.

    systemd is told the daemon is ready (and the watchdog is fed) meanwhile: waiting for a
    technician's approval may take hours, far beyond any start timeout.
    """
    from yikatong.common.systemd import notify, watchdog_enabled, watchdog_loop

    notify("READY=1")
    notify("STATUS=waiting for enrollment approval")
    watchdog = asyncio.create_task(watchdog_loop()) if watchdog_enabled() else None
    task = asyncio.create_task(enrollment.run(), name="enrollment")
    stop = asyncio.create_task(daemon.stop.wait())
    try:
        await asyncio.wait({task, stop, *daemon.tasks}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if watchdog is not None:
            watchdog.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    if task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    notify("STATUS=enrolled")
    return task.result()


async def run(cfg: EdgeConfig, token: str, *, stop: asyncio.Event | None = None,
              executor: Any = None, enrollment_factory: Any = None) -> None:
    """Run every part of the daemon until ``stop`` is set (or a signal arrives).

    With ``[enrollment]`` and no identity yet the local API starts first, serving the
    pairing state only (``/v1/enrollment``); once central approves, the identity is written,
    the rest of the daemon starts with it and the full API replaces the pairing one on the
    same port — no restart. ``executor``: what ``reboot``/``service.restart`` use (tests
    record); ``enrollment_factory(cfg, state, printer)``: tests replace the enrollment.
    """
    from edge.fleet.commands import LogRing

    daemon = Daemon("edge", stop)  # signals end the daemon even while it is still starting
    cfg.device.data_dir.mkdir(parents=True, exist_ok=True)
    # The daemon's own last log lines, masked, for ``logs.collect`` (no log file on a device).
    ring = LogRing(cfg.remote.log_ring_lines)
    logging.getLogger().addHandler(ring)
    try:
        await _run(cfg, token, daemon=daemon, ring=ring, executor=executor,
                   enrollment_factory=enrollment_factory)
    finally:
        logging.getLogger().removeHandler(ring)


async def _run(cfg: EdgeConfig, token: str, *, daemon: Daemon, ring: Any, executor: Any,
               enrollment_factory: Any) -> None:
    from edge.api import SwitchableApp, create_enrollment_api
    from edge.devices.card.hotlist import HotList
    from edge.devices.card.service import CardService
    from edge.devices.printer.driver import PrinterService
    from edge.fleet.audit import AuditLog
    from edge.fleet.commands import CommandContext, CommandRunner, SystemctlExecutor
    from edge.fleet.enrollment import EnrollmentState
    from edge.fleet.hotlist_sync import HotlistSync
    from edge.fleet.identity import FleetState, IdentityStore, effective_config
    from edge.fleet.parts import (
        PrinterPoll,
        ScannerSupervisor,
        card_part,
        log_level_part,
        printer_part,
        scanner_part,
        telemetry_part,
        ui_part,
    )
    from edge.fleet.remote import RemoteConfigService, RunningConfigFile
    from edge.fleet.telemetry import LocalReadings, TelemetryPublisher
    from edge.uplink.client import Uplink

    clock = SystemClock()
    keys = _signing_keys(cfg)
    printer = PrinterService(cfg.printer, store_path=cfg.device.data_dir / "print-jobs.db")
    store = IdentityStore(cfg.device.data_dir)
    running_file = RunningConfigFile(cfg.device.data_dir / "remote-config.json")
    fleet_state = FleetState(store.ensure_dir() / "fleet-state.db", clock.now)
    switch: SwitchableApp | None = None
    enroll_state: EnrollmentState | None = None
    identity = None
    try:
        if cfg.enrollment is not None:
            await asyncio.to_thread(store.recover)  # a certificate rotation cut short
            identity = await asyncio.to_thread(store.load)
            if identity is None:
                enroll_state = EnrollmentState(None)
                make = enrollment_factory or _make_enrollment
                enrollment = make(cfg, enroll_state, printer=printer, fleet_state=fleet_state,
                                  running_file=running_file, keys=keys)
                switch = SwitchableApp(create_enrollment_api(enroll_state, token))
                daemon.serve_http(switch, cfg.api.host, cfg.api.port, name="api")
                try:
                    identity = await _enroll(cfg, daemon, enrollment)
                except BaseException:
                    daemon.stop.set()
                    await daemon.run()  # stops the pairing API, then the error goes up
                    raise
                if identity is None:  # stopped (SIGTERM) before central approved
                    await daemon.run()
                    return
            else:
                enroll_state = EnrollmentState(cfg.enrollment.serial, state="enrolled")
                enroll_state.device_id = identity.device_id
            if cfg.device.id is not None and cfg.device.id != identity.device_id:
                log.warning("device.id %s in the config differs from the enrolled identity "
                            "%s: the certificate wins", cfg.device.id, identity.device_id)
            cfg = effective_config(cfg, identity)
        assert cfg.device.id is not None and cfg.device.role is not None  # EdgeConfig checks
        dev, role = cfg.device.id, cfg.device.role
        uplink = Uplink(cfg.uplink, dev, role=role, version=installed_version())
        hotlist = HotList(cfg.card.hotlist_path)
        cards = CardService(cfg.card, hotlist)
        hotlist_sync = HotlistSync(uplink, hotlist)  # before uplink.start(): the retained notice
        from edge.runtime import Ledger

        scanner_cfg = cfg.scanner  # None: no scanners, the runtime's built-in scan patterns
        runtime = EdgeRuntime(device_id=dev, role=role,
                              hospital_name=cfg.device.hospital_name,
                              timezone=cfg.device.timezone, uplink=uplink,
                              printer=printer, clock=clock,
                              rules=scanner_cfg.rules() if scanner_cfg is not None else None,
                              ledger=Ledger(cfg.device.data_dir / "ledger.db"),
                              audit=AuditLog(cfg.device.data_dir / "audit.db", clock=clock))
        remote = commands = updates = None
        system = executor or SystemctlExecutor()
        if cfg.update.enabled:
            # docs/updates.md: update.install, and the health check of a version on trial.
            from edge.update.service import UpdateService

            updates = UpdateService(cfg.update, uplink, version=installed_version(),
                                    executor=system, unit=cfg.remote.edge_unit,
                                    busy=runtime.busy_reason, stop=daemon.stop.set,
                                    model=_device_model(cfg))
        if keys and cfg.remote.enabled:
            # Registered before uplink.start(): the desired config is retained.
            remote = RemoteConfigService(uplink, fleet_state, running_file, dev=dev, keys=keys,
                                         clock=clock.now)
            remote.attach(uplink)
            ctx = CommandContext(
                executor=system, busy=runtime.busy_reason, updates=updates,
                printer=printer, cards=cards, hotlist_sync=hotlist_sync, uplink=uplink,
                identity_store=store if identity is not None else None, identity=identity,
                log_ring=ring, version=installed_version(), timezone=cfg.device.timezone,
                units={"edge": cfg.remote.edge_unit, "kiosk": cfg.remote.kiosk_unit})
            commands = CommandRunner(uplink, fleet_state, ctx, dev=dev, keys=keys,
                                     clock=clock.now, idle_poll_s=cfg.remote.idle_poll_s)
            commands.attach(uplink)
        else:
            log.info("remote config and commands off (no signing key configured)")

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
        api = create_api(runtime, token, enrollment=enroll_state)
        if switch is not None:
            switch.swap(api)  # the pairing API gives way to the full one, same server
        else:
            daemon.serve_http(api, cfg.api.host, cfg.api.port, name="api")
        # The idle status poll, restartable (central may change its interval).
        poll = PrinterPoll(printer, runtime.printer_status_changed)
        if cfg.printer.enabled:  # a poll that fails stops the daemon
            daemon.spawn(poll.run(), name="printer-status")
        scanners = ScannerSupervisor(scanner_cfg, start_service=_start_scanners,
                                     pump=lambda service: _pump_scans(service, runtime))
        await scanners.start()
        if remote is not None:
            base_level = logging.getLevelName(logging.getLogger().level).lower()
            remote.parts = [
                telemetry_part(telemetry, cfg.telemetry_interval_s),
                log_level_part(base_level if base_level in ("debug", "info", "warning",
                                                            "error") else cfg.log.level),
                printer_part(printer, poll), scanner_part(scanners), card_part(cards),
                ui_part(runtime)]
            await remote.start()  # the stored settings, then whatever central sends
        if commands is not None:
            await commands.recover()
        log.info("edge daemon started", extra={"device": dev, "role": role,
                                                "api": f"{cfg.api.host}:{cfg.api.port}"})
        # After every (re)connect central gets fresh health at once, not an interval later
        # (a sample taken while offline was dropped, as QoS 0 telemetry should be).
        uplink.add_connect_listener(telemetry.poke)
        await telemetry.start()
        if updates is not None:  # every part is up: a version on trial is health-checked now
            from edge.update.health import HealthProbes

            updates.probes = HealthProbes(uplink=uplink, cards=cards, printer=printer,
                                          card_enabled=cfg.card.enabled,
                                          printer_enabled=cfg.printer.enabled)
            updates.runner = commands
            await updates.start()

        async def stop_producers() -> None:  # the sources, before the pumps reading them end
            if updates is not None:
                await updates.stop_tasks()
            await telemetry.stop()
            if commands is not None:
                await commands.stop()
            if remote is not None:
                await remote.stop()
            await cards.stop()
            await scanners.stop()

        try:
            await daemon.run(before_cancel=stop_producers)
        finally:
            await hotlist_sync.stop()
            await uplink.stop()
            log.info("edge daemon stopped")
    finally:
        fleet_state.close()


def _device_model(cfg: EdgeConfig) -> str | None:
    """The model an update bundle must list (as enrollment reports it), or None: any."""
    if cfg.enrollment is None:
        return None
    from edge.fleet.enrollment import detect_model

    return cfg.enrollment.model or detect_model()


def _make_enrollment(cfg: EdgeConfig, state: Any, *, printer: Any, fleet_state: Any,
                     running_file: Any, keys: list[Any]) -> Any:
    """The real enrollment for ``cfg`` (serial and model detected unless configured)."""
    from edge.fleet.enrollment import Enrollment, detect_model, detect_serial, device_facts
    from edge.fleet.identity import IdentityStore

    ec = cfg.enrollment
    assert ec is not None
    serial = ec.serial or detect_serial()
    state.serial = serial
    model = ec.model or detect_model()
    facts = device_facts(serial, model, printer=cfg.printer.profile,
                         version=installed_version())
    return Enrollment(ec, IdentityStore(cfg.device.data_dir), fleet_state, running_file,
                      serial=serial, facts=facts, signing_keys=keys, state=state,
                      printer=printer if cfg.printer.enabled else None,
                      hospital_name=cfg.device.hospital_name, timezone=cfg.device.timezone)
