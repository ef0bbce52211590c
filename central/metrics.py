"""Prometheus ``/metrics`` for central (docs/operations-metrics.md).

Two kinds of figures, one per-app :class:`~prometheus_client.CollectorRegistry` (never the
global one: tests and tools start several centrals in one process):

* **Counted as they happen** — the forwarder's requests by type and outcome and its latency
  (:class:`CentralMetrics` is the forwarder's ``metrics`` hook), and every platform call's
  latency and errors (:class:`MeteredAdapter` wraps the adapter, so the payment resolver's
  and the hot-list sync's calls count too).
* **Read at scrape time** (:class:`_Snapshot`, a custom collector) — devices total and
  online, active alarms by kind, unresolved payments, the broker's and central's MQTT
  connections, the store's size and write queue, the forwarder's queue, the devices' own
  outbox backlog. Nothing is kept twice: each scrape asks the store and the live objects.

A scrape runs on the store's reader thread (:meth:`Store.read`): the alarms need every
device's health row, and that must not pause the forwarder on the event loop.

Labels are bounded and carry no patient data: request types and platform operations are the
message catalogue's (anything else is ``other``), outcomes are reply codes, alarm kinds are
central/fleet_health.py's codes; no label names a device, a patient or a payment.

Who may read it: with ``[metrics] token_file`` a bearer token (the Prometheus job's
``authorization`` credentials); without one, loopback clients only. ``enabled = false``
leaves ``/metrics`` out altogether.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from pydantic import Field

from central.fleet_health import HealthThresholds, derive_alarms
from central.platform.base import BY_KEY_OPERATIONS, OPERATIONS, PlatformAdapter
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.store import Store
from yikatong.common.config import StrictModel, read_secret
from yikatong.protocol.messages import REQUESTS

__all__ = ["ALARM_KINDS", "CentralMetrics", "MeteredAdapter", "MetricsSettings",
           "metrics_router"]

#: Every alarm code central/fleet_health.py derives (each kind is exported, 0 when none).
ALARM_KINDS: tuple[str, ...] = (
    "offline", "paper_out", "paper_near_end", "cover_open", "reader_missing", "sam_fault",
    "disk_low", "temp_high", "backlog_high", "print_failed",
)
_TYPES = frozenset(REQUESTS)
_OPS = frozenset(OPERATIONS | BY_KEY_OPERATIONS)
# Round trips of a request: a cached reply in milliseconds, a platform call in seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0)


class MetricsSettings(StrictModel):
    """``[metrics]`` of central.toml: who may read ``/metrics``."""

    enabled: bool = True
    #: A file holding the bearer token Prometheus sends; unset = loopback clients only.
    token_file: Path | None = None
    token_env: str = Field(default="YKT_CENTRAL_METRICS_TOKEN", min_length=1)


def _label(value: str, known: frozenset[str]) -> str:
    return value if value in known else "other"


def _outcome(value: object) -> str:
    # Reply codes are a StrEnum: its value, never "ErrorCode.X"; anything odd is bounded.
    text = str(getattr(value, "value", value))
    return text if text.replace("_", "").isalnum() and len(text) <= 32 else "other"


class CentralMetrics:
    """Central's metrics; the forwarder's ``metrics`` hook and the source of ``/metrics``.

    ``watch(...)`` names the live objects read at scrape time (the forwarder, the broker
    supervisor, central's other MQTT sessions, the payments resolver); any may be left out.
    """

    def __init__(self, store: Store, *, thresholds: HealthThresholds | None = None) -> None:
        self.store = store
        self.thresholds = thresholds or HealthThresholds()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ykt_requests", "Device requests answered by the forwarder, by type and outcome",
            ["type", "outcome"], registry=self.registry)
        self.forwarder_latency = Histogram(
            "ykt_forwarder_latency_seconds",
            "From a request taken off the queue to its reply published (or row released)",
            ["type"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.platform_latency = Histogram(
            "ykt_platform_latency_seconds", "Hospital platform calls, by operation",
            ["op"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.platform_errors = Counter(
            "ykt_platform_errors", "Platform calls that failed, by operation and kind",
            ["op", "kind"], registry=self.registry)
        self.scrape_seconds = Histogram(
            "ykt_metrics_scrape_seconds", "Time to read the scrape-time figures",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0), registry=self.registry)
        self.forwarder: Any = None
        self.mosquitto: Any = None
        self.payments: Any = None
        self.sessions: dict[str, Any] = {}
        self.jobs: Any = None
        self.registry.register(_Snapshot(self))

    def watch(self, *, forwarder: Any = None, mosquitto: Any = None, payments: Any = None,
              sessions: dict[str, Any] | None = None, jobs: Any = None) -> None:
        """The live objects the scrape reads (``sessions``: name → object with
        ``connected``, e.g. the hot-list publisher; ``jobs``: the jobs lease,
        central/leases.py)."""
        self.jobs = jobs if jobs is not None else self.jobs
        self.forwarder = forwarder if forwarder is not None else self.forwarder
        self.mosquitto = mosquitto if mosquitto is not None else self.mosquitto
        self.payments = payments if payments is not None else self.payments
        self.sessions.update(sessions or {})

    # -- the forwarder's hook (central/forwarder.py ``ForwarderMetrics``) ------------------
    def request_done(self, type_: str, outcome: object, seconds: float | None) -> None:
        """One request answered (or released) with ``outcome``; ``seconds`` since taken."""
        t = _label(type_, _TYPES)
        self.requests.labels(t, _outcome(outcome)).inc()
        if seconds is not None:
            self.forwarder_latency.labels(t).observe(max(seconds, 0.0))

    # -- platform calls (:class:`MeteredAdapter`) ------------------------------------------
    def platform_call(self, op: str, seconds: float, error: str | None) -> None:
        """One platform call that took ``seconds``; ``error`` is its failure kind or None."""
        o = _label(op, _OPS)
        self.platform_latency.labels(o).observe(max(seconds, 0.0))
        if error is not None:
            self.platform_errors.labels(o, error).inc()

    def wrap(self, adapter: PlatformAdapter) -> MeteredAdapter:
        """``adapter`` with every call counted here."""
        return MeteredAdapter(adapter, self)

    # -- exposition ------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format of every metric (blocking: call through ``store.read``)."""
        return generate_latest(self.registry)


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, PlatformRejected):
        return "rejected"
    if isinstance(exc, PlatformUnavailable):
        return "unavailable"
    if isinstance(exc, PlatformOutcomeUnknown):
        return "outcome_unknown"
    if isinstance(exc, TimeoutError | asyncio.CancelledError):
        return "timeout"  # the forwarder's call timeout cancels the call
    return "error"


