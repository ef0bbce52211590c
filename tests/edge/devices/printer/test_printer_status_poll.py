"""Idle status polling: a change on the virtual printer reaches the kiosk bus and central."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.daemon import _pump_printer_status
from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.sim import VirtualPrinter
from edge.runtime import EdgeRuntime
from yikatong.protocol.messages import EVENTS


class FixedClock:
    def now(self) -> datetime:
        return datetime(2024, 5, 20, 1, 41, tzinfo=UTC)


class RecordingUplink:
    """Stands in for the uplink: keeps every event it is asked to send."""

    connected = True

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def publish_event(self, type_: str, body: dict[str, Any]) -> str:
        self.events.append((type_, body))
        return f"ev-{len(self.events)}"

    def unresolved_payments(self) -> list[str]:
        return []  # nothing in an outbox here


async def _next_status(q: asyncio.Queue[dict[str, Any]], within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            event = await q.get()
            if event["kind"] == "printer.status":
                return event["data"]  # type: ignore[no-any-return]


async def test_printer_status_near_end_reaches_bus_and_central(tmp_path: Path) -> None:
    with VirtualPrinter() as vp:
        cfg = PrinterConfig(kind="network", host="127.0.0.1", port=vp.port,
                            status_timeout_s=1.0, status_poll_s=0.05, reconnect_attempts=0)
        printer = PrinterService(cfg, tmp_path / "jobs.db")
        uplink = RecordingUplink()
        runtime = EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="测试医院",
                              uplink=uplink, printer=printer, clock=FixedClock())
        async with runtime.bus.subscribe() as q:
            pump = asyncio.create_task(_pump_printer_status(printer, runtime))
            try:
                first = await _next_status(q)
                assert first["online"] and first["paper"] == "ok"
                vp.set_fault(near_end=True)
                changed = await _next_status(q)
                assert changed["paper"] == "near_end" and changed["paper_near_end"]
                assert not changed["paper_out"] and changed["online"]
                vp.set_fault(near_end=False, cover_open=True)
                opened = await _next_status(q)
                assert opened["cover_open"] and not opened["online"]
                await asyncio.sleep(0.3)  # behaviour under test: unchanged status, no events
                assert q.empty()
            finally:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
        await printer.close()
    sent = [body for kind, body in uplink.events if kind == "printer.status"]
    assert [b["paper"] for b in sent] == ["ok", "near_end", "ok"]
    for body in sent:  # what goes up must fit the wire catalogue's printer.status
        EVENTS["printer.status"].model_validate(body)


async def test_printer_status_offline_then_back(tmp_path: Path) -> None:
    vp = VirtualPrinter().start()
    port = vp.port
    cfg = PrinterConfig(kind="network", host="127.0.0.1", port=port, status_timeout_s=0.5,
                        status_poll_s=0.05, reconnect_attempts=0, connect_timeout_s=0.5)
    printer = PrinterService(cfg, tmp_path / "jobs.db")
    changes = printer.status_changes()
    try:
        assert (await anext(changes)).ready
        vp.stop()
        gone = await asyncio.wait_for(anext(changes), 10)
        assert (gone.online, gone.paper) == (False, "unknown")
        vp = VirtualPrinter(port=port).start()
        back = await asyncio.wait_for(anext(changes), 10)
        assert back.ready
    finally:
        await changes.aclose()
        vp.stop()
        await printer.close()


async def test_printer_status_poll_off_yields_nothing(tmp_path: Path) -> None:
    cfg = PrinterConfig(kind="memory", status_poll_s=0)
    printer = PrinterService(cfg, tmp_path / "jobs.db")
    assert [s async for s in printer.status_changes()] == []
    await printer.close()
