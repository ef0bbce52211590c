"""Telemetry history: every device's samples, downsampled in three tiers, with retention.

The health view (central/fleet_health.py) keeps only each device's latest sample. This
module keeps the samples themselves so the dashboard can chart the last hours, days and
months (docs/architecture.md, "Telemetry history"; sizes and speeds in
docs/performance.md, "Telemetry history"):

* **raw** — one row per ``telemetry`` message, kept ``raw_days`` (default 1);
* **minute** — per device and minute: count, sum, min and max of each metric, kept
  ``minute_days`` (default 30);
* **hour** — the same per hour, kept ``hour_days`` (default 365).

Metrics (:data:`METRICS`): paper as a level (2 ok, 1 near end, 0 out; unknown is no value),
outbox backlog, free disk, CPU temperature, 1-minute load, and reconnects — the device's
live births central saw since its previous sample (``state`` online, not a retained copy),
counted into the next sample. Values are stored as small integers (temperature in tenths of
a degree, load in hundredths): SQLite stores them in 1–3 bytes instead of an 8-byte REAL.

Writes never slow the forwarder: :meth:`TelemetryHistory.record` (called on the event loop
for a sample the health view accepted) only appends a tuple to a buffer; :meth:`run` hands
the buffer to the store's writer thread every ``flush_interval_s`` (or at
``flush_max_samples``) as one ``executemany`` in one transaction (central/store/core.py).

Rollup is incremental and exact. The raw table's key is an auto-numbered id that is never
reused; each tier keeps a watermark, the last raw id folded into it. A rollup step reads the
raw rows after the watermark (at most ``batch_rows``, and none above the *safe top*, below),
adds them into the tier's rows with an upsert (counts and sums added, min and max kept) and
moves the watermark — in one transaction, holding the watermark's row (``FOR UPDATE`` on
PostgreSQL) so two rollups never fold one range twice. A crash before the commit leaves both
as they were, one after it finds the watermark moved: no sample is ever counted twice or
lost, and a sample arriving late for a minute already rolled up is merged into it. Both
aggregate tiers are built from raw, so raw rows are deleted only once both watermarks passed
them.

The safe top: a watermark may only pass ids that can no longer appear. On SQLite the file
has one writer at a time (``BEGIN IMMEDIATE``) and the id is drawn inside it, so ids commit
in order and the newest committed id is safe. On PostgreSQL several instances insert at
once and draw ids from one sequence before they commit: instance A may draw 10, B draw 11
and commit, and a rollup reading MAX(id) = 11 would move the watermark past 10 for good
before A commits it — a sample lost from the aggregates. So every flush holds a *shared*
advisory lock (:data:`RAW_LOCK`) from before its INSERT until its commit, and the rollup
reads MAX(id) holding the same lock *exclusively*, in a transaction of its own that does
nothing else: while it holds it no flush is open, so every id up to that maximum is committed
or will never exist, and every later flush draws a larger id (the identity sequence hands out
increasing values; its cache is 1). The cost is one short wait of the rollup for the open
flushes, and of new flushes for that one ``SELECT``. The other way considered — roll up only
below the smallest id of any open transaction — needs each open transaction's first id
published somewhere, i.e. a write per flush in another table, for the same guarantee.

Reads: the aggregate tables are keyed (dev, ts) — ``WITHOUT ROWID`` on SQLite, so one
device's rows are contiguous — and a range query reads only them; raw has an index on
(dev, ts_ms). Retention (:meth:`TelemetryHistory.prune_once`, run by central/retention.py)
deletes in batches of short transactions: raw oldest-first by id, the aggregates per device
by key range.

Columns are ``BIGINT`` (epoch milliseconds, sums), the SQL the one both engines take
(central/store/engine.py). With several instances (``[forwarder] share_group``) each instance
flushes the samples it received and only the holder of central's jobs lease rolls up
(:meth:`TelemetryHistory.run`); each instance sees every birth, so reconnects are counted
once per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from central.store import Store
from central.store.engine import Dialect
from central.store.migrations import SCHEMA_LOCK
from yikatong.common.config import StrictModel
from yikatong.common.errors import LocalizedError
from yikatong.protocol.messages import Telemetry

__all__ = ["METRICS", "RAW_LOCK", "TIERS", "Metric", "Series", "TelemetryHistory",
           "TelemetryQueryError", "TelemetrySettings", "ensure_schema", "query", "sample_row"]

log = logging.getLogger(__name__)

Tier = Literal["raw", "minute", "hour"]
#: Bucket length of each aggregate tier, seconds.
TIERS: dict[str, int] = {"minute": 60, "hour": 3600}
#: At most this many points per series in an answer (aggregates are re-bucketed to fit).
MAX_POINTS = 720


class TelemetrySettings(StrictModel):
    """``[telemetry]`` of central.toml."""

    #: Raw samples are kept this long.
    raw_days: int = Field(default=1, ge=1, le=30)
    #: Minute aggregates are kept this long.
    minute_days: int = Field(default=30, ge=1, le=400)
    #: Hour aggregates are kept this long.
    hour_days: int = Field(default=365, ge=1, le=3650)
    #: Buffered samples are written at least this often (one transaction per flush).
    flush_interval_s: float = Field(default=1.0, ge=0.05, le=60.0)
    #: ... or as soon as this many are buffered.
    flush_max_samples: int = Field(default=2000, ge=1, le=100_000)
    #: How often the rollup runs.
    rollup_interval_s: int = Field(default=60, ge=1, le=3600)
    #: Rows per rollup or retention transaction (short transactions: the forwarder's writes
    #: wait behind each one).
    batch_rows: int = Field(default=20_000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _tiers_nest(self) -> TelemetrySettings:
        if not self.raw_days <= self.minute_days <= self.hour_days:
            raise ValueError("telemetry retention must nest: raw_days <= minute_days <= "
                             "hour_days")
        return self


@dataclass(frozen=True, slots=True)
class Metric:
    """One charted metric: its stored column, scale and what it is called."""

    name: str
    label: str
    label_zh: str
    unit: str
    #: Stored value = reading × scale (an integer).
    scale: int = 1
    #: "gauge": average/min/max per bucket; "counter": the total per bucket.
    kind: Literal["gauge", "counter"] = "gauge"


#: The metrics, in chart order. Column names are the metric names.
METRICS: tuple[Metric, ...] = (
    Metric("paper", "Paper", "打印纸", "level"),
    Metric("backlog", "Outbox backlog", "待发送积压", "msgs"),
    Metric("disk", "Free disk", "磁盘剩余", "MB"),
    Metric("temp", "CPU temperature", "CPU 温度", "°C", scale=10),
    Metric("load", "Load (1 min)", "负载（1 分钟）", "", scale=100),
    Metric("reconnects", "Reconnects", "重新连接", "times", kind="counter"),
)
_BY_NAME = {m.name: m for m in METRICS}
_GAUGES = tuple(m.name for m in METRICS if m.kind == "gauge")
_COUNTERS = tuple(m.name for m in METRICS if m.kind == "counter")
PAPER_LEVEL = {"ok": 2, "near_end": 1, "out": 0}


# -- tables -----------------------------------------------------------------------------------
_RAW = "telemetry_raw"
_TABLE = {"minute": "telemetry_minute", "hour": "telemetry_hour"}
_RAW_COLS = ("dev", "ts_ms", *(m.name for m in METRICS))
#: Raw columns that may be NULL (not reported); the rest are always there.
_NULLABLE = frozenset({"paper", "temp", "load"})

#: Shared by every flush until its commit, taken exclusively by the rollup to find the
#: safe top (PostgreSQL; module docstring).
RAW_LOCK = 0x796B7411


def _raw_ddl(dialect: Dialect) -> list[str]:
    """One telemetry sample per row (scaled integers; NULL = not reported)."""
    cols = [f"{c} BIGINT{'' if c in _NULLABLE else ' NOT NULL'}" for c in _RAW_COLS[2:]]
    return [f"CREATE TABLE IF NOT EXISTS {_RAW} (id {dialect.serial_pk}, dev TEXT NOT NULL, "
            f"ts_ms BIGINT NOT NULL, {', '.join(cols)})",
            # the name peewee gave it when the table was first made
            f"CREATE INDEX IF NOT EXISTS telemetryraw_dev_ts_ms ON {_RAW} (dev, ts_ms)"]


def _aggregate_ddl(tier: str, dialect: Dialect) -> str:
    """Per device and bucket: n, and count/sum/min/max per gauge, the total per counter."""
    cols = ["dev TEXT NOT NULL", "ts BIGINT NOT NULL", "n BIGINT NOT NULL"]
    for g in _GAUGES:
        cols += [f"{g}_n BIGINT NOT NULL", f"{g}_sum BIGINT NOT NULL", f"{g}_min BIGINT",
                 f"{g}_max BIGINT"]
    cols += [f"{c} BIGINT NOT NULL" for c in _COUNTERS]
    rowid = "" if dialect.postgres else " WITHOUT ROWID"
    return (f"CREATE TABLE IF NOT EXISTS {_TABLE[tier]} ({', '.join(cols)}, "
            f"PRIMARY KEY (dev, ts)){rowid}")


def ensure_schema(store: Store) -> None:
    """Create the history's tables in central's store (kept as they are if they exist)."""
    with store.atomic():
        store.lock_in_tx(SCHEMA_LOCK)  # two instances starting at once: one after the other
        db = store.connection()
        for ddl in [*_raw_ddl(store.dialect), *(_aggregate_ddl(t, store.dialect) for t in TIERS),
                    # each aggregate tier's watermark: the last raw id folded into it
                    "CREATE TABLE IF NOT EXISTS telemetry_rollup (tier TEXT PRIMARY KEY, "
                    "raw_id BIGINT NOT NULL)"]:
            db.execute(ddl)
        for tier in TIERS:
            db.execute("INSERT INTO telemetry_rollup (tier, raw_id) VALUES (?, 0) "
                       "ON CONFLICT (tier) DO NOTHING", (tier,))


# -- statements (on these tables only; names are constants) -----------------------------------
_INSERT_RAW = (f"INSERT INTO {_RAW} ({', '.join(_RAW_COLS)}) "  # noqa: S608 - names, not input
               f"VALUES ({', '.join('?' * len(_RAW_COLS))})")


def _rollup_sql(tier: str, dialect: Dialect) -> str:
    """Fold raw rows ``id > ? AND id <= ?`` into ``tier`` (an upsert: sums added)."""
    bucket_ms = TIERS[tier] * 1000
    t, least, greatest = _TABLE[tier], dialect.least, dialect.greatest
    cols, sel, upd = ["dev", "ts", "n"], ["dev", f"(ts_ms / {bucket_ms}) * {TIERS[tier]}",
                                           "COUNT(*)"], [f"n = {t}.n + excluded.n"]
    for g in _GAUGES:
        cols += [f"{g}_n", f"{g}_sum", f"{g}_min", f"{g}_max"]
        sel += [f"COUNT({g})", f"COALESCE(SUM({g}), 0)", f"MIN({g})", f"MAX({g})"]
        # The stored row is named by its table: a bare column is ambiguous on PostgreSQL.
        # SQLite's scalar MIN/MAX is NULL when either side is, LEAST/GREATEST skip a NULL:
        # the COALESCE falls back to the other side on both.
        upd += [f"{g}_n = {t}.{g}_n + excluded.{g}_n",
                f"{g}_sum = {t}.{g}_sum + excluded.{g}_sum",
                f"{g}_min = COALESCE({least}({t}.{g}_min, excluded.{g}_min), {t}.{g}_min, "
                f"excluded.{g}_min)",
                f"{g}_max = COALESCE({greatest}({t}.{g}_max, excluded.{g}_max), {t}.{g}_max, "
                f"excluded.{g}_max)"]
    for c in _COUNTERS:
        cols.append(c)
        sel.append(f"SUM({c})")
        upd.append(f"{c} = {t}.{c} + excluded.{c}")
    return (f"INSERT INTO {t} ({', '.join(cols)}) "  # noqa: S608 - names only
            f"SELECT {', '.join(sel)} FROM {_RAW} WHERE id > ? AND id <= ? GROUP BY 1, 2 "
            f"ON CONFLICT (dev, ts) DO UPDATE SET {', '.join(upd)}")


def sample_row(dev: str, body: dict[str, Any], now: datetime,
               reconnects: int = 0) -> tuple[Any, ...] | None:
    """The raw row of a ``telemetry`` body (None if it is not a valid one)."""
    try:
        t = Telemetry.model_validate(body)
    except ValidationError:
        return None
    return (dev, int(now.timestamp() * 1000), PAPER_LEVEL.get(t.printer.paper),
            t.outbox_depth, t.disk_free_mb,
            None if t.cpu_temp_c is None else round(t.cpu_temp_c * 10),
            None if t.load_1m is None else round(t.load_1m * 100), reconnects)


# -- the history ------------------------------------------------------------------------------
class TelemetryHistory:
    """Buffers samples, writes them in batches, rolls them up and prunes them."""

    def __init__(self, store: Store, settings: TelemetrySettings | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.settings = settings or TelemetrySettings()
        self._clock = clock
        self._buf: list[tuple[Any, ...]] = []
        self._births: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._flushing: asyncio.Lock | None = None
        self.stats: dict[str, int] = {"recorded": 0, "invalid": 0, "written": 0, "flushes": 0,
                                      "dropped": 0, "births": 0}
        ensure_schema(store)
        self._rollup_sql = {tier: _rollup_sql(tier, store.dialect) for tier in TIERS}

    # -- intake (event loop; never touches the database) -----------------------------------
    def record(self, dev: str, body: dict[str, Any], now: datetime) -> bool:
        """Buffer one sample of ``dev`` received at ``now``; False if the body is invalid."""
        row = sample_row(dev, body, now, self._births.pop(dev, 0))
        if row is None:
            self.stats["invalid"] += 1
            return False
        self._buf.append(row)
        self.stats["recorded"] += 1
        if len(self._buf) >= self.settings.flush_max_samples and self._wake is not None:
            self._wake.set()
        return True

    def note_birth(self, dev: str) -> None:
        """``dev`` (re)connected: counted into its next sample's ``reconnects``."""
        self._births[dev] = self._births.get(dev, 0) + 1
        self.stats["births"] += 1

    @property
    def buffered(self) -> int:
        """Samples waiting for the next flush."""
        return len(self._buf)

    async def flush(self) -> int:
        """Write the buffered samples now (one transaction on the store's writer)."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            rows, self._buf = self._buf, []
            if not rows:
                return 0
            try:
                await self.store.write(lambda: self.insert_in_tx(rows))
            except Exception:
                log.exception("telemetry history: writing %d samples failed", len(rows))
                keep = 10 * self.settings.flush_max_samples - len(self._buf)
                if keep > 0:
                    self._buf[:0] = rows[-keep:]
                self.stats["dropped"] += max(0, len(rows) - max(keep, 0))
                return 0
            self.stats["written"] += len(rows)
            self.stats["flushes"] += 1
            return len(rows)

    def insert_in_tx(self, rows: list[tuple[Any, ...]]) -> None:
        """Inside a write: store raw sample rows (:func:`sample_row`)."""
        db = self.store.connection()
        if self.store.dialect.postgres:  # held to the commit: see "the safe top" above
            db.execute("SELECT pg_advisory_xact_lock_shared(?)", (RAW_LOCK,))
        db.executemany(_INSERT_RAW, rows)

    async def run(self, *, rollup: bool = True) -> None:
        """Flush every ``flush_interval_s`` (sooner when the buffer fills) and, with
        ``rollup``, roll up every ``rollup_interval_s`` (its own task: a long catch-up never
        holds the flushes back), until cancelled (the buffer is flushed on the way out).

        Every central instance flushes the samples it received; the rollup must run on one
        instance only (``rollup=False`` here, :meth:`rollup_loop` under central's jobs
        lease: central/leases.py).
        """
        self._wake = asyncio.Event()
        roller = asyncio.create_task(self.rollup_loop(), name="telemetry-rollup") \
            if rollup else None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval_s)
                self._wake.clear()
                await self.flush()
        finally:
            if roller is not None:
                roller.cancel()
            await asyncio.shield(self.flush())

    async def rollup_loop(self) -> None:
        """Roll up every ``rollup_interval_s`` until cancelled (one instance: see :meth:`run`)."""
        while True:
            try:
                done = await asyncio.to_thread(self.rollup)
                if any(done.values()):
                    log.debug("telemetry rollup", extra=done)
            except Exception:
                log.exception("telemetry rollup failed")
            await asyncio.sleep(self.settings.rollup_interval_s)

    # -- rollup (a worker thread; short transactions) ---------------------------------------
    def watermarks(self) -> dict[str, int]:
        """Each tier's watermark (the last raw id folded into it)."""
        rows = self.store.connection().execute(
            "SELECT tier, raw_id FROM telemetry_rollup").fetchall()
        return {str(t): int(r) for t, r in rows}

    def safe_top(self) -> int:
        """The highest raw id the rollup may pass: every id up to it is committed or will
        never exist (module docstring, "the safe top")."""
        with self.store.atomic():
            self.store.lock_in_tx(RAW_LOCK)  # PostgreSQL: no flush is open while it is held
            (top,) = self.store.connection().execute(
                f"SELECT COALESCE(MAX(id), 0) FROM {_RAW}").fetchone()  # noqa: S608
        return int(top)

    def rollup_step(self, tier: str) -> int:
        """Fold the next (at most ``batch_rows``) raw rows into ``tier``; rows folded."""
        return self._step(tier, self.safe_top())[0]

    def _step(self, tier: str, top: int) -> tuple[int, int]:
        """Fold raw rows after ``tier``'s watermark, up to ``top``: (rows folded, watermark)."""
        with self.store.atomic():
            db = self.store.connection()
            # the watermark's row held: a second rollup waits, then starts after this one
            lock = self.store.dialect.for_update
            (wm,) = db.execute("SELECT raw_id FROM telemetry_rollup WHERE tier = ?"  # noqa: S608
                               + lock, (tier,)).fetchone()
            wm = int(wm)
            hi = min(top, wm + self.settings.batch_rows)
            if hi <= wm:
                return 0, wm
            db.execute(self._rollup_sql[tier], (wm, hi))
            db.execute("UPDATE telemetry_rollup SET raw_id = ? WHERE tier = ?", (hi, tier))
            # ids may have gaps (a failed flush): count what was folded, not the id span
            (n,) = db.execute(f"SELECT COUNT(*) FROM {_RAW} WHERE id > ? AND id <= ?",  # noqa: S608
                              (wm, hi)).fetchone()
        return int(n), hi

    def rollup(self, *, max_steps: int | None = None) -> dict[str, int]:
        """Roll every tier up to the safe top as of now (or ``max_steps`` steps per tier)."""
        top = self.safe_top()
        out: dict[str, int] = {}
        for tier in TIERS:
            total, steps, wm = 0, 0, -1
            while (max_steps is None or steps < max_steps) and wm < top:
                n, wm = self._step(tier, top)
                steps += 1
                total += n
            out[tier] = total
        return out

    # -- retention (central/retention.py runs it) -------------------------------------------
    def prune_once(self, now: datetime | None = None) -> dict[str, int]:
        """Delete what is past its tier's retention, in batches; rows deleted per tier.

        Raw rows go only once both aggregate tiers have folded them in.
        """
        now = now or self._clock()
        s = self.settings
        t = now.timestamp()
        out = {"raw": self._prune_raw(int((t - s.raw_days * 86_400) * 1000))}
        for tier, days in (("minute", s.minute_days), ("hour", s.hour_days)):
            out[tier] = self._prune_tier(tier, int(t - days * 86_400))
        return out

    def _prune_raw(self, cutoff_ms: int) -> int:
        deleted = 0
        batch = self.settings.batch_rows
        while True:
            with self.store.atomic():
                db = self.store.connection()
                safe = min(self.watermarks().values())
                rows = db.execute(f"SELECT id, ts_ms FROM {_RAW} WHERE id <= ? "  # noqa: S608
                                  "ORDER BY id LIMIT ?", (safe, batch)).fetchall()
                last = None
                for id_, ts_ms in rows:  # oldest first: stop at the first one still kept
                    if ts_ms >= cutoff_ms:
                        break
                    last = id_
                if last is None:
                    return deleted
                n = db.execute(f"DELETE FROM {_RAW} WHERE id <= ?", (last,)).rowcount  # noqa: S608
            deleted += n
            if last != rows[-1][0] or len(rows) < batch:
                return deleted

    def _prune_tier(self, tier: str, cutoff: int) -> int:
        table = _TABLE[tier]
        deleted, dev = 0, ""
        per_tx = max(1, self.settings.batch_rows // 100)  # devices per transaction
        while True:
            with self.store.atomic():
                db = self.store.connection()
                for _ in range(per_tx):
                    # the next device in key order: one index seek (a loose index scan)
                    row = db.execute(f"SELECT dev FROM {table} WHERE dev > ? "  # noqa: S608
                                     "ORDER BY dev LIMIT 1", (dev,)).fetchone()
                    if row is None:
                        return deleted
                    dev = row[0]
                    deleted += db.execute(f"DELETE FROM {table} WHERE dev = ? AND ts < ?",  # noqa: S608
                                          (dev, cutoff)).rowcount


# -- reading ----------------------------------------------------------------------------------
class TelemetryQueryError(LocalizedError):
    """A history query that cannot be answered (bad metric, range or tier)."""

    code = "telemetry_query"

    def __init__(self, reason: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Series:
    """One metric's points: ``(t_ms, value, min, max)``; value is the average of a gauge and
    the total of a counter over each bucket."""

    metric: Metric
    points: list[tuple[int, float, float, float]]


def pick_tier(start: float, end: float, now: float, settings: TelemetrySettings) -> Tier:
    """The finest tier that still holds ``start`` and gives a chartable number of points."""
    span = end - start
    if span <= 12 * 3600 and start >= now - settings.raw_days * 86_400:
        return "raw"
    if span <= 7 * 86_400 and start >= now - settings.minute_days * 86_400:
        return "minute"
    return "hour"


def bucket_step(tier: Tier, span: float) -> int:
    """The bucket length (s) of an answer from ``tier``: the tier's own, or a multiple of it
    so that ``span`` gives at most :data:`MAX_POINTS` points (0 = raw samples as they are)."""
    if tier == "raw":
        return 0
    base = TIERS[tier]
    return base * max(1, math.ceil(span / base / MAX_POINTS))


def query(store: Store, dev: str, metrics: Sequence[str], start: float, end: float, *,
          tier: Tier, step: int | None = None) -> list[Series]:
    """``metrics`` of ``dev`` in [start, end) (epoch seconds) from ``tier``."""
    for name in metrics:
        if name not in _BY_NAME:
            raise TelemetryQueryError("unknown_metric", f"unknown metric {name!r}",
                                      f"未知指标 {name}")
    chosen = [_BY_NAME[n] for n in metrics]
    db = store.connection()
    if tier == "raw":
        cols = ", ".join(m.name for m in chosen)
        rows = db.execute(f"SELECT ts_ms, {cols} FROM {_RAW} WHERE dev = ? AND ts_ms >= ? "  # noqa: S608
                          "AND ts_ms < ? ORDER BY ts_ms",
                          (dev, int(start * 1000), int(end * 1000))).fetchall()
        return [Series(m, [(r[0], v, v, v) for r in rows
                           if (v := _scaled(r[i + 1], m)) is not None])
                for i, m in enumerate(chosen)]
    step = step or bucket_step(tier, end - start)
    base = TIERS[tier]
    if step % base:
        raise TelemetryQueryError("bad_step", f"step must be a multiple of {base} s",
                                  f"步长须为 {base} 秒的整数倍")
    sel = []
    for m in chosen:  # PostgreSQL's SUM of a BIGINT is a NUMERIC (a Decimal): cast back
        if m.kind == "counter":
            sel += ["CAST(SUM(n) AS BIGINT)", f"CAST(SUM({m.name}) AS BIGINT)", "NULL", "NULL"]
        else:
            sel += [f"CAST(SUM({m.name}_n) AS BIGINT)", f"CAST(SUM({m.name}_sum) AS BIGINT)",
                    f"MIN({m.name}_min)", f"MAX({m.name}_max)"]
    lo = int(start) // base * base  # the bucket holding ``start`` counts
    rows = db.execute(f"SELECT (ts / {step}) * {step} AS b, {', '.join(sel)} "  # noqa: S608
                      f"FROM {_TABLE[tier]} WHERE dev = ? AND ts >= ? AND ts < ? "
                      "GROUP BY b ORDER BY b", (dev, lo, int(end))).fetchall()
    out = []
    for i, m in enumerate(chosen):
        pts = []
        for r in rows:
            n, total, lo_v, hi_v = r[1 + 4 * i: 5 + 4 * i]
            if m.kind == "counter":
                pts.append((r[0] * 1000, float(total), float(total), float(total)))
            elif n:
                pts.append((r[0] * 1000, total / n / m.scale, lo_v / m.scale, hi_v / m.scale))
        out.append(Series(m, pts))
    return out


def _scaled(v: int | None, m: Metric) -> float | None:
    return None if v is None else v / m.scale


def explain(store: Store, dev: str, tier: Tier, start: float, end: float) -> list[str]:
    """The database's plan for one device's range read from ``tier`` (tests, the bench):
    SQLite's ``EXPLAIN QUERY PLAN`` details, or PostgreSQL's ``EXPLAIN`` lines."""
    db = store.connection()
    if tier == "raw":
        q = f"SELECT * FROM {_RAW} WHERE dev = ? AND ts_ms >= ? AND ts_ms < ?"  # noqa: S608
        args: Iterable[Any] = (dev, int(start * 1000), int(end * 1000))
    else:
        q = f"SELECT * FROM {_TABLE[tier]} WHERE dev = ? AND ts >= ? AND ts < ?"  # noqa: S608
        args = (dev, int(start), int(end))
    if store.dialect.postgres:
        return [str(r[0]) for r in db.execute("EXPLAIN " + q, tuple(args))]
    return [str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + q, tuple(args))]
