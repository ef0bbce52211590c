"""kill -9 of the device process: what was in its durable outbox is delivered after restart,
each request exactly once at the platform (and the money moves exactly once per request).

The device is a real process (tests/faults/uplink_worker.py) that builds its Uplink exactly
as ``ykt edge`` does from an ``EdgeConfig`` TOML; a full ``ykt edge`` would also need a card
reader and printer, which add nothing here. Central's forwarder runs in the test process on
a real Mosquitto, in front of the reference platform served over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Procs, wait_until_async

from central.broker import Mosquitto
from central.forwarder import Forwarder, ForwarderSettings
from central.platform.config import PlatformConfig, create_adapter
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.ids import id_check_digit
from central.platform.sim.server import RunningServer, start_in_thread
from central.registry import Registry
from central.store import Store

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
N = 100
DEV = "kiosk-kill9"


def _toml_str(p: Path | str) -> str:
    return json.dumps(str(p))


@dataclass
class Rig:
    tmp: Path
    store: Store
    registry: Registry
    broker: Mosquitto
    platform: RunningServer
    central_password: str
    edge_toml: Path
    patient_id: str
    procs: Procs
    forwarder: Forwarder | None = None

    async def start_forwarder(self) -> None:
        adapter = create_adapter(PlatformConfig(base_url=self.platform.base_url))
        settings = ForwarderSettings(host="127.0.0.1", port=self.broker.port,
                                     username=self.registry.central_credentials().username,
                                     password=self.central_password,
                                     concurrency=8)
        self.forwarder = Forwarder(settings, self.store, adapter)
        await self.forwarder.start()
        assert await self.forwarder.wait_connected(10)

    async def stop_forwarder(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.stop()
            await self.forwarder.adapter.aclose()
            self.forwarder = None

    def worker(self, mode: str) -> subprocess.Popen[str]:
        return self.procs.python(f"worker-{mode}", str(HERE / "uplink_worker.py"),
                                 str(self.edge_toml), mode, str(N), self.patient_id,
                                 env={"PYTHONPATH": str(REPO)}, pipe=True)

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, f"{self.platform.base_url}{path}", timeout=10, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def effects(self) -> int:
        return int(self.admin("GET", "/admin/stats")["effects"].get("pay.create", 0))

    def balance(self) -> int:
        for p in self.admin("GET", "/admin/patients"):
            if p["patient"]["patient_id"] == self.patient_id:
                return int(p["patient"]["balance_fen"])
        raise AssertionError("patient gone")


@pytest.fixture
async def rig(tmp_path: Path, make_site: Callable[..., Any], procs: Procs
              ) -> AsyncIterator[Rig]:
    site = make_site()  # store, registry and a persistent broker, stopped by the fixture
    creds = site.registry.register(DEV, "kiosk")
    broker = site.broker
    platform = start_in_thread(PlatformSimSettings(db_path=tmp_path / "platform.db",
                                                   admin_enabled=True))
    pw = tmp_path / "mqtt.password"
    pw.write_text(creds.password + "\n")
    data = tmp_path / "edge"
    edge_toml = tmp_path / "edge.toml"
    edge_toml.write_text(f"""
[device]
id = "{DEV}"
role = "kiosk"
hospital_name = "测试医院"
data_dir = {_toml_str(data)}

[card]
enabled = false
hotlist_path = {_toml_str(data / "hotlist.db")}

[printer]
kind = "memory"

