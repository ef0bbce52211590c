"""Central store: hash-chained audit, request dedup states and leases, bounded events, state."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.store import StoreError, open_store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "central.db", events_per_device=5)
    yield s
    s.close()


def test_audit_chain_verifies_and_detects_tampering(store) -> None:
    for i in range(5):
        store.audit(T0 + timedelta(seconds=i), "forwarder", "request.done", {"n": i, "名": "张"})
    assert store.verify_chain() == (True, None)
    entries = store.audit_entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    store.db.execute_sql("UPDATE auditrecord SET detail = ? WHERE seq = 3", ('{"n":99}',))
    assert store.verify_chain() == (False, 3)


def test_audit_chain_detects_a_deleted_record(store) -> None:
    for i in range(4):
        store.audit(T0, "registry", "device.register", {"n": i})
    store.db.execute_sql("DELETE FROM auditrecord WHERE seq = 2")
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
