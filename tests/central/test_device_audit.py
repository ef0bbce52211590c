"""Central's copy of each device's audit chain: idempotent ingest, gaps and broken links
flagged, the dashboard's per-device state, and the real path through Mosquitto. On SQLite
and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.dashboard.app import create_dashboard
from central.registry import Registry
from central.store import open_store
from edge.fleet.audit import AuditLog

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> datetime:
        self.t += timedelta(milliseconds=5)
        return self.t


def _chain(tmp_path: Path, n: int, reader: str = "r") -> list[dict]:
    log = AuditLog(tmp_path / "dev-audit.db", clock=Clock())
    return [log.record("kiosk", "card.inserted", {"reader": reader, "n": i}).wire_body()
            for i in range(n)]


pytestmark = BOTH_ENGINES


@pytest.fixture
def store(tmp_path: Path, central_db):
    s = open_store(central_db(tmp_path))
    yield s
    s.close()


def test_ingest_in_order_is_ok_and_idempotent_by_seq(store, tmp_path: Path) -> None:
    bodies = _chain(tmp_path, 4)
    assert [store.add_device_audit("kiosk-001", b, T0) for b in bodies] == ["ok"] * 4
    assert store.add_device_audit("kiosk-001", bodies[1], T0) == "duplicate"
    state = store.device_audit_state("kiosk-001")
    assert state == {"audit_ok": True, "last_seq": 4, "count": 4, "first_bad_seq": None}
    assert [e["seq"] for e in store.device_audit_entries("kiosk-001")] == [1, 2, 3, 4]
    # Another device's chain is its own (same seqs, no conflict).
    assert store.add_device_audit("kiosk-002", bodies[0], T0) == "ok"
    assert store.verify_chain() == (True, None)


def test_a_gap_is_flagged_until_the_missing_record_arrives(store, tmp_path: Path) -> None:
    b = _chain(tmp_path, 4)
    store.add_device_audit("kiosk-001", b[0], T0)
    assert store.add_device_audit("kiosk-001", b[2], T0) == "gap"
    assert store.add_device_audit("kiosk-001", b[3], T0) == "ok"
    state = store.device_audit_state("kiosk-001")
    assert state["audit_ok"] is False and state["first_bad_seq"] == 3 and state["last_seq"] == 4
    assert store.add_device_audit("kiosk-001", b[1], T0) == "ok"  # a late resend fills it
    assert store.device_audit_state("kiosk-001")["audit_ok"] is True


def test_a_missing_first_record_is_a_gap(store, tmp_path: Path) -> None:
    b = _chain(tmp_path, 3)
    store.add_device_audit("kiosk-001", b[1], T0)
    assert store.device_audit_state("kiosk-001")["audit_ok"] is False


def test_broken_link_and_bad_hash_are_flagged_and_audited(store, tmp_path: Path) -> None:
    b = _chain(tmp_path, 3)
    store.add_device_audit("kiosk-001", b[0], T0)
    # A record whose own hash is right but which links to something else: a rewritten past.
    other = _chain(tmp_path / "other", 2, reader="r2")[1]
    assert store.add_device_audit("kiosk-001", other, T0) == "broken_link"
    state = store.device_audit_state("kiosk-001")
    assert state["audit_ok"] is False and state["first_bad_seq"] == 2
    tampered = {**b[2], "detail": {"reader": "r", "n": 99}}
    assert store.add_device_audit("kiosk-002", tampered, T0) == "bad_hash"
    flagged = [e.detail for e in store.audit_entries() if e.action == "device_audit.flagged"]
    assert {"dev": "kiosk-001", "seq": 2, "status": "broken_link"} in flagged
    assert {"dev": "kiosk-002", "seq": 3, "status": "bad_hash"} in flagged


def test_a_different_record_under_a_stored_seq_is_a_conflict(store, tmp_path: Path) -> None:
    b = _chain(tmp_path, 2)
    other = _chain(tmp_path / "other", 2, reader="r2")
    store.add_device_audit("kiosk-001", b[0], T0)
    store.add_device_audit("kiosk-001", b[1], T0)
    assert store.add_device_audit("kiosk-001", other[1], T0) == "conflict"
    assert store.device_audit_state("kiosk-001")["audit_ok"] is False


def test_invalid_body_is_ignored(store) -> None:
    assert store.add_device_audit("kiosk-001", {"seq": "x"}, T0) == "invalid"
    assert store.device_audit_state("kiosk-001")["count"] == 0


async def test_dashboard_shows_per_device_audit_state(store, tmp_path: Path) -> None:
    b = _chain(tmp_path, 3)
    store.add_device("kiosk-001", "kiosk", T0)
    store.add_device("kiosk-002", "kiosk", T0)
    for x in b:
        store.add_device_audit("kiosk-001", x, T0)
    store.add_device_audit("kiosk-002", b[0], T0)
    store.add_device_audit("kiosk-002", b[2], T0)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), "tok", site_name="测试")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers={"Authorization": "Bearer tok"}) as client:
        devices = {d["id"]: d for d in (await client.get("/api/devices")).json()["devices"]}
        one = (await client.get("/api/devices/kiosk-002/audit")).json()
    assert devices["kiosk-001"]["audit"]["audit_ok"] is True
    assert devices["kiosk-001"]["audit"]["last_seq"] == 3
    assert devices["kiosk-002"]["audit"]["audit_ok"] is False
    assert [e["status"] for e in one["entries"]] == ["ok", "gap"]


async def test_device_audit_and_card_events_reach_central_through_mosquitto(
    broker_site, forwarder, tmp_path: Path
) -> None:
    from edge.runtime import EdgeRuntime

    up = broker_site.device("kiosk-021", tmp_path)
    audit = AuditLog(tmp_path / "audit.db", clock=Clock())
    rt = EdgeRuntime(device_id="kiosk-021", role="kiosk", hospital_name="h", uplink=up,
                     printer=None, clock=Clock(), audit=audit)
    await up.start()
    try:
        assert await up.wait_connected(10)
        rt.card_inserted("r", bytes.fromhex("3B8F8001"))
        rt.card_failed("r", "not_health_card", "Not a health card.", "非健康卡")
        rt.card_removed("r")
        store = broker_site.store
        await wait_until_async(
            lambda: store.device_audit_state("kiosk-021")["last_seq"] == 3
            and len(store.recent_events("kiosk-021")) == 3, 10, what="3 audit records at central")
    finally:
        await up.stop()
    state = store.device_audit_state("kiosk-021")
    assert state == {"audit_ok": True, "last_seq": 3, "count": 3, "first_bad_seq": None}
    types = sorted(e["type"] for e in store.recent_events("kiosk-021"))
    assert types == ["card.inserted", "card.read_failed", "card.removed"]  # audit not in ring
    stored = json.dumps(store.device_audit_entries("kiosk-021"), ensure_ascii=False)
    assert "not_health_card" in stored
