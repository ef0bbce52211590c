"""The store's connection, write transactions and group-commit writer thread.

Concern modules (devices, requests, audit, events) extend :class:`StoreCore`;
central/store/__init__.py composes them into :class:`~central.store.Store`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import peewee as pw

from central.store import migrations, sql
from central.store.engine import Conn, Dialect, is_retryable, label, open_database
from central.store.models import bind_models
from central.store.values import StoreError

__all__ = ["DEVICE_CACHE_S", "MAX_BATCH", "TOUCH_FLUSH_S", "StoreCore"]

MAX_BATCH = 256  # operations per group commit
TOUCH_FLUSH_S = 1.0  # last_seen is written at most this often
DEADLOCK_ATTEMPTS = 3  # runs of a write PostgreSQL keeps picking as a deadlock's victim
#: PostgreSQL advisory lock every write transaction takes first (see ``_Atomic``).
WRITE_LOCK = 0x796B7400
DEVICE_CACHE_S = 5.0  # bounds how long another process's registry write goes unseen

log = logging.getLogger("central.store")
T = TypeVar("T")
_STOP = object()


class StoreCore:
    """Opens the database and runs write transactions; see central/store/__init__.py."""

    def __init__(self, target: Path | str, *, events_per_device: int = 200,
                 password: str | None = None) -> None:
        db, dialect = open_database(target, password=password)
        #: The SQLite file, or None on PostgreSQL (``target`` was a ``postgresql://`` URL).
        self.path: Path | None = None if dialect.postgres else Path(target)
        #: A short name for threads and logs (file name or ``host/dbname``).
        self.label = label(target)
        self.events_per_device = events_per_device
        self.db: pw.Database = db
        #: What differs between SQLite and PostgreSQL in hand-written SQL (engine.py).
        self.dialect: Dialect = dialect
        m = bind_models(self.db)
        #: This store's peewee models (bound to :attr:`db`; central/store/models.py).
        self.models = m
        self.Device: Any = m.Device
        self.RequestLog: Any = m.RequestLog
        self.Attempted: Any = m.Attempted
        self.AuditRecord: Any = m.AuditRecord
        self.DeviceEvent: Any = m.DeviceEvent
        self.DeviceAudit: Any = m.DeviceAudit
        self.Payment: Any = m.Payment
        self.DeviceHealthRow: Any = m.DeviceHealthRow
        self.db.connect(reuse_if_open=True)
        self._create_schema()
        self._lock = threading.RLock()
        self._tx_depth = threading.local()  # .n: write transactions open on this thread
        self._head: tuple[int, str] | None = None  # audit chain head; None = read it first
        self._enabled: dict[str, tuple[bool, float]] = {}
        self._roles: dict[str, tuple[str | None, float]] = {}
        self._touch_lock = threading.Lock()
        self._touches: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None

    def _create_schema(self) -> None:
        migrations.apply(self.db, self.models)

    def close(self) -> None:
        """Stop the writer (after its queue and buffered touches are written) and close."""
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            self._q.put(_STOP)
            writer.join(30)
        with self._writer_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(Exception):  # its connection: closed on its own thread
                reader.submit(self.db.close).result(30)
            reader.shutdown(wait=True)
        self.flush_touches()
        self.db.close()

    # -- transactions --------------------------------------------------------------------
    def atomic(self) -> Any:
        """A write transaction (``BEGIN IMMEDIATE``) that also holds the in-process lock.

        Nested inside another write (including an operation run by :meth:`write`), it is a
        savepoint: its failure rolls back only its own statements.
        """
        return _Atomic(self)

    def write(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` in the writer's next transaction; the future resolves after its COMMIT.

        ``fn`` runs on the writer thread inside ``BEGIN IMMEDIATE`` together with other
        callers' operations, so it must only touch the database (the ``*_in_tx`` methods,
        :meth:`connection`) and raise to fail. Call from a running event loop.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ensure_writer()
        self._q.put((fn, fut, loop))
        return fut

    def read(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run the read-only ``fn`` on the store's reader thread; await its result.

        For reads that grow with the fleet (the dashboard's device list, alarms, the audit
        chain check): on the event loop they would pause the forwarder's MQTT handling for
        as long as they take. The reader thread has a connection of its own (WAL: it never
        waits for the writer), and ``fn`` may also do the CPU work of the answer there
        (alarms, JSON). One thread: dashboard reads queue behind each other instead of
        taking more of the process's time from the loop. Call from a running event loop.
        """
        loop = asyncio.get_running_loop()
        with self._writer_lock:
            if self._reader is None:
                self._reader = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"store-reader:{self.label}")
            reader = self._reader
        return loop.run_in_executor(reader, fn)

    def pending_writes(self) -> int:
        """Operations queued for the writer thread and not yet taken (``/metrics``)."""
        return self._q.qsize()

    def in_write(self) -> bool:
        """True while this thread is inside a write transaction of this store."""
        return getattr(self._tx_depth, "n", 0) > 0

    def _require_write(self) -> None:
        if not getattr(self._tx_depth, "n", 0):
            raise StoreError("a *_in_tx store method was called outside a write transaction",
                             "数据库写操作不在事务中")

    def connection(self) -> Conn:
        """This thread's connection (inside the open write transaction, if any).

        For the statements of central/store/sql.py, and for modules with tables of their own
        in central's database (central/authz.py, central/staff.py): ``?`` placeholders and
        the SQL both engines take (central/store/engine.py).
        """
        return Conn(self.db.connection(), self.dialect)

    def savepoint(self) -> Any:
        """A savepoint inside the open write: a statement that fails inside it (a duplicate
        key) rolls back alone. Needed on PostgreSQL, where any error otherwise aborts the
        whole transaction; on SQLite it costs one statement more."""
        self._require_write()
        return self.db.atomic()

    def lock_in_tx(self, key: int) -> None:
        """Inside a write: hold the store-wide lock ``key`` until this transaction ends.

        PostgreSQL: ``pg_advisory_xact_lock`` (every instance on the database waits on it).
        SQLite: nothing to do, ``BEGIN IMMEDIATE`` already made this the only writer.
        """
        self._require_write()
        if self.dialect.postgres:
            self.connection().execute("SELECT pg_advisory_xact_lock(?)", (key,))

    # -- group commit --------------------------------------------------------------------
    def _ensure_writer(self) -> None:
        if self._writer is not None:
            return
        with self._writer_lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._writer_main, name=f"store-writer:{self.label}", daemon=True
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

    def _run_batch(self, batch: list[Any], touches: dict[str, float], attempt: int = 1
                   ) -> None:
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
            if batch and attempt < DEADLOCK_ATTEMPTS and is_retryable(exc):
                # PostgreSQL ended this transaction to break a deadlock with another
                # instance's (a batch takes row locks in its operations' order, theirs in
                # another): nothing of it was written; run it again.
                log.info("store write retried (%s): %s", attempt, type(exc).__name__)
                self._run_batch(batch, {}, attempt + 1)
                return
            _settle([(loop, fut, None, exc) for _fn, fut, loop in batch])
            if not batch:
                log.warning("writing last_seen failed: %s", exc)
            return
        _settle([(loop, fut, result, None)
                 for (_fn, fut, loop), result in zip(batch, results, strict=True)])

    # -- buffered last_seen (written by the writer, see devices.py) -----------------------
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
        self.connection().executemany(sql.TOUCH, [(t, dev, t) for dev, t in touches.items()])


