"""Fleet benchmark: one central with its embedded Mosquitto holding 1k … 10k devices.

Starts central (embedded Mosquitto with the mutual-TLS device listener, fleet CA, enrollment
broker) and the reference platform in a work directory (``CentralSite``, the site-in-a-box's
layout without terminals), provisions the largest fleet once through enrollment by claim and
the technician API (``ykt sim fleet``'s provisioning; identities are cached in the work
directory, so ``--workdir`` makes a second run skip it), then for each size N:

1. **Raw broker baseline**, same run, same machine: a second Mosquitto started by this bench
   with the *same* TLS listener settings and files as central's (fleet CA chain, server
   certificate, CRL, ``use_identity_as_username``), the same N simulated devices (same
   certificates, same simulator) sending the same telemetry, and one subscriber — no
   central. Reported: messages delivered / sent, delivery latency (envelope ``ts`` → arrival),
   the broker's CPU.
2. **Central**: the N devices against central's own broker with telemetry every
   ``--telemetry-s`` and a request mix at N / ``--devices-per-req`` requests per second
   (``ykt sim fleet``: every reply checked). While it runs, every few seconds: the time of
   the dashboard's Devices page requests (``/api/status``, ``/api/devices?limit=100``,
   ``/api/alarms``), of the whole ``/api/devices`` list, ``/api/fleet/devices``,
   ``/api/fleet/sites`` and ``/metrics``; the forwarder's ``received`` counter and queue;
   central's and Mosquitto's RSS and CPU. Ingest: the forwarder's counter over the whole
   leg (before the first connect, and once it has everything or stopped moving) against
   all the devices sent, and Mosquitto's drop notices in central's broker log.
   Presence: how many of the N central shows online once they are connected and after
   they left.

Central's memory per device = (RSS with N connected − RSS with the fleet enrolled and none
connected) / N. The section "Fleet" of docs/performance.md is rewritten with the figures
(its ``### …`` notes are kept).

    .venv/bin/python bench/fleet.py                          # 1k, 2k, 5k, 10k
    .venv/bin/python bench/fleet.py --sizes 200 --duration 40 --quick   # a smoke run
    .venv/bin/python bench/fleet.py --workdir var/bench-fleet   # keep the enrolled fleet
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, percentile, write_section  # noqa: E402
from procmem import section_notes, status_kb  # noqa: E402

from central.broker import free_port  # noqa: E402
from yikatong.protocol.envelope import decode, parse_ts  # noqa: E402
from yikatong.site.data import DEMO_BADGE, DEMO_STAFF_PIN  # noqa: E402
from yikatong.site.simfleet import (  # noqa: E402
    CentralSite,
    FleetOptions,
    Target,
    add_sim_fleet_arguments,
    device_ids,
    provision,
    run_fleet,
    summarize,
)

TITLE = "Fleet"
OBSERVER = ("simobs-00001", "kiosk")  # the baseline's subscriber: an identity of its own


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mosquitto_pid(central_pid: int) -> int | None:
    """Central's Mosquitto: the child of central running mosquitto on its main config."""
    children = [c for t in Path(f"/proc/{central_pid}/task").iterdir()
                for c in (t / "children").read_text().split()]  # any of its threads spawns
    for child in children:
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if cmd and cmd[0].endswith(b"mosquitto") and b"enroll" not in b" ".join(cmd):
            return int(child)
    return None


def target_for(site: CentralSite) -> Target:
    p = argparse.ArgumentParser()
    add_sim_fleet_arguments(p)
    return Target.from_args(p.parse_args(["--workdir", str(site.workdir)]))