class MeteredAdapter(PlatformAdapter):
    """A platform adapter whose calls are timed and whose failures are counted."""

    def __init__(self, inner: PlatformAdapter, metrics: CentralMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def _timed(self, op: str, call: Callable[[], Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            result: dict[str, Any] = await call()
        except BaseException as exc:
            self._metrics.platform_call(op, time.perf_counter() - t0, _error_kind(exc))
            raise
        self._metrics.platform_call(op, time.perf_counter() - t0, None)
        return result

    async def call(self, op: str, body: dict[str, Any], *, idempotency_key: str,
                   timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        """The inner adapter's ``call``, timed."""
        return await self._timed(op, lambda: self.inner.call(
            op, body, idempotency_key=idempotency_key, timeout=timeout))

    async def pay_status_by_key(self, key: str, *, timeout: float | None = None  # noqa: ASYNC109
                                ) -> dict[str, Any]:
        """The inner adapter's ``pay_status_by_key``, timed."""
        return await self._timed("pay.status_by_key",
                                 lambda: self.inner.pay_status_by_key(key, timeout=timeout))

    async def pay_reverse_by_key(self, key: str, *, idempotency_key: str,
                                 timeout: float | None = None,  # noqa: ASYNC109
                                 ) -> dict[str, Any]:
        """The inner adapter's ``pay_reverse_by_key``, timed."""
        return await self._timed("pay.reverse_by_key", lambda: self.inner.pay_reverse_by_key(
            key, idempotency_key=idempotency_key, timeout=timeout))

    async def aclose(self) -> None:
        """Close the inner adapter."""
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # anything else the inner adapter offers
        return getattr(self.inner, name)


def _gauge(name: str, doc: str, value: float, labels: list[str] | None = None
           ) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=labels)
    if labels is None:
        g.add_metric([], value)
    return g


class _Snapshot(Collector):
    """The figures read at scrape time (see the module docstring)."""

    def __init__(self, metrics: CentralMetrics) -> None:
        self.m = metrics

    def describe(self) -> list[Any]:
        return []  # read at scrape time only; nothing to check at registration

    def collect(self) -> Any:
        t0 = time.perf_counter()
        m, store = self.m, self.m.store
        counts = store.device_counts()
        yield _gauge("ykt_devices_total", "Registered devices", counts["total"])
        yield _gauge("ykt_devices_online", "Enabled devices online now", counts["online"])
        yield _gauge("ykt_devices_disabled", "Registered devices disabled",
                     counts["disabled"])
        health = store.all_health()
        alarms = dict.fromkeys(ALARM_KINDS, 0)
        backlog = 0
        for d in store.devices():
            h = health.get(d.id)
            if d.enabled and h is not None and h.outbox_depth:
                backlog += h.outbox_depth
            for a in derive_alarms(d.id, online=d.online, enabled=d.enabled, health=h,
                                   thresholds=m.thresholds):
                alarms[a.code] = alarms.get(a.code, 0) + 1
        g = GaugeMetricFamily("ykt_alarms", "Active alarms by kind", labels=["kind"])
        for kind, n in sorted(alarms.items()):
            g.add_metric([kind], n)
        yield g
        yield _gauge("ykt_device_outbox_messages",
                     "Messages the devices last reported waiting in their outboxes", backlog)
        if m.payments is not None:
            yield _gauge("ykt_payments_unresolved",
                         "Payments not final, or approved with the terminal not told",
                         len(m.payments.unresolved()))
        if m.jobs is not None:  # several instances: exactly one should show 1
            yield _gauge("ykt_jobs_lease_held",
                         "This instance holds the jobs lease and runs the once-only jobs",
                         1 if m.jobs.held else 0)
        yield from self._broker()
        yield from self._queues()
        m.scrape_seconds.observe(time.perf_counter() - t0)

    def _broker(self) -> Any:
        m = self.m
        if m.mosquitto is not None:
            yield _gauge("ykt_broker_up", "Central's own Mosquitto is running (1) or not (0)",
                         1 if m.mosquitto.running() else 0)
            c = CounterMetricFamily("ykt_broker_restarts",
                                    "Times the supervisor restarted a dead broker")
            c.add_metric([], m.mosquitto.restarts)
            yield c
            r = CounterMetricFamily("ykt_broker_reloads",
                                    "SIGHUPs sent (password, ACL or CRL changes)")
            r.add_metric([], m.mosquitto.reloads)
            yield r
        conn = GaugeMetricFamily("ykt_broker_connected",
                                 "Central's MQTT sessions connected (1) or not (0)",
                                 labels=["connection"])
        sessions = dict(m.sessions)
        if m.forwarder is not None:
            sessions = {"forwarder": m.forwarder, **sessions}
        for name, session in sorted(sessions.items()):
            conn.add_metric([name], 1 if getattr(session, "connected", False) else 0)
        yield conn
        if m.forwarder is not None:
            events = CounterMetricFamily("ykt_forwarder_events",
                                         "Forwarder counters (received, replied, …)",
                                         labels=["event"])
            for name, n in sorted(m.forwarder.stats.items()):
                events.add_metric([name], n)
            yield events

    def _queues(self) -> Any:
        m, store = self.m, self.m.store
        size = GaugeMetricFamily("ykt_store_bytes", "Central's database files",
                                 labels=["file"])
        if store.path is not None:  # SQLite; PostgreSQL's size is the database server's
            for name, path in (("db", store.path), ("wal", Path(f"{store.path}-wal"))):
                try:
                    size.add_metric([name], path.stat().st_size)
                except OSError:
                    size.add_metric([name], 0)
        yield size
        yield _gauge("ykt_store_write_queue", "Operations waiting for the store's writer",
                     store.pending_writes())
        if m.forwarder is not None:
            yield _gauge("ykt_forwarder_queue", "Messages waiting for a forwarder worker",
                         m.forwarder.queue_depth)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_router(metrics: CentralMetrics, settings: MetricsSettings) -> APIRouter:
    """``GET /metrics``: a bearer token from ``[metrics]``, else loopback clients only."""
    token: str | None = None
    if settings.token_file is not None or os.environ.get(settings.token_env):
        token = read_secret(settings.token_file, settings.token_env,
                            what="metrics.token_file")
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def scrape(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPException(status_code=401, detail="metrics need the bearer token",
                                    headers={"WWW-Authenticate": "Bearer"})
        elif not _loopback(request):
            raise HTTPException(status_code=403,
                                detail="metrics are served to loopback clients only "
                                       "(set [metrics] token_file to scrape from elsewhere)")
        body = await metrics.store.read(metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
