"""Central's store: devices, request dedup log, hash-chained audit, recent events, payments.

peewee on SQLite (WAL, ``synchronous=FULL``) for a single site; the same models map to
PostgreSQL when several ``ykt central`` instances share the load. Models are built per store
(so tests can open several stores in one process).

Two ways in. The plain methods are synchronous and short (registry, dashboard, payments).
The forwarder's hot path uses :meth:`Store.write`: one writer thread owns the write
connection, runs up to ``MAX_BATCH`` queued operations in one ``BEGIN IMMEDIATE … COMMIT``
(group commit: one fsync for many requests) and resolves each caller's future with
``call_soon_threadsafe`` only after that commit — so nothing is published before the
commit holding it. Both paths hold the same in-process lock while writing. The audit chain
head (seq, hash) is kept in memory, so an audit record is one INSERT; a conflicting seq
(another process appended) reloads it. ``last_seen`` touches are buffered and flushed by
the writer once a second, and the devices' enabled flags are cached (dropped on every
registry write, and after ``DEVICE_CACHE_S`` for writes made by other processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw

from central import fleet_health
from yikatong.protocol.audit import GENESIS_HASH, audit_hash, audit_hash_text
from yikatong.protocol.envelope import canonical_json, format_ts

__all__ = [
    "AuditEntry",
    "Begin",
    "DeviceInfo",
    "Store",
    "StoreError",
    "open_store",
]

MAX_BATCH = 256  # operations per group commit
TOUCH_FLUSH_S = 1.0  # last_seen is written at most this often
DEVICE_CACHE_S = 5.0  # bounds how long another process's registry write goes unseen

# The hot path's statements as fixed SQL (peewee's query building costs more CPU than
# SQLite does here). Table names are peewee's defaults for the models below.
_SQL_TOUCH = "UPDATE device SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE id = ?"
_SQL_REQ_GET = (
    "SELECT dev, type, body_hash, state, reply, received_at, owner FROM requestlog WHERE id = ?"
)
_SQL_REQ_NEW = (
    "INSERT INTO requestlog (id, dev, type, body_hash, state, received_at, owner) "
    "VALUES (?, ?, ?, ?, 'received', ?, ?)"
)
_SQL_REQ_TAKE = "UPDATE requestlog SET received_at = ?, owner = ? WHERE id = ?"
_SQL_REQ_DONE = "UPDATE requestlog SET state = 'done', reply = ?, done_at = ? WHERE id = ?"
_SQL_AUDIT = (
    "INSERT INTO auditrecord (seq, ts, actor, action, detail, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()


class StoreError(Exception):
    """The store is unusable or an operation violated its rules."""

    def __init__(self, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.message = message
        self.message_zh = message_zh


def _ts(dt: datetime) -> float:
    if dt.tzinfo is None:
        raise StoreError("naive datetime given to the store", "时间缺少时区")
    return dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered device as a value."""

    id: str
    role: str
    enabled: bool
    online: bool
    last_seen: datetime | None
    last_boot_seq: int | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Begin:
    """Outcome of :meth:`Store.begin_request`: new / done (with reply) / busy / mismatch."""

    status: str  # "new" | "done" | "busy" | "mismatch"
    reply: bytes | None = None
    #: "new" for a row another (dead) worker had claimed: the platform may have been asked.
    retaken: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record as a value."""

    seq: int
    ts: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def _flat(detail: dict[str, Any]) -> bool:
    """True when ``detail`` is already what JSON would give back (str keys, plain values)."""
    return all(
        type(k) is str and (v is None or type(v) in (str, int, bool))
        for k, v in detail.items()
    )


class Store:
    """Central's database; open with :func:`open_store`."""

    def __init__(self, path: Path, *, events_per_device: int = 200) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events_per_device = events_per_device
        self.db = pw.SqliteDatabase(
            str(self.path),
            pragmas={"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1},
            timeout=10,
        )
        self._lock = threading.RLock()
        db = self.db

        class Base(pw.Model):
            class Meta:
                database = db

        class Device(Base):
            id = pw.CharField(primary_key=True, max_length=64)
            role = pw.CharField(max_length=16)
            enabled = pw.BooleanField(default=True)
            created_at = pw.FloatField()
            last_seen = pw.FloatField(null=True)
            last_boot_seq = pw.IntegerField(null=True)
            online = pw.BooleanField(default=False)
            version = pw.CharField(max_length=64, null=True)

        class RequestLog(Base):
            id = pw.CharField(primary_key=True, max_length=128)
            dev = pw.CharField(max_length=64, index=True)
            type = pw.CharField(max_length=64)
            body_hash = pw.CharField(max_length=64)
            state = pw.CharField(max_length=16)  # received | done
            reply = pw.BlobField(null=True)
            received_at = pw.FloatField()
            done_at = pw.FloatField(null=True)
            # "<client_id>/<boot nonce>" of the forwarder working on it (see begin_request).
            owner = pw.CharField(max_length=100, null=True)
            # 1 once retention replaced a personal reply by its minimised form.
            purged = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

        class AuditRecord(Base):
            seq = pw.IntegerField(primary_key=True)
            ts = pw.FloatField()
            actor = pw.CharField(max_length=64)
            action = pw.CharField(max_length=64)
            detail = pw.TextField()
            prev_hash = pw.CharField(max_length=64)
            hash = pw.CharField(max_length=64)

        class DeviceAudit(Base):
            # The devices' own hash-chained audit records (``audit`` events), one row per
            # (dev, seq); ``status`` is the check made on arrival: ok | gap | bad_hash |
            # broken_link | conflict (a second, different record under the same seq).
            dev = pw.CharField(max_length=64)
            seq = pw.IntegerField()
            ts = pw.CharField(max_length=32)
            actor = pw.CharField(max_length=64)
            action = pw.CharField(max_length=64)
            detail = pw.TextField()
            prev_hash = pw.CharField(max_length=64)
            hash = pw.CharField(max_length=64)
            status = pw.CharField(max_length=16)
            received_at = pw.FloatField()

            class Meta:
                primary_key = pw.CompositeKey("dev", "seq")

        class DeviceEvent(Base):
            dev = pw.CharField(max_length=64, index=True)
            kind = pw.CharField(max_length=16)
            type = pw.CharField(max_length=64)
            ts = pw.FloatField()
            body = pw.TextField()

        class DeviceHealthRow(Base):
            # One row per device, overwritten: the latest telemetry merged with the events
            # that update it sooner (central.fleet_health). Table name: devicehealthrow.
            dev = pw.CharField(primary_key=True, max_length=64)
            updated_at = pw.FloatField()
            body = pw.TextField()

        class Payment(Base):
            # Keyed by the pay.create request id: an unknown outcome has no payment_id yet.
            request_id = pw.CharField(primary_key=True, max_length=128)
            payment_id = pw.CharField(max_length=128, null=True, index=True)
            dev = pw.CharField(max_length=64, index=True)
            patient_id = pw.CharField(max_length=64)
            amount_fen = pw.IntegerField()
            method = pw.CharField(max_length=16)
            state = pw.CharField(max_length=16, index=True)
            created_at = pw.FloatField()
            updated_at = pw.FloatField()
            deadline = pw.FloatField()
            checks = pw.IntegerField(default=0)
            reason = pw.CharField(max_length=200, null=True)
            # The request body for re-asking with the same key; None when it held a wallet
            # payment code, which is never stored (those are resolved by the device's resend).
            request_body = pw.TextField(null=True)
            # 1 once central sent the device a final answer (approved/declined/reversed) for
            # this payment; an approved payment the device never heard of is not resolved.
            told = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

        self.Device: Any = Device
        self.RequestLog: Any = RequestLog
        self.AuditRecord: Any = AuditRecord
        self.DeviceEvent: Any = DeviceEvent
        self.DeviceAudit: Any = DeviceAudit
        self.Payment: Any = Payment
        self.DeviceHealthRow: Any = DeviceHealthRow
        self.db.connect(reuse_if_open=True)
        self.db.create_tables([Device, RequestLog, AuditRecord, DeviceEvent, Payment,
                               DeviceHealthRow, DeviceAudit])
        # The dashboard's security events are audit records picked by action.
        self.db.execute_sql("CREATE INDEX IF NOT EXISTS auditrecord_action ON auditrecord "
                            "(action, seq)")
        cols = {c.name for c in self.db.get_columns("requestlog")}
        if "owner" not in cols:  # a store made before owners were recorded
            self.db.execute_sql("ALTER TABLE requestlog ADD COLUMN owner VARCHAR(100)")
        if "told" not in {c.name for c in self.db.get_columns("payment")}:
            self.db.execute_sql("ALTER TABLE payment ADD COLUMN told INTEGER NOT NULL DEFAULT 0")
        # Requests central sent to the platform without learning the outcome: a resend of
        # one is asked again (same idempotency key), never answered "expired".
        self.db.execute_sql("CREATE TABLE IF NOT EXISTS attempted (id TEXT PRIMARY KEY, "
                            "dev TEXT NOT NULL, at REAL NOT NULL)")
        if "purged" not in cols:  # a store made before replies were minimised on retention
            self.db.execute_sql("ALTER TABLE requestlog ADD COLUMN purged INTEGER NOT NULL "
                                "DEFAULT 0")
        self._head: tuple[int, str] | None = None  # audit chain head; None = read it first
        self._enabled: dict[str, tuple[bool, float]] = {}
        self._roles: dict[str, tuple[str | None, float]] = {}
        self._touch_lock = threading.Lock()
        self._touches: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()

    def close(self) -> None:
        """Stop the writer (after its queue and buffered touches are written) and close."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._q.put(_STOP)
            writer.join(30)
        self.flush_touches()
        self.db.close()

    # -- group commit --------------------------------------------------------------------
    def write(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` in the writer's next transaction; the future resolves after its COMMIT.

        ``fn`` runs on the writer thread inside ``BEGIN IMMEDIATE`` together with other
        callers' operations, so it must only touch the database (and raise to fail). Call
        from a running event loop.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ensure_writer()
        self._q.put((fn, fut, loop))
        return fut

    def _ensure_writer(self) -> None:
        if self._writer is not None:
            return
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._writer_main, name=f"store-writer:{self.path.name}", daemon=True
                )
                self._writer.start()

    def _writer_main(self) -> None:
        try:
            while True:
                try:
                    first = self._q.get(timeout=TOUCH_FLUSH_S)
                except queue.Empty:
                    first = None
                batch = [] if first is None else [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                batch = [item for item in batch if item is not _STOP]
                touches = self._take_touches(force=stop)
                if batch or touches:
                    self._run_batch(batch, touches)
                if stop:
                    return
        finally:
            self.db.close()  # this thread's connection

    def _run_batch(self, batch: list[Any], touches: dict[str, float]) -> None:
        results: list[Any] = []
        try:
            with self.atomic():
                if touches:
                    self._write_touches(touches)
                for fn, _fut, _loop in batch:
                    results.append(fn())
        except Exception as exc:
            if touches:  # not written: keep them for the next flush
                with self._touch_lock:
                    for dev, t in touches.items():
                        self._touches[dev] = max(t, self._touches.get(dev, t))
            if len(batch) > 1:
                # One bad operation must not fail the others: each again on its own.
                for item in batch:
                    self._run_batch([item], {})
                return
            _settle([(loop, fut, None, exc) for _fn, fut, loop in batch])
            if not batch:
                log.warning("writing last_seen failed: %s", exc)
            return
        _settle([(loop, fut, result, None)
                 for (_fn, fut, loop), result in zip(batch, results, strict=True)])
    def atomic(self) -> Any:
        """A write transaction (``BEGIN IMMEDIATE``) that also holds the in-process lock."""
        return _Atomic(self)

    # -- devices -----------------------------------------------------------------------
    def add_device(self, dev: str, role: str, now: datetime) -> DeviceInfo:
        """Insert a device (enabled) or re-enable it with ``role``."""
        D = self.Device
        with self.atomic():
            row = D.get_or_none(D.id == dev)
            if row is None:
                D.create(id=dev, role=role, enabled=True, created_at=_ts(now))
            else:
                D.update(role=role, enabled=True).where(D.id == dev).execute()
        self._enabled.pop(dev, None)
        self._roles.pop(dev, None)
        info = self.device(dev)
        if info is None:  # pragma: no cover - just inserted in the same process
            raise StoreError(f"device {dev} vanished", "设备记录丢失")
        return info

    def set_enabled(self, dev: str, enabled: bool) -> bool:
        """Enable/disable a device; False when it is not registered."""
        with self.atomic():
            done = bool(
                self.Device.update(enabled=enabled).where(self.Device.id == dev).execute()
            )
        self._enabled.pop(dev, None)
        return done

    def device_enabled(self, dev: str) -> bool:
        """True when ``dev`` is registered and enabled (cached: the forwarder asks per message)."""
        hit = self._enabled.get(dev)
        now = time.monotonic()
        if hit is not None and now - hit[1] < DEVICE_CACHE_S:
            return hit[0]
        row = self.Device.select(self.Device.enabled).where(self.Device.id == dev).first()
        ok = row is not None and bool(row.enabled)
        self._enabled[dev] = (ok, now)
        return ok

    def device_role(self, dev: str) -> str | None:
        """The registered role of ``dev`` (cached like :meth:`device_enabled`), or None."""
        hit = self._roles.get(dev)
        now = time.monotonic()
        if hit is not None and now - hit[1] < DEVICE_CACHE_S:
            return hit[0]
        row = self._raw().execute("SELECT role FROM device WHERE id = ?", (dev,)).fetchone()
        role = None if row is None else str(row[0])
        self._roles[dev] = (role, now)
        return role

    def device(self, dev: str) -> DeviceInfo | None:
        """The device ``dev`` or None."""
        r = self.Device.get_or_none(self.Device.id == dev)
        if r is None:
            return None
        last_seen = r.last_seen
        buffered = self._touches.get(dev)
        if buffered is not None and (last_seen is None or buffered > last_seen):
            last_seen = buffered  # heard from, not flushed yet
        return DeviceInfo(
            r.id, r.role, bool(r.enabled), bool(r.online), _dt(last_seen), r.last_boot_seq,
            r.version,
        )

    def devices(self) -> list[DeviceInfo]:
        """All devices, by id."""
        return [
            d for d in (self.device(r.id) for r in self.Device.select().order_by(self.Device.id))
            if d is not None
        ]

    def touch(self, dev: str, now: datetime) -> None:
        """Record that ``dev`` was heard from at ``now`` (written within ``TOUCH_FLUSH_S``)."""
        t = _ts(now)
        with self._touch_lock:
            if t > self._touches.get(dev, 0.0):
                self._touches[dev] = t
        self._ensure_writer()

    def flush_touches(self) -> None:
        """Write buffered ``last_seen`` values now."""
        touches = self._take_touches(force=True)
        if touches:
            with self.atomic():
                self._write_touches(touches)

    def _take_touches(self, *, force: bool) -> dict[str, float]:
        if not force and time.monotonic() - self._last_flush < TOUCH_FLUSH_S:
            return {}
        with self._touch_lock:
            touches, self._touches = self._touches, {}
        self._last_flush = time.monotonic()
        return touches

    def _write_touches(self, touches: dict[str, float]) -> None:
        # MAX: a birth (apply_state) may have written a newer last_seen meanwhile.
        self._raw().executemany(
            _SQL_TOUCH, [(t, dev) for dev, t in touches.items()]
        )

    def apply_state(
        self, dev: str, *, online: bool, boot_seq: int, version: str | None, now: datetime
    ) -> bool:
        """Apply a birth/Will; a Will older than the last birth is ignored (returns False)."""
        with self.atomic():
            return self._apply_state(dev, online=online, boot_seq=boot_seq, version=version,
                                     now=now)

    def _apply_state(
        self, dev: str, *, online: bool, boot_seq: int, version: str | None, now: datetime
    ) -> bool:
        D = self.Device
        r = D.get_or_none(D.id == dev)
        if r is None:
            return False
        last = r.last_boot_seq
        if online:
            if last is not None and boot_seq < last:
                return False  # a stale retained birth of an earlier boot
            D.update(
                online=True, last_boot_seq=boot_seq, last_seen=_ts(now),
                version=version if version is not None else r.version,
            ).where(D.id == dev).execute()
            return True
        # The Will of boot N arrives after the birth of boot N+1 when the broker notices
        # the dead TCP connection late: that device is online, keep it so.
        if last is not None and boot_seq < last:
            return False
        D.update(online=False, last_boot_seq=boot_seq).where(D.id == dev).execute()
        return True

    # -- request dedup -----------------------------------------------------------------
    def begin_request(  # noqa: PLR0917
        self, req_id: str, dev: str, type_: str, body_hash: str, now: datetime, lease_s: float,
        owner: str | None = None,
    ) -> Begin:
        """Claim request ``req_id`` for processing, or say why not (done/busy/mismatch).

        A ``received`` row older than ``lease_s`` belongs to a forwarder that died mid-call;
        it is taken over (the platform's idempotency key makes the repeat call harmless).
        ``owner`` is ``"<client_id>/<boot nonce>"``: a row left by an earlier boot of the
        same client id is taken over at once — that process is gone (the broker allows one
        connection per client id), so waiting out the lease would only delay the device.
        """
        with self.atomic():
            return self._begin(req_id, dev, type_, body_hash, _ts(now), lease_s, owner)

    def _begin(  # noqa: PLR0917
        self, req_id: str, dev: str, type_: str, body_hash: str, t: float, lease_s: float,
        owner: str | None, *, legacy: Callable[[], str] | None = None,
    ) -> Begin:
        # ``legacy()``: the body hash as an older version computed it (asked only on a
        # mismatch), so a resend across an upgrade is not mistaken for another body.
        r = self._raw().execute(_SQL_REQ_GET, (req_id,)).fetchone()
        if r is None:
            self._raw().execute(_SQL_REQ_NEW, (req_id, dev, type_, body_hash, t, owner))
            return Begin("new")
        r_dev, r_type, r_hash, r_state, r_reply, r_received, r_owner = r
        same_body = r_hash == body_hash or (legacy is not None and r_hash == legacy())
        if r_dev != dev or r_type != type_ or not same_body:
            return Begin("mismatch")
        if r_state == "done":
            return Begin("done", bytes(r_reply) if r_reply is not None else None)
        if t - r_received < lease_s and not _earlier_boot(r_owner, owner):
            return Begin("busy")
        self._raw().execute(_SQL_REQ_TAKE, (t, owner, req_id))
        return Begin("new", retaken=True)

    def finish_request(
        self, req_id: str, reply: bytes, now: datetime, *, actor: str, action: str,
        detail: dict[str, Any],
    ) -> None:
        """Store the reply and mark the request done, with its audit record, in one transaction."""
        with self.atomic():
            self._finish(req_id, reply, now, actor, action, detail)

    def _finish(  # noqa: PLR0917
        self, req_id: str, reply: bytes, now: datetime, actor: str, action: str,
        detail: dict[str, Any],
    ) -> None:
        self._raw().execute(_SQL_REQ_DONE, (reply, _ts(now), req_id))
        self._append_audit(now, actor, action, detail)

    def release_request(self, req_id: str) -> None:
        """Forget an unfinished request (nothing happened): a resend is processed afresh."""
        with self.atomic():
            self._release(req_id)

    def _mark_attempted(self, req_id: str, dev: str, t: float) -> None:
        """Inside a write: the platform was asked for ``req_id`` and may have acted."""
        self._raw().execute("INSERT OR IGNORE INTO attempted (id, dev, at) VALUES (?, ?, ?)",
                            (req_id, dev, t))

    def was_attempted(self, req_id: str) -> bool:
        """True when the platform was asked for ``req_id`` before without a final answer."""
        return self._raw().execute("SELECT 1 FROM attempted WHERE id = ?",
                                   (req_id,)).fetchone() is not None

    def _release(self, req_id: str) -> None:
        self.RequestLog.delete().where(
            (self.RequestLog.id == req_id) & (self.RequestLog.state == "received")
        ).execute()

    def purge_requests(self, now: datetime, *, personal_types: frozenset[str],
                       personal_keep_s: float, keep_s: float,
                       redact: Callable[[bytes], bytes]) -> tuple[int, int]:
        """Retention (docs/privacy.md): minimise old personal replies, forget old requests.

        A done request of a ``personal_types`` type older than ``personal_keep_s`` keeps its
        row (so a late resend is still recognised) but its reply is replaced by
        ``redact(reply)``; any request older than ``keep_s`` is deleted. Returns (redacted,
        deleted).
        """
        t = _ts(now)
        marks = ",".join("?" * len(personal_types))
        with self.atomic():
            db = self._raw()
            rows = db.execute(
                f"SELECT id, reply FROM requestlog WHERE state = 'done' AND "  # noqa: S608
                f"type IN ({marks}) AND done_at < ? AND reply IS NOT NULL AND "
                "purged = 0",
                (*sorted(personal_types), t - personal_keep_s)).fetchall()
            for req_id, reply in rows:
                db.execute("UPDATE requestlog SET reply = ?, purged = 1 WHERE id = ?",
                           (redact(bytes(reply)), req_id))
            deleted = db.execute("DELETE FROM requestlog WHERE received_at < ?",
                                 (t - keep_s,)).rowcount
            db.execute("DELETE FROM attempted WHERE at < ?", (t - keep_s,))
        return len(rows), int(deleted)

    def request_state(self, req_id: str) -> str | None:
        """``received``/``done`` or None (tests, dashboard)."""
        r = self.RequestLog.get_or_none(self.RequestLog.id == req_id)
        return None if r is None else str(r.state)

    # -- audit -------------------------------------------------------------------------
    def audit(self, now: datetime, actor: str, action: str, detail: dict[str, Any]) -> AuditEntry:
        """Append one hash-chained audit record."""
        with self.atomic():
            return self._append_audit(now, actor, action, detail)

    def _append_audit(
        self, now: datetime, actor: str, action: str, detail: dict[str, Any]
    ) -> AuditEntry:
        # Called inside a write transaction (the lock is held): one INSERT in the usual case.
        # Milliseconds, like every wire timestamp: the hash covers format_ts of this value.
        t = round(_ts(now), 3)
        if not _flat(detail):
            detail = json.loads(_canon(detail))  # JSON-normalise (str keys): reproducible hash
        text = canonical_json(detail).decode()
        ts_text = format_ts(_dt(t) or now)
        for _ in range(5):
            if self._head is None:
                self._head = self._read_head()
            seq, prev = self._head[0] + 1, self._head[1]
            h = audit_hash_text(seq, ts_text, actor, action, text, prev)
            try:
                self._raw().execute(_SQL_AUDIT, (seq, t, actor, action, text, prev, h))
            except sqlite3.IntegrityError:
                self._head = None  # another process appended: re-read the head and relink
                continue
            self._head = (seq, h)
            return AuditEntry(seq, _dt(t) or now, actor, action, detail, prev, h)
        raise StoreError("audit chain head keeps moving", "审计链写入冲突")

    def _raw(self) -> sqlite3.Connection:
        # This thread's connection, inside peewee's open transaction; plain sqlite3 calls
        # skip peewee's per-statement overhead on the hot path.
        conn: sqlite3.Connection = self.db.connection()
        return conn

    def _read_head(self) -> tuple[int, str]:
        A = self.AuditRecord
        last = A.select(A.seq, A.hash).order_by(A.seq.desc()).first()
        return (0, GENESIS_HASH) if last is None else (int(last.seq), str(last.hash))

    def audit_entries(self, since_seq: int = 0) -> list[AuditEntry]:
        """Audit records after ``since_seq``, in order."""
        A = self.AuditRecord
        return [
            AuditEntry(
                r.seq, _dt(r.ts) or datetime.now(UTC), r.actor, r.action, json.loads(r.detail),
                r.prev_hash, r.hash,
            )
            for r in A.select().where(A.seq > since_seq).order_by(A.seq)
        ]

    def audit_by_actions(self, actions: frozenset[str], limit: int) -> list[AuditEntry]:
        """The newest ``limit`` audit records whose action is in ``actions``, newest first."""
        A = self.AuditRecord
        rows = (A.select().where(A.action.in_(sorted(actions))).order_by(A.seq.desc())
                .limit(limit))
        return [AuditEntry(r.seq, _dt(r.ts) or datetime.now(UTC), r.actor, r.action,
                           json.loads(r.detail), r.prev_hash, r.hash) for r in rows]

    def verify_chain(self) -> tuple[bool, int | None]:
        """Check every audit hash and link; returns (ok, first bad seq or None)."""
        prev = GENESIS_HASH
        expected = 1
        for r in self.AuditRecord.select().order_by(self.AuditRecord.seq):
            detail = json.loads(r.detail)
            if (
                r.seq != expected
                or r.prev_hash != prev
                or audit_hash(r.seq, format_ts(_dt(r.ts) or datetime.now(UTC)), r.actor, r.action,
                              detail, prev) != r.hash
            ):
                return False, r.seq
            prev = r.hash
            expected += 1
        return True, None

    # -- device audit chains -------------------------------------------------------------
    def add_device_audit(self, dev: str, body: dict[str, Any], now: datetime) -> str:
        """Store one device audit record, checking its hash and link; returns its status."""
        with self.atomic():
            return self._add_device_audit(dev, body, now)

    def _add_device_audit(self, dev: str, body: dict[str, Any], now: datetime) -> str:
        """Inside a write transaction: idempotent by (dev, seq); a bad record is flagged."""
        from yikatong.protocol.messages import AuditRecord

        try:
            r = AuditRecord.model_validate(body)
        except ValueError:
            log.warning("invalid audit record from %s ignored", dev)
            return "invalid"
        db = self._raw()
        old = db.execute("SELECT hash FROM deviceaudit WHERE dev = ? AND seq = ?",
                         (dev, r.seq)).fetchone()
        if old is not None:
            if old[0] == r.hash:
                return "duplicate"  # a resend after a lost PUBACK
            db.execute("UPDATE deviceaudit SET status = 'conflict' WHERE dev = ? AND seq = ?",
                       (dev, r.seq))
            self._flag_device_audit(dev, r.seq, "conflict", now)
            return "conflict"
        detail = json.loads(_canon(r.detail))
        if r.ts is None or r.actor is None or audit_hash(
                r.seq, r.ts, r.actor, r.action, detail, r.prev_hash) != r.hash:
            status = "bad_hash"
        elif r.seq == 1:
            status = "ok" if r.prev_hash == GENESIS_HASH else "broken_link"
        else:
            prev = db.execute("SELECT hash FROM deviceaudit WHERE dev = ? AND seq = ?",
                              (dev, r.seq - 1)).fetchone()
            status = "gap" if prev is None else ("ok" if prev[0] == r.prev_hash
                                                 else "broken_link")
        db.execute("INSERT INTO deviceaudit (dev, seq, ts, actor, action, detail, prev_hash,"
                   " hash, status, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (dev, r.seq, r.ts or "", r.actor or "", r.action, _canon(detail).decode(),
                    r.prev_hash, r.hash, status, _ts(now)))
        # A late record may close a gap: its successor's link can be checked now.
        nxt = db.execute("SELECT prev_hash FROM deviceaudit WHERE dev = ? AND seq = ? AND"
                         " status = 'gap'", (dev, r.seq + 1)).fetchone()
        if nxt is not None:
            db.execute("UPDATE deviceaudit SET status = ? WHERE dev = ? AND seq = ?",
                       ("ok" if nxt[0] == r.hash else "broken_link", dev, r.seq + 1))
            if nxt[0] != r.hash:
                self._flag_device_audit(dev, r.seq + 1, "broken_link", now)
        if status == "gap":
            log.warning("device %s audit chain has a gap before seq %d", dev, r.seq)
        elif status != "ok":
            self._flag_device_audit(dev, r.seq, status, now)
        return status

    def _flag_device_audit(self, dev: str, seq: int, status: str, now: datetime) -> None:
        log.warning("device %s audit record %d: %s", dev, seq, status)
        self._append_audit(now, "forwarder", "device_audit.flagged",
                           {"dev": dev, "seq": seq, "status": status})

    def device_audit_state(self, dev: str) -> dict[str, Any]:
        """``{audit_ok, last_seq, count, first_bad_seq}`` of ``dev``'s audit chain."""
        count, last, bad = self._raw().execute(
            "SELECT COUNT(*), MAX(seq), MIN(CASE WHEN status != 'ok' THEN seq END)"
            " FROM deviceaudit WHERE dev = ?", (dev,)).fetchone()
        count, last = int(count or 0), int(last or 0)
        if bad is None and count != last:  # a hole that no later record pointed out yet
            seqs = [r[0] for r in self._raw().execute(
                "SELECT seq FROM deviceaudit WHERE dev = ? ORDER BY seq", (dev,))]
            bad = next((i + 1 for i, q in enumerate(seqs) if q != i + 1), None)
        return {"audit_ok": bad is None, "last_seq": last, "count": count,
                "first_bad_seq": None if bad is None else int(bad)}

    def device_audit_entries(self, dev: str, since_seq: int = 0) -> list[dict[str, Any]]:
        """``dev``'s stored audit records after ``since_seq``, with their arrival status."""
        D = self.DeviceAudit
        rows = D.select().where((D.dev == dev) & (D.seq > since_seq)).order_by(D.seq)
        return [{"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action,
                 "detail": json.loads(r.detail), "prev_hash": r.prev_hash, "hash": r.hash,
                 "status": r.status} for r in rows]

    # -- events / telemetry ------------------------------------------------------------
    def add_event(
        self, dev: str, kind: str, type_: str, body: dict[str, Any], now: datetime
    ) -> None:
        """Keep an event/telemetry sample; only the newest ``events_per_device`` are kept."""
        with self.atomic():
            self._add_event(dev, kind, type_, body, now)

    def _add_event(
        self, dev: str, kind: str, type_: str, body: dict[str, Any], now: datetime
    ) -> None:
        E = self.DeviceEvent
        E.create(dev=dev, kind=kind, type=type_, ts=_ts(now), body=_canon(body).decode())
        keep = E.select(E.id).where(E.dev == dev).order_by(E.id.desc()).limit(
            self.events_per_device
        )
        E.delete().where((E.dev == dev) & E.id.not_in(keep)).execute()

    def recent_events(self, dev: str, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: ``{kind, type, ts, body}`` of ``dev``."""
        E = self.DeviceEvent
        rows = E.select().where(E.dev == dev).order_by(E.id.desc()).limit(limit)
        return [
            {"kind": r.kind, "type": r.type, "ts": _dt(r.ts), "body": json.loads(r.body)}
            for r in rows
        ]

    def recent_events_all(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first across the fleet: ``{dev, kind, type, ts, body}``."""
        E = self.DeviceEvent
        rows = E.select().order_by(E.id.desc()).limit(limit)
        return [
            {"dev": r.dev, "kind": r.kind, "type": r.type, "ts": _dt(r.ts),
             "body": json.loads(r.body)}
            for r in rows
        ]

    # -- fleet health (latest telemetry per device) --------------------------------------
    def update_health(self, dev: str, type_: str, body: dict[str, Any], now: datetime) -> bool:
        """Merge a telemetry sample or event into ``dev``'s health row; True if it changed."""
        with self.atomic():
            return self._update_health(dev, type_, body, now)

    def _update_health(self, dev: str, type_: str, body: dict[str, Any], now: datetime) -> bool:
        H = self.DeviceHealthRow
        row = H.get_or_none(H.dev == dev)
        view = fleet_health.merge(
            None if row is None else fleet_health.DeviceHealth.from_json(row.body),
            type_, body, now)
        if view is None:
            return False
        H.insert(dev=dev, updated_at=_ts(now), body=view.to_json()).on_conflict_replace(
        ).execute()
        return True

    def device_health(self, dev: str) -> fleet_health.DeviceHealth | None:
        """``dev``'s latest health view, or None before its first report."""
        H = self.DeviceHealthRow
        row = H.get_or_none(H.dev == dev)
        return None if row is None else fleet_health.DeviceHealth.from_json(row.body)

    def all_health(self) -> dict[str, fleet_health.DeviceHealth]:
        """Every device's latest health view, by device id."""
        H = self.DeviceHealthRow
        return {r.dev: fleet_health.DeviceHealth.from_json(r.body) for r in H.select()}


def _earlier_boot(row_owner: str | None, owner: str | None) -> bool:
    """True when ``row_owner`` is another boot of ``owner``'s client id."""
    if not row_owner or not owner or row_owner == owner:
        return False
    return row_owner.rpartition("/")[0] == owner.rpartition("/")[0]


class _Atomic:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._tx: Any = None

    def __enter__(self) -> None:
        self._store._lock.acquire()
        try:
            self._tx = self._store.db.atomic("IMMEDIATE")
            self._tx.__enter__()
        except BaseException:
            self._store._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._tx.__exit__(*exc)
        except BaseException:
            self._store._head = None  # the COMMIT failed: re-read the chain head
            raise
        finally:
            if exc[0] is not None:
                self._store._head = None  # rolled back: the in-memory head may be ahead
            self._store._lock.release()


_Outcome = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """Resolve a committed batch's futures: one ``call_soon_threadsafe`` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for item in outcomes:
        by_loop.setdefault(item[0], []).append(item)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_apply_outcomes, items)


def _apply_outcomes(items: list[_Outcome]) -> None:
    for _loop, fut, result, exc in items:
        if fut.done():
            continue  # the caller gave up (cancelled); the write stands anyway
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def open_store(path: Path, **kwargs: Any) -> Store:
    """Open (creating if needed) central's store at ``path``."""
    return Store(path, **kwargs)
