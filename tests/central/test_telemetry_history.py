"""Telemetry history: raw samples from the forwarder, exact rollup, crash safety, retention,
the API's tier choice, one device's query cost, and the device page's charts in Chromium —
each on SQLite and on PostgreSQL (``BOTH_ENGINES``; only the settings check has no store).

The browser test comes last: the browser fixture (module scope) holds an event loop in this
thread from the first browser test to the end of the module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_fleet_fake import FakeFleet, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_support import BOTH_ENGINES, race
from pydantic import ValidationError
from support import wait_until

from central.config import CentralConfig
from central.dashboard.app import create_dashboard
from central.dashboard.auth import StaffAccounts
from central.forwarder import Forwarder
from central.registry import Registry
from central.retention import PrivacySettings, Retention
from central.store import Store, open_store
from central.telemetry_history import (
    TelemetryHistory,
    TelemetrySettings,
    explain,
    query,
    sample_row,
)
from yikatong.common.config import load_config

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OK_PRINTER = {"online": True, "paper": "ok", "cover_open": False, "cutter_error": False}
PAPER = {"ok": 2, "near_end": 1, "out": 0}
ADMIN = "admin-token-for-tests"
PASSWORD = "correct horse battery"


def body(backlog: int = 0, disk: int = 8000, temp: float | None = 50.5, load: float | None = 0.2,
         paper: str = "ok") -> dict[str, Any]:
    """A valid ``telemetry`` body (yikatong/protocol/messages.py ``Telemetry``)."""
    return {"uptime_s": 100, "cpu_temp_c": temp, "disk_free_mb": disk, "outbox_depth": backlog,
            "printer": {**OK_PRINTER, "paper": paper}, "reader_present": True,
            "sam_state": "ok", "load_1m": load}


def rows(store: Store, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return store.connection().execute(sql, args).fetchall()


def record_all(h: TelemetryHistory, samples: list[tuple[str, datetime, dict[str, Any]]]) -> None:
    for dev, at, b in samples:
        assert h.record(dev, b, at)
    asyncio.run(h.flush())


def aggregates(store: Store, tier: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    cols = ("n, backlog_n, backlog_sum, backlog_min, backlog_max, temp_n, temp_sum, temp_min, "
            "temp_max, paper_n, paper_sum, paper_min, paper_max, disk_sum, load_n, load_sum, "
            "reconnects")
    return {(r[0], r[1]): tuple(r[2:])
            for r in rows(store, f"SELECT dev, ts, {cols} FROM telemetry_{tier}")}


def expected(samples: list[tuple[str, datetime, dict[str, Any]]], bucket: int
             ) -> dict[tuple[str, int], tuple[Any, ...]]:
    """The same aggregates computed by hand (scaled integers like the tables)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for dev, at, b in samples:
        groups[(dev, int(at.timestamp() * 1000) // (bucket * 1000) * bucket)].append(b)
    out = {}
    for key, bs in groups.items():
        backlog = [b["outbox_depth"] for b in bs]
        temp = [round(b["cpu_temp_c"] * 10) for b in bs if b["cpu_temp_c"] is not None]
        paper = [PAPER[b["printer"]["paper"]] for b in bs if b["printer"]["paper"] in PAPER]
        load = [round(b["load_1m"] * 100) for b in bs if b["load_1m"] is not None]
        out[key] = (len(bs), len(backlog), sum(backlog), min(backlog), max(backlog),
                    len(temp), sum(temp), min(temp, default=None), max(temp, default=None),
                    len(paper), sum(paper), min(paper, default=None), max(paper, default=None),
                    sum(b["disk_free_mb"] for b in bs), len(load), sum(load), 0)
    return out


@pytest.fixture
def history(tmp_path: Path, central_db):
    store = open_store(central_db(tmp_path))
    h = TelemetryHistory(store, TelemetrySettings(batch_rows=100), clock=lambda: T0)
    yield h
    store.close()


# -- settings -------------------------------------------------------------------------------

def test_settings_nest_and_ship_in_central_toml() -> None:
    cfg = load_config(REPO / "config" / "central.toml", CentralConfig)
    assert (cfg.telemetry.raw_days, cfg.telemetry.minute_days, cfg.telemetry.hour_days) == (
        1, 30, 365)
    with pytest.raises(ValidationError, match="raw_days <= minute_days <= hour_days"):
        TelemetrySettings(raw_days=7, minute_days=3)
    with pytest.raises(ValidationError, match="hour_days"):
        TelemetrySettings(minute_days=30, hour_days=20)
    with pytest.raises(ValidationError):
        TelemetrySettings(flush_interval_s=0)


# -- intake ---------------------------------------------------------------------------------

@BOTH_ENGINES
async def test_forwarder_puts_real_telemetry_in_raw_and_counts_reconnects(
    broker_site, fake_platform, tmp_path: Path
) -> None:
    store = broker_site.store
    h = TelemetryHistory(store)
    fwd = Forwarder(broker_site.forwarder_settings(concurrency=8), store, fake_platform,
                    history=h)
    await fwd.start()
    assert await fwd.wait_connected(10)

    async def until(cond: Any) -> None:
        for _ in range(200):
            if cond():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("timed out")

    up = broker_site.device("kiosk-021", tmp_path)
    try:
        before = datetime.now(UTC)
        await up.start()
        assert await up.wait_connected(10)
        await until(lambda: h.stats["births"] == 1)  # the birth (live, not a retained copy)
        assert up.publish_telemetry(body(backlog=3, temp=48.25, load=0.5))
        await until(lambda: h.stats["recorded"] == 1)
        assert up.publish_telemetry({**body(), "printer": {}})  # invalid: not recorded
        assert up.publish_telemetry(body(backlog=5, paper="near_end", temp=None))
        await until(lambda: h.stats["recorded"] == 2 and fwd.stats["rejected"] == 1)
        await up.stop()  # a reconnect: the next sample counts it
        await up.start()
        assert await up.wait_connected(10)
        await until(lambda: h.stats["births"] == 2)
        assert up.publish_telemetry(body(backlog=0, paper="out", disk=400))
        await until(lambda: h.stats["recorded"] == 3)
        assert await h.flush() == 3
    finally:
        await up.stop()
        await fwd.stop()
    got = rows(store, "SELECT dev, ts_ms, paper, backlog, disk, temp, load, reconnects "
                      "FROM telemetry_raw ORDER BY id")
    assert [r[2:] for r in got] == [
        (2, 3, 8000, 482, 50, 1),  # 48.25 °C kept in tenths (482: round half to even)
        (1, 5, 8000, None, 20, 0),
        (0, 0, 400, 505, 20, 1),
    ]
    assert all(r[0] == "kiosk-021" for r in got)
    assert before.timestamp() * 1000 <= got[0][1] <= datetime.now(UTC).timestamp() * 1000
    assert h.stats["invalid"] == 0  # the health view refused it first


@BOTH_ENGINES
async def test_samples_are_buffered_and_written_in_one_flush(history) -> None:
    store = history.store
    for i in range(50):
        history.record(f"kiosk-{i % 5:03d}", body(backlog=i), T0 + timedelta(seconds=i))
    assert not history.record("kiosk-000", {"uptime_s": -1}, T0)
    assert history.buffered == 50 and rows(store, "SELECT COUNT(*) FROM telemetry_raw") == [(0,)]
    assert await history.flush() == 50
    assert history.stats["flushes"] == 1 and history.stats["invalid"] == 1
    assert rows(store, "SELECT COUNT(*) FROM telemetry_raw") == [(50,)]


@BOTH_ENGINES
async def test_run_flushes_when_the_buffer_fills_and_rolls_up(tmp_path: Path,
                                                               central_db) -> None:
    store = open_store(central_db(tmp_path))
    h = TelemetryHistory(store, TelemetrySettings(flush_interval_s=60, flush_max_samples=10,
                                                  rollup_interval_s=1))
    task = asyncio.create_task(h.run())
    try:
        await asyncio.sleep(0.1)
        for i in range(10):
            h.record("kiosk-001", body(backlog=i), T0 + timedelta(seconds=i))
        for _ in range(100):  # long before the 60 s interval
            if h.stats["written"] == 10:
                break
            await asyncio.sleep(0.02)
        assert h.stats["written"] == 10
        for _ in range(150):  # the rollup task, every second
            if h.watermarks() == {"minute": 10, "hour": 10}:
                break
            await asyncio.sleep(0.02)
        assert h.watermarks() == {"minute": 10, "hour": 10}
        h.record("kiosk-001", body(), T0 + timedelta(seconds=20))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert h.stats["written"] == 11  # the rest is flushed on the way out
    store.close()


# -- rollup ---------------------------------------------------------------------------------

sample_st = st.tuples(
    st.sampled_from(["kiosk-001", "kiosk-002", "cashier-001"]),
    st.integers(min_value=0, max_value=3 * 3600 * 1000 - 1),  # ms after T0: three hours
    st.integers(min_value=0, max_value=500),
    st.one_of(st.none(), st.floats(min_value=-20, max_value=110).map(lambda x: round(x, 1))),
    st.sampled_from(["ok", "near_end", "out", "unknown"]),
    st.integers(min_value=0, max_value=100_000),
)


# central_db gives each example a fresh database (a new temporary directory each time)
@BOTH_ENGINES
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(sample_st, min_size=1, max_size=80), st.integers(min_value=1, max_value=4))
def test_rollup_equals_hand_computed_aggregates(central_db, draw: list[Any], steps: int
                                               ) -> None:
    samples = [(dev, T0 + timedelta(milliseconds=ms),
                body(backlog=b, temp=t, paper=p, disk=d, load=None if b % 3 else b / 100))
               for dev, ms, b, t, p, d in draw]
    with tempfile.TemporaryDirectory() as d:
        store = open_store(central_db(Path(d)))
        try:
            h = TelemetryHistory(store, TelemetrySettings(batch_rows=100), clock=lambda: T0)
            half = len(samples) // 2
            record_all(h, samples[:half])
            h.rollup(max_steps=steps)  # part of it; then the rest arrives and is folded in
            record_all(h, samples[half:])
            h.rollup()
            assert aggregates(store, "minute") == expected(samples, 60)
            assert aggregates(store, "hour") == expected(samples, 3600)
            # and what the API reads: averages in units, per hour
            (temp,) = query(store, "kiosk-001", ["temp"], T0.timestamp(),
                            T0.timestamp() + 3 * 3600, tier="hour")
            want = expected([s for s in samples if s[0] == "kiosk-001"], 3600)
            assert [p[0] // 1000 for p in temp.points] == sorted(
                k[1] for k, v in want.items() if v[5])
            for t_ms, avg, lo, hi in temp.points:
                v = want[("kiosk-001", t_ms // 1000)]
                assert math.isclose(avg, v[6] / v[5] / 10) and lo == v[7] / 10 and \
                    hi == v[8] / 10
        finally:
            store.close()


def _spread(n: int) -> list[tuple[str, datetime, dict[str, Any]]]:
    return [(f"kiosk-{i % 3:03d}", T0 + timedelta(seconds=17 * i),
             body(backlog=i % 11, temp=40 + i % 9, disk=9000 - i)) for i in range(n)]


@BOTH_ENGINES
def test_a_rollup_stopped_after_one_step_never_double_counts(history) -> None:
    store = history.store  # batch_rows = 100: 450 samples take five steps per tier
    samples = _spread(450)
    record_all(history, samples)
    assert history.rollup(max_steps=1) == {"minute": 100, "hour": 100}
    assert history.watermarks() == {"minute": 100, "hour": 100}
    # "central restarts": a new history on the same store carries on from the watermarks
    again = TelemetryHistory(store, history.settings, clock=lambda: T0)
    assert again.rollup(max_steps=1) == {"minute": 100, "hour": 100}
    assert again.rollup() == {"minute": 250, "hour": 250}
    assert again.rollup() == {"minute": 0, "hour": 0}  # idempotent
    assert aggregates(store, "minute") == expected(samples, 60)
    assert aggregates(store, "hour") == expected(samples, 3600)


@BOTH_ENGINES
def test_a_crash_inside_a_rollup_step_rolls_the_step_back(history, monkeypatch) -> None:
    store = history.store
    samples = _spread(250)
    record_all(history, samples)
    history.rollup(max_steps=1)
    real = store.connection

    class Crash(Exception):
        pass

    class Dying:
        """The connection dies when the watermark is to move: after the upsert ran."""

        def __init__(self, conn: Any) -> None:
            self._c = conn

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("UPDATE telemetry_rollup"):
                raise Crash
            return self._c.execute(sql, *args)

    monkeypatch.setattr(store, "connection", lambda: Dying(real()))
    with pytest.raises(Crash):
        history.rollup_step("minute")
    monkeypatch.setattr(store, "connection", real)
    assert history.watermarks()["minute"] == 100
    history.rollup()
    assert aggregates(store, "minute") == expected(samples, 60)
    assert aggregates(store, "hour") == expected(samples, 3600)


@BOTH_ENGINES
def test_a_late_sample_is_merged_into_its_rolled_up_minute(history) -> None:
    store = history.store
    first = [("kiosk-001", T0 + timedelta(seconds=5), body(backlog=4, temp=40))]
    record_all(history, first)
    history.rollup()
    late = [("kiosk-001", T0 + timedelta(seconds=50), body(backlog=10, temp=60))]
    record_all(history, late)
    history.rollup()
    assert aggregates(store, "minute") == expected(first + late, 60)
    (backlog,) = query(store, "kiosk-001", ["backlog"], T0.timestamp(), T0.timestamp() + 60,
                       tier="minute")
    assert backlog.points == [(int(T0.timestamp()) * 1000, 7.0, 4.0, 10.0)]


def _raw_vs_tier(store: Store, tier: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Per device and bucket: (samples, backlog sum) from raw, and as rolled up in ``tier``."""
    size = 60 if tier == "minute" else 3600
    raw = rows(store, f"SELECT dev, (ts_ms / {size * 1000}) * {size} AS b, COUNT(*), "
                      "CAST(SUM(backlog) AS BIGINT) FROM telemetry_raw GROUP BY dev, b "
                      "ORDER BY dev, b")
    rolled = rows(store, f"SELECT dev, ts, n, backlog_sum FROM telemetry_{tier} ORDER BY dev, ts")
    return raw, rolled


@BOTH_ENGINES
def test_two_instances_inserting_while_a_third_rolls_up_lose_and_repeat_nothing(
        tmp_path: Path, central_db) -> None:
    """Three stores on one database (three instances): two flush samples, the third rolls
    up at the same moments (a barrier per round); afterwards every sample is in each tier
    exactly once."""
    target = central_db(tmp_path)
    stores = [open_store(target) for _ in range(3)]
    settings_ = TelemetrySettings(batch_rows=100)
    hs = [TelemetryHistory(s, settings_, clock=lambda: T0) for s in stores]
    try:
        def op(k: int, store: Store, r: int) -> int:
            if k == 2:
                return sum(hs[k].rollup().values())
            batch = [sample_row(f"kiosk-{k}{i % 3}", body(backlog=r * 100 + i),
                                T0 + timedelta(seconds=7 * (r * 25 + i))) for i in range(25)]
            with store.atomic():
                hs[k].insert_in_tx([b for b in batch if b is not None])
            return len(batch)

        results = race(stores, op, rounds=40)
        assert sum(r[0] + r[1] for r in results) == 2 * 40 * 25
        hs[2].rollup()
        for tier in ("minute", "hour"):
            raw, rolled = _raw_vs_tier(stores[0], tier)
            assert sum(r[2] for r in raw) == 2000
            assert rolled == raw, tier
    finally:
        for s in stores:
            s.close()


@pytest.mark.parametrize("store_engine", ["postgresql"], indirect=True)
def test_a_rollup_waits_for_a_flush_that_drew_its_ids_but_has_not_committed(
        tmp_path: Path, central_db) -> None:
    """PostgreSQL: instance A draws raw ids and has not committed. Instance B's flush and a
    rollup on instance C must wait for A (every write takes the store's write lock first,
    central/store/core.py), so the rollup's watermark can never pass A's ids; once A
    commits, every sample is folded exactly once."""
    target = central_db(tmp_path)
    a, b, c = (open_store(target) for _ in range(3))
    ha, hb, hc = (TelemetryHistory(s, TelemetrySettings(), clock=lambda: T0) for s in (a, b, c))
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        with a.atomic():
            ha.insert_in_tx([sample_row("kiosk-a", body(backlog=1), T0)])

            def flush_b() -> None:
                with b.atomic():
                    hb.insert_in_tx([sample_row("kiosk-b", body(backlog=2), T0)])

            flushed = pool.submit(flush_b)
            rollup = pool.submit(hc.rollup)

            def waiting() -> bool:  # both lock requests queued behind A's open write
                return rows(c, "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' "
                               "AND NOT granted") == [(2,)]

            wait_until(waiting, 10, what="B's flush and the rollup waiting for A's")
            assert not flushed.done() and not rollup.done()
            assert rows(c, "SELECT dev FROM telemetry_raw") == []  # nothing committed yet
        flushed.result(10)
        rollup.result(10)
        hc.rollup()  # whichever of B's flush and the first rollup went first
        assert hc.watermarks() == {"minute": 2, "hour": 2}
        for tier in ("minute", "hour"):
            raw, rolled = _raw_vs_tier(c, tier)
            assert rolled == raw
            assert [(r[0], r[2], r[3]) for r in raw] == [("kiosk-a", 1, 1), ("kiosk-b", 1, 2)]
    finally:
        for _ in range(2):
            pool.submit(lambda: (b.db.close(), c.db.close())).result(10)
        pool.shutdown(wait=True)
        for s in (a, b, c):
            s.close()


# -- retention ------------------------------------------------------------------------------

@BOTH_ENGINES
def test_retention_drops_the_right_rows_from_each_tier(history) -> None:
    store = history.store
    ages = {"400d": timedelta(days=400), "40d": timedelta(days=40), "2d": timedelta(days=2),
            "1h": timedelta(hours=1)}
    samples = [(f"kiosk-{i:03d}", T0 - age, body(backlog=i))
               for i, age in enumerate(ages.values()) for _ in range(3)]
    record_all(history, samples)
    history.rollup()
    # a sample not rolled up yet: its raw row stays whatever its age
    record_all(history, [("kiosk-009", T0 - timedelta(days=3), body())])
    retention = Retention(store, None, PrivacySettings(), clock=lambda: T0, telemetry=history)
    done = retention.purge_once()
    assert (done["telemetry_raw"], done["telemetry_minute"], done["telemetry_hour"]) == (
        9, 2, 1)

    def devs(table: str) -> list[str]:
        return [r[0] for r in rows(store, f"SELECT DISTINCT dev FROM {table} ORDER BY dev")]

    assert devs("telemetry_raw") == ["kiosk-003", "kiosk-009"]  # 1 h old; not rolled up
    assert devs("telemetry_minute") == ["kiosk-002", "kiosk-003"]  # within 30 days
    assert devs("telemetry_hour") == ["kiosk-001", "kiosk-002", "kiosk-003"]  # within a year
    history.rollup()
    # now folded in; raw goes oldest first (by arrival), so it goes once the rows that
    # arrived before it have aged out too
    assert history.prune_once(T0)["raw"] == 0
    assert history.prune_once(T0 + timedelta(days=1))["raw"] == 4
    assert devs("telemetry_minute") == ["kiosk-002", "kiosk-003", "kiosk-009"]


@BOTH_ENGINES
def test_raw_retention_works_in_batches(history) -> None:
    store = history.store  # batch_rows = 100
    old = [(f"kiosk-{i % 7:03d}", T0 - timedelta(days=2, seconds=-i), body()) for i in range(350)]
    new = [("kiosk-001", T0 - timedelta(minutes=5), body())]
    record_all(history, old + new)
    history.rollup()
    assert history.prune_once(T0) == {"raw": 350, "minute": 0, "hour": 0}
    assert rows(store, "SELECT COUNT(*) FROM telemetry_raw") == [(1,)]


# -- reads ----------------------------------------------------------------------------------

def _fleet(target: Path | str, n_devices: int) -> Store:
    store = open_store(target)
    h = TelemetryHistory(store, TelemetrySettings(batch_rows=1_000_000))
    samples = [(f"kiosk-{d:04d}", T0 + timedelta(minutes=i), body(backlog=i % 5))
               for i in range(120) for d in range(n_devices)]
    record_all(h, samples)
    h.rollup()
    return store


def _pg_rows_read(store: Store, tier: str, t0: float, t1: float) -> tuple[list[str], int]:
    """PostgreSQL: how one device's range read from ``tier`` reaches the table (the node
    types that read its rows) and how many rows it looked at — returned, plus removed by a
    filter or a recheck."""
    q = ("SELECT * FROM telemetry_raw WHERE dev = ? AND ts_ms >= ? AND ts_ms < ?"
         if tier == "raw" else
         f"SELECT * FROM telemetry_{tier} WHERE dev = ? AND ts >= ? AND ts < ?")
    scale = 1000 if tier == "raw" else 1
    ((plan,),) = store.connection().execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + q,
        ("kiosk-0003", int(t0 * scale), int(t1 * scale))).fetchall()
    reads, looked = [], 0
    todo = [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        todo += node.get("Plans", [])
        if "Relation Name" in node:  # the node that reads the table's rows
            reads.append(node["Node Type"])
            looked += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                       + node.get("Rows Removed by Index Recheck", 0))
    return reads, looked


@BOTH_ENGINES
def test_one_device_among_many_reads_only_its_rows(tmp_path: Path, central_db,
                                                   store_engine: str) -> None:
    small = _fleet(central_db(tmp_path / "5"), 5)
    big = _fleet(central_db(tmp_path / "200"), 200)
    try:
        t0, t1 = T0.timestamp(), T0.timestamp() + 2 * 3600
        want = {"raw": 120, "minute": 120, "hour": 2}  # rows of kiosk-0003 in the range
        if store_engine == "postgresql":
            for store in (small, big):  # the planner's statistics, as autovacuum would make
                for table in ("telemetry_raw", "telemetry_minute", "telemetry_hour"):
                    store.connection().execute(f"ANALYZE {table}")
            for tier, n in want.items():
                assert "Index Cond" in "\n".join(explain(big, "kiosk-0003", tier, t0, t1))  # type: ignore[arg-type]
                reads, looked = _pg_rows_read(big, tier, t0, t1)
                # through the index on (dev, ts…): exactly this device's rows, none more
                assert reads and all(r in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan")
                                     for r in reads), (tier, reads)
                assert looked == n, (tier, looked)
            return
        plans = {tier: explain(big, "kiosk-0003", tier, t0, t1)  # type: ignore[arg-type]
                 for tier in ("raw", "minute", "hour")}
        assert plans == {
            "raw": ["SEARCH telemetry_raw USING INDEX telemetryraw_dev_ts_ms "
                    "(dev=? AND ts_ms>? AND ts_ms<?)"],
            "minute": ["SEARCH telemetry_minute USING PRIMARY KEY (dev=? AND ts>? AND ts<?)"],
            "hour": ["SEARCH telemetry_hour USING PRIMARY KEY (dev=? AND ts>? AND ts<?)"],
        }

        def vm_steps(store: Store, tier: str) -> int:
            steps = [0]

            def tick() -> int:
                steps[0] += 1
                return 0

            conn = store.connection().raw  # sqlite3's own connection: its progress handler
            conn.set_progress_handler(tick, 10)
            try:
                (s,) = query(store, "kiosk-0003", ["backlog"], t0, t1, tier=tier)  # type: ignore[arg-type]
            finally:
                conn.set_progress_handler(None, 10)
            assert len(s.points) == want[tier]
            return steps[0]

        for tier in ("raw", "minute", "hour"):
            # 40 times the devices, about the same work: only this device's rows are read
            assert vm_steps(big, tier) <= 1.25 * vm_steps(small, tier) + 5, tier
    finally:
        small.close()
        big.close()


# -- API ------------------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _kiosk_day(at: datetime, now: datetime) -> tuple[dict[str, Any], bool]:
    """kiosk-001's telemetry at ``at``, and whether it reconnected just before: a daily
    temperature and load cycle, disk filling slowly, paper near its end for half a day and
    out for an hour (then refilled), and a network outage 25–26 hours ago whose backlog
    drains when it reconnects (all within the last two days)."""
    age = (now - at).total_seconds()
    day = 2 * math.pi * at.timestamp() / 86_400
    backlog = int((age - 25 * 3600) / 120) if 25 * 3600 <= age < 26 * 3600 else int(
        at.timestamp()) // 30 % 4 // 3
    paper = ("out" if 30 * 3600 <= age < 31 * 3600 else
             "near_end" if 31 * 3600 <= age < 42 * 3600 else "ok")
    b = body(backlog=backlog, disk=21_000 - int((40 * 86_400 - age) / 600),
             temp=round(47 + 6 * math.sin(day) + (at.timestamp() // 30 % 3) / 2, 1),
             load=round(max(0.05, 0.45 + 0.35 * math.sin(day + 0.5)), 2), paper=paper)
    return b, 25 * 3600 - 600 < age <= 25 * 3600 or 9 * 86_400 - 600 < age <= 9 * 86_400


def _history_site(store: Store, now: datetime
                  ) -> tuple[list[tuple[str, datetime, dict[str, Any]]], list[datetime]]:
    """kiosk-001: a sample every 10 min for 40 days, every 30 s for the last 6 hours (the
    samples and the times of reconnects); kiosk-002 one sample (never in kiosk-001's)."""
    h = TelemetryHistory(store, TelemetrySettings(batch_rows=1_000_000))
    times = [now - timedelta(minutes=10 * i) for i in range(40 * 144, 36, -1)]
    times += [now - timedelta(seconds=30 * i) for i in range(6 * 120, 0, -1)]
    samples, births = [], []
    for at in times:
        b, reconnected = _kiosk_day(at, now)
        if reconnected:
            h.note_birth("kiosk-001")
            births.append(at)
        h.record("kiosk-001", b, at)
        samples.append(("kiosk-001", at, b))
    h.record("kiosk-002", body(backlog=999), now - timedelta(minutes=1))
    asyncio.run(h.flush())
    h.rollup()
    return samples, births


@pytest.fixture
def api_site(tmp_path: Path, central_db):
    store = open_store(central_db(tmp_path))
    now = _now()
    for dev in ("kiosk-001", "kiosk-002"):
        store.add_device(dev, "kiosk", now)
    samples, births = _history_site(store, now)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试医院", accounts=StaffAccounts(store),
                           telemetry=TelemetrySettings())
    yield app, samples, births, now
    store.close()


async def _viewer_token(client: httpx.AsyncClient) -> dict[str, str]:
    boot = {"Authorization": f"Bearer {ADMIN}"}
    r = await client.post("/api/users", headers=boot, json={
        "username": "zhao.min", "name": "赵敏", "role": "viewer", "password": PASSWORD})
    assert r.status_code == 201
    r = await client.post("/api/login", headers={"X-Requested-With": "ykt"}, json={
        "username": "zhao.min", "password": PASSWORD, "want_token": True})
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


@BOTH_ENGINES
async def test_api_picks_the_tier_by_range(api_site) -> None:
    app, samples, births, now = api_site
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        viewer = await _viewer_token(client)
        url = "/api/devices/kiosk-001/telemetry"
        assert (await client.get(url, params={"range": "6h"})).status_code == 401

        async def get(**params: Any) -> dict[str, Any]:
            r = await client.get(url, params=params, headers=viewer)
            assert r.status_code == 200, r.text
            return r.json()

        six = await get(range="6h", metric="backlog,temp")
        assert (six["tier"], six["step_s"]) == ("raw", 0)
        assert [m["name"] for m in six["metrics"]] == ["backlog", "temp"]
        start = datetime.fromisoformat(six["from"]).timestamp()
        assert start >= (now - timedelta(hours=6)).timestamp()
        recent = [s for s in samples if s[1].timestamp() >= start]
        backlog = six["metrics"][0]["points"]
        assert [p[1] for p in backlog] == [s[2]["outbox_depth"] for s in recent]
        assert six["metrics"][1]["unit"] == "°C" and six["metrics"][1]["label_zh"] == "CPU 温度"

        two = await get(range="2d", metric="backlog")
        assert (two["tier"], two["step_s"]) == ("minute", 240)  # 2880 minutes → 720 points
        pts = two["metrics"][0]["points"]
        assert len(pts) <= 720
        t_ms, avg, lo, hi = pts[len(pts) // 2]
        inside = [s[2]["outbox_depth"] for s in samples
                  if t_ms <= s[1].timestamp() * 1000 < t_ms + 240_000]
        assert inside and avg == round(sum(inside) / len(inside), 3)
        assert (lo, hi) == (min(inside), max(inside))

        month = await get(range="30d")
        assert (month["tier"], month["step_s"]) == ("hour", 3600)
        assert [m["name"] for m in month["metrics"]] == [
            "paper", "backlog", "disk", "temp", "load", "reconnects"]
        by = {m["name"]: m for m in month["metrics"]}
        assert 700 <= len(by["disk"]["points"]) <= 721
        assert by["reconnects"]["kind"] == "counter"
        lo = datetime.fromisoformat(month["from"]).timestamp() // 3600 * 3600
        assert sum(p[1] for p in by["reconnects"]["points"]) == sum(
            1 for at in births if at.timestamp() >= lo) == 2
        paper = by["paper"]["points"]  # the hour it was out, the half day near its end
        assert [p[2] for p in paper].count(0) in (1, 2) and min(p[1] for p in paper) < 1
        assert sum(1 for p in paper if p[1] == 1) >= 9 and paper[-1][1] == 2

        # from/to: the same choice by span; a forced tier; kiosk-002 stays out of it
        frm = (now - timedelta(days=3)).isoformat()
        assert (await get(**{"from": frm}))["tier"] == "minute"
        old = (now - timedelta(days=35)).isoformat()
        assert (await get(**{"from": old, "to": (now - timedelta(days=34)).isoformat()}))[
            "tier"] == "hour"  # past the minute tier's 30 days
        forced = await get(range="6h", tier="minute", metric="backlog")
        assert forced["tier"] == "minute" and forced["step_s"] == 60
        assert all(p[3] < 999 for p in forced["metrics"][0]["points"])

        for params, status, code in (({"range": "6x"}, 400, "bad_range"),
                                     ({"range": "0h"}, 400, "bad_range"),
                                     ({"range": "2d", "from": frm}, 400, "bad_range"),
                                     ({"from": "yesterday"}, 400, "bad_time"),
                                     ({"metric": "temp,bogus"}, 400, "unknown_metric")):
            r = await client.get(url, params=params, headers=viewer)
            assert r.status_code == status and r.json()["error"] == code, r.text
            assert r.json()["message_zh"]
        r = await client.get("/api/devices/kiosk-404/telemetry", headers=viewer)
        assert r.status_code == 200 and all(not m["points"] for m in r.json()["metrics"])


# -- the device page in Chromium (last) -------------------------------------------------------

def _fill_in_thread(store: Store, now: datetime) -> None:
    try:
        _history_site(store, now)
    finally:
        store.db.close()  # this thread's connection


@pytest.fixture
def chart_site(tmp_path: Path, central_db):
    store = open_store(central_db(tmp_path))
    now = _now()
    store.add_device("kiosk-001", "kiosk", now)
    store.apply_state("kiosk-001", online=True, boot_seq=1, version="1.4.0", now=now)
    # Playwright's sync API holds this thread's event loop: the history is filled on another
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_fill_in_thread, store, now).result(120)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="示范市第一人民医院", fleet=FakeFleet(),
                           accounts=StaffAccounts(store), telemetry=TelemetrySettings())
    with serve(app) as url:
        httpx.post(f"{url}/api/users", headers={"Authorization": f"Bearer {ADMIN}"},
                   timeout=10, json={"username": "zhao.min", "name": "赵敏", "role": "viewer",
                                     "password": PASSWORD}).raise_for_status()
        yield url
    store.close()


@BOTH_ENGINES
def test_device_page_draws_the_charts(browser, chart_site, screens_dir) -> None:
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN",
                              timezone_id="UTC")
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(chart_site + "/#/device/kiosk-001")
        page.fill("#login-user", "zhao.min")
        page.fill("#login-pass", PASSWORD)
        page.click("#login-btn")
        charts = page.locator("#tele-charts .chart")
        page.wait_for_function("document.querySelectorAll('#tele-charts .chart').length === 6",
                               timeout=15_000)
        assert page.locator("#tele-tier").inner_text().startswith("原始采样 raw samples")

        def points(metric: str) -> int:
            return int(page.locator(f".chart[data-metric='{metric}'] svg")
                       .get_attribute("data-points") or 0)

        assert 700 <= points("temp") <= 720 and points("backlog") == points("temp")
        temp = page.locator(".chart[data-metric='temp']")
        assert "CPU 温度 CPU temperature" in temp.inner_text() and "°C" in temp.inner_text()
        assert temp.locator("polyline").count() >= 1
        assert "正常" in page.locator(".chart[data-metric='paper']").inner_text()  # axis words
        page.click("#tele-range button[data-range='2d']")
        page.locator("#tele-tier", has_text="分钟汇总 per-minute").wait_for(timeout=10_000)
        assert 100 <= points("disk") <= 720
        assert temp.locator("polygon").count() >= 1  # the min–max band
        assert page.locator(".chart[data-metric='reconnects'] rect").count() >= 1
        page.locator("[data-testid='telemetry']").scroll_into_view_if_needed()
        page.screenshot(path=screens_dir / "dashboard-device-telemetry.png", full_page=True)
        page.click("#tele-range button[data-range='30d']")
        page.locator("#tele-tier", has_text="小时汇总 per-hour").wait_for(timeout=10_000)
        assert 700 <= points("disk") <= 721 and charts.count() == 6
        assert problems == []
    finally:
        ctx.close()
