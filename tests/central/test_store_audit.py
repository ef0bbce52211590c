"""Central store: hash-chained audit, request dedup states and leases, bounded events, state."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pg_support import BOTH_ENGINES

from central.store import Begin, StoreError, open_store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

pytestmark = BOTH_ENGINES


@pytest.fixture
def store(tmp_path: Path, central_db):
    s = open_store(central_db(tmp_path), events_per_device=5)
    yield s
    s.close()


def test_audit_chain_verifies_and_detects_tampering(store) -> None:
    for i in range(5):
        store.audit(T0 + timedelta(seconds=i), "forwarder", "request.done", {"n": i, "名": "张"})
    assert store.verify_chain() == (True, None)
    entries = store.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    store.connection().execute("UPDATE auditrecord SET detail = ? WHERE seq = 3", ('{"n":99}',))
    assert store.verify_chain() == (False, 3)


def test_audit_chain_detects_a_deleted_record(store) -> None:
    for i in range(4):
        store.audit(T0, "registry", "device.register", {"n": i})
    store.connection().execute("DELETE FROM auditrecord WHERE seq = 2")
    assert store.verify_chain() == (False, 3)


def test_request_dedup_states_and_lease_takeover(store) -> None:
    b = store.begin_request("req0000001", "kiosk-001", "pay.create", "h1", T0, lease_s=60)
    assert b.status == "new"
    assert store.begin_request("req0000001", "kiosk-001", "pay.create", "h1", T0, 60).status == (
        "busy"
    )
    assert store.begin_request("req0000001", "kiosk-001", "pay.create", "h2", T0, 60).status == (
        "mismatch"
    )
    assert store.begin_request("req0000001", "kiosk-002", "pay.create", "h1", T0, 60).status == (
        "mismatch"
    )
    # the worker died: after the lease another takes over (same key at the platform)
    later = T0 + timedelta(seconds=61)
    assert store.begin_request("req0000001", "kiosk-001", "pay.create", "h1", later, 60).status == (
        "new"
    )
    store.finish_request("req0000001", b"reply", later, actor="forwarder", action="request.done",
                         detail={"id": "req0000001"})
    done = store.begin_request("req0000001", "kiosk-001", "pay.create", "h1", later, 60)
    assert done.status == "done" and done.reply == b"reply"
    assert store.audit_entries()[-1].action == "request.done"
    # release only forgets unfinished rows
    store.release_request("req0000001")
    assert store.request_state("req0000001") == "done"
    store.begin_request("req0000002", "kiosk-001", "reg.book", "h", T0, 60)
    store.release_request("req0000002")
    assert store.request_state("req0000002") is None


def test_events_are_bounded_per_device(store) -> None:
    for i in range(12):
        store.add_event("kiosk-001", "telemetry", "telemetry", {"i": i}, T0)
    store.add_event("kiosk-002", "event", "alarm", {"i": 0}, T0)
    recent = store.recent_events("kiosk-001", limit=50)
    assert [e["body"]["i"] for e in recent] == [11, 10, 9, 8, 7]
    assert len(store.recent_events("kiosk-002")) == 1


def test_state_ignores_stale_births_and_wills(store) -> None:
    store.add_device("kiosk-001", "kiosk", T0)
    assert store.apply_state("kiosk-001", online=True, boot_seq=3, version="1", now=T0)
    assert not store.apply_state("kiosk-001", online=False, boot_seq=2, version=None, now=T0)
    assert not store.apply_state("kiosk-001", online=True, boot_seq=2, version="0", now=T0)
    d = store.device("kiosk-001")
    assert d.online and d.last_boot_seq == 3 and d.version == "1"
    assert not store.apply_state("ghost-001", online=True, boot_seq=1, version="1", now=T0)
    with pytest.raises(StoreError, match="naive"):
        store.touch("kiosk-001", datetime(2026, 1, 1))


def test_audit_records_of_any_json_detail_verify(store) -> None:
    details = [{"id": "a", "ok": True, "n": None}, {"名": "张三", "x": 1.5, "l": [1, (2, 3)]},
               {10: "int keys", 9: "sorted as text once stored"}, {"nested": {"b": 1, "a": 2}},
               {"quote": 'he said "hi"\n', "n": -0.000001}]
    for i, d in enumerate(details):
        store.audit(T0 + timedelta(microseconds=i * 333), "staff:测试", "some.action", d)
    assert store.verify_chain() == (True, None)
    assert store.audit_entries()[2].detail == {"10": "int keys", "9": "sorted as text once stored"}


async def test_group_commit_resolves_after_commit_and_isolates_a_failing_operation(
    store, tmp_path: Path, central_db
) -> None:
    import asyncio

    def ok(n: int):
        return lambda: store.append_audit_in_tx(T0, "t", "ok", {"n": n}).seq

    def bad() -> None:
        store.append_audit_in_tx(T0, "t", "doomed", {})
        raise RuntimeError("operation fails after writing")

    futs = [store.write(ok(i)) for i in range(50)]
    futs.insert(25, store.write(bad))
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert isinstance(results[25], RuntimeError)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 51))
    # committed by the time the futures resolved: another connection sees all of it
    other = open_store(central_db(tmp_path))
    try:
        actions = [e.action for e in other.audit_entries()]
    finally:
        other.close()
    assert actions == ["ok"] * 50  # the failed operation's write was rolled back
    assert store.verify_chain() == (True, None)


def test_touch_is_buffered_and_flushed(store) -> None:
    store.add_device("kiosk-009", "kiosk", T0)
    store.touch("kiosk-009", T0 + timedelta(seconds=5))
    assert store.device("kiosk-009").last_seen == T0 + timedelta(seconds=5)  # seen at once
    store.flush_touches()
    row = store.Device.get(store.Device.id == "kiosk-009")
    assert row.last_seen == (T0 + timedelta(seconds=5)).timestamp()
    store.touch("kiosk-009", T0 + timedelta(seconds=1))  # an older touch never goes back
    store.flush_touches()
    assert store.device("kiosk-009").last_seen == T0 + timedelta(seconds=5)


def test_device_check_is_cached_but_registry_writes_drop_it(store) -> None:
    store.add_device("kiosk-010", "kiosk", T0)
    assert store.device_enabled("kiosk-010") and not store.device_enabled("kiosk-011")
    store.set_enabled("kiosk-010", False)
    assert not store.device_enabled("kiosk-010")
    store.add_device("kiosk-011", "kiosk", T0)
    assert store.device_enabled("kiosk-011")


def test_restarted_instance_takes_over_its_own_rows_at_once(store) -> None:
    args = ("req-000001", "kiosk-001", "pay.create", "h" * 64)
    assert store.begin_request(*args, T0, 120, owner="central-a/boot1").status == "new"
    later = T0 + timedelta(seconds=5)
    assert store.begin_request(*args, later, 120, owner="central-a/boot1").status == "busy"
    assert store.begin_request(*args, later, 120, owner="central-b/boot9").status == "busy"
    assert store.begin_request(*args, later, 120, owner="central-a/boot2").status == "new"
    # now owned by boot2: another instance still waits out the lease
    assert store.begin_request(*args, later, 120, owner="central-b/boot9").status == "busy"
    assert store.begin_request(*args, later + timedelta(seconds=121), 120,
                               owner="central-b/boot9").status == "new"


def test_a_resend_across_the_body_hash_change_is_not_a_mismatch(store) -> None:
    from central.forwarder import body_hash, legacy_body_hash
    from yikatong.protocol.envelope import new_envelope

    env = new_envelope("report.printed", "kiosk-001", {"report_no": "R1", "n": 1.5}, now=T0,
                       id="upgrade0001")
    other = new_envelope("report.printed", "kiosk-001", {"report_no": "R2", "n": 1.5}, now=T0,
                         id="upgrade0001")
    # written by the version before the hash changed
    store.begin_request(env.id, env.dev, env.type, legacy_body_hash(env), T0, 120)
    store.finish_request(env.id, b"stored reply", T0, actor="forwarder", action="request.done",
                         detail={})

    def begin(e):
        with store.atomic():
            return store.begin_request_in_tx(e.id, e.dev, e.type, body_hash(e), T0, 120, None,
                                             legacy=lambda: legacy_body_hash(e))

    assert begin(env) == Begin("done", b"stored reply")
    assert begin(other).status == "mismatch"
