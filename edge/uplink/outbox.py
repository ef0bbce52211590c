"""Durable outbox of the device: every request is on disk before it is published.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is fsynced,
so an entry that :meth:`Outbox.enqueue` returned survives kill -9 and power loss.

Life of an entry: ``pending`` → ``done`` (the application reply arrived; events also end on
PUBACK) or ``failed`` (expired, dropped, given up). The same envelope bytes — hence the same
``id`` — are republished on every retry, so central's dedup table sees one request.

Size policy (stated, tested): at most ``max_entries`` rows. When an enqueue would exceed it:
1. finished rows (done/failed) are deleted, oldest first;
2. then pending **events/telemetry** are dropped, oldest and lowest priority first;
3. requests, results and money are never dropped: if only those remain, :class:`OutboxFull`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee as pw

from edge.protocol.envelope import Envelope, encode, parse_ts
from edge.uplink.errors import OutboxFull

__all__ = [
    "DROPPABLE_KINDS",
    "Clock",
    "Outbox",
    "OutboxEntry",
    "Priority",
    "priority_for",
    "utc_now",
]

Clock = Callable[[], datetime]

# Kinds the size policy may drop; everything else (req, result) is kept or refused.
DROPPABLE_KINDS = frozenset({"event", "telemetry"})
KINDS = frozenset({"req", "event", "result", "telemetry"})


def utc_now() -> datetime:
    """The real clock: an aware UTC datetime."""
    return datetime.now(UTC)


class Priority(enum.IntEnum):
    """Send order: lower goes first. Money and command results before lookups and chatter."""

    MONEY = 0
    RESULT = 1
    REQUEST = 2
    EVENT = 3
    TELEMETRY = 4


def priority_for(kind: str, type_: str) -> Priority:
    """Default priority of a message of ``kind`` (req/event/result/telemetry) and ``type_``."""
    if kind == "req":
        return Priority.MONEY if type_.startswith("pay.") else Priority.REQUEST
    if kind == "result":
        return Priority.RESULT
    if kind == "telemetry":
        return Priority.TELEMETRY
    return Priority.EVENT


def _ts(dt: datetime) -> float:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: the outbox needs aware (UTC) times")
    return dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row, as an immutable value."""

    id: str
    kind: str
    type: str
    priority: int
    payload: bytes
    state: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    exp: datetime | None
    last_sent_at: datetime | None
    reply: bytes | None
    fail_reason: str | None
    finished_at: datetime | None


def _models(db: pw.Database) -> type[pw.Model]:
    # Models are made per Outbox so several outboxes (devices in a test) can live in one process.
    class Entry(pw.Model):
        id = pw.CharField(primary_key=True, max_length=128)
        seq = pw.IntegerField(index=True)
        kind = pw.CharField(max_length=16)
        type = pw.CharField(max_length=64)
        priority = pw.IntegerField()
        payload = pw.BlobField()
        state = pw.CharField(max_length=8, index=True)
        attempts = pw.IntegerField(default=0)
        created_at = pw.FloatField()
        next_attempt_at = pw.FloatField()
        exp = pw.FloatField(null=True)
        last_sent_at = pw.FloatField(null=True)
        reply = pw.BlobField(null=True)
        fail_reason = pw.CharField(max_length=200, null=True)
        finished_at = pw.FloatField(null=True)

        class Meta:
            database = db
            table_name = "outbox"
            indexes = ((("state", "priority", "seq"), False),)

    return Entry


