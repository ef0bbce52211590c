"""MqttSession and Uplink against a real broker: birth/Will, boot_seq, backoff, bad credentials."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig
from edge.uplink.errors import PlatformUnavailable, Rejected, UplinkClosed
from edge.uplink.session import (
    InboundMessage,
    MqttSession,
    backoff_delay,
    next_boot_seq,
)

ROOT = Path(__file__).resolve().parents[3]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(a, 0.5, 30.0, rng) for a in range(12)]
    assert all(0.5 <= d <= 30.0 for d in delays)
    assert all(d <= 0.5 * 2**a for a, d in enumerate(delays))
    assert len({round(d, 6) for d in delays}) == len(delays)  # jitter: no lock step
    # deterministic with the same seed (the injected rng is the only randomness)
    again = random.Random(7)
    assert delays == [backoff_delay(a, 0.5, 30.0, again) for a in range(12)]

    class Top(random.Random):
        def random(self) -> float:
            return 1.0

    assert backoff_delay(50, 0.5, 30.0, Top()) == 30.0


def test_boot_seq_is_persisted_and_increments(tmp_path: Path) -> None:
    p = tmp_path / "state" / "boot.json"
    assert [next_boot_seq(p) for _ in range(3)] == [1, 2, 3]
    assert json.loads(p.read_text()) == {"boot_seq": 3}
    p.write_text("{torn")
    assert next_boot_seq(p) == 1  # unreadable: restart, loudly


def test_inbound_message_validates_itself() -> None:
    with pytest.raises(TypeError):
        InboundMessage("t", "not-bytes", 1, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        InboundMessage("t", b"", 3, False)
    m = InboundMessage("t", b"x", 1, True)
    with pytest.raises(AttributeError):
        m.qos = 0  # type: ignore[misc]


def test_config_is_strict(tmp_path: Path) -> None:
    base = {"outbox_path": tmp_path / "o.db", "state_path": tmp_path / "s.json",
            "username": "kiosk-001", "password_file": tmp_path / "pw"}
    cfg = UplinkConfig(**base)
    assert cfg.timeout_for("pay.create") > cfg.timeout_for("reg.slots")
    assert cfg.timeout_for("report.fetch") == 30.0
    with pytest.raises(ValidationError):
        UplinkConfig(**base, color="red")
    with pytest.raises(ValidationError, match="no credentials"):
        UplinkConfig(outbox_path=tmp_path / "o", state_path=tmp_path / "s")
    with pytest.raises(ValidationError):
        UplinkConfig(**base, backoff_min_s=10, backoff_max_s=1)
    with pytest.raises(ValidationError):
        UplinkConfig(**base, protocol="3.1")


async def watcher(broker, topic: str) -> tuple[MqttSession, asyncio.Queue[InboundMessage]]:
    q: asyncio.Queue[InboundMessage] = asyncio.Queue()
    s = MqttSession("central", host="127.0.0.1", port=broker.port, username="central",
                    password=broker.central_password, subscriptions=[(topic, 1)],
                    on_message=q.put_nowait)
    await s.start()
    assert await s.wait_connected(10)
    return s, q


async def next_state(q: asyncio.Queue[InboundMessage], online: bool) -> dict:
    while True:
        msg = await asyncio.wait_for(q.get(), 10)
        data = json.loads(msg.payload)
        if data["online"] is online:
            return data


async def test_birth_is_retained_and_stop_publishes_offline(broker, tmp_path) -> None:
    cfg = broker.add_device("kiosk-101", tmp_path)
    up = Uplink(cfg, "kiosk-101", role="cashier", version="2.0.0")
    await up.start()
    assert await up.wait_connected(10)
    assert up.boot_seq == 1 and up.connected
    # a late subscriber still sees the birth: it is retained
    s, q = await watcher(broker, "ykt/v1/dev/kiosk-101/state")
    try:
        birth = await next_state(q, True)
        assert birth == {"online": True, "boot_seq": 1, "version": "2.0.0", "role": "cashier"}
        await up.stop()
        assert await next_state(q, False) == {"online": False, "boot_seq": 1}
        assert not up.connected
        with pytest.raises(UplinkClosed):
            await up.request("reg.departments", {})
    finally:
        await s.stop()
    up2 = Uplink(cfg, "kiosk-101", role="cashier", version="2.0.0")
    await up2.start()
    try:
        assert up2.boot_seq == 2
    finally:
        await up2.stop()


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from edge.uplink.client import Uplink
    from edge.uplink.config import UplinkConfig
    async def main():
        cfg = UplinkConfig.model_validate_json(sys.argv[1])
        up = Uplink(cfg, "kiosk-102", role="kiosk", version="1")
        await up.start()
        await up.wait_connected(10)
        print("CONNECTED", up.boot_seq, flush=True)
        await asyncio.sleep(60)
    asyncio.run(main())
    """
)


