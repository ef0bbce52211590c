"""central.hotlist: platform polling, persisted version, the retained notice — and the whole
lost-card path: reference platform → central → real Mosquitto → device HotList."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.forwarder import Forwarder
from central.hotlist import FleetPublisher, HotlistSync, notice_payload
from central.platform.base import PlatformAdapter
from central.platform.config import PlatformConfig, create_adapter
from central.platform.errors import PlatformUnavailable
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.server import RunningServer, start_in_thread
from central.store import open_store
from edge.devices.card.hotlist import HotList
from edge.fleet.hotlist_sync import HotlistSync as DeviceHotlistSync
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol.envelope import decode
from yikatong.protocol.signing import generate_private_key, verify

NOW = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)


class ListPlatform(PlatformAdapter):
    """Answers hotlist.delta with a version the test sets; can be made to fail."""

    def __init__(self) -> None:
        self.version = 0
        self.fail = 0
        self.calls: list[dict[str, Any]] = []

    async def call(self, op: str, body: dict[str, Any], *, idempotency_key: str,
                   timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        assert op == "hotlist.delta"
        self.calls.append(body)
        if self.fail:
            self.fail -= 1
            raise PlatformUnavailable("scripted outage")
        return {"version": self.version, "full": body["since_version"] == 0,
                "added": [], "removed": []}

    async def aclose(self) -> None:
        return None


class Recorder:
    """A NoticePublisher that records what was published; can be made to fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.fail = 0

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.fail:
            self.fail -= 1
            raise TimeoutError("no PUBACK")
        self.sent.append((topic, payload))

    def versions(self) -> list[int]:
        return [decode(p).body["version"] for _, p in self.sent]


async def test_publishes_the_version_only_when_it_changes(tmp_path: Path) -> None:
    plat, pub = ListPlatform(), Recorder()
    sync = HotlistSync(plat, pub, interval_s=1, clock=lambda: NOW)
    await sync.poll_once()
    assert await sync.publish_if_needed()
    plat.version = 3
    await sync.poll_once()
    await sync.publish_if_needed()
    await sync.poll_once()
    assert not await sync.publish_if_needed()
    assert pub.versions() == [0, 3]
    assert plat.calls == [{"since_version": 0}, {"since_version": 0}, {"since_version": 3}]
    topic, payload = pub.sent[-1]
    env = decode(payload)
    assert topic == "ykt/v1/fleet/hotlist"
    assert (env.type, env.dev, env.sig) == ("hotlist.notice", "fleet", None)


@BOTH_ENGINES
async def test_version_survives_a_restart_and_is_announced_again(tmp_path: Path,
                                                                 central_db) -> None:
    store = open_store(central_db(tmp_path))
    plat, pub = ListPlatform(), Recorder()
    plat.version = 7
    sync = HotlistSync(plat, pub, store, clock=lambda: NOW)
    await sync.poll_once()
    await sync.publish_if_needed()
    store.close()
    store = open_store(central_db(tmp_path))
    try:
        pub2 = Recorder()
        again = HotlistSync(ListPlatform(), pub2, store, clock=lambda: NOW)
        assert again.version == 7
        # The broker may have lost the retained notice while central was down: re-announce.
        assert await again.publish_if_needed()
        assert pub2.versions() == [7]
        again.republish()
        assert await again.publish_if_needed()
        assert pub2.versions() == [7, 7]
        # A second instance on the same database (its own connection) starting at the same
        # time: it finds the version, and a version either one sees is kept for both.
        other = open_store(central_db(tmp_path))
        try:
            second = HotlistSync(ListPlatform(), Recorder(), other, clock=lambda: NOW)
            assert second.version == 7
            plat.version = 8
            sync2 = HotlistSync(plat, Recorder(), other, clock=lambda: NOW)
            await sync2.poll_once()
        finally:
            other.close()
        assert HotlistSync(ListPlatform(), Recorder(), store, clock=lambda: NOW).version == 8
    finally:
        store.close()


async def test_run_survives_platform_and_broker_failures() -> None:
    plat, pub = ListPlatform(), Recorder()
    plat.version, plat.fail, pub.fail = 2, 2, 2
    sync = HotlistSync(plat, pub, interval_s=0.02, clock=lambda: NOW)
    task = asyncio.create_task(sync.run())
    try:
        await wait_until_async(lambda: pub.sent, 2, interval=0.01, what="a notice sent")
        assert pub.versions() == [2]
        assert sync.stats["poll_errors"] == 2 and sync.stats["publish_errors"] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_notice_is_signed_when_central_has_a_key() -> None:
    key = generate_private_key()
    env = decode(notice_payload(9, NOW, key))
    verify(env, key.public_key())  # raises if it does not verify
    assert env.body == {"version": 9}


# -- end to end on the real stack -----------------------------------------------------------


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_in_thread(PlatformSimSettings(db_path=tmp_path / "platform.db",
                                                 admin_enabled=True))
    try:
        yield server
    finally:
        server.stop()
        assert not server.thread.is_alive()


