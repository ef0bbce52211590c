"""Printer driver: status, durable print jobs, failure detection and marked reprints.

A job is stored in SQLite (WAL, synchronous=FULL) before a byte goes to the printer, with
its rendered bytes for the original and for a copy, so it survives a restart. The store
holds only rendered receipts (names and ID numbers already masked), never the raw
document, and drops the bytes once the job has printed.

Completion is confirmed with GS r 1, which the printer answers only after everything sent
before it has printed; while waiting, DLE EOT status is polled so paper out or an open
cover mid-job ends the job as ``failed`` with that reason instead of hanging or being
reported as printed. A status query left unanswered mid-job is not a failure: a slow
printer answers only after draining the data before it, so the driver keeps waiting until
``job_timeout_s`` (see ``_await_completion``). All blocking I/O runs in a worker thread
(``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.documents import Document
from edge.devices.printer.errors import PrinterError, PrinterJobFailed, PrinterOffline
from edge.devices.printer.escpos.builder import DLE_EOT, GS_R_PAPER
from edge.devices.printer.escpos.layout import render
from edge.devices.printer.escpos.profiles import get_profile
from edge.devices.printer.escpos.status import PrinterStatus, is_status_byte, parse_status
from edge.devices.printer.transport import PrinterTransport, open_transport
from yikatong.common.storage import open_durable

__all__ = ["JobRecord", "PrintOutcome", "PrinterService"]

log = logging.getLogger(__name__)

_POLL_S = 0.3  # how often status is polled while a job prints

_REASON_TEXT = {
    "paper_out": ("Printer is out of paper", "打印机缺纸，请联系工作人员"),
    "cover_open": ("Printer cover is open", "打印机上盖未关闭"),
    "cutter_error": ("Paper cutter jammed", "打印机切刀故障"),
    "printer_error": ("Printer mechanism error", "打印机故障"),
    "offline": ("Printer is offline", "打印机离线，请联系工作人员"),
    "connection_lost": ("Connection to the printer was lost", "打印机连接中断"),
    "timeout": ("Printer did not finish the job in time", "打印超时"),
    "interrupted": ("Device restarted while printing", "打印过程中设备重启"),
}


@dataclass(frozen=True)
class PrintOutcome:
    """What happened to a job; ``reason`` is a code when it failed (or ``unconfirmed``)."""

    job_id: str
    state: Literal["printed", "failed"]
    reason: str | None = None
    copy: bool = False
    doc_kind: str = ""

    @property
    def message(self) -> str:
        """English text for the screen."""
        return _REASON_TEXT.get(self.reason or "", ("Printed", ""))[0]

    @property
    def message_zh(self) -> str:
        """Chinese text for the screen."""
        if self.state == "printed":
            return "打印完成，请取走凭条"
        return _REASON_TEXT.get(self.reason or "", ("", "打印失败，请到人工窗口补打"))[1]


@dataclass(frozen=True)
class JobRecord:
    """A stored job as the store sees it."""

    job_id: str
    doc_kind: str
    state: Literal["pending", "printing", "printed", "failed"]
    reason: str | None
    copy: bool
    reprinted: bool
    created_at: str
    updated_at: str
    # Bytes of it reached the printer at least once: something (maybe all of it) may be on
    # paper, so any later print of it is a copy. A job refused before a byte was sent (paper
    # out, cover open) has nothing on paper: its first print is the original.
    sent: bool = False


class _JobStore:
    """SQLite job table; one connection shared by worker threads behind a lock."""

    def __init__(self, path: Path, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._db = open_durable(path)
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS print_jobs (
                job_id TEXT PRIMARY KEY, doc_kind TEXT NOT NULL, state TEXT NOT NULL,
                reason TEXT, copy INTEGER NOT NULL, reprinted INTEGER NOT NULL DEFAULT 0,
                data BLOB, copy_data BLOB, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
        )
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(print_jobs)")}
        if "sent" not in cols:  # a store from before the column: nothing known as sent
            self._db.execute("ALTER TABLE print_jobs ADD COLUMN sent INTEGER NOT NULL DEFAULT 0")

    def _now(self) -> str:
        return self._clock().isoformat()

    def add(self, job_id: str, kind: str, data: bytes, copy_data: bytes, copy: bool) -> None:
        with self._lock:
            now = self._now()
            self._db.execute(
                "INSERT INTO print_jobs (job_id, doc_kind, state, copy, data, copy_data,"
                " created_at, updated_at) VALUES (?, ?, 'pending', ?, ?, ?, ?, ?)",
                (job_id, kind, int(copy), data, copy_data, now, now),
            )

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id, doc_kind, state, reason, copy, reprinted, created_at, updated_at,"
                " sent"
                " FROM print_jobs WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        return self._record(row) if row else None

    @staticmethod
    def _record(row: tuple[object, ...]) -> JobRecord:
        return JobRecord(
            job_id=str(row[0]), doc_kind=str(row[1]), state=row[2],  # type: ignore[arg-type]
            reason=row[3] if row[3] is None else str(row[3]), copy=bool(row[4]),
            reprinted=bool(row[5]), created_at=str(row[6]), updated_at=str(row[7]),
            sent=bool(row[8]),
        )

    def payload(self, job_id: str, copy: bool) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {'copy_data' if copy else 'data'} FROM print_jobs WHERE job_id = ?",  # noqa: S608
                (job_id,),
            ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def set_state(
        self, job_id: str, state: str, reason: str | None = None, *, copy: bool | None = None
    ) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE print_jobs SET state = ?, reason = ?, updated_at = ?,"
                " copy = COALESCE(?, copy) WHERE job_id = ?",
                (state, reason, self._now(), None if copy is None else int(copy), job_id),
            )
            if state == "printed":  # nothing left to reprint: drop the personal data
                self._db.execute(
                    "UPDATE print_jobs SET data = NULL, copy_data = NULL WHERE job_id = ?",
                    (job_id,),
                )

    def mark_sent(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE print_jobs SET sent = 1 WHERE job_id = ?", (job_id,))

    def claim_reprint(self, job_id: str) -> bool:
        # A copy only if something of it may be on paper already (``sent``).
        with self._lock:
            cur = self._db.execute(
                "UPDATE print_jobs SET reprinted = 1, state = 'pending', copy = MAX(copy, sent),"
                " updated_at = ? WHERE job_id = ? AND state = 'failed' AND reprinted = 0"
                " AND copy_data IS NOT NULL",
                (self._now(), job_id),
            )
            return cur.rowcount == 1

    def release_reprint(self, job_id: str) -> None:
        # The reprint failed before a byte reached the printer: nothing is on paper, so it
        # was not spent (the patient may try again once the paper is in).
        with self._lock:
            self._db.execute(
                "UPDATE print_jobs SET reprinted = 0 WHERE job_id = ? AND state = 'failed'"
                " AND sent = 0", (job_id,))

    def unfinished(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, doc_kind, state, reason, copy, reprinted, created_at, updated_at,"
                " sent"
                " FROM print_jobs WHERE state IN ('pending', 'printing') ORDER BY created_at"
            ).fetchall()
        return [self._record(r) for r in rows]

    def purge(self, before: datetime) -> int:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM print_jobs WHERE state IN ('printed', 'failed') AND updated_at < ?",
                (before.isoformat(),),
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PrinterService:
    """One printer: status, durable jobs, resume after restart and one marked reprint."""

    def __init__(
        self,
        config: PrinterConfig,
        store_path: str | Path,
        *,
        clock: Callable[[], datetime] = _utc_now,
        transport_factory: Callable[[PrinterConfig], PrinterTransport] = open_transport,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.profile = get_profile(config.profile)
        self._clock = clock
        self._factory = transport_factory
        self._sleep = sleep
        self._store = _JobStore(Path(store_path), clock)
        self._transport: PrinterTransport | None = None
        self._lock = asyncio.Lock()

    # -- public API -----------------------------------------------------------------------

    async def status(self) -> PrinterStatus:
        """Read DLE EOT 1..4 now; raises PrinterOffline when the printer does not answer."""
        async with self._lock:
            return await asyncio.to_thread(self._status_sync)

    async def status_changes(self) -> AsyncIterator[PrinterStatus]:
        """Poll status every ``status_poll_s`` while idle; yield it on start and on change.

        A printer that does not answer is yielded as offline with paper ``unknown``. Rounds
        that fall while a job prints are skipped: the job reports its own outcome, and a
        query then would only queue behind the job's data.
        """
        interval = self.config.status_poll_s
        if not self.config.enabled or interval <= 0:
            return
        last: dict[str, bool | str] | None = None
        while True:
            if not self._lock.locked():
                try:
                    current = await self.status()
                except PrinterError as exc:
                    log.debug("idle status poll: %s", exc.reason)
                    current = PrinterStatus(online=False, cover_open=False, paper="unknown")
                # Compare what is reported, so a feed-button press is not a "change".
                if current.event_body() != last:
                    last = current.event_body()
                    yield current
            await asyncio.sleep(interval)

    async def print(self, doc: Document, *, job_id: str, copy: bool = False) -> PrintOutcome:
        """Store the job, print it and report the outcome; a known job_id is not reprinted."""
        existing = self._store.get(job_id)
        if existing is None:
            data = render(doc, self.profile)
            copy_data = render(dataclasses.replace(doc, copy=True), self.profile)
            self._store.add(job_id, doc.kind, copy_data if copy else data, copy_data, copy)
        elif existing.state in ("printed", "failed"):
            return self._outcome(existing)
        return await self._run(job_id, as_copy=False)

    async def reprint(self, job_id: str) -> PrintOutcome:
        """Print a failed job once more; PrinterJobFailed if not allowed.

        It is marked as a copy only when an earlier attempt sent bytes to the printer (an
        original may be on paper); a job that never reached the paper prints as the original.
        """
        record = self._store.get(job_id)
        if record is None:
            raise PrinterJobFailed(job_id, "unknown_job")
        if not self._store.claim_reprint(job_id):
            why = "already_reprinted" if record.reprinted else f"not_reprintable_{record.state}"
            raise PrinterJobFailed(job_id, why)
        outcome = await self._run(job_id, as_copy=record.copy or record.sent)
        if outcome.state == "failed":
            self._store.release_reprint(job_id)
            outcome = self._outcome(self._store.get(job_id) or record)
        return outcome

    def pending_jobs(self) -> list[JobRecord]:
        """Jobs stored but not finished (pending, or interrupted while printing)."""
        return self._store.unfinished()

    def job(self, job_id: str) -> JobRecord | None:
        """The stored record of a job."""
        return self._store.get(job_id)

    async def resume(self) -> list[PrintOutcome]:
        """Finish jobs left by a restart; one cut off mid-print is printed again as a copy."""
        outcomes = []
        for record in self._store.unfinished():
            # It may already be partly (or wholly) on paper: a second print is a copy.
            as_copy = record.copy or record.state == "printing"
            outcomes.append(await self._run(record.job_id, as_copy=as_copy))
        return outcomes

    def purge(self, before: datetime) -> int:
        """Delete finished jobs last touched before ``before``; returns how many."""
        return self._store.purge(before)

    async def close(self) -> None:
        """Close the printer link and the store."""
        async with self._lock:
            await asyncio.to_thread(self._disconnect)
            self._store.close()

    # -- internals (worker thread) --------------------------------------------------------

    async def _run(self, job_id: str, *, as_copy: bool) -> PrintOutcome:
        async with self._lock:
            return await asyncio.to_thread(self._print_sync, job_id, as_copy)

    def _outcome(self, record: JobRecord) -> PrintOutcome:
        state: Literal["printed", "failed"] = "printed" if record.state == "printed" else "failed"
        return PrintOutcome(record.job_id, state, record.reason, record.copy, record.doc_kind)

    def _finish(self, job_id: str, state: str, reason: str | None) -> PrintOutcome:
        self._store.set_state(job_id, state, reason)
        record = self._store.get(job_id)
        assert record is not None
        if state == "failed":
            log.warning("print job %s failed: %s", job_id, reason)
        return self._outcome(record)

    def _print_sync(self, job_id: str, as_copy: bool) -> PrintOutcome:
        record = self._store.get(job_id)
        assert record is not None
        data = self._store.payload(job_id, copy=as_copy or record.copy)
        if data is None:
            return self._finish(job_id, "failed", "no_data")
        self._store.set_state(job_id, "printing", copy=as_copy or record.copy)
        try:
            transport = self._connected()
            before = self._query_retrying()
            if before is not None and not before.ready:
                return self._finish(job_id, "failed", before.problem)
            transport = self._connected()
        except PrinterError as exc:
            return self._finish(job_id, "failed", exc.reason)
        try:
            self._store.mark_sent(job_id)
            if not transport.bidirectional:
                transport.write(data)
                transport.close()  # a CUPS job is submitted on close
                self._transport = None
                return self._finish(job_id, "printed", "unconfirmed")
            transport.write(data + (GS_R_PAPER if self.profile.sequenced_status else b""))
            reason = self._await_completion(transport)
        except PrinterError as exc:
            self._disconnect()
            return self._finish(job_id, "failed", exc.reason)
        if reason is not None:
            return self._finish(job_id, "failed", reason)
        return self._finish(job_id, "printed", None)

    def _await_completion(self, t: PrinterTransport) -> str | None:
        """None when the job has printed, else the reason it did not.

        Only a definite answer ends a job failed: a status saying paper out, cover open or a
        cutter error, or the link breaking (``PrinterOffline`` from read/write). A status
        query that gets no reply is *unconfirmed*, not offline: a printer draining a long job
        over a slow link (serial at 9600 baud, a busy network printer) reads our DLE EOT
        only after the data queued before it, so its answer can take far longer than
        ``status_timeout_s``. Calling that "offline" would invite a duplicate print of a
        receipt that came out fine, so we keep listening until ``job_timeout_s``.
        """
        deadline = time.monotonic() + self.config.job_timeout_s
        sequenced = self.profile.sequenced_status
        asked: list[int] = []  # DLE EOT n sent and not yet answered, in sending order
        replies: dict[int, int] = {}
        asked_at = 0.0
        next_round = time.monotonic() + (_POLL_S if sequenced else 0.0)
        warned = False
        while True:
            now = time.monotonic()
            if now >= deadline:
                return "timeout"
            if not asked and now >= next_round:
                # One round of all four queries: replies come back in the order asked.
                t.write(b"".join(DLE_EOT + bytes([n]) for n in (1, 2, 3, 4)))
                asked, replies, asked_at = [1, 2, 3, 4], {}, now
            reply = t.read(1, min(_POLL_S, max(0.01, deadline - now)))
            if not reply:
                if asked and not warned and now - asked_at > self.config.status_timeout_s:
                    log.info("printer status unconfirmed after %.1fs while a job drains; "
                             "waiting up to job_timeout_s", now - asked_at)
                    warned = True
                continue
            if not is_status_byte(reply[0]):
                if sequenced:
                    return None  # the GS r reply: everything before it is on paper
                continue  # stray byte from a printer that is not meant to send one
            if not asked:
                continue  # a late reply to a round we no longer wait for
            replies[asked.pop(0)] = reply[0]
            if asked:
                continue
            status = parse_status(replies)
            if not status.ready:
                return status.problem or "printer_error"
            if not sequenced:
                return None  # no GS r on this model: a clean status after the data is all we get
            next_round = time.monotonic() + _POLL_S

    def _connected(self) -> PrinterTransport:
        if self._transport is not None:
            return self._transport
        last: PrinterOffline | None = None
        for attempt in range(self.config.reconnect_attempts + 1):
            try:
                self._transport = self._factory(self.config)
                return self._transport
            except PrinterOffline as exc:
                last = exc
                if attempt < self.config.reconnect_attempts:
                    self._sleep(self.config.reconnect_delay_s)
        assert last is not None
        raise last

    def _disconnect(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(PrinterError):
                self._transport.close()
            self._transport = None

    def _status_sync(self) -> PrinterStatus:
        status = self._query_retrying()
        if status is None:
            return PrinterStatus(online=True, cover_open=False, paper="unknown")
        return status

    def _query_retrying(self) -> PrinterStatus | None:
        """Status over the current link, reconnecting once if the link went stale
        (printer power-cycled, cable replugged). None for one-way transports."""
        transport = self._connected()
        if not transport.bidirectional:
            return None
        try:
            return self._query(transport)
        except PrinterOffline:
            self._disconnect()
        return self._query(self._connected())

    def _query(self, t: PrinterTransport) -> PrinterStatus:
        status, _ = self._query_noting_gs_r(t)
        return status

    def _query_noting_gs_r(self, t: PrinterTransport) -> tuple[PrinterStatus, bool]:
        """DLE EOT 1..4; a GS r reply byte met on the way is reported, not mistaken."""
        replies: dict[int, int] = {}
        gs_r_seen = False
        for n in (1, 2, 3, 4):
            t.write(DLE_EOT + bytes([n]))
            deadline = time.monotonic() + self.config.status_timeout_s
            while True:
                left = deadline - time.monotonic()
                reply = t.read(1, max(0.0, left)) if left > 0 else b""
                if not reply:
                    self._disconnect()
                    raise PrinterOffline(f"no reply to DLE EOT {n}", reason="offline")
                if is_status_byte(reply[0]):
                    replies[n] = reply[0]
                    break
                gs_r_seen = True  # bit 4 clear: not a status byte, the GS r answer
        return parse_status(replies), gs_r_seen
