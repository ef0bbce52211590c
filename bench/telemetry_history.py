"""Benchmark of central's telemetry history (central/telemetry_history.py).

(a) ingest: samples through ``TelemetryHistory.record`` (on an event loop, as the forwarder
    calls it) and ``flush`` (the store's writer thread, one transaction per flush) vs plain
    ``sqlite3`` ``executemany`` of the same rows into the same table, same batch size, same
    pragmas (WAL, ``synchronous=FULL``), alternating rounds in the same run; also what one
    ``record`` costs the event loop, and one commit per sample for contrast.
(b) rollup: raw rows folded into the minute and hour tiers per second.
(c) query: one device's last 6 hours (raw), 2 days (minute aggregates, 4-minute buckets)
    and 30 days (hour aggregates) through ``query`` — what the API runs — in a store of
    1,000 and one of 10,000 devices (tables filled by SQL: 6 h of raw samples, 2 days of
    minute rows and 30 days of hour rows per device); median and p95 over 200 devices each,
    and the 10k/1k ratios.
(d) size: bytes per row of each tier measured with SQLite's ``dbstat`` on the store that
    (a) and (b) filled with realistic values, then bytes per device at steady state with the
    default retention (1 day raw at one sample per 30 s, 30 days of minutes, 365 days of
    hours) and for 10,000 devices.

Loopback-free, disk only; about two minutes and 3 GB of temporary files (deleted). Prints the
figures and rewrites the "Telemetry history" section of docs/performance.md (``--no-write``
to skip).

    .venv/bin/python bench/telemetry_history.py [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, percentile, write_section
from central.store import open_store
from central.telemetry_history import (
    TelemetryHistory,
    TelemetrySettings,
    explain,
    query,
    sample_row,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
INTERVAL_S = 30  # the edge's default telemetry_interval_s
PRINTER = {"online": True, "paper": "ok", "cover_open": False, "cutter_error": False}
INSERT = ("INSERT INTO telemetry_raw (dev, ts_ms, paper, backlog, disk, temp, load, "
          "reconnects) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def bodies(n_dev: int, per_dev: int, rng: random.Random) -> list[tuple[str, datetime, dict]]:
    """Realistic telemetry bodies: one per device every 30 s, interleaved like arrivals."""
    out = []
    for k in range(per_dev):
        at = T0 + timedelta(seconds=INTERVAL_S * k)
        for d in range(n_dev):
            paper = "near_end" if rng.random() < 0.05 else "ok"
            out.append((f"kiosk-{d:05d}", at + timedelta(milliseconds=rng.randrange(30_000)), {
                "uptime_s": 3600 + k * INTERVAL_S, "cpu_temp_c": round(rng.uniform(38, 72), 1),
                "disk_free_mb": 18_000 - k // 20 - d % 500,
                "outbox_depth": rng.choice((0, 0, 0, 0, 1, 2, rng.randrange(40))),
                "printer": {**PRINTER, "paper": paper}, "reader_present": True,
                "sam_state": "ok", "load_1m": round(rng.uniform(0.05, 1.8), 2)}))
    return out


# -- (a) ingest, (b) rollup --------------------------------------------------------------------

def ingest(work: Path, samples: list[tuple[str, datetime, dict]], batch: int,
           rounds: int) -> dict[str, Any]:
    store = open_store(work / "ours.db")
    h = TelemetryHistory(store, TelemetrySettings(flush_max_samples=batch))
    base = sqlite3.connect(work / "plain.db", isolation_level=None)
    base.execute("PRAGMA journal_mode=wal")
    base.execute("PRAGMA synchronous=full")
    for row in store.connection().execute(
            "SELECT sql FROM sqlite_master WHERE name LIKE 'telemetry%raw%' AND sql NOT NULL"):
        base.execute(row[0])
    rows = [sample_row(dev, b, at) for dev, at, b in samples]
    per = len(samples) // rounds
    ours, plain, record_us = [], [], []

    async def ours_round(part: list[tuple[str, datetime, dict]]) -> tuple[float, float]:
        t = time.perf_counter()
        rec = 0.0
        for i in range(0, len(part), batch):
            r0 = time.perf_counter()
            for dev, at, b in part[i:i + batch]:
                h.record(dev, b, at)
            rec += time.perf_counter() - r0
            await h.flush()
        return time.perf_counter() - t, rec

    for r in range(rounds):
        part = samples[r * per:(r + 1) * per]
        dt, rec = asyncio.run(ours_round(part))
        ours.append(len(part) / dt)
        record_us.append(rec / len(part) * 1e6)
        prow = rows[r * per:(r + 1) * per]
        t = time.perf_counter()
        for i in range(0, len(prow), batch):
            base.execute("BEGIN")
            base.executemany(INSERT, prow[i:i + batch])
            base.execute("COMMIT")
        plain.append(len(prow) / (time.perf_counter() - t))
    # one commit per sample, for contrast (what batching avoids)
    one = rows[:2000]
    t = time.perf_counter()
    for row in one:
        base.execute(INSERT, row)
    single = len(one) / (time.perf_counter() - t)
    base.close()
    t = time.perf_counter()
    folded = h.rollup()
    roll_s = time.perf_counter() - t
    return {"store": store, "history": h, "ours": ours, "plain": plain,
            "record_us": statistics.median(record_us), "single": single, "n": len(samples),
            "rollup_s": roll_s,
            "folded": folded}


# -- (c) queries at 1k and 10k devices ----------------------------------------------------------

_FILL = """
WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < :devs - 1),
               k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < :per - 1)