class Central:
    """Forwarder + hot-list sync + fleet publisher of one central, in process."""

    def __init__(self, site: Any, base_url: str) -> None:
        self.adapter = create_adapter(PlatformConfig(base_url=base_url, read_timeout_s=5))
        settings = site.forwarder_settings(concurrency=4)
        self.forwarder = Forwarder(settings, site.store, self.adapter)
        self.fleet = FleetPublisher.from_forwarder_settings(
            settings, backoff_max_s=0.5, **site.login(f"{settings.client_id}-fleet"))
        self.hotlist = HotlistSync(self.adapter, self.fleet, site.store, interval_s=0.3)
        self.fleet.on_connected = self.hotlist.republish
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.forwarder.start()
        await self.fleet.start()
        assert await self.forwarder.wait_connected(10)
        assert await self.fleet.wait_connected(10)
        self._task = asyncio.create_task(self.hotlist.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.fleet.stop()
        await self.forwarder.stop()
        await self.adapter.aclose()


@pytest.fixture
async def central(broker_site: Any, platform: RunningServer) -> AsyncIterator[Central]:
    c = Central(broker_site, platform.base_url)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


class Device:
    """A device's uplink + HotList file + hot-list sync, as ``ykt edge`` wires them."""

    def __init__(self, site: Any, dev: str, tmp: Path) -> None:
        self.uplink = site.device(dev, tmp)
        self.hotlist = HotList(tmp / f"{dev}.hotlist.db")
        self.sync = DeviceHotlistSync(self.uplink, self.hotlist, backoff_min_s=0.1,
                                      backoff_max_s=0.5, rng=random.Random(1))

    async def start(self) -> None:
        await self.uplink.start()
        await self.sync.start()

    async def stop(self) -> None:
        await self.sync.stop()
        await self.uplink.stop()

    async def blocks(self, card: str, within_s: float) -> float:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_until_async(lambda: self.hotlist.is_blocked(card), within_s,
                               interval=0.05, what=f"{card} blocked")
        return loop.time() - t0


def admin_hotlist(platform: RunningServer, card: str, action: str = "add") -> int:
    r = httpx.post(f"{platform.base_url}/admin/hotlist",
                   json={"card_no": card, "action": action}, timeout=10)
    r.raise_for_status()
    return int(r.json()["version"])


@pytest.mark.stack
@BOTH_ENGINES
async def test_lost_card_reaches_online_and_offline_devices(
    broker_site: Any, platform: RunningServer, central: Central, tmp_path: Path
) -> None:
    online = Device(broker_site, "kiosk-0101", tmp_path)
    offline = Device(broker_site, "kiosk-0102", tmp_path)
    await online.start()
    try:
        assert await online.uplink.wait_connected(10)
        v1 = await asyncio.to_thread(admin_hotlist, platform, "110100000000000001")
        took = await online.blocks("110100000000000001", within_s=5)
        assert online.hotlist.version == v1
        assert took < 5

        # The second device is off while two more cards are reported lost and one found.
        await asyncio.to_thread(admin_hotlist, platform, "310100000000000002")
        await asyncio.to_thread(admin_hotlist, platform, "110100000000000001", "remove")
        v = await asyncio.to_thread(admin_hotlist, platform, "440100000000000003")
        await online.blocks("440100000000000003", within_s=5)
        assert not online.hotlist.is_blocked("110100000000000001")

        await offline.start()  # comes back: retained notice + start-up fetch
        await offline.blocks("440100000000000003", within_s=5)
        assert offline.sync.announced == v
        assert offline.hotlist.version == v
        assert offline.hotlist.is_blocked("310100000000000002")
        assert not offline.hotlist.is_blocked("110100000000000001")

        # Offline again: the local copy is still enforced without any link.
        await offline.stop()
        assert offline.hotlist.is_blocked("440100000000000003")
    finally:
        await online.stop()
        await offline.stop()
        online.hotlist.close()
        offline.hotlist.close()


@pytest.mark.stack
async def test_device_offline_during_the_change_catches_up_on_reconnect(
    broker_site: Any, platform: RunningServer, central: Central, tmp_path: Path
) -> None:
    dev = Device(broker_site, "kiosk-0103", tmp_path)
    await dev.start()
    try:
        assert await dev.uplink.wait_connected(10)
        v = await asyncio.to_thread(admin_hotlist, platform, "CARD2024001")
        await dev.blocks("CARD2024001", 5)
        await dev.stop()
        # The link is down (device powered off) while the list changes, and the broker
        # crashes too: the retained notice may be gone — central re-announces on reconnect.
        v = await asyncio.to_thread(admin_hotlist, platform, "CARD2024002")
        await wait_until_async(lambda: central.hotlist.published_version == v, 5,
                               what="central announcing the change")
        broker_site.broker.kill9()
        broker_site.broker.start()
        dev.hotlist.close()
        dev = Device(broker_site, "kiosk-0103", tmp_path)
        await dev.start()
        await dev.blocks("CARD2024002", 8)
        assert dev.hotlist.version == v
        assert central.hotlist.version == v
    finally:
        await dev.stop()
        dev.hotlist.close()


@pytest.mark.stack
async def test_notice_on_the_wire_is_retained_qos1(
    broker_site: Any, platform: RunningServer, central: Central
) -> None:
    v = await asyncio.to_thread(admin_hotlist, platform, "CARD7777777")
    await wait_until_async(lambda: central.hotlist.published_version == v, 5,
                           what="central announcing the change")
    got: asyncio.Queue[InboundMessage] = asyncio.Queue()
    creds = broker_site.registry.register("kiosk-0104", "kiosk")
    s = MqttSession("kiosk-0104", host="127.0.0.1", port=broker_site.broker.port,
                    username="kiosk-0104", password=creds.password,
                    subscriptions=[("ykt/v1/fleet/hotlist", 1)], on_message=got.put_nowait)
    await s.start()
    try:
        msg = await asyncio.wait_for(got.get(), 5)
        assert msg.retain and msg.qos == 1
        env = decode(msg.payload)
        assert env.type == "hotlist.notice" and env.body == {"version": v}
    finally:
        await s.stop()
