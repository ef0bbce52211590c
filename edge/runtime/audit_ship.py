"""The device audit chain and events to central, queued from sync code (docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from edge.runtime.ports import AuditLogPort, UplinkPort

__all__ = ["AuditShipper"]

log = logging.getLogger("edge.runtime")


class AuditShipper:
    """Appends masked audit records and ships them (and other events) through the uplink."""

    def __init__(self, uplink: UplinkPort, audit: AuditLogPort | None,
                 actor: Callable[[], str]) -> None:
        self.uplink = uplink
        # The device audit log; None: nothing is audited (tests).
        self.audit = audit
        self._actor = actor
        self._tasks: set[asyncio.Task[Any]] = set()

    def record(self, action: str, detail: dict[str, Any]) -> None:
        """Append one masked record to the audit log and queue it for central."""
        audit = self.audit
        if audit is None:
            return
        try:
            row = audit.record(self._actor(), action, detail)
        except Exception as exc:  # the audit must not take the kiosk down; say so loudly
            log.error("audit record %s refused: %s", action, type(exc).__name__)
            return
        self.ship("audit", row.wire_body(), lambda: audit.mark_shipped(row.seq))

    def ship(self, type_: str, body: dict[str, Any],
             done: Callable[[], None] | None = None) -> None:
        """Queue an event for central from sync code (the uplink's outbox is durable)."""
        async def send() -> None:
            try:
                await self.uplink.publish_event(type_, body)
            except Exception as exc:
                log.warning("event %s not queued: %s", type_, type(exc).__name__)
                return
            if done is not None:
                done()

        self.spawn(send())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; without a loop (a sync test) drop it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()  # unshipped audit records go at the next start (resend)
            return
        task = loop.create_task(coro)
        self._tasks.add(task)  # keep a reference until it ran
        task.add_done_callback(self._tasks.discard)

    async def resend(self) -> int:
        """Queue the audit records a crash left out of the outbox; returns how many."""
        if self.audit is None:
            return 0
        rows = self.audit.unshipped()
        for row in rows:
            await self.uplink.publish_event("audit", row.wire_body())
            self.audit.mark_shipped(row.seq)
        return len(rows)