"""


def fill(path: Path, devs: int, now: float) -> float:
    """A store with ``devs`` devices' history, filled by SQL; seconds it took."""
    t = time.perf_counter()
    store = open_store(path)
    TelemetryHistory(store)  # the schema
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=off")  # building only; the reads are what is measured
    db.execute("BEGIN")
    raw_n = 6 * 3600 // INTERVAL_S
    db.execute(_FILL + """
        INSERT INTO telemetry_raw (dev, ts_ms, paper, backlog, disk, temp, load, reconnects)
        SELECT printf('kiosk-%05d', i), (:start + j * :iv) * 1000 + i % 30000, 2,
               abs(random()) % 3, 18000 - i % 500, 380 + abs(random()) % 340,
               5 + abs(random()) % 170, 0
        FROM k, d ORDER BY j, i""",
               {"devs": devs, "per": raw_n, "start": int(now) - 6 * 3600, "iv": INTERVAL_S})
    for table, per, step in (("telemetry_minute", 2 * 1440, 60), ("telemetry_hour", 30 * 24,
                                                                  3600)):
        n = step // INTERVAL_S
        db.execute(_FILL + f"""
            INSERT INTO {table} (dev, ts, n, paper_n, paper_sum, paper_min, paper_max,
                backlog_n, backlog_sum, backlog_min, backlog_max, disk_n, disk_sum, disk_min,
                disk_max, temp_n, temp_sum, temp_min, temp_max, load_n, load_sum, load_min,
                load_max, reconnects)
            SELECT printf('kiosk-%05d', i), :start + j * :step, :n, :n, 2 * :n, 2, 2,
                   :n, abs(random()) % (3 * :n), 0, abs(random()) % 40,
                   :n, :n * (18000 - i % 500), 17990 - i % 500, 18000 - i % 500,
                   :n, :n * 500 + abs(random()) % 100, 380 + abs(random()) % 100,
                   600 + abs(random()) % 120, :n, :n * 60 + abs(random()) % 50,
                   5 + abs(random()) % 20, 100 + abs(random()) % 70, 0
            FROM d, k ORDER BY i, j""",
                   {"devs": devs, "per": per, "start": int(now) // step * step - per * step,
                    "step": step, "n": n})
    db.execute("COMMIT")
    db.close()
    return time.perf_counter() - t


