"""Plain helpers shared by test modules and conftests: one wait, one process rig, one broker rig.

Importable as ``support`` (``pythonpath = ["tests"]`` in pyproject.toml; with
``--import-mode=importlib`` test modules cannot import a conftest). The fixtures built on
these — ``procs``, ``make_broker``, ``broker``, ``logged_broker``, ``make_site`` — live in
tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from central.broker import (
    Listener,
    Mosquitto,
    MosquittoConfig,
    mosquitto_passwd_set,
    render_acl,
)
from central.forwarder import ForwarderSettings
from central.registry import Registry
from central.store import Store
from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig

REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")

# --- waiting on a condition ----------------------------------------------------------------


def _timed_out(cond: object, timeout: float, what: str | None) -> AssertionError:
    name = what or getattr(cond, "__name__", repr(cond))
    return AssertionError(f"timed out after {timeout}s waiting for {name}")


def wait_until(cond: Callable[[], T], timeout: float = 5.0, *, what: str | None = None,
               interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(cond, timeout, what)
        time.sleep(interval)


async def wait_until_async(cond: Callable[[], T | Awaitable[T]], timeout: float = 5.0, *,  # noqa: ASYNC109 - the twin of wait_until
                           what: str | None = None, interval: float = 0.02) -> T:
    """:func:`wait_until` for the event loop: ``cond`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _timed_out(cond, timeout, what)
        await asyncio.sleep(interval)


# --- processes -----------------------------------------------------------------------------


class Procs:
    """Starts real processes, each in its own session, and makes sure none outlives the test.

    Output goes to ``{logdir}/{name}.log``; with ``pipe=True`` stdout is a text pipe the test
    reads (stderr still goes to the log).
    """

    def __init__(self, logdir: Path, cwd: Path = REPO) -> None:
        self.logdir = logdir
        self.cwd = cwd
        logdir.mkdir(parents=True, exist_ok=True)
        self.all: list[subprocess.Popen[Any]] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, *,
              pipe: bool = False) -> subprocess.Popen[Any]:
        """Start ``args`` (environment: ours plus ``env``)."""
        with open(self.logdir / f"{name}.log", "ab") as log:
            out: int | IO[bytes] = subprocess.PIPE if pipe else log
            proc = subprocess.Popen(
                args, stdout=out, stderr=log if pipe else subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, cwd=self.cwd,
                start_new_session=True, text=pipe)
        self.all.append(proc)
        return proc

    def python(self, name: str, *args: str, env: dict[str, str] | None = None,
               pipe: bool = False) -> subprocess.Popen[Any]:
        """Start this interpreter with ``args``."""
        return self.spawn(name, [sys.executable, *args], env, pipe=pipe)

    def ykt(self, name: str, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.Popen[Any]:
        """Start a ``ykt`` subcommand."""
        return self.python(name, "-m", "yikatong.cli", *args, env=env)

    @staticmethod
    def kill9(proc: subprocess.Popen[Any]) -> None:
        """SIGKILL the process and its session, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    @staticmethod
    def terminate(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
        """SIGTERM the session, SIGKILL after ``timeout``."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            Procs.kill9(proc)

    def stop_all(self) -> list[int]:
        """Stop every process started here; return the pids of sessions that were still alive."""
        for p in reversed(self.all):
            self.terminate(p)
        alive = []
        for p in self.all:
            if p.stdout is not None:
                p.stdout.close()
            try:
                os.killpg(p.pid, 0)  # any process left in its group (children too)?
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            alive.append(p.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        return alive


# --- Mosquitto -----------------------------------------------------------------------------


@dataclass
class Broker:
    """A Mosquitto on a loopback port, its password and ACL files, central's password."""

    mosquitto: Mosquitto
    passwd: Path | None
    acl: Path | None
    central_password: str | None = None

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def add_device(self, dev: str, tmp: Path, **kw: object) -> UplinkConfig:
        """Create credentials for ``dev`` and return an UplinkConfig using them."""
        assert self.passwd is not None, "this broker has no password file"
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

    def stop(self) -> list[int]:
        """Stop the broker; SIGKILL and return any process of it still alive."""
        self.mosquitto.stop()
        left = self.mosquitto.leftovers()
        for pid in left:  # never leave a broker behind, but say so loudly
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


def new_broker(workdir: Path, *, central: str | None = "central", passwd: Path | None = None,
               acl: Path | None = None, **cfg: Any) -> Broker:
    """A configured (not started) Mosquitto in ``workdir`` on a free loopback port.

    With ``central`` and no ``passwd``/``acl``, both files are made in ``workdir`` with that
    account; pass ``central=None`` for certificate-only brokers. ``cfg`` overrides
    :class:`MosquittoConfig` fields (persistence is off unless ``persistence_dir`` is given).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    central_password = None
    if central is not None and passwd is None:
        passwd = workdir / "passwd"
        central_password = secrets.token_urlsafe(18)
        mosquitto_passwd_set(passwd, central, central_password)
    if central is not None and acl is None:
        acl = workdir / "acl"
        acl.write_text(render_acl(central))
    cfg.setdefault("listeners", [Listener(host="127.0.0.1", port=0)])
    cfg.setdefault("persistence", cfg.get("persistence_dir") is not None)
    m = Mosquitto(workdir, MosquittoConfig(password_file=passwd, acl_file=acl, **cfg))
    return Broker(m, passwd, acl, central_password)


@dataclass
class Site:
    """Central's store and registry in front of the shared broker rig, which reads the
    registry's password and ACL files and is reloaded whenever they change."""

    workdir: Path
    store: Store
    registry: Registry
    rig: Broker
    central_password: str
    central_user: str = "central"

    @property
    def broker(self) -> Mosquitto:
        return self.rig.mosquitto

    def device(self, dev: str, tmp: Path, **kw: Any) -> Uplink:
        """Register ``dev`` and build (not start) its Uplink on this broker."""
        creds = self.registry.register(dev, "kiosk")
        pw = tmp / f"{dev}.password"
        pw.write_text(creds.password)
        cfg = UplinkConfig(
            host="127.0.0.1", port=self.broker.port, username=dev, password_file=pw,
            outbox_path=tmp / f"{dev}.outbox.db", state_path=tmp / f"{dev}.state.json",
            retry_interval_s=kw.pop("retry_interval_s", 0.5), backoff_min_s=0.05,
            backoff_max_s=0.5, **kw,
        )
        return Uplink(cfg, dev, role="kiosk", version="1.2.3")

    def login(self, connection: str = "central") -> dict[str, str]:
        """Username/password of central's broker account for ``connection`` (made once)."""
        creds = self.registry.central_credentials(connection)
        return {"username": creds.username, "password": creds.password}

    def forwarder_settings(self, **kw: Any) -> ForwarderSettings:
        """Settings for a forwarder on this site's broker (its own account per client id)."""
        return ForwarderSettings(
            host="127.0.0.1", port=self.broker.port,
            **self.login(kw.get("client_id", "central")), **kw,
        )
