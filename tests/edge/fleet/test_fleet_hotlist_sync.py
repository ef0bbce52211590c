"""edge.fleet.hotlist_sync against a scripted uplink and the real HotList (SQLite) file."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from central.hotlist import notice_payload
from edge.devices.card.hotlist import HotList
from edge.fleet.hotlist_sync import HotlistSync
from edge.uplink.errors import PlatformUnavailable
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import encode, new_envelope
from yikatong.protocol.messages import HotlistDelta
from yikatong.protocol.signing import generate_private_key

NOW = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)
TOPIC = "ykt/v1/fleet/hotlist"


class ScriptedPlatformList:
    """The platform's versioned list, answering hotlist.delta like the reference platform."""

    def __init__(self) -> None:
        self.changes: list[tuple[int, str, str]] = []  # (version, card, add|remove)

    @property
    def version(self) -> int:
        return self.changes[-1][0] if self.changes else 0

    def add(self, card: str) -> int:
        self.changes.append((self.version + 1, card, "add"))
        return self.version

    def remove(self, card: str) -> int:
        self.changes.append((self.version + 1, card, "remove"))
        return self.version

    def delta(self, since: int) -> dict[str, Any]:
        if since <= 0 or since > self.version:
            last: dict[str, str] = {}
            for _, c, a in self.changes:
                last[c] = a
            return {"version": self.version, "full": True,
                    "added": sorted(c for c, a in last.items() if a == "add"), "removed": []}
        net: dict[str, str] = {}
        for v, c, a in self.changes:
            if v > since:
                net[c] = a
        return {"version": self.version, "full": False,
                "added": sorted(c for c, a in net.items() if a == "add"),
                "removed": sorted(c for c, a in net.items() if a == "remove")}


class FakeUplink:
    """Just enough of Uplink: handlers, a connection flag, scripted request failures."""

    def __init__(self, platform: ScriptedPlatformList, *, connected: bool = True) -> None:
        self.platform = platform
        self.handlers: dict[str, list[Any]] = {}
        self._connected = asyncio.Event()
        if connected:
            self._connected.set()
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def connect(self) -> None:
        self._connected.set()

    def on_message(self, kind: str, handler: Any) -> None:
        self.handlers.setdefault(kind, []).append(handler)

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def request(self, type: str, body: dict[str, Any], *,
                      timeout: float | None = None) -> HotlistDelta:  # noqa: ASYNC109
        assert type == "hotlist.delta"
        self.requests.append(body)
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next -= 1
            raise PlatformUnavailable()
        # As the real uplink answers: the reply validated into its result model.
        return HotlistDelta.model_validate(self.platform.delta(body["since_version"]))

    def deliver(self, payload: bytes) -> None:
        for h in self.handlers.get("hotlist", []):
            h(InboundMessage(TOPIC, payload, 1, True))


def notice(version: int) -> bytes:
    return notice_payload(version, NOW)


