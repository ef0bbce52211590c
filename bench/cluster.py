"""Several central instances: two against one on the same load, and the cost of PostgreSQL.

Every leg runs in this one process's run, on this machine, against the same reference
platform and the same external Mosquitto (started here, reading central's password and ACL
files, as a multi-instance site runs it — docs/scaling.md), with the same devices: 16
in-process ``Uplink`` devices (durable outboxes) sending ``patient.identify``. Legs:

- **direct**: HTTP straight to the platform (the baseline every ratio is against);
- **one · SQLite**: one ``ykt central`` on its SQLite store;
- **one · PostgreSQL**: one ``ykt central`` on a PostgreSQL store (a private server,
  yikatong/site/postgres.py);
- **two · PostgreSQL**: two ``ykt central`` instances on that store, one shared subscription
  group (``[forwarder] share_group``): each request goes to one of them.

Per leg: closed-loop capacity (``--lanes`` callers for ``--seconds``), an open-loop run at
``--rate``/s (p50/p99 from the scheduled start), and the CPU each process used per request
(central instances, PostgreSQL, Mosquitto, the platform) from /proc. Everything shares the
machine's cores — read "two vs one" as what a second instance buys when the first is not
alone on its machine; on separate machines each instance has its own cores.

    .venv/bin/python bench/cluster.py                  # writes "Several central instances"
    .venv/bin/python bench/cluster.py --seconds 3 --rate 30 --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import Procs, machine, open_loop, percentile, write_section  # noqa: E402

from central.broker import (  # noqa: E402
    Listener,
    Mosquitto,
    MosquittoConfig,
    free_port,
    mosquitto_passwd_set,
    render_acl,
)
from yikatong.site.demo import secret_file, wait_http  # noqa: E402
from yikatong.site.demo import toml_text as toml  # noqa: E402
from yikatong.site.postgres import PgServer  # noqa: E402

TITLE = "Several central instances"
DEVICES = 16
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15]) / CLK


def pg_pids(pg: PgServer) -> list[int]:
    """This bench's PostgreSQL: its postmaster and every backend it forked (not the
    machine's other PostgreSQL servers)."""
    try:
        master = int((pg.dir / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    out = [master]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == master:
                out.append(int(d.name))
    return out


class Rig:
    """Platform + external Mosquitto + PostgreSQL, and central instances started per leg."""

    def __init__(self, workdir: Path) -> None:
        self.wd = workdir
        self.procs = Procs(workdir / "logs")
        self.platform_port = free_port()
        self.token = secrets.token_urlsafe(18)
        self.token_file = secret_file(workdir / "admin.token", self.token)
        self.pg = PgServer()
        self.broker: Mosquitto | None = None
        self.broker_port = free_port()
        self.central: list[tuple[Any, int]] = []  # (process, dashboard port)
        self.leg = 0
        self.accounts: dict[str, Path] = {}

    @property
    def platform_url(self) -> str:
        return f"http://127.0.0.1:{self.platform_port}"

    def start(self) -> None:
        wd = self.wd
        (wd / "platform.toml").write_text(toml({"platform_sim": {
            "db_path": str(wd / "platform.db"), "admin_enabled": True}}))
        p = self.procs.ykt("platform", "platform-sim", "--config", str(wd / "platform.toml"),
                           "--port", str(self.platform_port), "--admin")
        wait_http(f"{self.platform_url}/openapi.json", 60, p)
        self.pg.start()

    def start_leg(self, instances: int, engine: str) -> None:
        """A fresh store, broker files and ``instances`` centrals (the first registers)."""
        self.leg += 1
        base = self.wd / f"leg{self.leg}"
        names = [f"central-{chr(ord('a') + i)}" for i in range(instances)]
        users = [u for n in names for u in (n, f"{n}-fleet")]
        first_broker = base / names[0] / "broker"
        first_broker.mkdir(parents=True)
        passwd, acl = first_broker / "passwd", first_broker / "acl"
        for u in users:
            pw = secrets.token_urlsafe(24)
            mosquitto_passwd_set(passwd, u, pw)
            self.accounts[u] = secret_file(base / f"{u}.password", pw)
        acl.write_text(render_acl(*users))
        self.broker = Mosquitto(base / "mosquitto", MosquittoConfig(
            listeners=[Listener(host="127.0.0.1", port=self.broker_port)],
            persistence_dir=base / "mosquitto" / "data", acl_file=acl, password_file=passwd,
            max_queued_messages=100_000))
        self.broker.start()
        store_url = self.pg.new_database("bench") if engine == "postgresql" else None
        for i, name in enumerate(names):
            port = free_port()
            cfg = base / f"{name}.toml"
            others = [u for u in users if not u.startswith(name)]
            cfg.write_text(toml({
                "central": {"data_dir": str(base / name)},
                "broker": {"mode": "external", "host": "127.0.0.1", "port": self.broker_port,
                           "username": name, "password_file": str(self.accounts[name]),
                           "fleet_username": f"{name}-fleet",
                           "fleet_password_file": str(self.accounts[f"{name}-fleet"]),
                           "other_central_users": others, "legacy_passwords": True},
                **({"store": {"url": store_url}} if store_url else {}),
                "platform": {"base_url": self.platform_url},
                "authz": {"kiosk_identify_per_minute": 10_000},
                "dashboard": {"host": "127.0.0.1", "port": port,
                              "admin_token_file": str(self.token_file)},
                "forwarder": {"share_group": "ykt", "instance": i + 1,
                              "client_id": name},
                "log": {"level": "warning"}}))
            proc = self.procs.ykt(f"leg{self.leg}-{name}", "central", "--config", str(cfg))
            wait_http(f"http://127.0.0.1:{port}/api/status", 60, proc)
            self.central.append((proc, port))

    def stop_leg(self) -> None:
        for proc, _ in self.central:
            proc.terminate()
        for proc, _ in self.central:
            proc.wait(30)
        self.central = []
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def device(self, dev: str) -> Any:
        from edge.uplink.client import Uplink
        from edge.uplink.config import UplinkConfig

        port = self.central[0][1]
        r = httpx.post(f"http://127.0.0.1:{port}/api/devices",
                       json={"id": dev, "role": "kiosk"},
                       headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        r.raise_for_status()
        assert self.broker is not None
        self.broker.reload()  # external broker: the new password is read on SIGHUP
        d = self.wd / f"leg{self.leg}" / "devices"
        d.mkdir(exist_ok=True)
        pw = secret_file(d / f"{dev}.pw", r.json()["password"])
        cfg = UplinkConfig(host="127.0.0.1", port=self.broker_port, username=dev,
                           password_file=pw, outbox_path=d / f"{dev}.outbox.db",
                           state_path=d / f"{dev}.state.json", max_inflight=200)
        return Uplink(cfg, dev, role="kiosk", version="bench")

    def received(self) -> list[int]:
        """Each instance's forwarder ``received`` counter."""
        out = []
        for _, port in self.central:
            st = httpx.get(f"http://127.0.0.1:{port}/api/status",
                           headers={"Authorization": f"Bearer {self.token}"}, timeout=30).json()
            out.append(int(st["forwarder"]["received"]))
        return out

    def stop(self) -> None:
        self.stop_leg()
        self.procs.stop_all()
        self.pg.stop()


async def _closed_loop(call: Any, seconds: float, lanes: int) -> tuple[float, int]:
    end = time.monotonic() + seconds
    count = errors = 0

    async def lane() -> None:
        nonlocal count, errors
        while time.monotonic() < end:
            try:
                await call()
                count += 1
            except Exception:
                errors += 1

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return count / seconds, errors


def _cpu_snapshot(rig: Rig) -> dict[str, float]:
    snap = {f"central-{i}": cpu_s(p.pid) for i, (p, _) in enumerate(rig.central)}
    snap["postgres"] = sum(cpu_s(p) for p in pg_pids(rig.pg))
    snap["mosquitto"] = cpu_s(rig.broker.pid) if rig.broker and rig.broker.pid else 0.0
    snap["platform"] = cpu_s(rig.procs.all[0].pid)  # started first (Rig.start)
    snap["bench"] = time.process_time()
    return snap


async def run_leg(rig: Rig, args: argparse.Namespace, body: dict[str, Any],
                  instances: int, engine: str) -> dict[str, Any]:
    await asyncio.to_thread(rig.start_leg, instances, engine)
    uplinks = [await asyncio.to_thread(rig.device, f"bench-{i:03d}") for i in range(DEVICES)]
    try:
        for u in uplinks:
            await u.start()
        for u in uplinks:
            assert await u.wait_connected(20)
        rr = 0

        async def ours() -> None:
            nonlocal rr
            rr += 1
            await uplinks[rr % len(uplinks)].request("patient.identify", body, timeout=15)

        for _ in range(40):
            await ours()
        r0 = await asyncio.to_thread(rig.received)
        c0, t0 = _cpu_snapshot(rig), time.monotonic()
        cap, cap_err = await _closed_loop(ours, args.seconds, args.lanes)
        c1, t1 = _cpu_snapshot(rig), time.monotonic()
        r1 = await asyncio.to_thread(rig.received)
        done = cap * args.seconds
        cpu = {k: (c1[k] - c0[k]) / max(done, 1) * 1e6 for k in c0}  # µs per request
        await asyncio.sleep(1)
        lat, err = await open_loop(ours, args.rate, args.seconds)
        return {"leg": f"{'one' if instances == 1 else 'two'} · "
                       f"{'SQLite' if engine == 'sqlite' else 'PostgreSQL'}",
                "capacity": cap, "errors": cap_err + err, "p50": percentile(lat, 50),
                "p99": percentile(lat, 99), "cpu_us": cpu, "span_s": t1 - t0,
                "share": [b - a for a, b in zip(r0, r1, strict=True)]}
    finally:
        for u in uplinks:
            await u.stop()
        await asyncio.to_thread(rig.stop_leg)


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rig = Rig(workdir)
    try:
        await asyncio.to_thread(rig.start)
        patients = (await asyncio.to_thread(
            httpx.get, f"{rig.platform_url}/admin/patients", timeout=10)).json()
        body = {"by": "card", "value": patients[2]["patient"]["card_no"]}
        client = httpx.AsyncClient(base_url=rig.platform_url + "/api/v1", timeout=10,
                                   limits=httpx.Limits(max_connections=100))

        async def direct() -> None:
            r = await client.post("/patients/identify", json=body,
                                  headers={"Idempotency-Key": uuid.uuid4().hex})
            r.raise_for_status()

        for _ in range(40):
            await direct()
        legs: list[dict[str, Any]] = []
        d_cap, d_err = await _closed_loop(direct, args.seconds, args.lanes)
        d_lat, d_err2 = await open_loop(direct, args.rate, args.seconds)
        legs.append({"leg": "direct", "capacity": d_cap, "errors": d_err + d_err2,
                     "p50": percentile(d_lat, 50), "p99": percentile(d_lat, 99)})
        for instances, engine in ((1, "sqlite"), (1, "postgresql"), (2, "postgresql")):
            legs.append(await run_leg(rig, args, body, instances, engine))
            print(f"  {legs[-1]['leg']}: {legs[-1]['capacity']:.0f} req/s", flush=True)
        await client.aclose()
        return {"legs": legs}
    finally:
        await asyncio.to_thread(rig.stop)


def render(res: dict[str, Any], args: argparse.Namespace, took: float) -> str:
    legs = res["legs"]
    direct = legs[0]["capacity"]
    one_sqlite = legs[1]["capacity"]
    lines = [
        f"`bench/cluster.py`. Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{machine()}; loopback only; the run took {took:.0f} s. {DEVICES} devices "
        f"(in-process Uplinks), `patient.identify`; closed loop: {args.lanes} callers for "
        f"{args.seconds:g} s; open loop: {args.rate:g}/s for {args.seconds:g} s. Every leg "
        "uses the same platform, the same external Mosquitto set-up and the same devices; "
        "every process shares the same cores.",
        "",
        "| leg | capacity req/s | × direct | × one · SQLite | open-loop p50 ms | p99 ms | "
        "errors | requests per instance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in legs:
        share = " / ".join(str(x) for x in g.get("share", [])) or "—"
        lines.append(f"| {g['leg']} | {g['capacity']:.0f} | {g['capacity'] / direct:.2f} | "
                     f"{g['capacity'] / one_sqlite:.2f} | {g['p50']:.1f} | {g['p99']:.1f} | "
                     f"{g['errors']} | {share} |")
    lines += ["", "CPU per request (µs, all processes of that kind; closed-loop phase):", "",
              "| leg | central(s) | PostgreSQL | Mosquitto | platform | devices (bench) |",
              "|---|---|---|---|---|---|"]
    for g in legs[1:]:
        c = g["cpu_us"]
        central = sum(v for k, v in c.items() if k.startswith("central"))
        lines.append(f"| {g['leg']} | {central:.0f} | {c['postgres']:.0f} | "
                     f"{c['mosquitto']:.0f} | {c['platform']:.0f} | {c['bench']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--lanes", type=int, default=32)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--no-write", action="store_true", help="print, do not touch the docs")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files and logs here")
    args = ap.parse_args()
    t0 = time.monotonic()
    if args.workdir is not None:  # kept: the processes' logs stay for reading
        args.workdir.mkdir(parents=True, exist_ok=True)
        res = asyncio.run(bench(args, args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="ykt-bench-cluster-") as tmp:
            res = asyncio.run(bench(args, Path(tmp)))
    text = render(res, args, time.monotonic() - t0)
    print(text)
    if not args.no_write:
        write_section(TITLE, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
