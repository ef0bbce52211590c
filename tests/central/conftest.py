"""Fixtures for central tests: ``broker_site`` (the shared ``make_site`` rig of
tests/conftest.py: store and registry in front of Mosquitto), and a stateful in-memory fake
platform that can be scripted to fail."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support import Site

from central.forwarder import Forwarder
from central.platform.base import PlatformAdapter
from central.platform.errors import (
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)


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


@pytest.fixture
def broker_site(make_site: Callable[..., Site]) -> Site:
    """A running site on ``tmp_path``; the broker is stopped afterwards, whatever happened."""
    return make_site()


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
