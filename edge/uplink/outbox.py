"""Durable outbox of the device: every request is on disk before it is published.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is fsynced,
so an entry that :meth:`Outbox.enqueue` returned survives kill -9 and power loss.

Life of an entry: ``pending`` → ``done`` (the application reply arrived; events also end on
PUBACK) or ``failed`` (expired, dropped, given up). The same envelope bytes — hence the same
``id`` — are republished on every retry, so central's dedup table sees one request.

A send is recorded (:meth:`Outbox.mark_sent_many`, one fsynced transaction per batch)
**before** the bytes are handed to MQTT. So ``attempts == 0`` means "certainly never left the
device", and only such an entry may expire as ``expired`` (= definitely not taken). One that
was ever marked sent stays pending past ``exp`` and ends, if central never answers, as
``no_reply`` — an unknown outcome to resolve (``pay.status``), never "not taken".

Size policy (stated, tested): at most ``max_entries`` rows. When an enqueue would exceed it:
1. finished rows (done/failed) are deleted, oldest first;
2. then pending **events/telemetry** are dropped, oldest and lowest priority first;
3. requests, results and money are never dropped: if only those remain, :class:`OutboxFull`.

Personal data rests here only while it is needed. When an entry reaches a final state (done
with a final reply, or failed other than ``caller_timeout``) its payload and reply are
rewritten by :func:`minimise`: the ``auth`` token and the signature go, secrets (PIN, wallet
``auth_code``, session token) are dropped, names and ID/card numbers masked, lab results
emptied — ids, amounts, states and methods stay, so ``result_of`` and a same-id resend still
work. Entries that ``reopen`` may resend with the same bytes (a reply ``outcome_unknown`` /
``platform_unavailable``, a ``caller_timeout`` withdrawal) keep their bytes until final.
``secure_delete`` zeroes the replaced content in the file, and a truncating checkpoint clears
it from the WAL.

Plain ``sqlite3`` with fixed SQL: an enqueue is one INSERT (plus a SELECT only for a repeated
id) in one fsynced transaction; the row count and the next ``seq`` are kept in memory and
reloaded whenever another connection wrote the file (``PRAGMA data_version``). The schema is
the one earlier versions created through peewee, so existing outbox files open unchanged.
"""

from __future__ import annotations

import contextlib
import enum
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.uplink.errors import OutboxFull
from yikatong.common.storage import open_durable
from yikatong.protocol.envelope import (
    _PERSONAL_KEYS,
    _SECRET_KEYS,
    Envelope,
    decode,
    encode,
    parse_ts,
    redact,
)
from yikatong.protocol.errors import ProtocolError

