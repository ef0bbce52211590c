"""Benchmark: central at fleet scale — the device list, and registrations against the broker.

Each figure against a baseline measured in the same run:

(a) ``GET /api/devices`` (the dashboard's refresh) for 10 … 5,000 devices through the real
    FastAPI app (in-process ASGI), against the old endpoint rebuilt here for comparison:
    a query per device plus an audit query each, built and encoded on the event loop.
    Per size: median wall time, SQL statements per list (``sqlite3`` trace), and the largest
    lateness of a 2 ms timer on the same loop while the list is built — what the forwarder's
    MQTT handling would wait.
(b) 200 registrations (``Registry.register``, ``legacy_passwords``) against a real Mosquitto
    holding 2,000 accounts, with five clients connected: central as wired now (password file
    replaced atomically, reloads coalesced) against the old behaviour (``mosquitto_passwd``
    editing the live file in place, a SIGHUP per registration). Reloads sent, client
    disconnects, registrations per second.

Loopback only, bounded (about a minute). Prints the figures and rewrites the "Device list at
fleet scale" section of docs/performance.md (``--no-write`` to skip).

    .venv/bin/python bench/devices_list.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, write_section  # noqa: E402

import central.registry as registry_module  # noqa: E402
from central.broker import Listener, Mosquitto, MosquittoConfig, write_atomic  # noqa: E402
from central.dashboard.app import create_dashboard  # noqa: E402
from central.fleet_health import DeviceHealth, HealthThresholds, derive_alarms  # noqa: E402
from central.registry import Registry  # noqa: E402
from central.store import Store, open_store  # noqa: E402

NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
TOKEN = "bench-token"


def fill_fleet(store: Store, first: int, last: int) -> None:
    """Devices with a health row and a 20-record audit chain each (bulk inserts)."""
    m = store.models
    devices, health, audits = [], [], []
    for i in range(first, last):
        dev = f"dev-{i:05d}"
        devices.append({"id": dev, "role": "kiosk", "enabled": True, "online": i % 3 != 0,
                        "created_at": NOW.timestamp(), "last_seen": NOW.timestamp(),
                        "last_boot_seq": 1, "version": "1.4.0"})
        view = DeviceHealth(telemetry_at=NOW, updated_at=NOW, uptime_s=3600, cpu_temp_c=55.0,
                            disk_free_mb=4000, outbox_depth=0, load_1m=0.3, sam_state="ok",
                            reader_present=True, printer={"online": True, "paper": "ok",
                                                          "cover_open": False})
        health.append({"dev": dev, "updated_at": NOW.timestamp(), "body": view.to_json()})
        audits += [{"dev": dev, "seq": s, "ts": "2026-05-01T09:00:00.000Z", "actor": "system",
                    "action": "card.read", "detail": "{}", "prev_hash": "0" * 64,
                    "hash": f"{i:032x}{s:032x}", "status": "ok",
                    "received_at": NOW.timestamp()} for s in range(1, 21)]
    with store.atomic():
        for model, rows in ((m.Device, devices), (m.DeviceHealthRow, health),
                            (m.DeviceAudit, audits)):
            for k in range(0, len(rows), 500):
                model.insert_many(rows[k:k + 500]).execute()


def old_app(store: Store) -> FastAPI:
    """The endpoint as it was: N+1 queries, built and encoded on the event loop."""
    app = FastAPI()
    limits = HealthThresholds()

    def jsonable(obj: Any) -> Any:
        if hasattr(obj, "isoformat"):
            return obj.isoformat()
        if isinstance(obj, dict):
            return {k: jsonable(v) for k, v in obj.items()}
        return obj

    @app.get("/api/devices")
    async def devices() -> dict[str, Any]:
        health = store.all_health()
        out = []
        ids = [r.id for r in store.Device.select(store.Device.id).order_by(store.Device.id)]
        for dev in ids:
            d = store.device(dev)
            assert d is not None
            h = health.get(d.id)
            alarms = derive_alarms(d.id, online=d.online, enabled=d.enabled, health=h,
                                   thresholds=limits)
            out.append({**jsonable(asdict(d)), "health": h.to_dict() if h else None,
                        "alarms": [asdict(a) for a in alarms],
                        "audit": store.device_audit_state(d.id)})
        return {"devices": out}

    return app


async def _measure(client: httpx.AsyncClient, store: Store, n: int, repeat: int
                   ) -> dict[str, float]:
    """Median wall time, statements per list and the loop's largest lateness."""
    statements: list[str] = []

    def trace(on: bool) -> None:  # each thread's own connection: the reader's, the loop's
        store.connection().set_trace_callback(statements.append if on else None)

    await store.read(lambda: trace(True))
    trace(True)
    walls, lags = [], []
    per_list = 0
    for k in range(repeat):
        lag = 0.0
        done = asyncio.Event()

        async def ticker(done: asyncio.Event = done) -> None:
            nonlocal lag
            while not done.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.002)
                lag = max(lag, time.perf_counter() - t - 0.002)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        before = len(statements)
        t0 = time.perf_counter()
        r = await client.get("/api/devices")
        walls.append(time.perf_counter() - t0)
        done.set()
        await task
        assert r.status_code == 200 and len(r.json()["devices"]) == n
        if k == 0:
            per_list = len(statements) - before
        lags.append(lag)
    await store.read(lambda: trace(False))
    trace(False)
    return {"wall_ms": statistics.median(walls) * 1000, "statements": per_list,
            "lag_ms": max(lags) * 1000}