class Outbox:
    """The durable outbox (one SQLite file per device)."""

    def __init__(
        self,
        path: Path,
        clock: Clock = utc_now,
        *,
        max_entries: int = 10_000,
        retry_interval_s: float = 10.0,
        give_up_after_exp_s: float = 24 * 3600.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self.max_entries = max_entries
        self.retry_interval_s = retry_interval_s
        self.give_up_after_exp_s = give_up_after_exp_s
        self._db = pw.SqliteDatabase(
            str(self.path),
            pragmas={"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1},
            timeout=10,
        )
        self._Entry: Any = _models(self._db)
        # Serialises writers inside the process (the asyncio thread and, e.g., the local API).
        self._lock = threading.RLock()
        self._db.connect(reuse_if_open=True)
        self._db.create_tables([self._Entry])

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    # -- conversions -------------------------------------------------------------------
    @staticmethod
    def _to_entry(row: Any) -> OutboxEntry:
        return OutboxEntry(
            id=row.id,
            kind=row.kind,
            type=row.type,
            priority=row.priority,
            payload=bytes(row.payload),
            state=row.state,
            attempts=row.attempts,
            created_at=_dt(row.created_at) or utc_now(),
            next_attempt_at=_dt(row.next_attempt_at) or utc_now(),
            exp=_dt(row.exp),
            last_sent_at=_dt(row.last_sent_at),
            reply=None if row.reply is None else bytes(row.reply),
            fail_reason=row.fail_reason,
            finished_at=_dt(row.finished_at),
        )

    # -- writes ------------------------------------------------------------------------
    def enqueue(
        self, envelope: Envelope, *, priority: int | None = None, kind: str = "req"
    ) -> OutboxEntry:
        """Store ``envelope`` durably (fsynced) and return its entry; idempotent per id."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        prio = int(priority if priority is not None else priority_for(kind, envelope.type))
        payload = encode(envelope)
        now = _ts(self._clock())
        exp = None if envelope.exp is None else _ts(parse_ts(envelope.exp))
        E = self._Entry
        with self._lock, self._db.atomic("IMMEDIATE"):
            existing = E.get_or_none(E.id == envelope.id)
            if existing is not None:
                # Same id again (a caller retry): the first stored bytes win; never two rows.
                return self._to_entry(existing)
            self._make_room(kind)
            last = E.select(pw.fn.MAX(E.seq)).scalar() or 0
            row = E.create(
                id=envelope.id,
                seq=last + 1,
                kind=kind,
                type=envelope.type,
                priority=prio,
                payload=payload,
                state="pending",
                attempts=0,
                created_at=now,
                next_attempt_at=now,
                exp=exp,
            )
        return self._to_entry(row)

    def _make_room(self, kind: str) -> None:
        E = self._Entry
        over = E.select().count() - self.max_entries + 1
        if over <= 0:
            return
        finished = (
            E.select(E.id).where(E.state != "pending").order_by(E.seq).limit(over)
        )
        ids = [r.id for r in finished]
        if ids:
            E.delete().where(E.id.in_(ids)).execute()
            over -= len(ids)
        if over <= 0:
            return
        droppable = (
            E.select(E.id)
            .where((E.state == "pending") & (E.kind.in_(sorted(DROPPABLE_KINDS))))
            .order_by(E.priority.desc(), E.seq)
            .limit(over)
        )
        ids = [r.id for r in droppable]
        if len(ids) < over:
            raise OutboxFull(self.max_entries)
        E.delete().where(E.id.in_(ids)).execute()

    def mark_sent(self, id: str, now: datetime) -> OutboxEntry | None:
        """Record a publish attempt: attempts+1, next retry after ``retry_interval_s``."""
        E = self._Entry
        t = _ts(now)
        with self._lock, self._db.atomic():
            n = (
                E.update(
                    attempts=E.attempts + 1,
                    last_sent_at=t,
                    next_attempt_at=t + self.retry_interval_s,
                )
                .where((E.id == id) & (E.state == "pending"))
                .execute()
            )
        return self.get(id) if n else None

    def complete(self, id: str, reply: bytes | None) -> bool:
        """End an entry on its application reply (events: on PUBACK, reply None)."""
        E = self._Entry
        with self._lock, self._db.atomic():
            n = (
                E.update(state="done", reply=reply, finished_at=_ts(self._clock()))
                .where((E.id == id) & (E.state == "pending"))
                .execute()
            )
        return bool(n)

    def fail(self, id: str, reason: str) -> bool:
        """End a pending entry as failed with ``reason`` (it will not be sent again)."""
        E = self._Entry
        with self._lock, self._db.atomic():
            n = (
                E.update(state="failed", fail_reason=reason[:200], finished_at=_ts(self._clock()))
                .where((E.id == id) & (E.state == "pending"))
                .execute()
            )
        return bool(n)

    def reopen(self, id: str, now: datetime) -> OutboxEntry | None:
        """Make a done (or withdrawn) entry pending again (same id, same bytes) to ask again.

        Used when the stored reply was not final (``outcome_unknown``/``platform_unavailable``):
        central released the request, so a resend asks the platform again under the same
        idempotency key — it can never cause a second effect.
        """
        E = self._Entry
        with self._lock, self._db.atomic():
            n = (
                E.update(state="pending", reply=None, fail_reason=None, finished_at=None,
                         next_attempt_at=_ts(now))
                .where(
                    (E.id == id)
                    & ((E.state == "done") | (E.fail_reason == "caller_timeout"))
                )
                .execute()
            )
        return self.get(id) if n else None

    def retry_all_now(self, now: datetime) -> int:
        """Make every pending entry due at ``now`` (after a reconnect); returns how many."""
        E = self._Entry
        with self._lock, self._db.atomic():
            return int(
                E.update(next_attempt_at=_ts(now)).where(E.state == "pending").execute()
            )

    def expire(self, now: datetime) -> list[OutboxEntry]:
        """Fail pending entries past ``exp``; return them.

        Never sent → reason ``expired``: it is not sent, and nobody acted on it. Already sent
        → kept past ``exp``: central answers a resend from its dedup table (the stored
        outcome) or with ``expired`` (it never saw it), which is the truth the caller needs;
        only ``give_up_after_exp_s`` later is it failed with reason ``no_reply``.
        """
        E = self._Entry
        t = _ts(now)
        with self._lock, self._db.atomic():
            base = (E.state == "pending") & E.exp.is_null(False)
            unsent = list(E.select(E.id).where(base & (E.attempts == 0) & (E.exp <= t)))
            stale = list(
                E.select(E.id).where(
                    base & (E.attempts > 0) & (E.exp <= t - self.give_up_after_exp_s)
                )
            )
            for rows, reason in ((unsent, "expired"), (stale, "no_reply")):
                if rows:
                    E.update(state="failed", fail_reason=reason, finished_at=t).where(
                        E.id.in_([r.id for r in rows])
                    ).execute()
        return [e for e in (self.get(r.id) for r in unsent + stale) if e is not None]

    def prune(self, now: datetime, keep_s: float) -> int:
        """Delete finished entries older than ``keep_s``; returns how many."""
        E = self._Entry
        with self._lock, self._db.atomic():
            return int(
                E.delete()
                .where((E.state != "pending") & (E.finished_at < _ts(now) - keep_s))
                .execute()
            )

    # -- reads -------------------------------------------------------------------------
    def due(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Pending entries due at ``now``, priority order; expired unsent ones are failed."""
        self.expire(now)
        E = self._Entry
        rows = (
            E.select()
            .where((E.state == "pending") & (E.next_attempt_at <= _ts(now)))
            .order_by(E.priority, E.seq)
            .limit(limit)
        )
        return [self._to_entry(r) for r in rows]

    def get(self, id: str) -> OutboxEntry | None:
        """The entry with envelope id ``id``, or None."""
        row = self._Entry.get_or_none(self._Entry.id == id)
        return None if row is None else self._to_entry(row)

    def pending_count(self) -> int:
        """How many entries still wait for their reply (the backlog shown in telemetry)."""
        return int(self._Entry.select().where(self._Entry.state == "pending").count())

    def count(self) -> int:
        """All rows, finished included."""
        return int(self._Entry.select().count())

    def next_due_at(self) -> datetime | None:
        """When the earliest pending entry becomes due, or None when nothing is pending."""
        E = self._Entry
        t = E.select(pw.fn.MIN(E.next_attempt_at)).where(E.state == "pending").scalar()
        return _dt(t)

