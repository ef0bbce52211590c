"""One background loop a component owns: started once, stopped by cancelling and awaiting it.

Used by components with their own ``start()``/``stop()`` (telemetry, the device's hot-list
sync, scanner discovery); a daemon's long-running tasks are
:class:`yikatong.common.service.Daemon`'s instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["BackgroundTask"]


class BackgroundTask:
    """Runs ``factory()`` as a named task between :meth:`start` and :meth:`stop`."""

    def __init__(self, factory: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        self._factory = factory
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` (even if the loop itself ended)."""
        return self._task is not None

    def start(self) -> None:
        """Start the loop on the running event loop; a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._factory(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended; nothing when it is not running.

        The loop's own cancellation is swallowed; a cancellation of the caller is not (it
        propagates once the loop has ended), and an error the loop ended with is raised.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
