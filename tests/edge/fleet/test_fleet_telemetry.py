"""Telemetry: the body from fake sources, the thermal reading, and dropped (not queued) offline."""

from __future__ import annotations

import asyncio
import socket
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge.fleet.telemetry import (
    LocalReadings,
    Sample,
    TelemetryPublisher,
    build_telemetry,
    read_cpu_temp_c,
)
from edge.uplink.client import Uplink
from edge.uplink.config import UplinkConfig
from yikatong.protocol.envelope import new_envelope
from yikatong.protocol.messages import parse_telemetry

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
DEV = "kiosk-0001"
MB = 1024 * 1024
Usage = namedtuple("Usage", "total used free")
NEAR_END = {"online": True, "paper": "near_end", "cover_open": False, "cutter_error": False}


def sample(**kw: Any) -> Sample:
    base: dict[str, Any] = {
        "uptime_s": 3600.9, "printer": NEAR_END, "reader_present": True, "sam_state": "ok",
        "disk_free_bytes": 2048 * MB + 5, "cpu_temp_c": 51.234, "outbox_depth": 3,
        "load_1m": 0.456,
    }
    return Sample(**{**base, **kw})


def test_body_from_a_sample_is_what_the_telemetry_model_accepts() -> None:
    body = build_telemetry(sample())
    assert body == {"uptime_s": 3600, "cpu_temp_c": 51.2, "disk_free_mb": 2048,
                    "outbox_depth": 3, "printer": NEAR_END, "reader_present": True,
                    "sam_state": "ok", "load_1m": 0.46}
    t = parse_telemetry(new_envelope("telemetry", DEV, body, now=NOW))
    assert t.printer.paper == "near_end" and t.sam_state == "ok"


def test_missing_readings_are_left_out_not_errors() -> None:
    body = build_telemetry(sample(cpu_temp_c=None, load_1m=None, sam_state=None, printer=None))
    assert "cpu_temp_c" not in body and "load_1m" not in body and "sam_state" not in body
    # A printer not heard from yet is reported as unknown, not as healthy.
    assert body["printer"] == {"online": False, "paper": "unknown", "cover_open": False,
                               "cutter_error": False}


def test_a_broken_sensor_reading_is_dropped() -> None:
    assert "cpu_temp_c" not in build_telemetry(sample(cpu_temp_c=400.0))


def test_an_invalid_printer_status_is_refused() -> None:
    with pytest.raises(ValidationError):
        build_telemetry(sample(printer={"online": True, "paper": "lots"}))


def zone(root: Path, n: int, text: str) -> None:
    d = root / f"thermal_zone{n}"
    d.mkdir(parents=True)
    (d / "temp").write_text(text)


def test_cpu_temperature_is_the_hottest_readable_zone(tmp_path: Path) -> None:
    zone(tmp_path, 0, "45000\n")
    zone(tmp_path, 1, "61500\n")
    zone(tmp_path, 2, "garbage\n")
    zone(tmp_path, 3, "999999\n")  # 999 °C: a broken sensor
    assert read_cpu_temp_c(tmp_path) == 61.5


def test_no_thermal_zone_means_no_temperature(tmp_path: Path) -> None:
    assert read_cpu_temp_c(tmp_path) is None
    assert read_cpu_temp_c(tmp_path / "absent") is None


class FakeLink:
    """Records what would be published; ``online`` decides whether it goes out."""

    def __init__(self, online: bool = True) -> None:
        self.online = online
        self.sent: list[dict[str, Any]] = []

    def publish_telemetry(self, body: dict[str, Any]) -> bool:
        if not self.online:
            return False
        self.sent.append(body)
        return True


def publisher(link: Any, tmp_path: Path, *, depth: int = 7,
              interval_s: float = 3600.0) -> TelemetryPublisher:
    zone(tmp_path / "thermal", 0, "48000")
    state = {"reader": True}
    local = LocalReadings(tmp_path, outbox_depth=lambda: depth,
                          thermal_root=tmp_path / "thermal",
                          disk_usage=lambda p: Usage(10_000 * MB, 9_000 * MB, 300 * MB),
                          loadavg=lambda: 1.5)
    pub = TelemetryPublisher(link, interval_s=interval_s, local=local, uptime_s=lambda: 42,
                             printer=lambda: NEAR_END,
                             reader_present=lambda: state["reader"],
                             sam_state=lambda: "pin_tries_low")
    pub.state = state  # type: ignore[attr-defined]  # the test flips the reader
    return pub


