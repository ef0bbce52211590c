"""Real transports without a real printer: serial over a socat pty pair, USB with a fake device."""

from __future__ import annotations

import errno
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import usb.core as usb_core  # pyusb: the [usb] extra, also in [test]
from support import wait_until_async

from edge.devices.printer import transport as transport_mod
from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.documents import Document
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.errors import PrinterOffline
from edge.devices.printer.escpos.status import status_reply
from edge.devices.printer.sim.decoder import (
    DecodedJob,
    EscPosDecoder,
    JobDone,
    SequencedQuery,
    StatusQuery,
)
from edge.devices.printer.transport import UsbTransport

Samples = dict[str, Callable[[], Document]]


class PtyPrinter:
    """A printer on the far end of a pty: decodes what arrives, answers DLE EOT and GS r."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        self.jobs: list[DecodedJob] = []
        self.paper_out = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = EscPosDecoder()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            for event in decoder.feed(os.read(self.fd, 4096)):
                if isinstance(event, StatusQuery):
                    os.write(self.fd, bytes([status_reply(event.n, paper_out=self.paper_out)]))
                elif isinstance(event, SequencedQuery) and not self.paper_out:
                    os.write(self.fd, b"\x00")
                elif isinstance(event, JobDone):
                    self.jobs.append(event.job)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.fd)


async def test_serial_transport_prints_over_a_real_pty(
    pty_pair: tuple[str, str], samples: Samples, tmp_path: Path
) -> None:
    printer_end, port = pty_pair
    far = PtyPrinter(printer_end)
    cfg = PrinterConfig(kind="serial", device=port, baudrate=115200, status_timeout_s=1.0,
                        job_timeout_s=5.0, reconnect_attempts=0)
    svc = PrinterService(cfg, tmp_path / "jobs.db")
    try:
        assert (await svc.status()).ready
        outcome = await svc.print(samples["slip"](), job_id="s-1")
        assert outcome.state == "printed", outcome.reason
        await wait_until_async(lambda: far.jobs, 5, what="the job at the far printer")
        assert "门诊挂号凭条" in far.jobs[0].text and far.jobs[0].cut
        far.paper_out = True
        refused = await svc.print(samples["topup"](), job_id="t-1")
        assert (refused.state, refused.reason) == ("failed", "paper_out")
    finally:
        await svc.close()
        far.close()


def test_serial_transport_on_a_missing_port_is_offline() -> None:
    cfg = PrinterConfig(kind="serial", device="/dev/ttyNOPE-ykt")
    with pytest.raises(PrinterOffline):
        transport_mod.open_transport(cfg)


# -- USB: a fake python-escpos Usb class and usb.util, scripted to be busy -----------------


class DeviceNotFoundError(Exception):
    """Stands in for escpos.exceptions.DeviceNotFoundError."""


def _busy() -> Exception:
    return usb_core.USBError("Resource busy", errno=errno.EBUSY)


class FakeUsbDevice:
    def __init__(self) -> None:
        self.written = bytearray()

    def read(self, ep: int, n: int, timeout_ms: int) -> bytes:
        return bytes([status_reply(1)])[:n]


class UsbBench:
    """Scripted opens: each entry is 'ok', 'busy_open' (escpos wraps EBUSY) or 'busy_claim'."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.opens = 0
        self.claims = 0
        self.disposed = 0
        self.sleeps: list[float] = []
        bench = self

        class FakeUsb:
            def __init__(self, vid: int, pid: int, **_: Any) -> None:
                self._device: FakeUsbDevice | None = None
                self.step = bench.script.pop(0) if bench.script else "ok"

            def open(self) -> None:
                bench.opens += 1
                self._device = FakeUsbDevice()
                if self.step == "busy_open":  # what python-escpos 3.1 does with EBUSY
                    try:
                        raise _busy()
                    except usb_core.USBError as exc:
                        raise DeviceNotFoundError(f"Unable to open USB printer\n{exc}") from None

            def _raw(self, data: bytes) -> None:
                assert self._device is not None
                self._device.written += data

            def close(self) -> None:
                self._device = None

        def claim_interface(device: FakeUsbDevice, intf: int) -> None:
            bench.claims += 1
            if bench.current == "busy_claim":
                raise _busy()

        def dispose_resources(device: FakeUsbDevice) -> None:
            bench.disposed += 1

        self.current = ""
        self.module = SimpleNamespace(Usb=self._tracking(FakeUsb))
        self.util = SimpleNamespace(claim_interface=claim_interface,
                                    dispose_resources=dispose_resources)

    def _tracking(self, cls: type) -> Callable[..., Any]:
        def make(*args: Any, **kw: Any) -> Any:
            obj = cls(*args, **kw)
            self.current = obj.step
            return obj

        return make

    def transport(self, attempts: int = 3) -> UsbTransport:
        return UsbTransport(0x0416, 0x5011, attempts=attempts, delay=0.5,
                            sleep=self.sleeps.append, usb_util=self.util)


@pytest.mark.parametrize("busy", ["busy_open", "busy_claim"])
def test_usb_busy_once_then_opens(busy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = UsbBench([busy, "ok"])
    monkeypatch.setattr(transport_mod, "_escpos_printer_module", lambda: bench.module)
    t = bench.transport()
    t.open()
    assert bench.opens == 2 and bench.sleeps == [0.5]  # one retry after a short wait
    assert bench.disposed == 1  # the busy attempt's handles were released first
    t.write(b"\x1b@hello\n")
    assert t._printer._device.written == b"\x1b@hello\n"
    assert t.read(1, 0.1) == bytes([status_reply(1)])
    t.close()


def test_usb_busy_for_good_is_usb_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = UsbBench(["busy_claim"] * 10)
    monkeypatch.setattr(transport_mod, "_escpos_printer_module", lambda: bench.module)
    with pytest.raises(PrinterOffline) as err:
        bench.transport(attempts=2).open()
    assert err.value.reason == "usb_busy"
    assert bench.opens == 3 and bench.sleeps == [0.5, 1.0]  # growing delay


def test_usb_not_found_is_offline_without_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    class Missing:
        def __init__(self, *a: Any, **k: Any) -> None:
            self._device = None

        def open(self) -> None:
            raise DeviceNotFoundError("Device not found or cable not plugged in.")

    monkeypatch.setattr(transport_mod, "_escpos_printer_module",
                        lambda: SimpleNamespace(Usb=Missing))
    sleeps: list[float] = []
    t = UsbTransport(0x0416, 0x5011, sleep=sleeps.append, usb_util=SimpleNamespace())
    with pytest.raises(PrinterOffline) as err:
        t.open()
    assert err.value.reason == "offline" and sleeps == []