async def until(cond: Any, within_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def hotlist(tmp_path: Path) -> Any:
    h = HotList(tmp_path / "hotlist.db")
    yield h
    h.close()


def make_sync(uplink: FakeUplink, hotlist: HotList, **kw: Any) -> HotlistSync:
    opts: dict[str, Any] = {"backoff_min_s": 0.01, "backoff_max_s": 0.05,
                            "rng": random.Random(7), **kw}
    return HotlistSync(uplink, hotlist, **opts)


async def test_fetches_at_start_up_and_blocks_the_cards(hotlist: HotList) -> None:
    plat = ScriptedPlatformList()
    plat.add("CARD000001")
    plat.add("CARD000002")
    up = FakeUplink(plat)
    sync = make_sync(up, hotlist)
    await sync.start()
    try:
        assert await sync.wait_version(2, 3)
        assert hotlist.is_blocked("CARD000001") and hotlist.is_blocked("card000002")
        assert up.requests == [{"since_version": 0}]
    finally:
        await sync.stop()


async def test_newer_notice_fetches_a_delta_and_stale_or_repeated_ones_do_nothing(
    hotlist: HotList,
) -> None:
    plat = ScriptedPlatformList()
    plat.add("CARD000001")
    up = FakeUplink(plat)
    sync = make_sync(up, hotlist)
    await sync.start()
    try:
        assert await sync.wait_version(1, 3)
        plat.add("CARD000009")
        plat.remove("CARD000001")
        up.deliver(notice(3))
        assert await sync.wait_version(3, 3)
        assert up.requests[-1] == {"since_version": 1}
        assert hotlist.is_blocked("CARD000009") and not hotlist.is_blocked("CARD000001")
        fetched = len(up.requests)
        for v in (3, 2, 1, 3):  # repeated and out-of-order notices
            up.deliver(notice(v))
        await asyncio.sleep(0.2)
        assert len(up.requests) == fetched
        assert hotlist.version == 3
    finally:
        await sync.stop()


async def test_failures_are_retried_with_backoff(hotlist: HotList) -> None:
    plat = ScriptedPlatformList()
    plat.add("CARD000001")
    up = FakeUplink(plat)
    up.fail_next = 3
    sync = make_sync(up, hotlist)
    await sync.start()
    try:
        assert await sync.wait_version(1, 3)
        assert len(up.requests) == 4
        assert sync.stats["failures"] == 3
    finally:
        await sync.stop()


async def test_offline_device_keeps_its_copy_and_catches_up_on_connect(
    hotlist: HotList,
) -> None:
    hotlist.apply_delta(1, ["CARD000001"], full=True)
    plat = ScriptedPlatformList()
    plat.add("CARD000001")
    plat.add("CARD000002")
    up = FakeUplink(plat, connected=False)
    sync = make_sync(up, hotlist)
    await sync.start()
    try:
        up.deliver(notice(2))  # e.g. seen just before the link dropped
        await asyncio.sleep(0.2)
        assert up.requests == []  # offline: nothing queued, the old copy is enforced
        assert hotlist.is_blocked("CARD000001") and not hotlist.is_blocked("CARD000002")
        up.connect()
        assert await sync.wait_version(2, 3)
        assert hotlist.is_blocked("CARD000002")
        assert up.requests == [{"since_version": 1}]
    finally:
        await sync.stop()


async def test_malformed_or_foreign_notices_are_ignored(hotlist: HotList) -> None:
    plat = ScriptedPlatformList()
    up = FakeUplink(plat)
    sync = make_sync(up, hotlist)
    up.deliver(b"not json")
    up.deliver(encode(new_envelope("hotlist.notice", "kiosk-0001", {"version": 5}, now=NOW)))
    up.deliver(encode(new_envelope("hotlist.notice", "fleet", {"version": -1}, now=NOW)))
    up.deliver(encode(new_envelope("alarm", "fleet", {"version": 5}, now=NOW)))
    assert sync.stats["ignored"] == 4
    assert sync.announced == 0


async def test_with_trusted_keys_only_signed_notices_count(hotlist: HotList) -> None:
    key = generate_private_key()
    other = generate_private_key()
    plat = ScriptedPlatformList()
    up = FakeUplink(plat)
    sync = make_sync(up, hotlist, public_keys=[key.public_key()])
    up.deliver(notice(4))  # unsigned
    up.deliver(notice_payload(5, NOW, other))  # signed by someone else
    assert sync.announced == 0 and sync.stats["ignored"] == 2
    up.deliver(notice_payload(6, NOW, key))
    assert sync.announced == 6


async def test_periodic_poll_catches_a_lost_notice(hotlist: HotList) -> None:
    plat = ScriptedPlatformList()
    up = FakeUplink(plat)
    sync = make_sync(up, hotlist, poll_interval_s=0.2)
    await sync.start()
    try:
        await until(lambda: len(up.requests) >= 1)
        plat.add("CARD000077")  # no notice delivered at all
        assert await sync.wait_version(1, 3)
        assert hotlist.is_blocked("CARD000077")
    finally:
        await sync.stop()
