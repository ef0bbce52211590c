"""Device uplink ↔ real Mosquitto ↔ forwarder ↔ fake fake_platform, end to end; central's store
on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.forwarder import Forwarder
from central.payments import Payments
from edge.uplink.errors import (
    OutcomeUnknown,
    PlatformUnavailable,
    Rejected,
    RequestExpired,
)
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol.envelope import encode, new_envelope

pytestmark = BOTH_ENGINES

PAY = {"patient_id": "P001", "purpose": "registration", "refs": ["B1"], "amount_fen": 1200,
       "method": "prepaid"}


class RawDevice:
    """A device speaking raw bytes (no outbox): to send exact duplicates and garbage."""

    def __init__(self, site, dev: str) -> None:
        creds = site.registry.register(dev, "kiosk")
        self.dev = dev
        self.inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.session = MqttSession(
            dev, host="127.0.0.1", port=site.broker.port, username=dev,
            password=creds.password, subscriptions=[(f"ykt/v1/dev/{dev}/down/resp", 1)],
            on_message=self.inbox.put_nowait,
        )

    async def __aenter__(self) -> RawDevice:
        await self.session.start()
        assert await self.session.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.stop()

    async def send(self, payload: bytes, kind: str = "req") -> None:
        await self.session.publish(f"ykt/v1/dev/{self.dev}/up/{kind}", payload, 1, False, 5)

    async def reply(self, wait_s: float = 5.0) -> dict:
        msg = await asyncio.wait_for(self.inbox.get(), wait_s)
        return json.loads(msg.payload)

    async def no_reply(self, within: float = 0.5) -> bool:
        try:
            await asyncio.wait_for(self.inbox.get(), within)
        except TimeoutError:
            return True
        return False


def req(dev: str, type_: str, body: dict, *, id_: str, exp_s: float = 300) -> bytes:
    now = datetime.now(UTC)
    return encode(new_envelope(type_, dev, body, now=now, id=id_,
                               exp=now + timedelta(seconds=exp_s)))


async def test_request_round_trip_and_state(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    up = broker_site.device("kiosk-001", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        result = await up.request("reg.departments", {}, timeout=10)
        assert result.departments[0].code == "NK"
        pay = await up.request("pay.create", PAY, timeout=10)
        assert pay.state == "approved"
        assert sum(fake_platform.effects.values()) == 1
        assert up.outbox.pending_count() == 0
        await wait_until_async(lambda: broker_site.store.device("kiosk-001").online, 5,
                               what="kiosk-001 online at central")
        info = broker_site.store.device("kiosk-001")
        assert info.online and info.last_boot_seq == up.boot_seq and info.version == "1.2.3"
    finally:
        await up.stop()
    await wait_until_async(lambda: broker_site.store.device("kiosk-001").online is False, 5,
                           what="the goodbye state")
    ok, bad = broker_site.store.verify_chain()
    assert ok and bad is None
    assert [e.action for e in broker_site.store.audit_entries()].count("request.done") == 2


async def test_duplicate_id_gets_the_stored_reply_and_one_platform_call(
    broker_site, forwarder, fake_platform
) -> None:
    async with RawDevice(broker_site, "kiosk-002") as d:
        data = req("kiosk-002", "pay.create", PAY, id_="dup0000001")
        await d.send(data)
        first = await d.reply()
        await d.send(data)
        second = await d.reply()
        assert first["body"] == second["body"] and first["corr"] == "dup0000001"
        assert fake_platform.calls["dup0000001"] == 1 and fake_platform.effects["dup0000001"] == 1
        # same id, different body: refused, and the stored outcome is untouched
        other = req("kiosk-002", "pay.create", {**PAY, "amount_fen": 99}, id_="dup0000001")
        await d.send(other)
        mismatch = await d.reply()
        assert mismatch["body"]["error"]["code"] == "duplicate_mismatch"
        await d.send(data)
        assert (await d.reply())["body"] == first["body"]
        assert fake_platform.calls["dup0000001"] == 1


async def test_bad_input_gets_typed_errors_and_the_forwarder_keeps_going(
    broker_site, forwarder, fake_platform
) -> None:
    async with RawDevice(broker_site, "kiosk-003") as d:
        await d.send(b"\xff\xfe not json")  # no id to answer: logged only
        assert await d.no_reply()
        await d.send(b'{"v":1,"id":"broken0001","type":"reg.slots"}')  # schema error, id readable
        r = await d.reply()
        assert r["corr"] == "broken0001" and r["body"]["error"]["code"] == "invalid_request"
        await d.send(b'{"v":7,"id":"future0001"}')
        assert (await d.reply())["body"]["error"]["code"] == "invalid_request"
        await d.send(req("kiosk-003", "reg.slots", {"dept_code": 5}, id_="badbody001"))
        assert (await d.reply())["body"]["error"]["code"] == "invalid_request"
        await d.send(req("kiosk-003", "no.such", {}, id_="unknown001"))
        assert (await d.reply())["body"]["error"]["code"] == "unknown_type"
        await d.send(b"[" * 100_000)  # deep nesting
        await d.send(b"{}", kind="event")
        await d.send(req("kiosk-003", "reg.departments", {}, id_="stillok001"))
        ok = await d.reply()
        assert ok["corr"] == "stillok001" and ok["body"]["status"] == "ok"
    assert forwarder.stats["errors"] == 0


async def test_oversized_payload_gets_payload_error(broker_site, fake_platform) -> None:
    fwd = Forwarder(
        broker_site.forwarder_settings(max_payload=4096), broker_site.store, fake_platform
    )
    await fwd.start()
    try:
        assert await fwd.wait_connected(10)
        async with RawDevice(broker_site, "kiosk-004") as d:
            big = req("kiosk-004", "reg.departments", {"pad": "x" * 10_000}, id_="big0000001")
            await d.send(big)
            r = await d.reply()
            assert r["corr"] == "big0000001" and r["body"]["error"]["code"] == "invalid_request"
            assert "4096" in r["body"]["error"]["message"]
    finally:
        await fwd.stop()
    assert fake_platform.calls["big0000001"] == 0


async def test_spoofed_dev_is_rejected_and_audited(broker_site, forwarder, fake_platform) -> None:
    broker_site.registry.register("kiosk-victim", "kiosk")
    async with RawDevice(broker_site, "kiosk-005") as d:
        # the ACL only lets it publish on its own topic, so it lies inside the envelope
        await d.send(req("kiosk-victim", "pay.create", PAY, id_="spoof00001"))
        r = await d.reply()
        assert r["body"]["error"]["code"] == "unauthorized" and r["dev"] == "kiosk-005"
    assert fake_platform.calls["spoof00001"] == 0
    actions = [e.action for e in broker_site.store.audit_entries()]
    assert "message.unauthorized" in actions


async def test_disabled_device_is_not_served(broker_site, forwarder, fake_platform) -> None:
    async with RawDevice(broker_site, "kiosk-006") as d:
        broker_site.store.set_enabled("kiosk-006", False)  # registry not reloaded yet
        await d.send(req("kiosk-006", "reg.departments", {}, id_="disabled01"))
        assert await d.no_reply()
    assert fake_platform.calls["disabled01"] == 0


async def test_expired_request_fails_locally_and_is_never_sent(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    up = broker_site.device("kiosk-007", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        past = datetime.now(UTC) - timedelta(seconds=1)
        with pytest.raises(RequestExpired) as info:
            await up.request("pay.create", PAY, exp=past, timeout=5, id="expired001")
        assert info.value.message_zh
        entry = up.outbox.get("expired001")
        assert entry.state == "failed" and entry.fail_reason == "expired" and entry.attempts == 0
    finally:
        await up.stop()
    assert fake_platform.calls["expired001"] == 0
    assert broker_site.store.request_state("expired001") is None


async def test_expired_on_arrival_gets_expired_reply(broker_site, forwarder, fake_platform) -> None:
    async with RawDevice(broker_site, "kiosk-008") as d:
        await d.send(req("kiosk-008", "pay.create", PAY, id_="late000001", exp_s=-5))
        assert (await d.reply())["body"]["error"]["code"] == "expired"
    assert fake_platform.calls["late000001"] == 0


async def test_errors_map_to_typed_exceptions(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    up = broker_site.device("kiosk-009", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        fake_platform.script("pay.create", "reject")
        with pytest.raises(Rejected) as rej:
            await up.request("pay.create", PAY, timeout=10)
        assert rej.value.code == "slot_full"
        fake_platform.script("reg.departments", "unavailable")
        with pytest.raises(PlatformUnavailable):
            await up.request("reg.departments", {}, timeout=10)
        with pytest.raises(Rejected) as bad:
            await up.request("reg.slots", {"dept_code": "NK"}, timeout=10)  # missing date
        assert bad.value.code == "invalid_request"
        # the reply was lost after the platform committed: unknown, never "failed"
        fake_platform.script("pay.create", "lose_reply")
        with pytest.raises(OutcomeUnknown) as unk:
            await up.request("pay.create", PAY, timeout=10, id="lostreply1")
        assert unk.value.request_id == "lostreply1"
        # asking again with the same id is safe: same key, so the platform's first outcome
        again = await up.request("pay.create", PAY, timeout=10, id="lostreply1")
        assert again.state == "approved"
        assert fake_platform.effects["lostreply1"] == 1
    finally:
        await up.stop()


async def test_payment_caller_timeout_is_outcome_unknown_and_late_reply_is_kept(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    up = broker_site.device("kiosk-010", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        fake_platform.script("pay.create", "slow")
        with pytest.raises(OutcomeUnknown) as info:
            await up.request("pay.create", PAY, timeout=0.1)
        rid = info.value.request_id
        result = await up.result_of(rid, wait_s=5)
        assert result.state == "approved" and fake_platform.effects[rid] == 1
        # a read-only request that times out is withdrawn: "nothing happened" is true
        fake_platform.script("reg.departments", "slow")
        with pytest.raises(PlatformUnavailable):
            await up.request("reg.departments", {}, timeout=0.1, id="withdrawn1")
        assert up.outbox.get("withdrawn1").fail_reason == "caller_timeout"
    finally:
        await up.stop()


async def test_stale_will_is_ignored(broker_site, forwarder) -> None:
    broker_site.registry.register("kiosk-011", "kiosk")
    topic = "ykt/v1/dev/kiosk-011/state"

    def state(online: bool, boot: int) -> InboundMessage:
        body = {"online": online, "boot_seq": boot, "version": "1"}
        return InboundMessage(topic, json.dumps(body).encode(), 1, True)

    await forwarder.handle(state(True, 5))
    await forwarder.handle(state(False, 4))  # the Will of the previous boot, arriving late
    assert broker_site.store.device("kiosk-011").online is True
    await forwarder.handle(state(True, 4))  # a stale retained birth
    assert broker_site.store.device("kiosk-011").last_boot_seq == 5
    await forwarder.handle(state(False, 5))
    assert broker_site.store.device("kiosk-011").online is False
    await forwarder.handle(InboundMessage(topic, b"garbage", 1, True))  # logged, no crash
    await forwarder.handle(InboundMessage("not/ours", b"x", 0, False))


async def test_broker_kill9_mid_stream_loses_nothing_and_charges_once(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    up = broker_site.device("kiosk-012", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        fake_platform.script("pay.create", *["slow"] * 40)  # 0.5 s each, 8 workers: ~2.5 s
        tasks = [
            asyncio.create_task(up.request("pay.create", {**PAY, "amount_fen": 100 + i},
                                           timeout=40, id=f"burst{i:05d}"))
            for i in range(40)
        ]
        await wait_until_async(lambda: sum(fake_platform.effects.values()) >= 5, 5,
                               what="5 payments done")
        broker_site.broker.kill9()  # in-flight requests and replies are lost with it
        done_at_kill = sum(fake_platform.effects.values())
        assert 0 < done_at_kill < 40
        await asyncio.sleep(0.5)  # the outage itself: both sides see the broker gone
        broker_site.broker.start()
        results = await asyncio.gather(*tasks)
    finally:
        await up.stop()
    assert [r.amount_fen for r in results] == [100 + i for i in range(40)]
    assert all(fake_platform.effects[f"burst{i:05d}"] == 1 for i in range(40))
    assert sum(fake_platform.effects.values()) == 40
    assert all(broker_site.store.request_state(f"burst{i:05d}") == "done" for i in range(40))


async def test_central_crash_between_platform_commit_and_store_commit_is_safe(
    broker_site, fake_platform, tmp_path
) -> None:
    fake_platform.script("pay.create", "commit_then_hang")
    first = Forwarder(broker_site.forwarder_settings(lease_s=1.0), broker_site.store, fake_platform)
    await first.start()
    assert await first.wait_connected(10)
    up = broker_site.device("kiosk-013", tmp_path)
    await up.start()
    try:
        task = asyncio.create_task(up.request("pay.create", PAY, timeout=30, id="crash00001"))
        await wait_until_async(lambda: fake_platform.calls["crash00001"], 5,
                               what="the platform called")
        await first.stop()  # central dies mid-call: the platform has committed
        assert broker_site.store.request_state("crash00001") == "received"
        second = Forwarder(broker_site.forwarder_settings(lease_s=1.0), broker_site.store,
                           fake_platform)
        await second.start()
        try:
            result = await task  # the device resends; after the lease the new one takes over
        finally:
            await second.stop()
    finally:
        await up.stop()
    assert result.state == "approved"
    assert fake_platform.calls["crash00001"] >= 2 and fake_platform.effects["crash00001"] == 1


async def test_events_and_telemetry_are_stored_for_the_monitor(
    broker_site, forwarder, tmp_path: Path
) -> None:
    up = broker_site.device("kiosk-014", tmp_path)
    await up.start()
    try:
        assert await up.wait_connected(10)
        eid = await up.publish_event("printer.status", {"online": True, "paper": "near_end",
                                                        "cover_open": False, "cutter_error": False})
        assert up.publish_telemetry({"uptime_s": 5, "disk_free_mb": 100, "outbox_depth": 0,
                                     "printer": {"online": True, "paper": "ok",
                                                 "cover_open": False, "cutter_error": False},
                                     "reader_present": True})
        await wait_until_async(
            lambda: len(broker_site.store.recent_events("kiosk-014")) == 1
            and getattr(broker_site.store.device_health("kiosk-014"), "uptime_s", 0)
            and up.outbox.get(eid).state == "done", 5, what="the event and the health row")
    finally:
        await up.stop()
    kinds = sorted(e["kind"] for e in broker_site.store.recent_events("kiosk-014"))
    assert kinds == ["event"]  # telemetry is the health row (test_fleet_health.py), not an event
    health = broker_site.store.device_health("kiosk-014")
    assert health is not None and health.uptime_s == 5
    assert up.outbox.get(eid).state == "done"  # events end on PUBACK


async def test_forwarder_reports_payment_outcomes_to_the_resolver(
    broker_site, fake_platform, tmp_path
) -> None:
    payments = Payments(broker_site.store, fake_platform)
    fwd = Forwarder(broker_site.forwarder_settings(), broker_site.store, fake_platform,
                    hooks=payments)
    await fwd.start()
    up = broker_site.device("kiosk-015", tmp_path)
    await up.start()
    try:
        assert await fwd.wait_connected(10) and await up.wait_connected(10)
        fake_platform.script("pay.create", "lose_reply")
        with pytest.raises(OutcomeUnknown):
            await up.request("pay.create", PAY, timeout=10, id="observed01")
        # recorded in the transaction that released the request, before the reply went out
        assert payments.get("observed01").state == "unknown"
        assert [p.request_id for p in payments.unresolved()] == ["observed01"]
        assert await payments.resolve_once() == 1
        assert fake_platform.calls["observed01"] == 1  # the resolver never creates again
        # the kiosk asks again under the same id: the stored platform outcome comes back
        result = await up.request("pay.create", PAY, timeout=10, id="observed01")
        assert result.state == "approved"
        assert payments.get("observed01").state == "approved"
        assert payments.unresolved() == []
        assert fake_platform.effects["observed01"] == 1
    finally:
        await up.stop()
        await fwd.stop()


async def test_two_forwarders_share_the_load_without_kicking_each_other(
    broker_site, fake_platform, central_db, tmp_path
) -> None:
    from central.store import open_store

    store_b = open_store(central_db(tmp_path))  # a second instance on the common store
    fwds = [
        Forwarder(broker_site.forwarder_settings(client_id="central-a", concurrency=4),
                  broker_site.store, fake_platform, share_group="ykt"),
        Forwarder(broker_site.forwarder_settings(client_id="central-b", concurrency=4),
                  store_b, fake_platform, share_group="ykt"),
    ]
    try:
        for f in fwds:
            await f.start()
        for f in fwds:
            assert await f.wait_connected(10)
        # Both shared subscriptions in place: no signal to wait on (the forwarder exposes no
        # SUBACK and the broker does not log subscriptions at this level), so a short pause.
        await asyncio.sleep(0.3)
        async with RawDevice(broker_site, "kiosk-030") as d:
            ids = [f"share{i:05d}" for i in range(200)]
            for i, id_ in enumerate(ids):
                body = {"report_no": f"R{i:05d}"}
                await d.send(req("kiosk-030", "report.printed", body, id_=id_))
            replies = [await d.reply(10) for _ in ids]
            assert await d.no_reply(1.0)
        assert sorted(r["corr"] for r in replies) == ids  # each answered exactly once
        assert all(r["body"]["status"] == "ok" for r in replies)
        assert all(fake_platform.effects[i] == 1 for i in ids)
        handled = [f.stats["replied"] for f in fwds]
        assert sum(handled) == len(ids) and min(handled) > 0, handled  # both did work
        assert [(f.stats["connects"], f.stats["disconnects"]) for f in fwds] == [(1, 0), (1, 0)]
        assert "already connected" not in broker_site.broker.log_path.read_text()
        for s in (broker_site.store, store_b):
            assert s.verify_chain() == (True, None)
        done = [e for e in broker_site.store.audit_entries() if e.action == "request.done"]
        assert len(done) == len(ids)
    finally:
        for f in fwds:
            await f.stop()
        store_b.close()


async def test_concurrent_duplicates_make_one_platform_call(
    broker_site, forwarder, fake_platform
) -> None:
    async with RawDevice(broker_site, "kiosk-016") as d:
        fake_platform.script("pay.create", "slow")
        data = req("kiosk-016", "pay.create", PAY, id_="concur0001")
        msg = InboundMessage("ykt/v1/dev/kiosk-016/up/req", data, 1, False)
        await asyncio.gather(forwarder.handle(msg), forwarder.handle(msg))
        assert (await d.reply())["body"]["status"] == "ok"
        assert await d.no_reply(0.3)  # the in-progress duplicate was ignored, not answered
    assert fake_platform.calls["concur0001"] == 1


async def test_broken_json_with_a_readable_id_gets_a_correlated_typed_error(
    broker_site, forwarder, fake_platform
) -> None:
    async with RawDevice(broker_site, "kiosk-009") as d:
        await d.send(b'{"v":1,"id":"abcdef0123456789","type":"reg.book",'
                     b'"body":{"slot_id":"S1","patient_id":"P1"')  # cut off: not JSON
        r = await d.reply()
        assert r["corr"] == "abcdef0123456789" and r["type"] == "resp"
        assert r["body"]["status"] == "error"
        assert r["body"]["error"]["code"] == "invalid_request"
        # An id only inside body, or two ids: nothing to correlate, so no reply at all.
        await d.send(b'{"v":1,"type":"reg.book","body":{"id":"bodyid0001"},broken')
        await d.send(b'{"v":1,"id":"first00001","id":"second0001","type":"reg.book",')
        assert await d.no_reply()
    assert fake_platform.calls["abcdef0123456789"] == 0
    assert forwarder.stats["errors"] == 0


async def test_an_unknown_payment_is_followed_up_after_the_patient_walked_away(
        broker_site, fake_platform, tmp_path) -> None:
    """The platform took the payment, the answer was lost, the kiosk screen gave up.

    The device keeps asking in the background (same id, same idempotency key) until central
    knows; the runtime hears the outcome; the platform charged once; central's list of
    payments needing attention empties only then.
    """
    payments = Payments(broker_site.store, fake_platform)
    fwd = Forwarder(broker_site.forwarder_settings(concurrency=4), broker_site.store,
                    fake_platform, hooks=payments)
    await fwd.start()
    up = broker_site.device("kiosk-201", tmp_path, follow_up_interval_s=0.3)
    settled: list[tuple[str, str, Any, Any]] = []
    up.on_settled = lambda *a: settled.append(a)
    await up.start()
    try:
        assert await fwd.wait_connected(10) and await up.wait_connected(10)
        fake_platform.script("pay.create", "lose_reply")
        body = {"patient_id": "P001", "purpose": "registration", "refs": ["BK1"],
                "amount_fen": 700, "method": "prepaid"}
        with pytest.raises(OutcomeUnknown):
            await up.request("pay.create", body, id="walkaway-dev1", timeout=10)
        (waiting,) = payments.unresolved()
        assert waiting.state == "unknown"
        # Nobody asks any more: the patient left. The device's follow-up does.
        await wait_until_async(lambda: settled, 10, what="the device's follow-up")
        (type_, req_id, result, error) = settled[0]
        assert (type_, req_id, error) == ("pay.create", "walkaway-dev1", None)
        assert result.state == "approved"
        assert fake_platform.effects["walkaway-dev1"] == 1
        assert payments.unresolved() == []
        assert await up.result_of("walkaway-dev1") == result  # the caller's view agrees
    finally:
        await up.stop()
        await fwd.stop()
