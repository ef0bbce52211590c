"""The run loop every daemon shares: tasks, systemd readiness and watchdog, an orderly stop.

``ykt edge`` and ``ykt central`` (docs/architecture.md, "Processes") start their components,
then hand the long-running coroutines to a :class:`Daemon`, which tells systemd it is ready,
pings the watchdog, waits for SIGTERM/SIGINT, the caller's ``stop`` event or the first task
to end, and then stops: HTTP servers first, then the caller's own shutdown, then every task
cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from yikatong.common.systemd import notify, watchdog_enabled, watchdog_loop

__all__ = ["Daemon"]

log = logging.getLogger(__name__)


class Daemon:
    """One process's long-running tasks and how they end; create it first thing in ``run``.

    Creating it installs the SIGTERM/SIGINT handlers, so a signal that arrives while the
    components are still starting ends :meth:`run` at once.
    """

    def __init__(self, name: str, stop: asyncio.Event | None = None) -> None:
        self.name = name
        self.stop = stop or asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._servers: list[Any] = []  # uvicorn.Server, imported only when one is used
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not on the main thread (tests, the site-in-a-box) or not on this platform.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop.set)

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks started so far (a copy)."""
        return list(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task; if it ends (or fails), the daemon stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    def serve_http(self, app: Any, host: str, port: int, name: str) -> Any:
        """Serve the ASGI ``app`` (uvicorn, our logging, no lifespan) as one of the tasks."""
        import uvicorn  # only daemons that serve HTTP pay for it

        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                               access_log=False, lifespan="off"))
        self._servers.append(server)
        self.spawn(server.serve(), name=name)
        return server

    async def run(self, *, before_cancel: Callable[[], Awaitable[None]] | None = None) -> None:
        """Report READY, keep the watchdog fed, and wait; then stop in order.

        After the wait: STOPPING is reported, HTTP servers are told to exit, ``before_cancel``
        stops what must stop while the tasks still run (producers feeding them), and every
        task is cancelled and awaited. What must stop after the tasks belongs in the caller's
        ``finally``.
        """
        if watchdog_enabled():
            self.spawn(watchdog_loop(), name="watchdog")
        notify("READY=1")
        waiter = asyncio.create_task(self.stop.wait(), name=f"{self.name}-stop")
        try:
            done, _ = await asyncio.wait([waiter, *self._tasks],
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not waiter and not t.cancelled() and t.exception() is not None:
                    log.error("%s: component failed: %s", self.name, t.get_name(),
                              exc_info=t.exception())
        finally:
            notify("STOPPING=1")
            for server in self._servers:
                server.should_exit = True
            try:
                if before_cancel is not None:
                    await before_cancel()
            finally:
                for t in (waiter, *self._tasks):
                    t.cancel()
                await asyncio.gather(waiter, *self._tasks, return_exceptions=True)