class _Atomic:
    """:meth:`StoreCore.atomic`: the in-process lock, then peewee's ``atomic`` block."""

    def __init__(self, store: StoreCore) -> None:
        self._store = store
        self._tx: Any = None

    def __enter__(self) -> None:
        store = self._store
        store._lock.acquire()
        try:
            # SQLite: take the write lock at BEGIN (a read-then-write never fails to upgrade).
            self._tx = store.db.atomic() if store.dialect.postgres else \
                store.db.atomic("IMMEDIATE")
            self._tx.__enter__()
            if store.dialect.postgres and not getattr(store._tx_depth, "n", 0):
                # Every instance's writes one after the other, as BEGIN IMMEDIATE makes them
                # on SQLite. Taken first, before any row lock: two instances' batches then
                # never hold locks the other waits for (a deadlock costs PostgreSQL's
                # deadlock_timeout, 1 s, each time); platform calls stay outside writes.
                store.db.connection().execute("SELECT pg_advisory_xact_lock(%s)",
                                              (WRITE_LOCK,))
        except BaseException as exc:
            if self._tx is not None:  # entered, then the lock failed: roll it back
                with contextlib.suppress(Exception):
                    self._tx.__exit__(type(exc), exc, exc.__traceback__)
            store._lock.release()
            raise
        depth = store._tx_depth
        depth.n = getattr(depth, "n", 0) + 1

    def __exit__(self, *exc: object) -> None:
        store = self._store
        store._tx_depth.n -= 1
        try:
            self._tx.__exit__(*exc)
        except BaseException:
            store._head = None  # the COMMIT failed: re-read the chain head
            raise
        finally:
            if exc[0] is not None:
                store._head = None  # rolled back: the in-memory head may be ahead
            store._lock.release()


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
