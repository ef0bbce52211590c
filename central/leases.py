"""Leases in the store: work that must run on exactly one central instance at a time.

Several ``ykt central`` instances may share one PostgreSQL store (docs/scaling.md). Request
handling needs no leader — every request is claimed by its own row (central/store) — but a
few jobs must run once: the payment resolver (it calls the platform about the same
payments), the hot-list poller and publisher, retention, the telemetry rollup, the
rollout scheduler and the fleet's command expiry and certificate renewals. They run on
the instance holding the ``jobs`` lease.

A lease is one row of ``central_lease``: name, holder (``<client id>/<boot nonce>``), expiry
and an epoch that grows each time the lease changes hands. Taking or renewing it is a single
``INSERT … ON CONFLICT DO UPDATE … WHERE`` that succeeds only when the row is free, expired,
or already this holder's (or an earlier boot's of the same client id: that process is gone,
the broker allows one connection per client id), so two instances can never both succeed.
Expiry is judged on the database's own clock, never an instance's. The same statement runs
on SQLite (one instance takes it at once).

:class:`JobsLease` holds the lease: it renews every ``lease_s / 3``, runs the jobs while it
holds it, and stops them when a renewal fails or none succeeded for ``0.6 × lease_s`` — well
before another instance could take the lease over at ``lease_s`` — so two instances never
run the jobs together for longer than one renewal round trip. A stopped instance gives the
lease up at once; a killed one loses it after ``lease_s``. The jobs are written to be safe if
repeated (idempotency keys, retained hot-list versions, compare-and-set row updates), so the
lease is what makes them efficient and orderly, not what makes them correct.
"""

# ruff: noqa: S608 — the f-strings interpolate the table name and the dialect's clock only

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from central.store import Store

__all__ = ["JobsLease", "LeaseState", "Leases"]

log = logging.getLogger("central.leases")

_TABLE = "central_lease"
_DDL = (f"CREATE TABLE IF NOT EXISTS {_TABLE} (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL, epoch BIGINT NOT NULL)")


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as read from the store."""

    name: str
    holder: str | None
    expires_at: float | None  # database clock, epoch seconds
    epoch: int


class Leases:
    """Take, renew, release and read leases in ``store`` on behalf of ``holder``."""

    def __init__(self, store: Store, holder: str) -> None:
        if "/" not in holder:
            raise ValueError("holder is '<client id>/<boot nonce>'")
        self.store = store
        self.holder = holder
        self._prefix = holder.rpartition("/")[0] + "/"
        clock = store.dialect.clock
        self._take = (
            f"INSERT INTO {_TABLE} (name, holder, expires_at, epoch) VALUES (?, ?, {clock} + ?, 1) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at, "
            f"epoch = {_TABLE}.epoch + CASE WHEN {_TABLE}.holder = excluded.holder "
            "THEN 0 ELSE 1 END "
            f"WHERE {_TABLE}.holder = excluded.holder OR {_TABLE}.expires_at < {clock} "
            f"OR (substr({_TABLE}.holder, 1, ?) = ? AND {_TABLE}.holder < excluded.holder) "
            "RETURNING epoch")
        with store.atomic():
            store.connection().execute(_DDL)

    @staticmethod
    def new_holder(client_id: str) -> str:
        """``<client_id>/<boot nonce>``, one per process start; a later boot's nonce sorts
        after an earlier one's (it starts with the time), so only the newer boot of a client
        id takes the lease over from the older, never back."""
        return f"{client_id}/{time.time_ns():016x}{secrets.token_hex(3)}"

    def acquire(self, name: str, lease_s: float) -> int | None:
        """Take or renew ``name`` for ``lease_s`` seconds; its epoch, or None when another
        live holder has it."""
        with self.store.atomic():
            row = self.store.connection().execute(
                self._take, (name, self.holder, lease_s, len(self._prefix), self._prefix)
            ).fetchone()
        return None if row is None else int(row[0])

    def release(self, name: str) -> bool:
        """Give ``name`` up (expire it now) if this holder has it; True when it did."""
        with self.store.atomic():
            n = self.store.connection().execute(
                f"UPDATE {_TABLE} SET expires_at = 0 WHERE name = ? AND holder = ?",
                (name, self.holder)).rowcount
        return n == 1

    def state(self, name: str) -> LeaseState:
        """Who holds ``name`` and until when (a released or never-taken lease: no holder)."""
        row = self.store.connection().execute(
            f"SELECT holder, expires_at, epoch, {self.store.dialect.clock} FROM {_TABLE} "
            "WHERE name = ?", (name,)).fetchone()
        if row is None:
            return LeaseState(name, None, None, 0)
        holder, expires, epoch, now = row
        live = float(expires) > float(now)
        return LeaseState(name, str(holder) if live else None, float(expires), int(epoch))


Job = Callable[[], Coroutine[Any, Any, None]]


class JobsLease:
    """Run ``jobs`` while this instance holds the lease ``name`` (see the module docstring)."""

    def __init__(self, leases: Leases, jobs: dict[str, Job], *, lease_s: float = 15.0,
                 name: str = "jobs", enabled: bool = True) -> None:
        self.leases = leases
        self.jobs = jobs
        self.lease_s = lease_s
        self.name = name
        self.enabled = enabled
        self.epoch: int | None = None  # while held
        self.changes = 0  # times this instance took the lease
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_ok = 0.0

    @property
    def held(self) -> bool:
        return self.epoch is not None

    def status(self) -> dict[str, Any]:
        """For ``/api/status``: whether this instance runs the jobs, and which."""
        return {"lease": self.name, "eligible": self.enabled, "held": self.held,
                "epoch": self.epoch, "holder": self.leases.holder if self.held else None,
                "jobs": sorted(n for n, t in self._tasks.items() if not t.done())}

    async def run(self) -> None:
        """Hold the lease and run the jobs until cancelled; then stop them and release."""
        if not self.enabled:
            await asyncio.Event().wait()  # this instance never runs them ([cluster] jobs)
        try:
            while True:
                await self._tick()
                await asyncio.sleep(self.lease_s / 3)
        finally:
            await self._stop_jobs()
            if self.held:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.leases.release, self.name)
                self.epoch = None

    async def _tick(self) -> None:
        try:
            epoch = await asyncio.to_thread(self.leases.acquire, self.name, self.lease_s)
        except Exception as exc:  # the database is away: keep going until it is unsafe
            log.warning("jobs lease renewal failed: %s", exc)
            if self.held and time.monotonic() - self._last_ok > 0.6 * self.lease_s:
                log.warning("jobs lease may have expired: stopping this instance's jobs")
                await self._stop_jobs()
                self.epoch = None
            return
        if epoch is None:
            if self.held:
                log.warning("jobs lease taken by another instance: stopping the jobs here")
                await self._stop_jobs()
            self.epoch = None
            return
        self._last_ok = time.monotonic()
        if not self.held:
            self.changes += 1
            log.info("jobs lease taken (epoch %d): running %s here", epoch,
                     ", ".join(sorted(self.jobs)))
        self.epoch = epoch
        for job_name, job in self.jobs.items():  # start, or restart one that crashed
            task = self._tasks.get(job_name)
            if task is None or task.done():
                if task is not None and not task.cancelled() and task.exception() is not None:
                    log.error("job %s ended: %s; restarting", job_name, task.exception())
                self._tasks[job_name] = asyncio.create_task(job(), name=f"job:{job_name}")

    async def _stop_jobs(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
