"""Central's store: devices, request dedup log, hash-chained audit, recent events, payments.

peewee on SQLite (WAL, ``synchronous=FULL``) for a single site; the same models map to
PostgreSQL when several ``ykt central`` instances share the load. Models are built per store
(so tests can open several stores in one process). All methods are synchronous and short;
the forwarder calls them from its asyncio thread.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

__all__ = [
    "AuditEntry",
    "Begin",
    "DeviceInfo",
    "Store",
    "StoreError",
    "open_store",
]

GENESIS_HASH = "0" * 64


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


def _audit_hash(  # noqa: PLR0917 - the hashed fields, in order
    seq: int, ts: float, actor: str, action: str, detail: dict[str, Any], prev: str
) -> str:
    body = _canon(
        {"seq": seq, "ts": round(ts, 6), "actor": actor, "action": action, "detail": detail}
    )
    return hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()


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

        class AuditRecord(Base):
            seq = pw.IntegerField(primary_key=True)
            ts = pw.FloatField()
            actor = pw.CharField(max_length=64)
            action = pw.CharField(max_length=64)
            detail = pw.TextField()
            prev_hash = pw.CharField(max_length=64)
            hash = pw.CharField(max_length=64)

        class DeviceEvent(Base):
            dev = pw.CharField(max_length=64, index=True)
            kind = pw.CharField(max_length=16)
            type = pw.CharField(max_length=64)
            ts = pw.FloatField()
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

        self.Device: Any = Device
        self.RequestLog: Any = RequestLog
        self.AuditRecord: Any = AuditRecord
        self.DeviceEvent: Any = DeviceEvent
        self.Payment: Any = Payment
        self.db.connect(reuse_if_open=True)
        self.db.create_tables([Device, RequestLog, AuditRecord, DeviceEvent, Payment])

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

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
        info = self.device(dev)
        if info is None:  # pragma: no cover - just inserted in the same process
            raise StoreError(f"device {dev} vanished", "设备记录丢失")
        return info

    def set_enabled(self, dev: str, enabled: bool) -> bool:
        """Enable/disable a device; False when it is not registered."""
        with self.atomic():
            return bool(self.Device.update(enabled=enabled).where(self.Device.id == dev).execute())

    def device(self, dev: str) -> DeviceInfo | None:
        """The device ``dev`` or None."""
        r = self.Device.get_or_none(self.Device.id == dev)
        if r is None:
            return None
        return DeviceInfo(
            r.id, r.role, bool(r.enabled), bool(r.online), _dt(r.last_seen), r.last_boot_seq,
            r.version,
        )

    def devices(self) -> list[DeviceInfo]:
        """All devices, by id."""
        return [
            d for d in (self.device(r.id) for r in self.Device.select().order_by(self.Device.id))
            if d is not None
        ]

    def touch(self, dev: str, now: datetime) -> None:
        """Record that ``dev`` was heard from at ``now``."""
        with self.atomic():
            self.Device.update(last_seen=_ts(now)).where(self.Device.id == dev).execute()

    def apply_state(
        self, dev: str, *, online: bool, boot_seq: int, version: str | None, now: datetime
    ) -> bool:
        """Apply a birth/Will; a Will older than the last birth is ignored (returns False)."""
        D = self.Device
        with self.atomic():
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
        self, req_id: str, dev: str, type_: str, body_hash: str, now: datetime, lease_s: float
    ) -> Begin:
        """Claim request ``req_id`` for processing, or say why not (done/busy/mismatch).

        A ``received`` row older than ``lease_s`` belongs to a forwarder that died mid-call;
        it is taken over (the platform's idempotency key makes the repeat call harmless).
        """
        R = self.RequestLog
        t = _ts(now)
        with self.atomic():
            r = R.get_or_none(R.id == req_id)
            if r is None:
                R.create(
                    id=req_id, dev=dev, type=type_, body_hash=body_hash, state="received",
                    received_at=t,
                )
                return Begin("new")
            if r.dev != dev or r.type != type_ or r.body_hash != body_hash:
                return Begin("mismatch")
            if r.state == "done":
                return Begin("done", bytes(r.reply) if r.reply is not None else None)
            if t - r.received_at < lease_s:
                return Begin("busy")
            R.update(received_at=t).where(R.id == req_id).execute()
            return Begin("new")

    def finish_request(
        self, req_id: str, reply: bytes, now: datetime, *, actor: str, action: str,
        detail: dict[str, Any],
    ) -> None:
        """Store the reply and mark the request done, with its audit record, in one transaction."""
        R = self.RequestLog
        with self.atomic():
            R.update(state="done", reply=reply, done_at=_ts(now)).where(R.id == req_id).execute()
            self._append_audit(now, actor, action, detail)

    def release_request(self, req_id: str) -> None:
        """Forget an unfinished request (nothing happened): a resend is processed afresh."""
        with self.atomic():
            self.RequestLog.delete().where(
                (self.RequestLog.id == req_id) & (self.RequestLog.state == "received")
            ).execute()

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
        A = self.AuditRecord
        last = A.select().order_by(A.seq.desc()).first()
        seq = 1 if last is None else last.seq + 1
        prev = GENESIS_HASH if last is None else last.hash
        t = round(_ts(now), 6)
        detail = json.loads(_canon(detail))  # JSON-normalise so the hash is reproducible
        h = _audit_hash(seq, t, actor, action, detail, prev)
        A.create(
            seq=seq, ts=t, actor=actor, action=action, detail=_canon(detail).decode(),
            prev_hash=prev, hash=h,
        )
        return AuditEntry(seq, _dt(t) or now, actor, action, detail, prev, h)

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

    def verify_chain(self) -> tuple[bool, int | None]:
        """Check every audit hash and link; returns (ok, first bad seq or None)."""
        prev = GENESIS_HASH
        expected = 1
        for r in self.AuditRecord.select().order_by(self.AuditRecord.seq):
            detail = json.loads(r.detail)
            if (
                r.seq != expected
                or r.prev_hash != prev
                or _audit_hash(r.seq, r.ts, r.actor, r.action, detail, prev) != r.hash
            ):
                return False, r.seq
            prev = r.hash
            expected += 1
        return True, None

    # -- events / telemetry ------------------------------------------------------------
    def add_event(
        self, dev: str, kind: str, type_: str, body: dict[str, Any], now: datetime
    ) -> None:
        """Keep an event/telemetry sample; only the newest ``events_per_device`` are kept."""
        E = self.DeviceEvent
        with self.atomic():
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
        finally:
            self._store._lock.release()


def open_store(path: Path, **kwargs: Any) -> Store:
    """Open (creating if needed) central's store at ``path``."""
    return Store(path, **kwargs)
