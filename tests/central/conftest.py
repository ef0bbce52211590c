"""Fixtures for central tests: a real Mosquitto on a free loopback port, the store and
registry behind it, and a stateful in-memory fake platform that can be scripted to fail."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central.broker import Listener, Mosquitto, MosquittoConfig
from central.forwarder import Forwarder, ForwarderSettings
from central.platform.base import PlatformAdapter
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.registry import Registry
from central.store import Store, open_store
from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig


class FakePlatform(PlatformAdapter):
    """In-memory platform: idempotent per key, counts effects, scriptable per operation.

    ``script(op, *actions)`` queues actions for the next calls of ``op``: ``"ok"``,
    ``"unavailable"`` (nothing happens), ``"reject"``, ``"hang"`` (never answers),
    ``"lose_reply"`` (commits the effect, then raises outcome unknown), ``"commit_then_hang"``
    (commits, never answers), ``"slow"`` (0.5 s), ``"pending"`` (payment stays pending).
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()  # per idempotency key
        self.effects: Counter[str] = Counter()  # per idempotency key, mutating ops only
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, dict[str, Any]] = {}
        self._script: dict[str, list[str]] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self._pending_next = False

    def script(self, op: str, *actions: str) -> None:
        """Queue ``actions`` for the next calls of ``op``."""
        self._script.setdefault(op, []).extend(actions)

    async def call(
        self,
        op: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the adapter interface's signature
    ) -> dict[str, Any]:
        """Perform ``op`` once per idempotency key."""
        self.calls[idempotency_key] += 1
        queue = self._script.get(op) or []
        action = queue.pop(0) if queue else "ok"
        if action == "unavailable":
            raise PlatformUnavailable("scripted outage")
        if action == "reject":
            raise PlatformRejected("slot_full", "no slots left")
        if action == "hang":
            await asyncio.sleep(3600)
        if action == "slow":
            await asyncio.sleep(0.5)
        if action == "pending":  # the payer has not confirmed on their phone yet
            self._pending_next = True
        if idempotency_key in self.outcomes:
            return self.outcomes[idempotency_key]
        result = self._perform(op, body, idempotency_key)
        self.outcomes[idempotency_key] = result
        if action == "lose_reply":
            raise PlatformOutcomeUnknown("reply lost after commit")
        if action == "commit_then_hang":  # committed, then central dies before its commit
            await asyncio.sleep(3600)
        return result

    def _perform(self, op: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        if op == "reg.departments":
            return {"departments": [
                {"code": "NK", "name": "内科", "name_en": "Internal Medicine", "location": "A1"}
            ]}
        if op == "pay.create":
            self.effects[key] += 1
            pid = f"P{next(self._ids):06d}"
            state = "pending" if self._pending_next else "approved"
            self._pending_next = False
            pay = {"payment_id": pid, "state": state, "amount_fen": body["amount_fen"],
                   "method": body["method"], "txn_id": f"T{pid}"}
            self.payments[pid] = pay
            return pay
        if op in ("pay.status", "pay.reverse"):
            pay = self.payments.get(body["payment_id"])
            if pay is None:
                raise PlatformRejected("not_found", "no such payment")
            if op == "pay.reverse":
                self.effects[key] += 1
                pay["state"] = "reversed"
            return dict(pay)
        if op == "report.printed":
            self.effects[key] += 1
            return {"report_no": body["report_no"], "printed": True}
        raise PlatformUnavailable(f"fake platform does not implement {op}")

    async def aclose(self) -> None:
        """Nothing to release."""
        self.closed = True


@dataclass
class Site:
    """A running broker with its store and registry."""

    workdir: Path
    store: Store
    registry: Registry
    broker: Mosquitto
    central_password: str
    central_user: str = "central"

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


def make_site(workdir: Path) -> Site:
    """Store + registry + a started Mosquitto using the registry's password/ACL files."""
    store = open_store(workdir / "central.db")
    registry = Registry(store, workdir / "broker")
    creds = registry.central_credentials()
    cfg = MosquittoConfig(
        listeners=[Listener(host="127.0.0.1", port=0)],
        persistence_dir=workdir / "broker" / "data",
        acl_file=registry.acl_file,
        password_file=registry.password_file,
    )
    broker = Mosquitto(workdir / "broker", cfg)
    registry._on_change = broker.reload  # the registry tells the broker to re-read its files
    broker.start()
    return Site(workdir, store, registry, broker, creds.password, creds.username)


@pytest.fixture
def broker_site(tmp_path: Path) -> Iterator[Site]:
    """A running site; the broker is stopped afterwards, whatever happened."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is required for these tests (apt install mosquitto)")
    s = make_site(tmp_path)
    try:
        yield s
    finally:
        s.broker.stop()
        s.store.close()
        left = s.broker.leftovers()
        for pid in left:  # never leave a broker behind, but say so loudly
            os.kill(pid, signal.SIGKILL)
        assert not left, f"mosquitto processes left running: {left}"


@pytest.fixture
def fake_platform() -> FakePlatform:
    """A fresh fake platform."""
    return FakePlatform()


@pytest.fixture
async def forwarder(broker_site: Site, fake_platform: FakePlatform) -> AsyncIterator[Forwarder]:
    """A connected forwarder on the site's broker with the fake platform."""
    fwd = Forwarder(broker_site.forwarder_settings(concurrency=8), broker_site.store, fake_platform)
    await fwd.start()
    assert await fwd.wait_connected(10)
    try:
        yield fwd
    finally:
        await fwd.stop()
