"""ScannerService: classification, de-duplication, privacy in logs, discovery, real pty."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from edge.devices.scanner.base import (
    DeviceInfo,
    LoopDoor,
    ScanFailed,
    ScannerConnected,
    ScanRead,
    Sink,
)
from edge.devices.scanner.classify import EhcQr, PaymentCode, SpecimenBarcode, UnknownScan
from edge.devices.scanner.config import ScannerConfig
from edge.devices.scanner.errors import FrameTooLong
from edge.devices.scanner.frames import RawScan
from edge.devices.scanner.models import ScannerModel
from edge.devices.scanner.service import ScanEvent, ScannerService

EMPI = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2
WECHAT = "134567890123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeScanner:
    """A driver whose 'hardware' is a method: emit() posts from a real thread via the door."""

    def __init__(self, path: str, model: ScannerModel, sink: Sink, options: dict[str, Any]):
        self.path = path
        self.model = model
        self.name = options["name"]
        self.options = options
        self._sink = sink
        self.running = False
        self._door: LoopDoor | None = None

    async def start(self) -> None:
        self._door = LoopDoor(asyncio.get_running_loop(), self._sink)
        self.running = True
        self._door.post(ScannerConnected(self.name))

    async def stop(self) -> None:
        self.running = False

    def emit(self, text: str, ts: float, symbology: str | None = None) -> None:
        assert self._door is not None
        door = self._door
        raw = RawScan(text=text, symbology=symbology, ts=ts, source=self.name)
        t = threading.Thread(target=door.post, args=(ScanRead(self.name, raw),))
        t.start()
        t.join()

    def fail(self, error: Exception) -> None:
        assert self._door is not None
        self._door.post(ScanFailed(self.name, error))  # type: ignore[arg-type]


class FakeDriver:
    def __init__(self) -> None:
        self.created: list[FakeScanner] = []

    def create(self, path: str, model: ScannerModel, sink: Sink, **options: Any) -> FakeScanner:
        s = FakeScanner(path, model, sink, options)
        self.created.append(s)
        return s


def make_config(**kw: Any) -> ScannerConfig:
    base: dict[str, Any] = {
        "devices": [{"name": "desk", "kind": "serial", "port": "/dev/ttyFAKE0"}],
        "discovery_interval_s": 0.01,
        "specimen_regex": r"^S\d{10}$", "staff_badge_regex": r"^YG\d{6}$",
    }
    base.update(kw)
    return ScannerConfig.model_validate(base)


@pytest.fixture
async def running() -> AsyncIterator[tuple[ScannerService, FakeDriver, Clock]]:
    driver, clock = FakeDriver(), Clock()
    service = ScannerService(make_config(), clock,
                             drivers={"serial": driver, "hid": driver})  # type: ignore[dict-item]
    await service.start()
    yield service, driver, clock
    await service.stop()


async def take(service: ScannerService, n: int, within: float = 2.0) -> list[ScanEvent]:
    out: list[ScanEvent] = []
    async with asyncio.timeout(within):
        async for ev in service.scans():
            out.append(ev)
            if len(out) == n:
                break
    return out


async def wait_until(cond: Callable[[], object], within: float = 2.0) -> None:
    """Poll a condition the service exposes no event for (tests only)."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_scans_are_classified(running: tuple[ScannerService, FakeDriver, Clock]) -> None:
    service, driver, clock = running
    (desk,) = driver.created
    assert desk.path == "/dev/ttyFAKE0" and desk.options["reconnect_delay_s"] == 1.0
    desk.emit(f"{EMPI}:1", clock.now, "qr")
    desk.emit("S2024000001", clock.now)
    desk.emit(WECHAT, clock.now)
    desk.emit("hello", clock.now)
    got = await take(service, 4)
    assert isinstance(got[0].scan, EhcQr) and got[0].symbology == "qr"
    assert got[0].source == "desk"
    assert got[1].scan == SpecimenBarcode("S2024000001")
    assert isinstance(got[2].scan, PaymentCode) and got[2].scan.code == WECHAT
    assert WECHAT not in repr(got[2])
    assert isinstance(got[3].scan, UnknownScan)
    assert service.connected() == {"desk": True}


async def test_repeats_within_window_collapse(
        running: tuple[ScannerService, FakeDriver, Clock]) -> None:
    service, driver, _ = running
    (desk,) = driver.created
    # A phone held in front of a presentation scanner: re-read every second for 3 s.
    for ts in (0.0, 1.0, 2.0, 3.0):
        desk.emit(f"{EMPI}:1", 1000.0 + ts)
    desk.emit("S2024000001", 1003.1)
    desk.emit(f"{EMPI}:1", 1003.2)  # still within 1.5 s of the last repeat
    desk.emit(f"{EMPI}:1\r\n", 1005.0)  # 1.8 s later: a new scan (terminator ignored)
    got = await take(service, 3)
    assert [type(e.scan).__name__ for e in got] == ["EhcQr", "SpecimenBarcode", "EhcQr"]
    assert [e.ts for e in got] == [1000.0, 1003.1, 1005.0]


async def test_dedup_window_zero_keeps_every_scan() -> None:
    driver, clock = FakeDriver(), Clock()
    service = ScannerService(make_config(dedup_window_s=0), clock,
                             drivers={"serial": driver})  # type: ignore[dict-item]
    await service.start()
    try:
        for _ in range(3):
            driver.created[0].emit("S2024000001", clock.now)
        assert len(await take(service, 3)) == 3
    finally:
        await service.stop()


