"""The daemon's event bus: events fanned out to the local API's subscribers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["EventBus"]


class EventBus:
    """Fan-out of daemon events to API subscribers; a slow subscriber loses old events only."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._maxsize = maxsize
        self._seq = 0

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber (never blocks)."""
        self._seq += 1
        event = {"seq": self._seq, "kind": kind, "data": data}
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Yield a queue receiving every event published while the context is open."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs.add(q)
        try:
            yield q
        finally:
            self._subs.discard(q)