__all__ = [
    "DROPPABLE_KINDS",
    "Clock",
    "Outbox",
    "OutboxEntry",
    "Priority",
    "is_final_reply",
    "minimise",
    "minimise_body",
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


# -- minimising finished entries ---------------------------------------------------------

#: Secrets dropped from a finished entry: the envelope's own (plus the session token a
#: ``staff.login`` reply carries), whatever the message type.
_DROP_KEYS = _SECRET_KEYS | {"session_token", "token", "auth"}
#: Personal fields that are optional in their result model: dropped rather than masked.
_DROP_PERSONAL = frozenset({"phone", "birth_date"})
#: Fields emptied per request type (lab results: health data, not needed after printing).
_EMPTY_BY_TYPE: dict[str, frozenset[str]] = {"report.fetch": frozenset({"items"})}
#: Types whose bodies (request or result) carry personal data: masked as well. Elsewhere a
#: "name" is a department or a bill item, and only secrets are dropped.
_PERSONAL_TYPES = frozenset({"patient.identify", "report.fetch", "staff.login"})
#: Reply error codes after which ``reopen`` may resend the same bytes: not final.
_UNSETTLED_CODES = frozenset({"outcome_unknown", "platform_unavailable"})


def minimise_body(value: Any, type_: str, key: str | None = None) -> Any:
    """A body (request or reply) with secrets dropped and personal fields masked/emptied."""
    personal = type_ in _PERSONAL_TYPES
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _DROP_KEYS or (personal and k in _DROP_PERSONAL):
                continue
            if k in _EMPTY_BY_TYPE.get(type_, ()):
                out[k] = [] if isinstance(v, list) else None
                continue
            out[k] = minimise_body(v, type_, k)
        return out
    if isinstance(value, list):
        return [minimise_body(v, type_, key) for v in value]
    if not personal:
        return value
    if isinstance(value, str) and key in _PERSONAL_KEYS:
        return _PERSONAL_KEYS[key](value)
    # Free text: the log masking (ID/phone/payment-code/name patterns inside strings).
    return redact(value, key)


def minimise(data: bytes, type_: str) -> bytes:
    """Envelope bytes without ``auth``/``sig``, the body minimised (see :func:`minimise_body`).

    ``type_`` is the request's type (a reply's own type is ``resp``). Bytes that are no
    envelope are returned as they are: the uplink stores only envelopes it encoded or
    decoded, so these come from tests and tools, and nothing in them can be told apart.
    """
    try:
        env = decode(data)
    except ProtocolError:
        return data
    update: dict[str, Any] = {"sig": None, "body": minimise_body(env.body, type_)}
    if "auth" in type(env).model_fields:  # the staff session token
        update["auth"] = None
    small = env.model_copy(update=update)
    return encode(small)


#: A payment still open: its ``pay.create`` is sent again (same id) to learn the outcome.
_OPEN_PAYMENT_STATES = frozenset({"pending", "unknown"})


def is_final_reply(reply: bytes | None, type_: str = "") -> bool:
    """False for a reply that ``reopen`` may answer by resending (``outcome_unknown`` …).

    A ``pay.create`` answered with a payment still ``pending``/``unknown`` is not final
    either: resending it (same bytes, auth code included) is how the device learns the end.
    """
    if reply is None:
        return True
    try:
        body = decode(reply).body
    except ProtocolError:
        return True
    if body.get("status") == "ok":
        result = body.get("result")
        return not (type_ == "pay.create" and isinstance(result, dict)
                    and result.get("state") in _OPEN_PAYMENT_STATES)
    err = body.get("error")
    return not (isinstance(err, dict) and err.get("code") in _UNSETTLED_CODES)


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


# The DDL peewee generated for earlier versions (same names, so old files need no migration).
_SCHEMA = (
    'CREATE TABLE IF NOT EXISTS "outbox" ("id" VARCHAR(128) NOT NULL PRIMARY KEY, '
    '"seq" INTEGER NOT NULL, "kind" VARCHAR(16) NOT NULL, "type" VARCHAR(64) NOT NULL, '
    '"priority" INTEGER NOT NULL, "payload" BLOB NOT NULL, "state" VARCHAR(8) NOT NULL, '
    '"attempts" INTEGER NOT NULL, "created_at" REAL NOT NULL, "next_attempt_at" REAL NOT NULL, '
    '"exp" REAL, "last_sent_at" REAL, "reply" BLOB, "fail_reason" VARCHAR(200), '
    '"finished_at" REAL)',
    'CREATE INDEX IF NOT EXISTS "entry_seq" ON "outbox" ("seq")',
    'CREATE INDEX IF NOT EXISTS "entry_state_priority_seq" '
    'ON "outbox" ("state", "priority", "seq")',
    # A prefix of the index above, so it served no query and only cost every write.
    'DROP INDEX IF EXISTS "entry_state"',
)

_COLS = (
    "id, kind, type, priority, payload, state, attempts, created_at, next_attempt_at, exp, "
    "last_sent_at, reply, fail_reason, finished_at"
)
_INSERT = (
    "INSERT INTO outbox (id, seq, kind, type, priority, payload, state, attempts, created_at, "
    "next_attempt_at, exp, last_sent_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO NOTHING"
)
_GET = f"SELECT {_COLS} FROM outbox WHERE id = ?"  # noqa: S608 - fixed column list
# Is any stored entry due (waiting for the pump)? Then a new one may not skip the queue.
_ANY_DUE = "SELECT 1 FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? LIMIT 1"
_MARK_SENT = (
    "UPDATE outbox SET attempts = attempts + 1, last_sent_at = ?, next_attempt_at = ? "
    "WHERE id = ? AND state = 'pending'"
)


def _entry(row: Sequence[Any]) -> OutboxEntry:
    (id_, kind, type_, prio, payload, state, attempts, created, next_at, exp, last_sent,
     reply, fail_reason, finished) = row
    return OutboxEntry(
        id=id_,
        kind=kind,
        type=type_,
        priority=prio,
        payload=bytes(payload),
        state=state,
        attempts=attempts,
        created_at=datetime.fromtimestamp(created, UTC),
        next_attempt_at=datetime.fromtimestamp(next_at, UTC),
        exp=_dt(exp),
        last_sent_at=_dt(last_sent),
        reply=None if reply is None else bytes(reply),
        fail_reason=fail_reason,
        finished_at=_dt(finished),
    )


def _chunks(ids: Sequence[str], n: int = 500) -> Iterator[Sequence[str]]:
    # Stays below SQLite's limit on bound parameters in one IN (...).
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


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
        # One connection shared by the asyncio thread and, e.g., the local API: every use
        # holds this lock, which also serialises writers inside the process.
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        # Row count and last seq, valid while data_version is unchanged (no other writer).
        self._data_version: int | None = None
        self._count = 0
        self._last_seq = 0
        with self._lock:
            con = self._connection()
            for ddl in _SCHEMA:
                con.execute(ddl)

    def _connection(self) -> sqlite3.Connection:
        # Opened lazily again after close(), as the peewee-based version did (autoconnect).
        con = self._con
        if con is None:
            con = open_durable(self.path, timeout_s=10)
            con.execute("PRAGMA foreign_keys=1")
            # Replaced and deleted content is overwritten with zeros, not left in free space:
            # a minimised entry's personal data must not stay readable in the file.
            con.execute("PRAGMA secure_delete=ON")
            self._con = con
            self._data_version = None
        return con

    def close(self) -> None:
        """Close the database connection (a later call opens it again)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (fsynced on commit); rolled back on any error."""
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                self._data_version = None  # the cached count/seq may count undone rows
                raise

    def _sync_cache(self, con: sqlite3.Connection) -> None:
        # Another connection (a probe, a restarted process) may have written the file.
        version = con.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._count, self._last_seq = con.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM outbox"
            ).fetchone()
            self._data_version = version

    # -- writes ------------------------------------------------------------------------
    def enqueue(
        self,
        envelope: Envelope,
        *,
        priority: int | None = None,
        kind: str = "req",
        payload: bytes | None = None,
    ) -> OutboxEntry:
        """Store ``envelope`` durably (fsynced) and return its entry; idempotent per id.

        ``payload`` is ``encode(envelope)`` when the caller already has it (encoded once).
        """
        entry, _new = self._insert(envelope, priority, kind, payload, None)
        assert entry is not None  # only an insert as sent ever declines
        return entry

    def enqueue_sent(
        self, envelope: Envelope, payload: bytes, now: datetime, *, priority: int | None = None,
    ) -> OutboxEntry | None:
        """Store a request **and** record its first send, in one fsynced transaction.

        For a caller that publishes the bytes right after this returns (the uplink, when a
        slot is free and nothing else waits): one commit where :meth:`enqueue` then
        :meth:`mark_sent_many` take two, and the same rule — on disk, marked sent, before
        the first byte leaves. None when the id is already stored (nothing changed; the
        caller takes the ordinary :meth:`enqueue` path for it), or when another stored entry
        is due: that one waits for a slot, and this one must queue behind it in the pump's
        priority order rather than overtake it.
        """
        entry, new = self._insert(envelope, priority, "req", payload, _ts(now))
        return entry if new else None

    def _insert(
        self, envelope: Envelope, priority: int | None, kind: str, payload: bytes | None,
        sent_at: float | None,
    ) -> tuple[OutboxEntry | None, bool]:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        prio = int(priority if priority is not None else priority_for(kind, envelope.type))
        data = encode(envelope) if payload is None else bytes(payload)
        now = _ts(self._clock())
        exp = None if envelope.exp is None else _ts(parse_ts(envelope.exp))
        attempts, next_at = (0, now) if sent_at is None else (
            1, sent_at + self.retry_interval_s)
        with self._write() as con:
            self._sync_cache(con)
            if self._count >= self.max_entries:
                # The policy runs only at the limit; a repeated id must not evict anything.
                row = con.execute(_GET, (envelope.id,)).fetchone()
                if row is not None:
                    return _entry(row), False
                self._make_room(con, self._count - self.max_entries + 1)
            if sent_at is not None and con.execute(_ANY_DUE, (sent_at,)).fetchone():
                return None, False
            seq = self._last_seq + 1
            cur = con.execute(_INSERT, (envelope.id, seq, kind, envelope.type, prio, data,
                                        attempts, now, next_at, exp, sent_at))
            if cur.rowcount == 0:
                # Same id again (a caller retry): the first stored bytes win; never two rows.
                return _entry(con.execute(_GET, (envelope.id,)).fetchone()), False
            self._count += 1
            self._last_seq = seq
        created = datetime.fromtimestamp(now, UTC)
        return OutboxEntry(
            id=envelope.id, kind=kind, type=envelope.type, priority=prio, payload=data,
            state="pending", attempts=attempts, created_at=created,
            next_attempt_at=datetime.fromtimestamp(next_at, UTC), exp=_dt(exp),
            last_sent_at=_dt(sent_at), reply=None, fail_reason=None, finished_at=None,
        ), True

    def _make_room(self, con: sqlite3.Connection, over: int) -> None:
        finished = [r[0] for r in con.execute(
            "SELECT id FROM outbox WHERE state != 'pending' ORDER BY seq LIMIT ?", (over,)
        )]
        self._delete(con, finished)
        over -= len(finished)
        if over <= 0:
            return
        kinds = sorted(DROPPABLE_KINDS)
        droppable = [r[0] for r in con.execute(
            f"SELECT id FROM outbox WHERE state = 'pending' AND kind IN ({_marks(kinds)}) "  # noqa: S608
            "ORDER BY priority DESC, seq LIMIT ?",
            (*kinds, over),
        )]
        if len(droppable) < over:
            raise OutboxFull(self.max_entries)  # the transaction rolls back the deletes above
        self._delete(con, droppable)

    def _delete(self, con: sqlite3.Connection, ids: Sequence[str]) -> None:
        for part in _chunks(ids):
            n = con.execute(
                f"DELETE FROM outbox WHERE id IN ({_marks(part)})", tuple(part)  # noqa: S608
            ).rowcount
            self._count -= n

    def mark_sent_many(self, ids: Iterable[str], now: datetime) -> set[str]:
        """Record a publish attempt of each id in one fsynced transaction, before publishing.

        attempts+1, next retry after ``retry_interval_s``; returns the ids that were still
        pending (only those may be published).
        """
        t = _ts(now)
        marked: set[str] = set()
        with self._write() as con:
            for id_ in ids:
                if con.execute(_MARK_SENT, (t, t + self.retry_interval_s, id_)).rowcount:
                    marked.add(id_)
        return marked

    def mark_sent(self, id: str, now: datetime) -> OutboxEntry | None:
        """Record one publish attempt (see :meth:`mark_sent_many`); the entry, or None."""
        return self.get(id) if self.mark_sent_many([id], now) else None

    def unmark_sent(self, ids: Iterable[str], now: datetime) -> int:
        """Undo :meth:`mark_sent_many` for ids that were never handed to MQTT; how many.

        Only for entries the caller knows did not leave (the link dropped before their
        turn); an entry that may have left must stay marked.
        """
        t = _ts(now)
        n = 0
        with self._write() as con:
            for id_ in ids:
                n += con.execute(
                    "UPDATE outbox SET attempts = attempts - 1, next_attempt_at = ?, "
                    "last_sent_at = CASE WHEN attempts <= 1 THEN NULL ELSE last_sent_at END "
                    "WHERE id = ? AND state = 'pending' AND attempts > 0",
                    (t, id_),
                ).rowcount
        return n

    def complete(self, id: str, reply: bytes | None) -> bool:
        """End an entry on its application reply (events: on PUBACK, reply None).

        A final reply minimises the stored payload and reply (module docstring); one that
        ``reopen`` may follow keeps both as they are.
        """
        wiped = False
        with self._lock:
            con = self._connection()
            row = con.execute(
                "SELECT type, payload FROM outbox WHERE id = ? AND state = 'pending'", (id,)
            ).fetchone()
            if row is None:
                return False
            payload, stored = bytes(row[1]), reply
            if is_final_reply(reply, row[0]):
                payload = minimise(payload, row[0])
                stored = None if reply is None else minimise(reply, row[0])
                wiped = payload != bytes(row[1]) or stored != reply
            if wiped:
                # The checkpoint below syncs the WAL before it copies it, and that sync makes
                # this commit durable too: one fsync fewer per answered request. (Set before
                # BEGIN: SQLite takes no change of the level inside a transaction.)
                con.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._write() as con:
                    n = con.execute(
                        "UPDATE outbox SET state = 'done', payload = ?, reply = ?, "
                        "finished_at = ? WHERE id = ? AND state = 'pending'",
                        (payload, stored, _ts(self._clock()), id),
                    ).rowcount
            finally:
                if wiped:
                    self._connection().execute("PRAGMA synchronous=FULL")
            if not n:
                return False  # another connection finished it between the read and now
        if wiped:
            self._clear_wal()
        return True

    def fail(self, id: str, reason: str) -> bool:
        """End a pending entry as failed with ``reason`` (it will not be sent again).

        ``caller_timeout`` may be reopened (same bytes): only other reasons minimise.
        """
        with self._write() as con:
            n = con.execute(
                "UPDATE outbox SET state = 'failed', fail_reason = ?, finished_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (reason[:200], _ts(self._clock()), id),
            ).rowcount
            wiped = bool(n) and reason != "caller_timeout" and self._minimise_rows(con, [id])
        if wiped:
            self._clear_wal()
        return bool(n)

    def _minimise_rows(self, con: sqlite3.Connection, ids: Sequence[str]) -> bool:
        """Minimise the payload of finished rows ``ids``; True if any bytes changed."""
        changed = False
        for id_ in ids:
            row = con.execute("SELECT type, payload FROM outbox WHERE id = ?", (id_,)).fetchone()
            if row is None:
                continue
            small = minimise(bytes(row[1]), row[0])
            if small != bytes(row[1]):
                con.execute("UPDATE outbox SET payload = ? WHERE id = ?", (small, id_))
                changed = True
        return changed

    def _clear_wal(self) -> None:
        """Checkpoint and truncate the WAL, where the replaced bytes still sit in old frames.

        Best effort: a reader holding an old snapshot keeps the checkpoint partial; the next
        one (the next completion, or close) clears what is left.
        """
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def reopen(self, id: str, now: datetime) -> OutboxEntry | None:
        """Make a done (or withdrawn) entry pending again (same id, same bytes) to ask again.

        Used when the stored reply was not final (``outcome_unknown``/``platform_unavailable``):
        central released the request, so a resend asks the platform again under the same
        idempotency key — it can never cause a second effect.
        """
        with self._write() as con:
            n = con.execute(
                "UPDATE outbox SET state = 'pending', reply = NULL, fail_reason = NULL, "
                "finished_at = NULL, next_attempt_at = ? "
                "WHERE id = ? AND (state = 'done' OR fail_reason = 'caller_timeout')",
                (_ts(now), id),
            ).rowcount
        return self.get(id) if n else None

    def unsettled(self, types: Iterable[str], since: datetime) -> list[str]:
        """Ids of done entries of ``types`` whose reply was not final, finished after ``since``.

        Those replies are stored as they came (never minimised), so the code is found in
        their canonical bytes.
        """
        kinds = sorted(set(types))
        with self._lock:
            rows = self._connection().execute(
                f"SELECT id FROM outbox WHERE state = 'done' AND type IN ({_marks(kinds)}) "  # noqa: S608
                "AND finished_at >= ? AND reply IS NOT NULL AND "
                "(instr(reply, ?) > 0 OR instr(reply, ?) > 0 OR (type = 'pay.create' AND "
                "(instr(reply, ?) > 0 OR instr(reply, ?) > 0))) ORDER BY seq",
                (*kinds, _ts(since), b'"code":"outcome_unknown"',
                 b'"code":"platform_unavailable"', b'"state":"pending"',
                 b'"state":"unknown"')).fetchall()
        return [str(r[0]) for r in rows]

    def open_ids(self, types: Iterable[str]) -> list[str]:
        """Ids of entries of ``types`` still pending (queued, or sent and not answered)."""
        kinds = sorted(set(types))
        with self._lock:
            rows = self._connection().execute(
                f"SELECT id FROM outbox WHERE state = 'pending' AND type IN ({_marks(kinds)}) "  # noqa: S608
                "ORDER BY seq", kinds).fetchall()
        return [str(r[0]) for r in rows]

    def retry_all_now(self, now: datetime) -> int:
        """Make every pending entry due at ``now`` (after a reconnect); returns how many."""
        with self._write() as con:
            return int(con.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending'", (_ts(now),)
            ).rowcount)

    def expire(self, now: datetime) -> list[OutboxEntry]:
        """Fail pending entries past ``exp``; return them.

        Never sent (no attempt was ever recorded) → reason ``expired``: it is not sent, and
        nobody acted on it. Ever marked sent → kept past ``exp``: central answers a resend
        from its dedup table (the stored outcome) or with ``expired`` (it never saw it),
        which is the truth the caller needs; only ``give_up_after_exp_s`` later is it failed
        with reason ``no_reply`` (outcome unknown, never "not taken").
        """
        t = _ts(now)
        with self._write() as con:
            unsent = [r[0] for r in con.execute(
                "SELECT id FROM outbox WHERE state = 'pending' AND exp IS NOT NULL AND exp <= ? "
                "AND attempts = 0 AND last_sent_at IS NULL", (t,)
            )]
            stale = [r[0] for r in con.execute(
                "SELECT id FROM outbox WHERE state = 'pending' AND exp IS NOT NULL AND exp <= ? "
                "AND (attempts > 0 OR last_sent_at IS NOT NULL)", (t - self.give_up_after_exp_s,)
            )]
            for ids, reason in ((unsent, "expired"), (stale, "no_reply")):
                for part in _chunks(ids):
                    sql = ("UPDATE outbox SET state = 'failed', fail_reason = ?, "  # noqa: S608
                           f"finished_at = ? WHERE id IN ({_marks(part)})")
                    con.execute(sql, (reason, t, *part))
            wiped = self._minimise_rows(con, unsent + stale)
        if wiped:
            self._clear_wal()
        return [e for e in (self.get(i) for i in unsent + stale) if e is not None]

    def prune(self, now: datetime, keep_s: float) -> int:
        """Delete finished entries older than ``keep_s``; returns how many."""
        with self._write() as con:
            n = int(con.execute(
                "DELETE FROM outbox WHERE state != 'pending' AND finished_at < ?",
                (_ts(now) - keep_s,),
            ).rowcount)
            self._count -= n
        return n

    # -- reads -------------------------------------------------------------------------
    def due(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        """Pending entries due at ``now``, priority order; expired unsent ones are failed."""
        self.expire(now)
        with self._lock:
            rows = self._connection().execute(
                f"SELECT {_COLS} FROM outbox WHERE state = 'pending' "  # noqa: S608
                "AND next_attempt_at <= ? ORDER BY priority, seq LIMIT ?",
                (_ts(now), limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    def get(self, id: str) -> OutboxEntry | None:
        """The entry with envelope id ``id``, or None."""
        with self._lock:
            row = self._connection().execute(_GET, (id,)).fetchone()
        return None if row is None else _entry(row)

    def pending_count(self) -> int:
        """How many entries still wait for their reply (the backlog shown in telemetry)."""
        with self._lock:
            return int(self._connection().execute(
                "SELECT COUNT(*) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0])

    def count(self) -> int:
        """All rows, finished included."""
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def next_due_at(self) -> datetime | None:
        """When the earliest pending entry becomes due, or None when nothing is pending."""
        with self._lock:
            t = self._connection().execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()[0]
        return _dt(t)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))