class RawBroker:
    """A Mosquitto with central's device-listener settings, for the raw delivery baseline."""

    def __init__(self, site: CentralSite, observer: str) -> None:
        src = (site.workdir / "central" / "broker" / "mosquitto.conf").read_text()
        tls = src.split("\nlistener ")[-1].splitlines()[1:]  # central's TLS listener block
        self.dir = site.workdir / "raw-broker"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        (self.dir / "acl").write_text(
            f"user {observer}\ntopic read ykt/v1/dev/+/up/telemetry\n\n"
            "pattern write ykt/v1/dev/%u/#\npattern readwrite ykt/v1/dev/%u/state\n"
            "pattern read ykt/v1/dev/%u/down/#\n")
        user = [ln for ln in src.splitlines() if ln.startswith("user ")]  # as central's
        conf = [*user, "per_listener_settings false", "allow_anonymous false",
                f"acl_file {self.dir / 'acl'}", "max_queued_messages 100000",
                "max_inflight_messages 100", "persistence false", "log_dest stderr",
                "log_type error", "log_type warning", "",
                f"listener {self.port} 127.0.0.1", *tls]
        (self.dir / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        self.log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c",
                                      str(self.dir / "mosquitto.conf")], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the raw baseline broker did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class Observer:
    """One subscriber to every device's telemetry: counts deliveries and their latency."""

    def __init__(self, port: int, ca: Path, key: str, cert: str, dev: str) -> None:
        self.count = 0
        self.latency: list[float] = []
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=mqtt.MQTTv311)
        c.tls_set(ca_certs=str(ca), certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = lambda cl, *_a: cl.subscribe("ykt/v1/dev/+/up/telemetry", 0)
        c.on_subscribe = lambda *_a: self.ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, 60)
        c.loop_start()
        self.c = c
        if not self.ready.wait(10):
            raise RuntimeError("the observer could not subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.count += 1
        env = decode(bytes(msg.payload))
        self.latency.append((dt.datetime.now(dt.UTC) - parse_ts(env.ts)).total_seconds())

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def raw_leg(site: CentralSite, target: Target, n: int, args: argparse.Namespace,
            observer_spec: Any) -> dict[str, Any]:
    """N devices → a bare Mosquitto with central's listener settings → one subscriber."""
    raw = RawBroker(site, OBSERVER[0])
    obs = Observer(raw.port, target.ca_file, observer_spec.key, observer_spec.cert,
                   OBSERVER[0])
    try:
        t = Target(**{**target.__dict__, "brokers": [("127.0.0.1", raw.port)]})
        opts = FleetOptions(devices=n, duration_s=args.duration, rate=0,
                            telemetry_s=args.telemetry_s, event_s=0,
                            cashier_share=args.cashiers, check_presence=False, requests=False)
        cpu0 = cpu_s(raw.proc.pid)
        run = run_fleet(t, opts, say=lambda s: print("  " + s, flush=True))
        time.sleep(2)  # the last samples in flight
        s = summarize(run)
        rss = status_kb(raw.proc.pid)["VmRSS"]
        return {"sent": s["sent"].get("telemetry", 0), "delivered": obs.count,
                "latency_p50": percentile(obs.latency, 50),
                "latency_p99": percentile(obs.latency, 99),
                "latency_max": max(obs.latency, default=float("nan")),
                "broker_cpu_s": cpu_s(raw.proc.pid) - cpu0, "broker_rss_kb": rss,
                "traffic_s": s["traffic_s"], "connected": s["devices"]["connected"],
                "connect_wall_s": s["devices"]["connect_wall_s"]}
    finally:
        obs.stop()
        raw.stop()


#: What the sampler times, every few seconds: the dashboard's Devices page (its first page,
#: status with the incremental audit check, the fleet's alarms), the whole list for
#: comparison (the simulator's presence check reads it), the fleet pages and /metrics.
SAMPLED = ("api/status", "api/devices?limit=100", "api/alarms", "api/devices",
           "api/fleet/devices", "api/fleet/sites", "metrics")
#: The line Mosquitto logs (notice) when it starts dropping messages for a slow client.
DROP_NOTICE = b"Outgoing messages are being dropped"


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` in a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class Sampler:
    """While the central leg runs: API timings, ingest counter and forwarder queue, RSS and
    CPU, every few seconds."""

    def __init__(self, target: Target, central_pid: int, broker_pid: int | None,
                 every_s: float) -> None:
        self.t = target
        self.pids = {"central": central_pid, **({"mosquitto": broker_pid} if broker_pid else {})}
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(headers=self.t.headers(), timeout=60) as http:
            while not self.stop.is_set():
                row: dict[str, Any] = {"t": time.monotonic()}
                for path in SAMPLED:
                    t0 = time.monotonic()
                    r = http.get(f"{self.t.dashboard_url}{path}")
                    row[path] = (time.monotonic() - t0, r.status_code)
                    if path == "api/status" and r.status_code == 200:
                        row["received"] = r.json()["forwarder"]["received"]
                    elif path == "metrics" and r.status_code == 200:
                        row["fwd_queue"] = metric(r.text, "ykt_forwarder_queue")
                for name, pid in self.pids.items():
                    row[f"{name}_rss_kb"] = status_kb(pid)["VmRSS"]
                    row[f"{name}_cpu_s"] = cpu_s(pid)
                self.samples.append(row)
                self.stop.wait(self.every_s)


def received(target: Target) -> int:
    """Central forwarder's ``received`` counter (messages a worker took off its queue)."""
    with httpx.Client(headers=target.headers(), timeout=60) as http:
        return int(http.get(f"{target.dashboard_url}api/status").json()["forwarder"]["received"])


def drain(target: Target, expected: int, *, settle_s: float = 10.0,
          timeout_s: float = 300.0) -> tuple[int, float]:
    """Wait until central has taken ``expected`` messages, or its counter stood still for
    ``settle_s``; returns (the counter, seconds waited)."""
    t0 = last_change = time.monotonic()
    last = received(target)
    while last < expected and time.monotonic() - last_change < settle_s \
            and time.monotonic() - t0 < timeout_s:
        time.sleep(0.5)
        now = received(target)
        if now != last:
            last, last_change = now, time.monotonic()
    return last, time.monotonic() - t0


def central_leg(site: CentralSite, target: Target, n: int, args: argparse.Namespace,
                rss0_kb: int) -> dict[str, Any]:
    """N devices against central with telemetry and a checked request mix.

    Ingest is counted over the whole leg: the forwarder's counter before the first device
    connects, and again once central has taken everything the devices sent (births,
    telemetry and events from their connect on, requests, results, offline states), against
    all the devices sent. A window from the go to a fixed moment after the traffic would
    leave out what was sent before the go (telemetry starts at connect) and what was still
    queued at central at the end, and read as a loss.
    """
    cpid = site.pid("central")
    assert cpid is not None
    bpid = mosquitto_pid(cpid)
    rate = n / args.devices_per_req
    opts = FleetOptions(devices=n, duration_s=args.duration, rate=rate,
                        telemetry_s=args.telemetry_s, event_s=300, cashier_share=args.cashiers,
                        badge=DEMO_BADGE, pin=DEMO_STAFF_PIN, reply_timeout_s=60)
    broker_log = site.workdir / "central" / "broker" / "mosquitto.log"
    log_at = broker_log.stat().st_size if broker_log.exists() else 0
    received0 = received(target)
    sampler = Sampler(target, cpid, bpid, args.sample_s)
    run = run_fleet(target, opts, say=lambda s: print("  " + s, flush=True),
                    during=sampler.thread.start)
    sampler.stop.set()
    sampler.thread.join(120)
    s = summarize(run)
    sent = s["sent"]
    sent_total = sum(sent.values())
    received_end, drain_s = drain(target, received0 + sent_total)
    with broker_log.open("rb") as f:
        f.seek(log_at)
        drops = f.read().count(DROP_NOTICE)
    smp = sampler.samples
    out: dict[str, Any] = {"summary": s, "rate": rate, "sent_total": sent_total,
                           "ingested": received_end - received0, "drain_s": drain_s,
                           "broker_drop_notices": drops,
                           "sent_before_go": sum(s["sent_before_go"].values()),
                           "fwd_queue_max": max((x.get("fwd_queue") or 0 for x in smp),
                                                default=0)}
    ticks = [x for x in smp if "received" in x]
    if len(ticks) >= 2:
        a, b = ticks[0], ticks[-1]
        out["ingest_per_s"] = (b["received"] - a["received"]) / (b["t"] - a["t"])
    if len(smp) >= 2:
        a, b = smp[0], smp[-1]
        span = b["t"] - a["t"]
        out["central_cpu_pct"] = 100 * (b["central_cpu_s"] - a["central_cpu_s"]) / span
        if "mosquitto_cpu_s" in a:
            out["broker_cpu_pct"] = 100 * (b["mosquitto_cpu_s"] - a["mosquitto_cpu_s"]) / span
            out["broker_rss_kb"] = max(x["mosquitto_rss_kb"] for x in smp)
    central_rss = max((x["central_rss_kb"] for x in smp), default=0)
    out["central_rss_kb"] = central_rss
    out["central_kb_per_device"] = (central_rss - rss0_kb) / n if central_rss else float("nan")
    for path in SAMPLED:
        times = [x[path][0] for x in smp if x[path][1] == 200]
        codes = sorted({x[path][1] for x in smp})
        out[path] = {"n": len(times), "p50": percentile(times, 50),
                     "max": max(times, default=float("nan")), "codes": codes}
    out["sent_per_s"] = sum(v for k, v in sent.items() if not k.startswith("state")) / \
        max(s["traffic_s"], 1e-9)
    return out


def _f(x: float, fmt: str = ".2f") -> str:
    return "—" if x != x else format(x, fmt)  # NaN → dash


def report(results: list[dict[str, Any]], meta: dict[str, Any], stopped: str | None) -> str:
    """The performance section (markdown)."""
    lines = [
        f"`bench/fleet.py`, {meta['date']}, {machine()}; central with its embedded Mosquitto "
        f"(mutual-TLS device listener) and the reference platform on the same machine as the "
        f"simulator (`ykt sim fleet`, {meta['procs_note']}). Telemetry every "
        f"{meta['telemetry_s']:g} s per device, a request mix of N/{meta['devices_per_req']:g} "
        f"requests/s (identify, slots, book+cancel, reports at kiosks; sign-in and wallet "
        f"top-ups with pay.status at the {meta['cashiers']:.0%} cashier desks), "
        f"{meta['duration']:g} s of traffic per size. Enrolling the "
        f"{meta['max_n']:,} identities through the claim broker and the technician API took "
        f"{meta['enroll_s']:.0f} s ({meta['enrolled']} enrolled, {meta['reused']} reused "
        "from the cache).",
        "",
        "| devices | connect all | presence up / after | requests/s sent → answered ok | "
        "req p50 / p99 / max (slowest type) | errors | central CPU | central RSS | "
        "KB / device | Mosquitto CPU / RSS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["central"]
        s = c["summary"]
        lat = list(s["latency_s"].values())  # the worst request type's figures
        p50 = max((v["p50"] for v in lat), default=float("nan"))
        p99 = max((v["p99"] for v in lat), default=float("nan"))
        mx = max((v["max"] for v in lat), default=float("nan"))
        ok = sum(v for k, v in s["replies"].items() if k.endswith((" ok", " rejected")))
        pres = s["presence"]
        lines.append(
            f"| {r['n']:,} | {s['devices']['connect_wall_s']:.0f} s "
            f"({s['devices']['connected']:,} ok) | {pres['online_while_up'].get('online', '?')}"
            f" / {pres['online_after_stop'].get('online', '?')} | {c['rate']:.0f} → "
            f"{ok / max(s['traffic_s'], 1e-9):.1f} | {_f(p50, '.3f')} / {_f(p99, '.3f')} / "
            f"{_f(mx, '.2f')} s | {sum(s['errors'].values())} | "
            f"{c.get('central_cpu_pct', float('nan')):.0f} % | "
            f"{c['central_rss_kb'] / 1024:.0f} MB | {_f(c['central_kb_per_device'], '.1f')} | "
            f"{c.get('broker_cpu_pct', float('nan')):.0f} % / "
            f"{c.get('broker_rss_kb', 0) / 1024:.0f} MB |")

    def timing(c: dict[str, Any], path: str) -> str:
        t = c[path]
        if not t["n"]:
            return f"HTTP {'/'.join(map(str, t['codes']))}"
        return f"{_f(t['p50'])} / {_f(t['max'])} s"

    lines += [
        "",
        "The dashboard under that load, sampled every few seconds (p50 / max). The Devices "
        "page asks for `/api/status` (the audit chain checked from where the last check "
        "ended), its first 100 devices (`/api/devices?limit=100`) and `/api/alarms`; the "
        "whole list is there for comparison (the simulator's presence check reads it):",
        "",
        "| devices | /api/status | /api/devices?limit=100 | /api/alarms | /api/devices (all) | "
        "/api/fleet/devices | /api/fleet/sites | /metrics |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["central"]
        lines.append(f"| {r['n']:,} | " + " | ".join(timing(c, p) for p in SAMPLED) + " |")
    lines += [
        "",
        "Ingest against raw broker delivery, same devices, same certificates, same TLS "
        "listener settings (a second Mosquitto with central's listener block and one "
        "subscriber instead of central). Central's ingest is counted over the whole leg "
        "(forwarder counter before the first connect and once it stopped moving, against "
        "everything the devices sent, births to offline states); \"drained\" is how long "
        "the counter still moved after the simulator's run (which ends with its own check, "
        "up to 30 s, that central shows every device offline), \"queue max\" the forwarder's "
        "largest backlog seen by the sampler, \"drop notices\" Mosquitto's \"Outgoing messages "
        "are being dropped\" lines in central's broker log during the leg:",
        "",
        "| devices | telemetry sent/s | raw: delivered / sent | raw latency p50 / p99 / max | "
        "raw Mosquitto CPU / RSS | central: ingested/s (forwarder), all kinds | "
        "central ingested / devices sent | of which sent before the go | queue max | "
        "drained | drop notices |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, c = r["raw"], r["central"]
        tel = b["sent"] / max(b["traffic_s"], 1e-9)
        ratio = c["ingested"] / max(c["sent_total"], 1)
        lines.append(
            f"| {r['n']:,} | {tel:.0f} | {b['delivered']:,} / {b['sent']:,} | "
            f"{_f(b['latency_p50'], '.3f')} / {_f(b['latency_p99'], '.3f')} / "
            f"{_f(b['latency_max'], '.2f')} s | "
            f"{100 * b['broker_cpu_s'] / max(b['traffic_s'], 1e-9):.0f} % / "
            f"{b['broker_rss_kb'] / 1024:.0f} MB | "
            f"{_f(c.get('ingest_per_s', float('nan')), '.0f')} | "
            f"{c['ingested']:,} / {c['sent_total']:,} = {_f(ratio, '.4f')} | "
            f"{c['sent_before_go']:,} | {c['fwd_queue_max']:,.0f} | {c['drain_s']:.0f} s | "
            f"{c['broker_drop_notices']} |")
    sim = [r["central"]["summary"]["simulator"] for r in results]
    lines += ["", "The simulator itself (paho clients on one asyncio loop per process, "
              "docs/architecture.md \"Fleet simulator\"): " + "; ".join(
                  f"{r['n']:,} devices in {x['processes']} processes: "
                  f"{100 * x['cpu_s'] / max(r['central']['summary']['traffic_s'], 1e-9):.0f} % "
                  f"CPU, {x['rss_kb'] / 1024:.0f} MB"
                  for r, x in zip(results, sim, strict=True)) + "."]
    if stopped:
        lines += ["", f"**Stopped:** {stopped}"]
    errs: dict[str, int] = {}
    for r in results:
        for k, v in r["central"]["summary"]["errors"].items():
            errs[k] = errs.get(k, 0) + v
    if errs:
        lines += ["", "Errors the simulator saw:", ""] + [f"- {v} × {k}" for k, v in
                                                         sorted(errs.items(),
                                                                key=lambda kv: -kv[1])[:10]]
    notes = section_notes(TITLE)
    if notes:
        lines += ["", notes]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,2000,5000,10000")
    ap.add_argument("--duration", type=float, default=90.0, help="seconds of traffic per leg")
    ap.add_argument("--telemetry-s", type=float, default=30.0)
    ap.add_argument("--devices-per-req", type=float, default=200.0,
                    help="request rate = devices / this (10k devices: 50 requests/s)")
    ap.add_argument("--cashiers", type=float, default=0.2)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the site (and its enrolled fleet) here for the next run")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/performance.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # central and Mosquitto inherit
    print(f"RLIMIT_NOFILE {soft} → {hard}", flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ykt-bench-fleet-"))
    site = CentralSite(workdir, fleet={"max_open_enrollments": 200})
    site.start()
    results: list[dict[str, Any]] = []
    stopped: str | None = None
    try:
        target = target_for(site)
        max_n = max(sizes)
        print(f"provisioning {max_n:,} devices + the observer …", flush=True)
        prov = asyncio.run(provision(target, [*device_ids(max_n, args.cashiers), OBSERVER],
                                     batch=150, say=lambda s: print("  " + s, flush=True)))
        if prov.failed:
            raise RuntimeError(f"enrollments failed: {prov.failed.most_common(3)}")
        observer_spec = next(s for s in prov.specs if s.dev == OBSERVER[0])
        cpid = site.pid("central")
        assert cpid is not None
        time.sleep(5)
        rss0 = status_kb(cpid)["VmRSS"]
        print(f"central RSS with {max_n:,} enrolled, none connected: {rss0 / 1024:.0f} MB",
              flush=True)
        meta = {"date": dt.date.today().isoformat(), "telemetry_s": args.telemetry_s,
                "devices_per_req": args.devices_per_req, "cashiers": args.cashiers,
                "duration": args.duration, "max_n": max_n, "enroll_s": prov.seconds,
                "enrolled": prov.enrolled, "reused": prov.reused,
                "procs_note": "one worker process per 2,500 devices, at most one per core",
                "rss0_kb": rss0}
        for n in sizes:
            print(f"== {n:,} devices: raw broker baseline", flush=True)
            try:
                raw = raw_leg(site, target, n, args, observer_spec)
                print(f"   raw: {raw}", flush=True)
                print(f"== {n:,} devices: central", flush=True)
                cen = central_leg(site, target, n, args, rss0)
            except Exception as exc:  # measure as far as it goes, say where it stopped
                stopped = f"at {n:,} devices: {type(exc).__name__}: {exc}"
                print(stopped, flush=True)
                break
            s = cen["summary"]
            print(f"   central: ok={s['ok']} problems={s['problems']} "
                  f"ingest={cen.get('ingest_per_s')} sent={cen['sent_per_s']:.1f} "
                  f"rss={cen['central_rss_kb']} api/devices={cen['api/devices']}", flush=True)
            results.append({"n": n, "raw": raw, "central": cen})
            if args.json:
                args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                                default=str))
    finally:
        site.stop()
    if results and not args.no_doc:
        write_section(TITLE, report(results, meta, stopped))
        print("docs/performance.md: section Fleet written", flush=True)
    return 0 if results and not stopped else 1


if __name__ == "__main__":
    sys.exit(main())