async def test_will_announces_a_device_killed_with_sigkill(broker, tmp_path) -> None:
    cfg = broker.add_device("kiosk-102", tmp_path)
    s, q = await watcher(broker, "ykt/v1/dev/kiosk-102/state")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, cfg.model_dump_json(), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.decode().split() == ["CONNECTED", "1"]
        assert (await next_state(q, True))["boot_seq"] == 1
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert await next_state(q, False) == {"online": False, "boot_seq": 1}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await s.stop()


async def test_wrong_password_keeps_retrying_with_backoff_and_stops_cleanly(
    broker, tmp_path
) -> None:
    cfg = broker.add_device("kiosk-103", tmp_path)
    assert cfg.password_file is not None
    cfg.password_file.write_text("wrong")
    up = Uplink(cfg, "kiosk-103", role="kiosk", version="1", rng=random.Random(1))
    await up.start()
    try:
        assert await up.wait_connected(1.0) is False
        assert not up.connected
    finally:
        await up.stop()


async def test_broker_restart_reconnects_and_resubscribes(broker, tmp_path) -> None:
    cfg = broker.add_device("kiosk-104", tmp_path)
    got: asyncio.Queue[InboundMessage] = asyncio.Queue()
    up = Uplink(cfg, "kiosk-104", role="kiosk", version="1")
    up.on_message("cmd", got.put_nowait)
    await up.start()
    try:
        assert await up.wait_connected(10)
        broker.mosquitto.kill9()
        for _ in range(100):
            if not up.connected:
                break
            await asyncio.sleep(0.05)
        assert not up.connected
        broker.mosquitto.start()
        assert await up.wait_connected(10)
        s, _ = await watcher(broker, "ykt/v1/none")
        try:
            await s.publish("ykt/v1/dev/kiosk-104/down/cmd", b"{}", 1, False, 5)
            msg = await asyncio.wait_for(got.get(), 5)
            assert msg.topic == "ykt/v1/dev/kiosk-104/down/cmd"
        finally:
            await s.stop()
    finally:
        await up.stop()


async def test_mqtt5_session_connects_and_publishes_birth(broker, tmp_path) -> None:
    cfg = broker.add_device("kiosk-105", tmp_path, protocol="5")
    s, q = await watcher(broker, "ykt/v1/dev/kiosk-105/state")
    up = Uplink(cfg, "kiosk-105", role="kiosk", version="5.0")
    await up.start()
    try:
        assert await up.wait_connected(10)
        assert (await next_state(q, True))["version"] == "5.0"
    finally:
        await up.stop()
        await s.stop()


async def test_reusing_a_request_id_for_another_body_is_refused_locally(broker, tmp_path) -> None:
    cfg = broker.add_device("kiosk-106", tmp_path)
    up = Uplink(cfg, "kiosk-106", role="kiosk", version="1")
    await up.start()
    try:
        with pytest.raises(PlatformUnavailable):  # no central here: the read times out
            await up.request("reg.slots", {"dept_code": "NK", "date": "2026-03-01"},
                             timeout=0.2, id="sameid0001")
        with pytest.raises(Rejected) as info:
            await up.request("reg.slots", {"dept_code": "WK", "date": "2026-03-01"},
                             timeout=0.2, id="sameid0001")
        assert info.value.code == "duplicate_mismatch"
    finally:
        await up.stop()
