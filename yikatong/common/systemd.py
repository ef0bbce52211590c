"""sd_notify without libsystemd: READY, STATUS, STOPPING and WATCHDOG keep-alives."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "watchdog_enabled", "watchdog_loop"]


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when not run by systemd."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace socket
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when systemd expects watchdog pings from this process."""
    env = os.environ if environ is None else environ
    return int(env.get("WATCHDOG_USEC", "0") or 0) > 0


async def watchdog_loop(environ: Mapping[str, str] | None = None) -> None:
    """Ping the systemd watchdog at half its interval while the event loop is healthy."""
    env = os.environ if environ is None else environ
    usec = int(env.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    interval = usec / 1_000_000 / 2
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