async def test_payment_codes_never_reach_the_log(
        running: tuple[ScannerService, FakeDriver, Clock],
        caplog: pytest.LogCaptureFixture) -> None:
    service, driver, clock = running
    caplog.set_level(logging.DEBUG)
    (desk,) = driver.created
    alipay = "281234567890123456"
    desk.emit(WECHAT, clock.now)
    desk.emit(WECHAT, clock.now + 0.1)  # the collapsed repeat is logged too
    desk.emit(alipay + "\x07", clock.now)  # rejected text
    desk.emit(f"REF{WECHAT}X", clock.now)  # unknown text embedding a code
    desk.emit(alipay, clock.now)
    desk.fail(FrameTooLong(64))
    got = await take(service, 3)
    assert [type(e.scan).__name__ for e in got] == ["PaymentCode", "UnknownScan", "PaymentCode"]
    assert caplog.records, "the service should have logged the scans"
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert WECHAT not in text and alipay not in text
    assert "13************6789" in caplog.text  # masked form is what appears
    assert service.dropped == 2


async def test_stale_unconsumed_scans_are_dropped(
        running: tuple[ScannerService, FakeDriver, Clock]) -> None:
    service, driver, clock = running
    (desk,) = driver.created
    desk.emit(WECHAT, clock.now)
    await settle()
    clock.now += 31  # nobody listened for half a minute: do not charge that code now
    desk.emit("S2024000001", clock.now)
    got = await take(service, 1)
    assert got[0].scan == SpecimenBarcode("S2024000001")


async def test_full_queue_drops_oldest() -> None:
    driver, clock = FakeDriver(), Clock()
    service = ScannerService(make_config(dedup_window_s=0), clock, queue_size=2,
                             drivers={"serial": driver})  # type: ignore[dict-item]
    await service.start()
    try:
        for i in range(4):
            driver.created[0].emit(f"S000000000{i}", clock.now)
        got = await take(service, 2)
        assert [e.scan for e in got] == [SpecimenBarcode("S0000000002"),
                                         SpecimenBarcode("S0000000003")]
        assert service.dropped == 2
    finally:
        await service.stop()


async def test_disabled_service_starts_nothing_and_stop_ends_scans() -> None:
    driver = FakeDriver()
    service = ScannerService(make_config(enabled=False), Clock(),
                             drivers={"serial": driver})  # type: ignore[dict-item]
    await service.start()
    assert driver.created == []
    consumer = asyncio.create_task(take(service, 1))
    await settle()
    await service.stop()
    assert await consumer == []


async def test_scans_before_start_is_an_error() -> None:
    service = ScannerService(make_config(), Clock())
    with pytest.raises(RuntimeError):
        await anext(service.scans())


async def test_usb_id_devices_are_found_by_discovery() -> None:
    driver, clock = FakeDriver(), Clock()
    wedge = DeviceInfo("hid", "/dev/input/event4", 0x05E0, 0x1200, "Symbol")
    other = DeviceInfo("hid", "/dev/input/event7", 0x1EAB, 0x0001, "Newland")
    present: list[DeviceInfo] = []
    cfg = make_config(devices=[{"name": "kiosk", "kind": "hid", "usb_id": "05e0:1200",
                                "layout": "de"}])
    service = ScannerService(cfg, clock, drivers={"hid": driver},  # type: ignore[dict-item]
                             listers={"hid": lambda: list(present)})
    await service.start()
    try:
        await asyncio.sleep(0.05)
        assert driver.created == []
        present.extend([wedge, other])  # other: not configured and autodiscover is off
        await wait_until(lambda: driver.created)
        (kiosk,) = driver.created
        assert kiosk.path == wedge.path and kiosk.name == "kiosk"
        assert kiosk.options["layout"] == "de" and kiosk.model.name == "generic_hid"
        kiosk.emit("YG123456", clock.now)
        (ev,) = await take(service, 1)
        assert ev.source == "kiosk"
        present.clear()
        await wait_until(lambda: not kiosk.running)
        assert service.connected()["kiosk"] is False
    finally:
        await service.stop()


async def test_end_to_end_over_a_real_pty(pty_pair: tuple[str, str]) -> None:
    scanner_end, port = pty_pair
    cfg = make_config(devices=[{"name": "desk", "kind": "serial", "port": port,
                                "model": "newland_fr40_serial"}])
    service = ScannerService(cfg)
    await service.start()
    try:
        await wait_until(lambda: service.connected().get("desk"), within=5)
        fd = os.open(scanner_end, os.O_WRONLY | os.O_NOCTTY)
        os.write(fd, f"{EMPI}:0:{'ab' * 16}\r\n{WECHAT}\r\n{WECHAT}\r\n".encode())
        os.close(fd)
        got = await take(service, 2, within=5)
    finally:
        await service.stop()
    assert isinstance(got[0].scan, EhcQr) and got[0].scan.kind == "dynamic"
    assert isinstance(got[1].scan, PaymentCode) and got[1].scan.wallet == "wechat"


async def test_framing_overrides_apply_over_a_real_pty(pty_pair: tuple[str, str]) -> None:
    # A scanner reprogrammed on site: STX prefix, ETX terminator, no AIM id.
    scanner_end, port = pty_pair
    cfg = make_config(devices=[{"name": "desk", "kind": "serial", "port": port,
                                "model": "newland_fr40_serial", "prefix": "\u0002",
                                "terminator": "\u0003"}])
    service = ScannerService(cfg)
    await service.start()
    try:
        await wait_until(lambda: service.connected().get("desk"), within=5)
        fd = os.open(scanner_end, os.O_WRONLY | os.O_NOCTTY)
        os.write(fd, f"\x02{EMPI}:1\x03\x02{WECHAT}\x03".encode())
        os.close(fd)
        got = await take(service, 2, within=5)
    finally:
        await service.stop()
    assert isinstance(got[0].scan, EhcQr) and got[0].scan.kind == "static"
    assert isinstance(got[1].scan, PaymentCode)
