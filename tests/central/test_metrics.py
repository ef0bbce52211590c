"""Prometheus ``/metrics`` of a running central (central/metrics.py).

``central.app.run`` in this process with its supervised Mosquitto and the reference
platform: a device is registered, comes online, reports telemetry and asks the platform;
each step shows in the scraped figures. Reading needs the ``[metrics]`` token (or, without
one, a loopback client). The Grafana dashboard in config/grafana/ asks only for metrics
that ``/metrics`` exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until_async

import central.app as central_app
from central.broker import free_port
from central.config import CentralConfig
from central.metrics import CentralMetrics, MetricsSettings, metrics_router
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.server import RunningServer, start_in_thread
from central.store import open_store
from yikatong.mqtt.session import state_payload
from yikatong.protocol import topics
from yikatong.protocol.envelope import encode, new_envelope

GRAFANA = Path(__file__).resolve().parents[2] / "config" / "grafana" / "yikatong-central.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Running:
    url: str
    admin: str
    metrics_token: str
    broker_port: int

    def scrape(self, token: str | None = None) -> httpx.Response:
        tok = self.metrics_token if token is None else token
        return httpx.get(f"{self.url}/metrics", timeout=10,
                         headers={"Authorization": f"Bearer {tok}"} if tok else {})

    def samples(self) -> Samples:
        r = self.scrape()
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return parse(r.text)


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_in_thread(PlatformSimSettings(db_path=tmp_path / "platform.db"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def central(tmp_path: Path, platform: RunningServer) -> AsyncIterator[Running]:
    token_file = tmp_path / "metrics.token"
    metrics_token = secrets.token_urlsafe(24)
    token_file.write_text(metrics_token)
    token_file.chmod(0o600)
    port, dash = free_port(), free_port()
    cfg = CentralConfig.model_validate({
        "central": {"data_dir": str(tmp_path / "central")},
        "broker": {"mode": "embedded", "host": "127.0.0.1", "port": port,
                   "legacy_passwords": True},
        "platform": {"base_url": platform.base_url},
        "dashboard": {"host": "127.0.0.1", "port": dash},
        "forwarder": {"client_id": "central-metrics"},
        "metrics": {"token_file": str(token_file)},
    })
    admin = secrets.token_urlsafe(18)
    stop = asyncio.Event()
    task = asyncio.create_task(central_app.run(cfg, admin, stop=stop))
    running = Running(f"http://127.0.0.1:{dash}", admin, metrics_token, port)

    async def up() -> bool:
        if task.done():
            return True
        try:
            r = await asyncio.to_thread(running.scrape)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and "ykt_broker_connected" in r.text and \
            'connection="forwarder"} 1.0' in r.text

    try:
        await wait_until_async(up, 30, what="central serving /metrics, forwarder connected")
        assert not task.done(), task.exception()
        yield running
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


class Device:
    """A terminal speaking MQTT by hand: birth, telemetry, requests; collects replies."""

    def __init__(self, port: int, dev: str, password: str) -> None:
        self.dev = dev
        self.replies: dict[str, dict[str, Any]] = {}
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev)
        c.username_pw_set(dev, password)
        c.on_connect = self._up
        c.on_message = self._got
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.c = c

    def _up(self, c: mqtt.Client, _u: object, _f: object, rc: mqtt.ReasonCode,
            _p: object) -> None:
        if not rc.is_failure:
            c.subscribe(topics.down(self.dev, "resp"), 1)
            self.ready.set()

    def _got(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        env = json.loads(msg.payload)
        self.replies[env["corr"]] = env["body"]

    def birth(self) -> None:
        self.c.publish(topics.state(self.dev), state_payload(
            dev=self.dev, online=True, boot_seq=1, now=datetime.now(UTC), version="1.4.0",
            role="kiosk"), qos=1, retain=True)

    def telemetry(self, paper: str) -> None:
        body = {"uptime_s": 60, "disk_free_mb": 9000, "outbox_depth": 7, "reader_present": True,
                "printer": {"online": True, "paper": paper, "cover_open": False,
                            "cutter_error": False}}
        self.c.publish(topics.up(self.dev, "telemetry"), encode(new_envelope(
            "telemetry", self.dev, body, now=datetime.now(UTC))), qos=1)

    def request(self, type_: str, body: dict[str, Any]) -> str:
        env = new_envelope(type_, self.dev, body, now=datetime.now(UTC))
        self.c.publish(topics.up(self.dev, "req"), encode(env), qos=1)
        return env.id

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def test_figures_follow_registrations_births_telemetry_and_requests(
        central: Running) -> None:
    before = await asyncio.to_thread(central.samples)
    assert value(before, "ykt_devices_total") == 0
    assert value(before, "ykt_broker_up") == 1
    assert value(before, "ykt_broker_connected", connection="hotlist") == 1
    assert value(before, "ykt_payments_unresolved") == 0

    r = await asyncio.to_thread(
        httpx.post, f"{central.url}/api/devices", json={"id": "kiosk-m01", "role": "kiosk"},
        headers={"Authorization": f"Bearer {central.admin}"}, timeout=10)
    assert r.status_code == 200, r.text
    registered = await asyncio.to_thread(central.samples)
    assert value(registered, "ykt_devices_total") == 1
    assert value(registered, "ykt_devices_online") == 0
    assert value(registered, "ykt_alarms", kind="offline") == 1

    dev = await asyncio.to_thread(Device, central.broker_port, "kiosk-m01", r.json()["password"])
    try:
        assert await asyncio.to_thread(dev.ready.wait, 15)  # the coalesced reload came
        dev.birth()
        dev.telemetry("out")
        await wait_until_async(lambda: asyncio.to_thread(
            lambda: value(central.samples(), "ykt_devices_online") == 1), 10,
            what="the device online in /metrics")
        ok_id = dev.request("reg.departments", {})
        bad_id = dev.request("reg.departments", {"unexpected": 1})
        await wait_until_async(lambda: ok_id in dev.replies and bad_id in dev.replies, 15,
                               what="both replies")
        assert dev.replies[ok_id]["status"] == "ok"
        assert dev.replies[bad_id]["status"] == "error"
        after = await asyncio.to_thread(central.samples)
    finally:
        dev.close()
    assert value(after, "ykt_alarms", kind="offline") == 0
    assert value(after, "ykt_alarms", kind="paper_out") == 1
    assert value(after, "ykt_device_outbox_messages") == 7
    assert value(after, "ykt_requests_total", type="reg.departments", outcome="ok") == 1
    bad = dev.replies[bad_id]["error"]["code"]
    assert value(after, "ykt_requests_total", type="reg.departments", outcome=bad) == 1
    assert value(after, "ykt_forwarder_latency_seconds_count", type="reg.departments") == 2
    assert value(after, "ykt_platform_latency_seconds_count", op="reg.departments") == 1
    assert value(after, "ykt_platform_errors_total", op="reg.departments",
                 kind="unavailable") == 0
    assert value(after, "ykt_forwarder_events_total", event="received") >= 4
    assert value(after, "ykt_broker_reloads_total") >= 1
    assert value(after, "ykt_store_bytes", file="db") > 0
    # Nothing about a person or a device in any label.
    for name, labels in after:
        for k, v in labels:
            assert "kiosk-m01" not in v, (name, k, v)

    # Every Grafana expression asks for metrics /metrics exports.
    # A family with labels but no sample yet (no platform error so far) still has its
    # ``# TYPE`` line: its name counts.
    text = (await asyncio.to_thread(central.scrape)).text
    exported = {name for name, _ in after}
    families = {f.name for f in text_string_to_metric_families(text)}
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        names = re.findall(r"\bykt_[a-z0-9_]+", expr)
        assert names, expr
        for n in names:
            base = re.sub(r"_(bucket|count|sum|total|created)$", "", n)
            assert n in exported or base in families, f"{n} (in {expr!r}) is not exported"
    wanted = {"ykt_devices_total", "ykt_devices_online", "ykt_requests_total",
              "ykt_forwarder_latency_seconds_bucket", "ykt_platform_latency_seconds_bucket",
              "ykt_platform_errors_total", "ykt_payments_unresolved", "ykt_alarms",
              "ykt_broker_connected", "ykt_store_bytes", "ykt_forwarder_queue",
              "ykt_store_write_queue"}
    asked = {n for e in exprs for n in re.findall(r"\bykt_[a-z0-9_]+", e)}
    assert wanted <= asked, wanted - asked


async def test_metrics_need_the_token(central: Running) -> None:
    assert (await asyncio.to_thread(central.scrape, "")).status_code == 401
    assert (await asyncio.to_thread(central.scrape, "wrong")).status_code == 401
    assert (await asyncio.to_thread(central.scrape)).status_code == 200


async def test_without_a_token_only_loopback_clients_read(tmp_path: Path) -> None:
    from fastapi import FastAPI

    store = open_store(tmp_path / "c.db")
    try:
        app = FastAPI()
        app.include_router(metrics_router(CentralMetrics(store), MetricsSettings()))
        for client, status in ((("127.0.0.1", 4000), 200), (("::1", 4000), 200),
                               (("192.0.2.7", 4000), 403)):
            transport = httpx.ASGITransport(app=app, client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as c:
                r = await c.get("/metrics")
            assert r.status_code == status, (client, r.text)
        # Each app has a registry of its own: a second central in the process is fine.
        second = CentralMetrics(store)
        second.request_done("reg.book", "ok", 0.01)
        second.request_done("made.up.type", "weird code!", None)
        figures = parse(second.exposition().decode())
        assert value(figures, "ykt_requests_total", type="reg.book", outcome="ok") == 1
        assert value(figures, "ykt_requests_total", type="other", outcome="other") == 1
    finally:
        store.close()