def query_times(path: Path, devs: int, now: float, rng: random.Random,
                reps: int) -> dict[str, Any]:
    store = open_store(path)
    out: dict[str, Any] = {"size_gb": path.stat().st_size / 1e9}
    try:
        for name, span, tier, step in (("6h", 6 * 3600, "raw", 0), ("2d", 2 * 86_400,
                                                                    "minute", 240),
                                       ("30d", 30 * 86_400, "hour", 3600)):
            times, points = [], 0
            for _ in range(reps):
                dev = f"kiosk-{rng.randrange(devs):05d}"
                t = time.perf_counter()
                series = query(store, dev, ["paper", "backlog", "disk", "temp", "load",
                                            "reconnects"], now - span, now, tier=tier,
                               step=step or None)
                times.append((time.perf_counter() - t) * 1000)
                points = len(series[1].points)
            out[name] = {"p50": statistics.median(times), "p95": percentile(times, 95),
                         "points": points,
                         "plan": explain(store, "kiosk-00001", tier, now - span, now)[0]}
    finally:
        store.close()
    return out


# -- (d) size ------------------------------------------------------------------------------------

def sizes(store: Any) -> dict[str, dict[str, float]]:
    db = store.connection()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("telemetry_raw", "telemetry_minute", "telemetry_hour")}
    stat = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    raw_bytes = stat["telemetry_raw"] + stat["telemetryraw_dev_ts_ms"]
    return {
        "raw": {"rows": rows["telemetry_raw"], "bytes": raw_bytes,
                "per_row": raw_bytes / rows["telemetry_raw"],
                "index_per_row": stat["telemetryraw_dev_ts_ms"] / rows["telemetry_raw"]},
        "minute": {"rows": rows["telemetry_minute"], "bytes": stat["telemetry_minute"],
                   "per_row": stat["telemetry_minute"] / rows["telemetry_minute"]},
        "hour": {"rows": rows["telemetry_hour"], "bytes": stat["telemetry_hour"],
                 "per_row": stat["telemetry_hour"] / rows["telemetry_hour"]},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (no 10k store)")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    args = ap.parse_args()
    rng = random.Random(13)
    started = time.time()
    n_dev, per_dev = (200, 60) if args.quick else (500, 240)  # 240 × 30 s = 2 hours
    with tempfile.TemporaryDirectory(prefix="ykt-tele-bench-") as tmp:
        work = Path(tmp)
        samples = bodies(n_dev, per_dev, rng)
        a = ingest(work, samples, batch=2000, rounds=4)
        size = sizes(a["store"])
        a["store"].close()
        now = time.time()
        scales = (200, 1000) if args.quick else (1000, 10_000)
        q: dict[int, dict[str, Any]] = {}
        build: dict[int, float] = {}
        for devs in scales:
            path = work / f"fleet-{devs}.db"
            build[devs] = fill(path, devs, now)
            q[devs] = query_times(path, devs, now, rng, 60 if args.quick else 200)
            path.unlink()
    took = time.time() - started

    ours, plain = max(a["ours"]), max(a["plain"])
    small, big = scales
    per_dev_year = {
        "raw": 86_400 // INTERVAL_S * 1 * size["raw"]["per_row"],
        "minute": 1440 * 30 * size["minute"]["per_row"],
        "hour": 24 * 365 * size["hour"]["per_row"],
    }
    total = sum(per_dev_year.values())
    lines = [
        f"`bench/telemetry_history.py`. Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on "
        f"{machine()}; the run took {took:.0f} s. Other engineers' test suites may have been "
        "running on the same machine (the baselines ran in the same run, interleaved).",
        "",
        f"**(a) Ingest** — {a['n']} realistic samples ({n_dev} devices × {per_dev}, one per "
        "30 s) through `TelemetryHistory.record` on an event loop and `flush` (the store's "
        "writer thread, one transaction per 2000 samples) vs plain `sqlite3` `executemany` "
        "of the same rows into the same table and index, 2000 per transaction, same pragmas "
        "(WAL, `synchronous=FULL`); 4 alternating rounds, best of each:",
        "",
        "| ours samples/s | plain inserts samples/s | ratio | one `record` on the loop |",
        "|---|---|---|---|",
        f"| {ours:,.0f} | {plain:,.0f} | **{ours / plain:.2f}** | {a['record_us']:.1f} µs |",
        "",
        f"All rounds: ours {', '.join(f'{x:,.0f}' for x in a['ours'])}; plain "
        f"{', '.join(f'{x:,.0f}' for x in a['plain'])}. For contrast, one commit per sample "
        f"(what batching avoids): {a['single']:,.0f} samples/s. A fleet of 10,000 devices "
        f"at one sample per 30 s sends 333 samples/s: {ours / 333:,.0f}× headroom. Most of "
        "the gap to plain inserts is `record` validating the body again "
        f"({a['record_us']:.1f} µs a sample, on the event loop); the forwarder's health view "
        "has validated it just before.",
        "",
        f"**(b) Rollup** — the same {a['n']} raw rows folded into both tiers in "
        f"{a['rollup_s']:.2f} s: {a['n'] * 2 / a['rollup_s']:,.0f} raw rows read per second "
        f"over the two passes ({a['folded']['minute']} into minutes, {a['folded']['hour']} "
        "into hours), in transactions of `batch_rows` = 20,000.",
        "",
        f"**(c) One device's history at {small:,} and {big:,} devices** — `query()` for all "
        "six metrics (what `GET /api/devices/{id}/telemetry` runs), 200 random devices each, "
        "ms; the store holds 6 h of raw samples, 2 days of minute rows and 30 days of hour "
        "rows per device:",
        "",
        f"| range (tier) | points | {small:,} p50 | {small:,} p95 | {big:,} p50 | {big:,} p95 "
        f"| p50 ratio {big // small}× devices |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, tier in (("6h", "raw"), ("2d", "minute"), ("30d", "hour")):
        s, b = q[small][name], q[big][name]
        lines.append(f"| {name} ({tier}) | {b['points']} | {s['p50']:.2f} | {s['p95']:.2f} | "
                     f"{b['p50']:.2f} | {b['p95']:.2f} | **{b['p50'] / s['p50']:.2f}** |")
    lines += [
        "",
        f"Store files: {q[small]['size_gb']:.2f} GB ({small:,} devices) and "
        f"{q[big]['size_gb']:.2f} GB ({big:,}), built in {build[small]:.0f} s and "
        f"{build[big]:.0f} s. Plans: " + "; ".join(
            f"`{q[big][n]['plan']}`" for n in ("6h", "2d", "30d")) + ". The aggregate "
        "tables are clustered by device (WITHOUT ROWID, key (dev, ts)): one device's range is "
        "a few adjacent pages whatever the fleet size. Raw rows are stored in arrival order, "
        "so one device's 720 samples sit on 720 pages shared with the rest of the fleet, "
        "reached through the (dev, ts_ms) index; that read grows somewhat with the fleet "
        "(and the table is only one day long).",
        "",
        "**(d) Size** — bytes per row measured with `dbstat` on the store (a) and (b) "
        "filled (realistic values; raw includes its (dev, ts_ms) index):",
        "",
        "| tier | rows measured | bytes/row | rows per device kept (defaults) | MB per device "
        "| GB for 10,000 devices |",
        "|---|---|---|---|---|---|",
    ]
    kept = {"raw": 86_400 // INTERVAL_S, "minute": 1440 * 30, "hour": 24 * 365}
    for tier in ("raw", "minute", "hour"):
        lines.append(f"| {tier} | {size[tier]['rows']:,} | {size[tier]['per_row']:.1f} | "
                     f"{kept[tier]:,} | {per_dev_year[tier] / 1e6:.2f} | "
                     f"{per_dev_year[tier] * 10_000 / 1e9:.1f} |")
    lines += [
        f"| **total** | | | | **{total / 1e6:.2f}** | **{total * 10_000 / 1e9:.1f}** |",
        "",
        f"So a year of 10,000 devices at the defaults needs about {total * 10_000 / 1e9:.0f} GB"
        f" at steady state (raw index alone {size['raw']['index_per_row']:.1f} bytes/row). "
        "The minute tier is most of it: at one sample per 30 s a minute row (count, sum, "
        "min, max of five gauges and the reconnects) is larger than the two raw rows it "
        "summarises, and it is kept 30 times longer. Sites that need less disk shorten "
        "`[telemetry] minute_days` (each day is "
        f"{1440 * size['minute']['per_row'] * 10_000 / 1e9:.1f} GB for 10,000 devices).",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("Telemetry history", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