async def bench_list(sizes: list[int], repeat: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    store = open_store(tmp / "list.db")
    try:
        new = create_dashboard(store, Registry(store, tmp / "broker"), TOKEN, site_name="B")
        old = old_app(store)
        have = 0
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=new),
                                     base_url="http://n", headers=auth) as cn, \
                httpx.AsyncClient(transport=httpx.ASGITransport(app=old),
                                  base_url="http://o") as co:
            for n in sizes:
                fill_fleet(store, have, n)
                have = n
                await cn.get("/api/devices")
                await co.get("/api/devices")  # warm both
                o = await _measure(co, store, n, repeat)
                w = await _measure(cn, store, n, repeat)
                page_t = time.perf_counter()
                for _ in range(repeat):
                    await cn.get("/api/devices", params={"limit": 100})
                page_ms = (time.perf_counter() - page_t) / repeat * 1000
                rows.append({"n": n, "old": o, "new": w, "page_ms": page_ms})
                print(f"{n:>6} devices  old {o['wall_ms']:8.1f} ms {o['statements']:>6} stmts "
                      f"lag {o['lag_ms']:7.1f} ms | new {w['wall_ms']:8.1f} ms "
                      f"{w['statements']:>3} stmts lag {w['lag_ms']:6.1f} ms | "
                      f"page of 100 {page_ms:6.1f} ms", flush=True)
    finally:
        store.close()
    return rows


# -- (b) registrations and the broker ------------------------------------------------------

def _old_passwd_set(password_file: Path, username: str, password: str) -> None:
    """The previous behaviour: mosquitto_passwd edits the live file in place."""
    if not password_file.exists():
        password_file.touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(password_file), username, password],
                   check=True, capture_output=True)


