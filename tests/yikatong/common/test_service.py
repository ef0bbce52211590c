"""The shared daemon run loop: READY/STOPPING to systemd, stop on event or failure, clean end."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from yikatong.common.service import Daemon


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A NOTIFY_SOCKET that records what the daemon told systemd."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)

    def said() -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(256).decode())
            except BlockingIOError:
                return out

    yield said
    sock.close()


async def test_stop_event_ends_the_daemon_in_order(systemd) -> None:
    stop = asyncio.Event()
    daemon = Daemon("t", stop)
    events: list[str] = []

    async def component() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    daemon.spawn(component(), name="component")

    async def before_cancel() -> None:
        events.append("before_cancel")

    asyncio.get_running_loop().call_later(0.05, stop.set)
    await asyncio.wait_for(daemon.run(before_cancel=before_cancel), 5)
    assert events == ["before_cancel", "cancelled"]
    assert all(t.done() for t in daemon.tasks)
    assert systemd() == ["READY=1", "STOPPING=1"]


async def test_a_failed_component_stops_the_rest_and_is_logged(systemd, caplog) -> None:
    daemon = Daemon("t")
    other = daemon.spawn(asyncio.Event().wait(), name="other")

    async def broken() -> None:
        raise OSError("port in use")

    daemon.spawn(broken(), name="api")
    with caplog.at_level(logging.ERROR, logger="yikatong.common.service"):
        await asyncio.wait_for(daemon.run(), 5)
    assert other.cancelled()
    assert "component failed: api" in caplog.text


async def test_a_component_cancelled_from_outside_is_not_an_error(systemd, caplog) -> None:
    daemon = Daemon("t")
    victim = daemon.spawn(asyncio.Event().wait(), name="victim")
    asyncio.get_running_loop().call_later(0.05, victim.cancel)
    with caplog.at_level(logging.ERROR, logger="yikatong.common.service"):
        await asyncio.wait_for(daemon.run(), 5)  # raised CancelledError before the guard
    assert "component failed" not in caplog.text


async def test_tasks_are_cancelled_even_when_the_callers_shutdown_fails(systemd) -> None:
    stop = asyncio.Event()
    stop.set()
    daemon = Daemon("t", stop)
    task = daemon.spawn(asyncio.Event().wait(), name="component")

    async def before_cancel() -> None:
        raise RuntimeError("forwarder.stop failed")

    with pytest.raises(RuntimeError):
        await daemon.run(before_cancel=before_cancel)
    assert task.cancelled()


async def test_http_servers_are_told_to_exit(systemd) -> None:
    async def app(scope, receive, send) -> None:  # never called: nothing connects
        raise AssertionError(scope)

    stop = asyncio.Event()
    daemon = Daemon("t", stop)
    server = daemon.serve_http(app, "127.0.0.1", 0, name="api")
    asyncio.get_running_loop().call_later(0.2, stop.set)
    await asyncio.wait_for(daemon.run(), 10)
    assert server.should_exit
    assert all(t.done() for t in daemon.tasks)


async def test_watchdog_is_fed_when_systemd_asks(systemd, monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    stop = asyncio.Event()
    daemon = Daemon("t", stop)
    asyncio.get_running_loop().call_later(0.12, stop.set)
    await asyncio.wait_for(daemon.run(), 5)
    said = systemd()
    assert said[0] == "READY=1" and said[-1] == "STOPPING=1"
    assert said.count("WATCHDOG=1") >= 2
