"""MqttSession and Uplink against a real broker: birth/Will, boot_seq, backoff, bad credentials."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import wait_until_async

from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig
from edge.uplink.errors import PlatformUnavailable, Rejected, UplinkClosed, UplinkError
from yikatong.mqtt.session import (
    InboundMessage,
    MqttSession,
    backoff_delay,
    next_boot_seq,
)
from yikatong.protocol.envelope import decode
from yikatong.protocol.messages import parse_state

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
        env = decode(msg.payload)  # a ``state`` envelope, as docs/protocol.md §7 says
        assert env.type == "state" and env.dev == msg.topic.split("/")[3]
        parse_state(env)
        if env.body["online"] is online:
            return dict(env.body)


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
        await asyncio.sleep(60)  # alive until the test kills it
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
        await wait_until_async(lambda: not up.connected, 5, what="the link seen down")
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


async def test_sockets_are_opened_with_tcp_nodelay(broker, tmp_path) -> None:
    # Nagle + delayed ACK would add ~40 ms to every small request/reply on this hop.
    cfg = broker.add_device("kiosk-108", tmp_path)
    up = Uplink(cfg, "kiosk-108", role="kiosk", version="1")
    await up.start()
    try:
        assert await up.wait_connected(10)
        assert up._session is not None
        sock = up._session._client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await up.stop()


PAY = {"patient_id": "P001", "purpose": "registration", "refs": ["B1"], "amount_fen": 1200,
       "method": "prepaid"}
RECEIVED = re.compile(r"Received PUBLISH from (\S+) \(d(\d), q1, r0, m\d+, '([^']+)', "
                      r"\.\.\. \((\d+) bytes\)\)")


def received_requests(log: str, dev: str) -> list[tuple[int, int]]:
    """(dup flag, size) of every PUBLISH on ``dev``'s up/req the broker logged, in order."""
    return [(int(m[2]), int(m[4])) for m in RECEIVED.finditer(log)
            if m[1] == dev and m[3] == f"ykt/v1/dev/{dev}/up/req"]


async def test_after_a_reconnect_each_pending_request_goes_out_once_money_first(
    logged_broker, tmp_path
) -> None:
    # The broker stalls (no PUBACK) while 10 lookups and then 2 payments are queued, then
    # dies and comes back. paho used to hold everything the pump gave it and re-send it on
    # the new connection in its own FIFO order, on top of the outbox's resend.
    dev = "kiosk-107"
    cfg = logged_broker.add_device(dev, tmp_path, max_inflight=5, retry_interval_s=120,
                                   backoff_min_s=0.2, backoff_max_s=0.4)
    m = logged_broker.mosquitto
    up = Uplink(cfg, dev, role="kiosk", version="1")
    await up.start()
    tasks: list[asyncio.Task[object]] = []
    try:
        assert await up.wait_connected(10)
        assert m.pid is not None
        os.kill(m.pid, signal.SIGSTOP)  # the kernel still takes bytes; nothing answers
        try:
            ids = [f"lookup{i:04d}" for i in range(10)] + ["payment001", "payment002"]
            tasks += [asyncio.create_task(up.request("reg.departments", {}, timeout=60, id=i))
                      for i in ids[:10]]
            await wait_until_async(  # the lookups fill paho's free slots before the payments
                lambda: sum(1 for i in ids[:10] if (e := up.outbox.get(i)) and e.attempts) == 5,
                5, what="5 lookups handed to paho")
            tasks += [asyncio.create_task(up.request("pay.create", PAY, timeout=60, id=i))
                      for i in ids[10:]]
            await asyncio.sleep(0.5)  # behaviour under test: given time, nothing more goes out
            assert up._session is not None and up._session.unacked == 5  # the cap, no more
            entries = [up.outbox.get(i) for i in ids]
            sent = [e.id for e in entries if e is not None and e.attempts > 0]
            assert sent == ids[:5]  # the pump gave paho only its free slots
        finally:
            m.kill9()  # SIGKILL ends a stopped process too
        before = len(received_requests(m.log_path.read_text(errors="replace"), dev))
        assert before == 0  # the stalled broker never read them
        m.start()
        assert await up.wait_connected(10)
        await wait_until_async(
            lambda: len(received_requests(m.log_path.read_text(errors="replace"), dev)) >= 12,
            5, what="12 requests at the broker")
        await asyncio.sleep(1.0)  # room for any duplicate to show up
        seen = received_requests(m.log_path.read_text(errors="replace"), dev)
        assert len(seen) == 12, seen  # each pending request once, not paho's copy as well
        assert all(dup == 0 for dup, _ in seen)  # no paho re-send (DUP set) at all
        sizes = [size for _, size in seen]
        assert sorted(sizes[:2]) == sorted(sizes)[-2:]  # the two payments went first
        assert up._session.unacked <= 5
        assert all(up.outbox.get(i).state == "pending" for i in ids)  # no reply: still going
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await up.stop()


async def test_a_puback_that_never_comes_does_not_hold_a_slot_forever() -> None:
    """A lost PUBACK (paho dropped the message in a reconnect race) would keep its in-flight
    slot for the connection's life; enough of them would stop the outbox pump for good."""
    import time as _time

    s = MqttSession("kiosk-901", host="127.0.0.1", port=1, max_inflight=2)
    loop = asyncio.get_running_loop()
    old, fresh = loop.create_future(), loop.create_future()
    s._acks.update({1: old, 2: fresh})
    s._ack_since.update({1: _time.monotonic() - 60, 2: _time.monotonic()})
    assert s.free_slots == 0
    assert s.give_up_unacked(30) == 1
    assert s.free_slots == 1 and old.done() and not fresh.done()
    with pytest.raises(UplinkError):
        old.result()
