"""Fixtures for uplink tests: a real Mosquitto with per-device passwords and the ACL."""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from central.broker import (
    Listener,
    Mosquitto,
    MosquittoConfig,
    mosquitto_passwd_set,
    render_acl,
)
from edge.uplink.config import UplinkConfig


@dataclass
class Broker:
    """A running broker and a way to add device credentials to it."""

    mosquitto: Mosquitto
    passwd: Path
    central_password: str

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def add_device(self, dev: str, tmp: Path, **kw: object) -> UplinkConfig:
        """Create credentials for ``dev`` and return an UplinkConfig using them."""
        password = secrets.token_urlsafe(18)
        mosquitto_passwd_set(self.passwd, dev, password)
        self.mosquitto.reload()
        pw = tmp / f"{dev}.password"
        pw.write_text(password + "\n")
        opts: dict[str, object] = {
            "retry_interval_s": 0.5, "backoff_min_s": 0.05, "backoff_max_s": 0.5, **kw,
        }
        return UplinkConfig(
            host="127.0.0.1", port=self.port, username=dev, password_file=pw,
            outbox_path=tmp / f"{dev}.outbox.db", state_path=tmp / f"{dev}.state.json",
            **opts,  # type: ignore[arg-type]
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto on a free loopback port; stopped after the test."""
    yield from _broker(tmp_path)


@pytest.fixture
def logged_broker(tmp_path: Path) -> Iterator[Broker]:
    """Like ``broker``, logging every packet (``log_type debug``) to count what it received."""
    yield from _broker(tmp_path, ("error", "warning", "notice", "information", "debug"))


def _broker(tmp_path: Path, log_types: tuple[str, ...] | None = None) -> Iterator[Broker]:
    wd = tmp_path / "broker"
    wd.mkdir()
    passwd, acl = wd / "passwd", wd / "acl"
    central_password = secrets.token_urlsafe(18)
    mosquitto_passwd_set(passwd, "central", central_password)
    acl.write_text(render_acl("central"))
    cfg = MosquittoConfig(
        listeners=[Listener(host="127.0.0.1", port=0)], persistence=False,
        password_file=passwd, acl_file=acl,
        **({} if log_types is None else {"log_types": log_types}),
    )
    m = Mosquitto(wd, cfg)
    m.start()
    try:
        yield Broker(m, passwd, central_password)
    finally:
        m.stop()
        left = m.leftovers()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"mosquitto processes left running: {left}"