class _Client:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.disconnects = 0
        self.up = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
        c.username_pw_set(user, password)
        c.on_connect = lambda _c, _u, _f, rc, _p: (not rc.is_failure) and self.up.set()
        c.on_disconnect = self._lost
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.c = c

    def _lost(self, *_a: object) -> None:
        self.disconnects += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def bench_registrations(tmp: Path, n: int, *, old: bool) -> dict[str, Any]:
    wd = tmp / ("old" if old else "new")
    store = open_store(wd / "central.db")
    reg = Registry(store, wd / "broker")
    accounts = [reg.central_credentials(name) for name in ("fwd", "fwd-fleet")]
    scratch = wd / "scratch"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(scratch), "x", "x-secret"], check=True)
    digest = scratch.read_text().split(":", 1)[1].strip()
    write_atomic(reg.password_file, reg.password_file.read_text() + "".join(
        f"old-{i:05d}:{digest}\n" for i in range(2000)))
    mosq = Mosquitto(wd / "broker", MosquittoConfig(
        listeners=[Listener(host="127.0.0.1", port=0)], persistence=False,
        acl_file=reg.acl_file, password_file=reg.password_file))
    mosq.start()
    reg._on_change = mosq.reload if old else mosq.request_reload
    saved = registry_module.mosquitto_passwd_set
    if old:
        registry_module.mosquitto_passwd_set = _old_passwd_set
    clients: list[_Client] = []
    try:
        devs = [reg.register(f"term-{i}", "kiosk") for i in range(3)]
        time.sleep(0.5)
        clients = [_Client(mosq.port, a.username, a.password) for a in [*accounts, *devs]]
        for c in clients:
            c.up.wait(10)
        r0 = mosq.reloads
        t0 = time.perf_counter()
        for i in range(n):
            reg.register(f"batch-{i:04d}", "kiosk")
        took = time.perf_counter() - t0
        while mosq.reload_pending():
            time.sleep(0.05)
        time.sleep(1.5)
        return {"reloads": mosq.reloads - r0, "disconnects": sum(c.disconnects for c in clients),
                "clients": len(clients), "per_s": n / took}
    finally:
        registry_module.mosquitto_passwd_set = saved
        for c in clients:
            c.close()
        mosq.stop()
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller fleet, fewer repeats")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        print("mosquitto is needed for part (b)", file=sys.stderr)
        return 2
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 5000]
    repeat = 3 if args.quick else 5
    n_reg = 60 if args.quick else 200
    with tempfile.TemporaryDirectory(prefix="ykt-bench-devices-") as d:
        tmp = Path(d)
        print("(a) GET /api/devices")
        rows = asyncio.run(bench_list(sizes, repeat, tmp))
        print(f"(b) {n_reg} registrations, 2,000 accounts, 5 clients connected")
        before = bench_registrations(tmp, n_reg, old=True)
        print(f"  old (in place, a SIGHUP each): {json.dumps(before)}")
        after = bench_registrations(tmp, n_reg, old=False)
        print(f"  now (atomic, coalesced):       {json.dumps(after)}")
    if args.no_write:
        return 0
    lines = [
        "Issue 13: the dashboard's device list stalled the forwarder, and registrations "
        "dropped every broker client. `bench/devices_list.py` (" + machine() + "; "
        + datetime.now(UTC).strftime("%Y-%m-%d") + "), every figure against a baseline "
        "measured in the same run.",
        "",
        "**(a) `GET /api/devices`** through the real app (in-process ASGI). *Old*: the "
        "endpoint as it was (a query per device and an audit query each, built and encoded "
        "on the event loop), rebuilt in the bench. *Now*: devices, health rows and audit "
        "summaries in a constant number of statements, built and JSON-encoded on the "
        "store's reader thread. *Loop lag* is the largest lateness of a 2 ms timer on the "
        "same event loop during the list — what the forwarder's MQTT handling waits.",
        "",
        "| devices | old ms | old statements | old loop lag ms | now ms | now statements "
        "| now loop lag ms | page of 100, ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o, w = r["old"], r["new"]
        lines.append(f"| {r['n']:,} | {o['wall_ms']:.1f} | {o['statements']:,} | "
                     f"{o['lag_ms']:.1f} | {w['wall_ms']:.1f} | {w['statements']} | "
                     f"{w['lag_ms']:.1f} | {r['page_ms']:.1f} |")
    big = rows[-1]
    lines += [
        "",
        f"At {big['n']:,} devices the loop waited at most {big['new']['lag_ms']:.1f} ms "
        f"instead of {big['old']['lag_ms']:.0f} ms; the list itself still takes "
        f"{big['new']['wall_ms']:.0f} ms of the reader thread. The loop's wait is not "
        "zero: the reader thread shares the interpreter (the GIL), and stretches that hold "
        "it (a garbage collection over thousands of new rows, one large C call) still "
        "delay the loop by tens of milliseconds at thousands of devices; the maxima are "
        "noisy on this shared two-core machine. Fleets of thousands should page "
        "(`?limit=…&after=…`, `counts` for the totals): a page of 100 costs the same "
        "whatever the fleet's size.",
        "",
        f"**(b) {n_reg} registrations** (`legacy_passwords`) against a real Mosquitto holding "
        "2,000 accounts, with five clients connected (forwarder, fleet client, three "
        "terminals).",
        "",
        "| | SIGHUPs sent | client disconnects | registrations/s |",
        "|---|---:|---:|---:|",
        f"| old: `mosquitto_passwd` in place, a SIGHUP each | {before['reloads']} | "
        f"{before['disconnects']} | {before['per_s']:.1f} |",
        f"| now: private copy renamed in, reloads coalesced (0.25 s) | {after['reloads']} | "
        f"{after['disconnects']} | {after['per_s']:.1f} |",
        "",
        "Why clients dropped: `mosquitto_passwd` copies its result back into the file it "
        "edits; a SIGHUP that Mosquitto handled while the next registration was copying "
        "read half a file, and the reload disconnects every connected client whose account "
        "it does not find (`mosquitto_security_apply_default`). The reload itself does not "
        "drop a client whose account is unchanged.",
    ]
    write_section("Device list at fleet scale", "\n".join(lines))
    print("wrote the 'Device list at fleet scale' section of docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
