"""``ykt central``: the central service.

Runs (single site) its own supervised Mosquitto with a generated config, the forwarder that
takes device requests to the platform exactly once, the device registry, the staff
dashboard with its REST API and, with ``[fleet]``, fleet trust (central/fleet: the
enrollment broker, device certificates, signed config and commands).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from typing import Any

from pydantic import SecretStr

from central.authz import Guard
from central.broker import Listener, Mosquitto, MosquittoConfig, TlsListener
from central.config import BrokerTlsSection, CentralConfig, forwarder_client_id
from central.dashboard.app import create_dashboard
from central.fleet.service import FleetService
from central.fleet_health import HealthThresholds
from central.forwarder import Forwarder, ForwarderSettings
from central.hotlist import FleetPublisher, HotlistSync
from central.leases import JobsLease, Leases
from central.metrics import CentralMetrics, metrics_router
from central.payments import Payments
from central.platform.config import create_adapter
from central.registry import Registry
from central.retention import Retention
from central.staff import StaffSessions
from central.store import open_store
from central.telemetry_history import TelemetryHistory
from yikatong.common.config import load_config, read_secret
from yikatong.common.logging import setup_logging
from yikatong.common.service import Daemon

log = logging.getLogger("central.app")

__all__ = ["add_central_arguments", "device_tls_listener", "main", "run"]


def add_central_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ykt central``."""
    p.add_argument("--config", default="/etc/yikatong/central.toml", help="central TOML config")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None,
                   help="override [log].level")


def main(args: argparse.Namespace) -> int:
    """Run central until SIGTERM/SIGINT."""
    cfg = load_config(args.config, CentralConfig)
    setup_logging("central", args.log_level or cfg.log.level)
    token = read_secret(cfg.dashboard.admin_token_file, cfg.dashboard.admin_token_env,
                        what="dashboard.admin_token_file")
    asyncio.run(run(cfg, token))
    return 0


def device_tls_listener(t: BrokerTlsSection, fleet: FleetService | None) -> TlsListener:
    """The devices' TLS listener: explicit files from central.toml, else the fleet CA's.

    With ``require_certificate`` the certificate's CN is the username; the fleet CA's CRL is
    checked when the listener trusts the fleet CA (``cafile`` left out).
    """
    made = fleet.server_tls if fleet is not None else None
    cafile = t.cafile or (made.cafile if made is not None else None)
    certfile = t.certfile or (made.certfile if made is not None else None)
    keyfile = t.keyfile or (made.keyfile if made is not None else None)
    if cafile is None or certfile is None or keyfile is None:  # the config validator says so
        raise ValueError("broker.tls needs its files or a [fleet] section")
    crl = fleet.crl_file if fleet is not None and t.require_certificate and t.cafile is None \
        else None
    return TlsListener(cafile=cafile, certfile=certfile, keyfile=keyfile,
                       require_certificate=t.require_certificate,
                       use_identity_as_username=t.require_certificate, crlfile=crl)


