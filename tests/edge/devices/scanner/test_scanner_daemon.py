"""The daemon's scanner wiring: a serial scanner on a real pty reaches the runtime's bus."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.daemon import _pump_scans, _start_scanners
from edge.devices.scanner.config import ScannerConfig
from edge.runtime import EdgeRuntime

EMPI = "0123456789abcdef" * 4


class FixedClock:
    def now(self) -> datetime:
        return datetime(2024, 5, 20, 1, 41, tzinfo=UTC)


def runtime_for(cfg: ScannerConfig) -> EdgeRuntime:
    return EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="测试医院",
                       uplink=None, printer=None, clock=FixedClock(), rules=cfg.rules())


async def _scan_events(q: asyncio.Queue[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(out) < n:
            event = await q.get()
            if event["kind"] == "scan":
                out.append(event["data"])
    return out


async def test_serial_scans_reach_the_runtime_like_the_api_scan(
    pty_pair: tuple[str, str],
) -> None:
    scanner_end, port = pty_pair
    cfg = ScannerConfig.model_validate({
        "specimen_regex": "LIS[0-9]{8}",
        "devices": [{"name": "desk", "kind": "serial", "port": port,
                     "model": "honeywell_xenon_1900_serial"}],
    })
    runtime = runtime_for(cfg)
    scanners = await _start_scanners(cfg)
    assert scanners is not None
    async with runtime.bus.subscribe() as q:
        pump = asyncio.create_task(_pump_scans(scanners, runtime))
        try:
            deadline = time.monotonic() + 5
            while not scanners.connected().get("desk"):
                assert time.monotonic() < deadline, "scanner did not connect"
                await asyncio.sleep(0.02)
            fd = os.open(scanner_end, os.O_WRONLY | os.O_NOCTTY)
            os.write(fd, f"]Q1{EMPI}:0:{'ab' * 16}\r]C0LIS20240520\r".encode())
            os.close(fd)
            from_scanner = await _scan_events(q, 2)
            # The same texts through the local API's path (/v1/scan → scan_text).
            runtime.scan_text(f"{EMPI}:0:{'ab' * 16}", "ui")
            runtime.scan_text("LIS20240520", "ui")
            from_api = await _scan_events(q, 2)
        finally:
            await scanners.stop()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    def shape(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if k not in ("scan_id", "source")}

    assert [shape(e) for e in from_scanner] == [shape(e) for e in from_api]
    assert [e["kind"] for e in from_scanner] == ["ehc_qr", "specimen"]
    assert {e["source"] for e in from_scanner} == {"desk"}
    assert from_scanner[1]["value"] == "LIS20240520"


async def test_disabled_or_absent_scanner_section_starts_nothing() -> None:
    assert await _start_scanners(None) is None
    assert await _start_scanners(ScannerConfig(enabled=False)) is None


def test_edge_config_takes_a_typed_scanner_section(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from edge.config import EdgeConfig
    from yikatong.common.config import load_config

    example = (Path(__file__).resolve().parents[4] / "config" / "edge-cashier.toml").read_text()
    cfg_file = tmp_path / "edge.toml"
    cfg_file.write_text(example)
    cfg = load_config(cfg_file, EdgeConfig)
    assert cfg.scanner is not None and cfg.scanner.devices[0].kind == "serial"
    without = example.split("\n[scanner")[0] + "\n[uplink]" + example.split("\n[uplink]", 1)[1]
    assert "[scanner" not in without
    cfg_file.write_text(without)
    assert load_config(cfg_file, EdgeConfig).scanner is None  # optional section
    data = cfg.model_dump()
    data["scanner"]["colour"] = "red"
    with pytest.raises(ValidationError, match="colour"):
        EdgeConfig.model_validate(data)
