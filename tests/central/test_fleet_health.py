"""Fleet health: latest telemetry per device, the alarms derived from it, API and forwarder."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from central.dashboard.app import create_dashboard
from central.fleet_health import DeviceHealth, HealthThresholds, derive_alarms, merge
from central.registry import Registry
from central.store import open_store

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OK_PRINTER = {"online": True, "paper": "ok", "cover_open": False, "cutter_error": False}
HEALTHY: dict[str, Any] = {"uptime_s": 100, "cpu_temp_c": 50.5, "disk_free_mb": 8000,
                           "outbox_depth": 0, "printer": OK_PRINTER, "reader_present": True,
                           "sam_state": "ok", "load_1m": 0.2}
LIMITS = HealthThresholds(disk_low_mb=500, temp_high_c=80, backlog_high=100)


def view(**changes: Any) -> DeviceHealth:
    body = {**HEALTHY, **changes}
    v = merge(None, "telemetry", body, T0)
    assert v is not None
    return v


def codes(v: DeviceHealth | None, *, online: bool = True, enabled: bool = True,
          limits: HealthThresholds = LIMITS) -> list[tuple[str, str]]:
    return [(a.code, a.severity) for a in derive_alarms("kiosk-001", online=online,
                                                        enabled=enabled, health=v,
                                                        thresholds=limits)]


def test_a_healthy_device_has_no_alarm() -> None:
    assert codes(view()) == []


@pytest.mark.parametrize(("changes", "expected"), [
    ({"printer": {**OK_PRINTER, "paper": "out"}}, [("paper_out", "error")]),
    ({"printer": {**OK_PRINTER, "paper": "near_end"}}, [("paper_near_end", "warning")]),
    ({"printer": {**OK_PRINTER, "cover_open": True}}, [("cover_open", "error")]),
    ({"reader_present": False}, [("reader_missing", "error")]),
    ({"sam_state": "pin_blocked"}, [("sam_fault", "error")]),
    ({"sam_state": "missing"}, [("sam_fault", "error")]),
    ({"sam_state": "pin_tries_low"}, [("sam_fault", "warning")]),
    ({"sam_state": "not_opened"}, []),  # opened at the first card read: not a fault
    ({"disk_free_mb": 499}, [("disk_low", "warning")]),
    ({"cpu_temp_c": 80.5}, [("temp_high", "warning")]),
    ({"outbox_depth": 101}, [("backlog_high", "warning")]),
])
def test_each_alarm_is_derived(changes: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert codes(view(**changes)) == expected


def test_limits_are_exclusive_and_configurable() -> None:
    at_limits = view(disk_free_mb=500, cpu_temp_c=80, outbox_depth=100)
    assert codes(at_limits) == []
    strict = HealthThresholds(disk_low_mb=10_000, temp_high_c=40, backlog_high=1)
    assert codes(view(outbox_depth=2), limits=strict) == [
        ("disk_low", "warning"), ("temp_high", "warning"), ("backlog_high", "warning")]
    with pytest.raises(ValueError, match="backlog_high"):
        HealthThresholds(backlog_high=0)


def test_offline_comes_first_and_a_disabled_device_raises_nothing() -> None:
    v = view(printer={**OK_PRINTER, "paper": "near_end"})
    assert codes(v, online=False) == [("offline", "error"), ("paper_near_end", "warning")]
    assert codes(None, online=False) == [("offline", "error")]
    assert codes(v, online=False, enabled=False) == []


def test_events_update_the_view_sooner_than_telemetry() -> None:
    v = view()
    v2 = merge(v, "printer.status", {**OK_PRINTER, "paper": "out"}, T0 + timedelta(seconds=5))
    assert v2 is not None and v2.printer is not None and v2.printer["paper"] == "out"
    assert v2.telemetry_at == T0 and v2.disk_free_mb == 8000  # the rest is kept
    v3 = merge(v2, "print.failed", {"job_id": "job1", "reason": "paper_out"}, T0)
    assert v3 is not None and ("print_failed", "warning") in codes(v3)
    v4 = merge(v3, "print.done", {"job_id": "job2", "doc_kind": "slip", "copy": False}, T0)
    assert v4 is not None and ("print_failed", "warning") not in codes(v4)


def test_invalid_or_unrelated_messages_leave_the_view_alone() -> None:
    v = view()
    assert merge(v, "telemetry", {**HEALTHY, "printer": {}}, T0) is None
    assert merge(v, "printer.status", {"paper": "lots"}, T0) is None
    assert merge(v, "card.inserted", {"reader": "r", "atr": "3b00"}, T0) is None
    assert merge(None, "print.done", {"job_id": "j"}, T0) is None


def test_store_keeps_one_row_per_device_overwritten(tmp_path: Path) -> None:
    store = open_store(tmp_path / "c.db")
    try:
        for i in range(3):
            assert store.update_health("kiosk-001", "telemetry", {**HEALTHY, "uptime_s": i},
                                       T0 + timedelta(seconds=i))
        assert not store.update_health("kiosk-001", "telemetry", {"uptime_s": -1}, T0)
        assert store.DeviceHealthRow.select().count() == 1
        h = store.device_health("kiosk-001")
        assert h is not None and h.uptime_s == 2 and h.telemetry_at == T0 + timedelta(seconds=2)
        assert store.device_health("kiosk-002") is None
        assert store.recent_events("kiosk-001") == []  # telemetry stays out of the event ring
    finally:
        store.close()


@pytest.fixture
async def dash(tmp_path: Path):
    store = open_store(tmp_path / "c.db")
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), "tok",
                           site_name="测试", thresholds=HealthThresholds(disk_low_mb=1000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash",
                                 headers={"Authorization": "Bearer tok"}) as client:
        yield client, store
    store.close()


async def test_api_lists_health_and_alarms(dash) -> None:
    client, store = dash
    for dev in ("kiosk-001", "kiosk-002"):
        store.add_device(dev, "kiosk", T0)
        store.apply_state(dev, online=True, boot_seq=1, version="1.0", now=T0)
    store.apply_state("kiosk-002", online=False, boot_seq=1, version=None, now=T0)
    store.update_health("kiosk-001", "telemetry", {**HEALTHY, "disk_free_mb": 900}, T0)
    store.update_health("kiosk-001", "printer.status", {**OK_PRINTER, "paper": "near_end"}, T0)
    store.add_event("kiosk-001", "event", "printer.status", {**OK_PRINTER, "paper": "near_end"},
                    T0)

    devices = {d["id"]: d for d in (await client.get("/api/devices")).json()["devices"]}
    k1 = devices["kiosk-001"]
    assert k1["health"]["printer"]["paper"] == "near_end" and k1["health"]["disk_free_mb"] == 900
    assert [a["code"] for a in k1["alarms"]] == ["paper_near_end", "disk_low"]
    assert devices["kiosk-002"]["health"] is None
    assert [a["code"] for a in devices["kiosk-002"]["alarms"]] == ["offline"]

    alarms = (await client.get("/api/alarms")).json()["alarms"]
    assert [(a["dev"], a["code"], a["severity"]) for a in alarms] == [
        ("kiosk-002", "offline", "error"),
        ("kiosk-001", "disk_low", "warning"),
        ("kiosk-001", "paper_near_end", "warning"),
    ]
    assert alarms[0]["message_zh"] == "设备离线" and alarms[0]["message"] == "Device offline"

    events = (await client.get("/api/events")).json()["events"]
    assert [(e["dev"], e["type"]) for e in events] == [("kiosk-001", "printer.status")]


async def test_forwarder_keeps_telemetry_as_health_and_events_update_it(
    broker_site, forwarder, tmp_path: Path
) -> None:
    up = broker_site.device("kiosk-015", tmp_path)
    store = broker_site.store
    await up.start()
    try:
        assert await up.wait_connected(10)
        assert up.publish_telemetry(HEALTHY)
        assert up.publish_telemetry({**HEALTHY, "printer": {}})  # invalid: ignored by central
        for _ in range(200):  # one at a time: the forwarder's workers may reorder messages
            if store.device_health("kiosk-015") is not None and forwarder.stats["rejected"]:
                break
            await asyncio.sleep(0.05)
        await up.publish_event("printer.status", {**OK_PRINTER, "cover_open": True})
        for _ in range(200):
            h = store.device_health("kiosk-015")
            if h is not None and h.printer is not None and h.printer["cover_open"]:
                break
            await asyncio.sleep(0.05)
    finally:
        await up.stop()
    h = store.device_health("kiosk-015")
    assert h is not None and h.uptime_s == 100 and h.printer == {**OK_PRINTER, "cover_open": True}
    assert forwarder.stats["rejected"] == 1
    assert [e["type"] for e in store.recent_events("kiosk-015")] == ["printer.status"]