async def run(cfg: CentralConfig, admin_token: str, *, stop: asyncio.Event | None = None) -> None:
    """Run every part of central until ``stop`` is set (or a signal arrives)."""
    daemon = Daemon("central", stop)  # signals end it even while the broker is starting

    data = cfg.central.data_dir
    data.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg.store.url or data / "central.db",
                       password=cfg.store.password_file.read_text().strip()
                       if cfg.store.password_file is not None else None)
    broker_dir = data / "broker"
    mosquitto: Mosquitto | None = None

    def reload_broker() -> None:
        # Coalesced: a batch of registrations shares a few SIGHUPs (central/broker.py).
        if mosquitto is not None and mosquitto.running():
            mosquitto.request_reload()

    registry = Registry(store, broker_dir, on_change=reload_broker,
                        central_users=(cfg.broker.username or "", cfg.broker.fleet_username or "",
                                       *cfg.broker.other_central_users)
                        if cfg.broker.mode == "external" else (),
                        legacy_passwords=cfg.broker.legacy_passwords)
    # Fleet trust (docs/fleet-trust.md): the CA, the signing key, the enrollment broker.
    # Made before the device broker is configured: its TLS files and CRL come from here.
    fleet_trust = (FleetService(store, registry, cfg.fleet, data_dir=data,
                                reload_broker=reload_broker)
                   if cfg.fleet is not None else None)
    fw = cfg.forwarder
    common = {"client_id": forwarder_client_id(fw, socket.gethostname()),
              "concurrency": fw.concurrency, "lease_s": fw.lease_s,
              "call_timeout_s": fw.call_timeout_s}
    fleet_login: dict[str, Any] = {}
    trust_login: dict[str, Any] | None = None
    if cfg.broker.mode == "embedded":
        # One broker account per connection: the broker binds client id to username.
        creds = registry.central_credentials(str(common["client_id"]))
        fleet_creds = registry.central_credentials(f"{common['client_id']}-fleet")
        fleet_login = {"username": fleet_creds.username, "password": fleet_creds.password}
        if fleet_trust is not None:  # signed config and commands: a connection of its own
            trust_creds = registry.central_credentials(f"{common['client_id']}-cfg")
            trust_login = {"username": trust_creds.username, "password": trust_creds.password}
        registry.write_acl()
        listeners = [Listener(host=cfg.broker.host, port=cfg.broker.port)]
        if (t := cfg.broker.tls) is not None:
            listeners.append(Listener(host=t.host, port=t.port,
                                      tls=device_tls_listener(t, fleet_trust)))
        mosquitto = Mosquitto(broker_dir, MosquittoConfig(
            listeners=listeners,
            persistence_dir=broker_dir / "persistence",
            acl_file=registry.acl_file,
            password_file=registry.password_file,
            max_queued_messages=cfg.broker.max_queued_messages,
        ))
        # Stops a broker an earlier (killed) run of this workdir left behind, and fails
        # unless our own child holds the ports (central/broker.py).
        await asyncio.to_thread(mosquitto.start)
        settings = ForwarderSettings(host=cfg.broker.host, port=cfg.broker.port,
                                     username=creds.username,
                                     password=SecretStr(creds.password), **common)
    else:
        settings = ForwarderSettings(host=cfg.broker.host, port=cfg.broker.port,
                                     username=cfg.broker.username or "central",
                                     password_file=cfg.broker.password_file, **common)
        if cfg.broker.fleet_username is not None and cfg.broker.fleet_password_file:
            fleet_login = {"username": cfg.broker.fleet_username,
                           "password": cfg.broker.fleet_password_file.read_text().strip()}
        else:
            log.warning("broker.fleet_username not set: the hot-list publisher shares the "
                        "forwarder's account; a broker binding client id to username will "
                        "make them disconnect each other")

    # Prometheus /metrics (central/metrics.py); every platform call is timed by the wrapper.
    metrics = CentralMetrics(store, thresholds=HealthThresholds(
        cfg.dashboard.disk_low_mb, cfg.dashboard.temp_high_c, cfg.dashboard.backlog_high))
    adapter = metrics.wrap(create_adapter(cfg.platform))
    payments = Payments(store, adapter)
    # Central decides what each device and each staff member may do (central/authz.py).
    guard = Guard(store, cfg.authz, staff=StaffSessions(store, cfg.staff))
    history = TelemetryHistory(store, cfg.telemetry)  # samples for the charts, downsampled
    retention = Retention(store, guard, cfg.privacy, telemetry=history)
    forwarder = Forwarder(settings, store, adapter, share_group=fw.share_group,
                          metrics=metrics,
                          hooks=payments, guard=guard, fleet=fleet_trust,
                          history=history)
    fleet = FleetPublisher.from_forwarder_settings(settings, **fleet_login)
    hotlist = HotlistSync(adapter, fleet, store)
    fleet.on_connected = hotlist.republish  # a restarted broker may have lost the notice
    if fleet_trust is not None:
        fleet_trust.install(guard)  # device.cert_renew, device.log_bundle
        if trust_login is not None:
            fleet_trust.publisher = FleetPublisher(
                host=settings.host, port=settings.port, tls=settings.tls,
                client_id=f"{settings.client_id}-cfg"[:64], keepalive=settings.keepalive,
                on_connected=fleet_trust.on_publisher_connected, **trust_login)
        else:
            # External broker: central.toml names two accounts; the hot-list session
            # carries the desired configs and commands too.
            fleet_trust.publisher, fleet_trust.own_publisher = fleet, False

            def both_republish() -> None:
                hotlist.republish()
                fleet_trust.on_publisher_connected()

            fleet.on_connected = both_republish

    # Once-only jobs run on the instance holding the store's jobs lease (central/leases.py);
    # with one instance (SQLite) that is this one, at once.
    jobs: dict[str, Any] = {"payments": payments.run, "hotlist": hotlist.run,
                            "retention": retention.run, "telemetry-rollup": history.rollup_loop}
    if fleet_trust is not None:  # command expiry and certificate renewals
        fleet_trust.jobs_here = False
        jobs["fleet"] = fleet_trust.run_jobs
    if fleet_trust is not None and fleet_trust.section.rollout_scheduler:
        fleet_trust.scheduler_here = False
        jobs["rollouts"] = fleet_trust.rollouts.run
    jobs_lease = JobsLease(Leases(store, Leases.new_holder(str(common["client_id"]))), jobs,
                           lease_s=cfg.cluster.lease_s, enabled=cfg.cluster.jobs)

    def live_status() -> dict[str, Any]:
        return {
            "jobs": jobs_lease.status(),
            "broker": {"mode": cfg.broker.mode,
                       **(mosquitto.status() if mosquitto else
                          {"running": None, "pid": None, "restarts": None,
                           "last_error": None})},
            "forwarder": {"connected": forwarder.connected, **forwarder.stats},
            **({"fleet_trust": fleet_trust.status()} if fleet_trust is not None else {}),
        }

    app = create_dashboard(store, registry, admin_token, site_name=cfg.central.site_name,
                           timezone=cfg.central.timezone,
                           extra_status=live_status, payments=payments, guard=guard,
                           fleet=fleet_trust, telemetry=cfg.telemetry,
                           thresholds=HealthThresholds(cfg.dashboard.disk_low_mb,
                                                       cfg.dashboard.temp_high_c,
                                                       cfg.dashboard.backlog_high))
    sessions = {"hotlist": fleet}
    if fleet_trust is not None and trust_login is not None:
        sessions["fleet_trust"] = fleet_trust.publisher
    metrics.watch(forwarder=forwarder, mosquitto=mosquitto, payments=payments,
                  sessions=sessions, jobs=jobs_lease)
    if cfg.metrics.enabled:  # a token from [metrics], else loopback clients only
        app.include_router(metrics_router(metrics, cfg.metrics))
    await forwarder.start()
    await fleet.start()
    if fleet_trust is not None:
        await fleet_trust.start()  # the enrollment broker and central's sessions
        daemon.spawn(fleet_trust.run(), name="fleet-trust")
    daemon.spawn(forwarder.run(), name="forwarder")
    daemon.serve_http(app, cfg.dashboard.host, cfg.dashboard.port, name="dashboard")
    daemon.spawn(jobs_lease.run(), name="jobs-lease")
    daemon.spawn(history.run(rollup=False), name="telemetry-history")  # this instance's samples
    if mosquitto is not None:
        daemon.spawn(mosquitto.supervise(), name="broker")
    log.info("central started", extra={"broker": f"{cfg.broker.host}:{cfg.broker.port}",
                                       "dashboard": f"{cfg.dashboard.host}:{cfg.dashboard.port}"})

    async def stop_connections() -> None:  # leave the broker before the loops are cancelled
        await forwarder.stop()
        await history.flush()  # the samples still buffered
        if fleet_trust is not None:
            await fleet_trust.stop()
        await fleet.stop()

    try:
        await daemon.run(before_cancel=stop_connections)
    finally:
        await adapter.aclose()
        if mosquitto is not None:
            await asyncio.to_thread(mosquitto.stop)
        store.close()
        log.info("central stopped")