[uplink]
host = "127.0.0.1"
port = {broker.port}
username = "{DEV}"
password_file = {_toml_str(pw)}
outbox_path = {_toml_str(data / "outbox.db")}
state_path = {_toml_str(data / "uplink-state.json")}
retry_interval_s = 1.0
backoff_min_s = 0.1
backoff_max_s = 0.5
""")
    first17 = "11010119900101777"
    r = await asyncio.to_thread(httpx.post, f"{platform.base_url}/admin/patients", timeout=10,
                                json={"card_no": "KILL9000001",
                                      "id_number": first17 + id_check_digit(first17),
                                      "name": "断电", "sex": "F", "birth_date": "1990-01-01",
                                      "balance_fen": 0})
    r.raise_for_status()
    rig = Rig(tmp_path, site.store, site.registry, broker, platform, site.central_password,
              edge_toml, r.json()["patient"]["patient_id"], procs)
    try:
        yield rig
    finally:  # workers: the procs fixture; broker and store: make_site
        await rig.stop_forwarder()
        platform.stop()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line of ``proc`` (blocking read in a thread, bounded by ``timeout``)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if sel.select(0.2):
                line = proc.stdout.readline()
                if line:
                    return line.strip()
            if proc.poll() is not None:
                break
        raise AssertionError(f"worker said nothing in {timeout}s (exit {proc.poll()})")
    finally:
        sel.close()


def _sent_at_least(outbox: Path, times: int) -> bool:
    """Whether the worker recorded ``times`` sends of every request in its outbox."""
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
        (low,) = db.execute(
            "SELECT MIN(attempts) FROM outbox WHERE type = 'pay.create'").fetchone()
    return low is not None and low >= times


def _kill9(proc: subprocess.Popen[str]) -> None:
    Procs.kill9(proc)
    assert proc.returncode == -signal.SIGKILL


async def _restart_and_drain(rig: Rig) -> dict[str, str]:
    proc = rig.worker("drain")
    line = await asyncio.to_thread(_read_line, proc, 150)
    assert (await asyncio.to_thread(proc.wait, 30)) == 0
    return dict(json.loads(line)["results"])


async def _check_exactly_once(rig: Rig, results: dict[str, str]) -> None:
    assert len(results) == N and set(results.values()) == {"approved"}
    assert await asyncio.to_thread(rig.effects) == N
    # each 1-yuan top-up credited exactly once
    assert await asyncio.to_thread(rig.balance) == N * 100
    ids = {f"edgekill{i:024d}" for i in range(N)}
    assert {rig.store.request_state(i) for i in ids} == {"done"}


@pytest.mark.stack
@pytest.mark.slow
async def test_kill9_with_broker_down_then_all_delivered_once(rig: Rig) -> None:
    await rig.start_forwarder()
    rig.broker.kill9()  # the link is down while the device takes the requests
    proc = rig.worker("enqueue")
    assert await asyncio.to_thread(_read_line, proc, 60) == f"ENQUEUED {N}"
    _kill9(proc)
    assert await asyncio.to_thread(rig.effects) == 0
    rig.broker.start()
    results = await _restart_and_drain(rig)
    await _check_exactly_once(rig, results)


@pytest.mark.stack
@pytest.mark.slow
async def test_kill9_with_central_down_then_all_delivered_once(rig: Rig) -> None:
    # Central's persistent session exists, so the broker queues what the device publishes
    # while central is down; after the device restarts it resends the same ids as well.
    await rig.start_forwarder()
    await rig.stop_forwarder()
    proc = rig.worker("enqueue")
    assert await asyncio.to_thread(_read_line, proc, 60) == f"ENQUEUED {N}"
    # published, and resent once, into the broker's queue for central's session
    await wait_until_async(lambda: _sent_at_least(rig.tmp / "edge" / "outbox.db", 2), 30,
                           what="every request sent twice")
    _kill9(proc)
    assert await asyncio.to_thread(rig.effects) == 0
    await rig.start_forwarder()
    results = await _restart_and_drain(rig)
    await _check_exactly_once(rig, results)
    assert rig.forwarder is not None and rig.forwarder.stats["resent"] > 0


@pytest.mark.stack
@pytest.mark.slow
async def test_kill9_mid_flight_then_all_delivered_once(rig: Rig) -> None:
    # Everything up, the platform a little slow: the device dies with some requests done at
    # the platform whose replies it never saw, some in flight, some not yet sent.
    await asyncio.to_thread(rig.admin, "POST", "/admin/faults",
                            json={"op": "pay.create", "latency_ms": 40})
    await rig.start_forwarder()
    proc = rig.worker("enqueue")
    assert await asyncio.to_thread(_read_line, proc, 60) == f"ENQUEUED {N}"
    await wait_until_async(lambda: asyncio.to_thread(lambda: rig.effects() >= 20), 30,
                           interval=0.01, what="20 payments done at the platform")
    _kill9(proc)
    before = await asyncio.to_thread(rig.effects)
    assert 0 < before < N
    results = await _restart_and_drain(rig)
    await _check_exactly_once(rig, results)