async def test_publisher_sends_a_sample_from_its_sources(tmp_path: Path) -> None:
    link = FakeLink()
    pub = publisher(link, tmp_path)
    assert await pub.publish_once()
    assert link.sent == [{"uptime_s": 42, "cpu_temp_c": 48, "disk_free_mb": 300,
                          "outbox_depth": 7, "printer": NEAR_END, "reader_present": True,
                          "sam_state": "pin_tries_low", "load_1m": 1.5}]
    assert pub.stats == {"sent": 1, "dropped": 0, "invalid": 0}


async def test_publisher_counts_dropped_samples_offline(tmp_path: Path) -> None:
    link = FakeLink(online=False)
    pub = publisher(link, tmp_path)
    assert not await pub.publish_once()
    assert link.sent == [] and pub.stats["dropped"] == 1


async def test_loop_sends_at_start_and_at_once_when_poked(tmp_path: Path) -> None:
    link = FakeLink()
    pub = publisher(link, tmp_path, interval_s=3600)  # the timer never fires in this test
    await pub.start()
    try:
        for _ in range(200):
            if link.sent:
                break
            await asyncio.sleep(0.01)
        assert len(link.sent) == 1
        pub.state["reader"] = False  # type: ignore[attr-defined]
        pub.poke()
        for _ in range(200):
            if len(link.sent) == 2:
                break
            await asyncio.sleep(0.01)
        assert [b["reader_present"] for b in link.sent] == [True, False]
    finally:
        await pub.stop()


async def test_a_poke_while_a_sample_is_being_taken_is_not_lost(tmp_path: Path) -> None:
    # The reader appears while the first sample is being read from disk: a second sample
    # must follow at once, not one interval later.
    link = FakeLink()
    loop = asyncio.get_running_loop()
    reading, release = asyncio.Event(), asyncio.Event()
    calls = [0]

    def depth() -> int:  # runs in the sampling thread
        calls[0] += 1
        if calls[0] == 1:
            loop.call_soon_threadsafe(reading.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
        return 0

    state = {"reader": False}
    local = LocalReadings(tmp_path, outbox_depth=depth, thermal_root=tmp_path / "none",
                          disk_usage=lambda p: Usage(10_000 * MB, 9_000 * MB, 300 * MB),
                          loadavg=lambda: 0.5)
    pub = TelemetryPublisher(link, interval_s=3600, local=local, uptime_s=lambda: 1,
                             printer=lambda: NEAR_END, reader_present=lambda: state["reader"],
                             sam_state=lambda: "ok")
    await pub.start()
    try:
        await asyncio.wait_for(reading.wait(), 5)
        state["reader"] = True
        pub.poke()  # arrives mid-sample
        release.set()
        for _ in range(300):
            if len(link.sent) == 2:
                break
            await asyncio.sleep(0.01)
        assert [b["reader_present"] for b in link.sent] == [False, True]
    finally:
        await pub.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once the socket is closed


async def test_offline_telemetry_is_dropped_not_stored_in_the_outbox(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    cfg = UplinkConfig(host="127.0.0.1", port=closed_port(), username=DEV, password_file=pw,
                       outbox_path=tmp_path / "outbox.db", state_path=tmp_path / "state.json")
    up = Uplink(cfg, DEV, role="kiosk", version="1.0")
    await up.start()
    try:
        pub = TelemetryPublisher(
            up, interval_s=30, local=LocalReadings(tmp_path, up.outbox.pending_count,
                                                   thermal_root=tmp_path / "none"),
            uptime_s=lambda: 1, printer=lambda: None, reader_present=lambda: True,
            sam_state=lambda: None)
        assert not up.connected
        assert not await pub.publish_once()
        assert pub.stats["dropped"] == 1
        assert up.outbox.count() == 0  # nothing queued for later
        # …whereas an event offline is kept for later: the contrast this test is about.
        await up.publish_event("printer.status", NEAR_END)
        assert up.outbox.count() == 1
        assert await pub.publish_once() is False
        assert up.outbox.count() == 1
    finally:
        await up.stop()
