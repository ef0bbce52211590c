"""PrinterService against the virtual printer (real TCP) and the in-memory transport."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support import wait_until_async

from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.documents import Document
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.errors import PrinterJobFailed, PrinterOffline
from edge.devices.printer.sim import VirtualPrinter
from edge.devices.printer.transport import MemoryTransport

Samples = dict[str, Callable[[], Document]]


def clock() -> datetime:
    return datetime(2024, 5, 20, 1, 41, tzinfo=UTC)


@pytest.fixture
def printer() -> Iterator[VirtualPrinter]:
    vp = VirtualPrinter().start()
    try:
        yield vp
    finally:
        vp.stop()


def net_config(port: int) -> PrinterConfig:
    return PrinterConfig(
        kind="network", host="127.0.0.1", port=port, status_timeout_s=1.0, job_timeout_s=5.0,
        reconnect_attempts=1, reconnect_delay_s=0.05,
    )


def memory_service(tmp_path: Path, mem: MemoryTransport) -> PrinterService:
    cfg = PrinterConfig(kind="memory", status_timeout_s=0.2, job_timeout_s=1.0,
                        reconnect_attempts=0)

    def factory(_: PrinterConfig) -> MemoryTransport:
        mem.open()
        return mem

    return PrinterService(cfg, tmp_path / "jobs.db", clock=clock, transport_factory=factory)


async def test_printer_driver_prints_over_tcp(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    svc = PrinterService(net_config(printer.port), tmp_path / "jobs.db", clock=clock)
    status = await svc.status()
    assert status.ready and status.paper == "ok"
    outcome = await svc.print(samples["slip"](), job_id="job-1")
    assert outcome.state == "printed" and not outcome.copy
    assert outcome.doc_kind == "registration_slip"
    (job,) = printer.wait_for_jobs(1)
    assert "张*丰" in job.text and "110105199001011234" not in job.text
    # Same job id again: the stored outcome, not a second slip.
    again = await svc.print(samples["slip"](), job_id="job-1")
    assert again.state == "printed" and len(printer.jobs) == 1
    await svc.close()


async def test_printer_driver_paper_out_mid_job_fails_then_reprint_is_a_copy(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    svc = PrinterService(net_config(printer.port), tmp_path / "jobs.db", clock=clock)
    printer.set_fault(paper_lines_left=8)  # the roll ends a few lines into the receipt
    outcome = await svc.print(samples["payment"](), job_id="pay-1")
    assert outcome.state == "failed" and outcome.reason == "paper_out"
    assert "缺纸" in outcome.message_zh
    assert printer.wait_for_jobs(1)[0].interrupted
    printer.clear_faults()  # staff load a new roll
    again = await svc.reprint("pay-1")
    assert again.state == "printed" and again.copy
    jobs = printer.wait_for_jobs(2)
    assert "副本 / COPY" in jobs[1].lines and not jobs[1].interrupted
    with pytest.raises(PrinterJobFailed) as err:
        await svc.reprint("pay-1")  # only once
    assert err.value.job_id == "pay-1"
    await svc.close()


async def test_printer_driver_refuses_to_start_when_paper_is_out(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    svc = PrinterService(net_config(printer.port), tmp_path / "jobs.db", clock=clock)
    printer.set_fault(cover_open=True)
    outcome = await svc.print(samples["topup"](), job_id="t-1")
    assert outcome.state == "failed" and outcome.reason == "cover_open"
    assert printer.jobs == []
    await svc.close()


async def test_printer_driver_reconnects_after_power_cycle(
    samples: Samples, tmp_path: Path
) -> None:
    vp = VirtualPrinter().start()
    port = vp.port
    svc = PrinterService(net_config(port), tmp_path / "jobs.db", clock=clock)
    assert (await svc.status()).ready
    vp.stop()
    with pytest.raises(PrinterOffline):
        await svc.status()
    vp2 = VirtualPrinter(port=port).start()
    try:
        assert (await svc.status()).ready  # new connection after the printer came back
        assert (await svc.print(samples["refund"](), job_id="r-1")).state == "printed"
    finally:
        vp2.stop()
        await svc.close()


async def test_printer_driver_jobs_survive_a_restart(samples: Samples, tmp_path: Path) -> None:
    mem = MemoryTransport()
    mem.fail_open = True  # printer switched off: the job is stored but cannot print
    svc = memory_service(tmp_path, mem)
    outcome = await svc.print(samples["lab_report"](), job_id="lab-1")
    assert outcome.state == "failed" and outcome.reason == "offline"
    await svc.close()

    # A job stored just before a crash (never sent) is resumed after the restart.
    mem.fail_open = False
    svc = memory_service(tmp_path, mem)
    svc._store.add("crash-1", "test_page", b"\x1b@X\n\x1dV\x01", b"\x1b@COPY\n\x1dV\x01", False)
    svc._store.set_state("crash-1", "printing")  # it was on its way to the printer
    await svc.close()

    svc = memory_service(tmp_path, mem)
    assert [j.job_id for j in svc.pending_jobs()] == ["crash-1"]
    (resumed,) = await svc.resume()
    assert resumed.state == "printed" and resumed.copy  # may be on paper already: a copy
    assert b"COPY" in mem.written and svc.pending_jobs() == []
    assert svc.job("lab-1").state == "failed"  # type: ignore[union-attr]
    again = await svc.reprint("lab-1")
    # it never reached the printer (switched off): its first print is the original
    assert again.state == "printed" and not again.copy
    await svc.close()


async def test_reprint_is_a_copy_only_after_bytes_reached_the_printer(
    samples: Samples, tmp_path: Path
) -> None:
    mem = MemoryTransport()
    mem.fail_open = True
    svc = memory_service(tmp_path, mem)
    assert (await svc.print(samples["lab_report"](), job_id="off")).state == "failed"
    # a reprint that fails again before a byte is sent is not spent
    assert (await svc.reprint("off")).state == "failed"
    assert not svc.job("off").reprinted  # type: ignore[union-attr]
    mem.fail_open = False
    assert not (await svc.reprint("off")).copy
    # a job that was sent (the crash-resumed kind) is a copy on any later print
    svc._store.add("sent-1", "test_page", b"\x1b@X\n", b"\x1b@COPY\n", False)
    svc._store.mark_sent("sent-1")
    svc._store.set_state("sent-1", "failed", "paper_out")
    assert (await svc.reprint("sent-1")).copy
    await svc.close()


async def test_printer_driver_sends_exact_bytes_and_status_queries(
    samples: Samples, tmp_path: Path
) -> None:
    from edge.devices.printer.escpos import get_profile, render

    mem = MemoryTransport()
    svc = memory_service(tmp_path, mem)
    outcome = await svc.print(samples["slip"](), job_id="s-1")
    assert outcome.state == "printed"
    body = render(samples["slip"](), get_profile("xprinter_xp80"))
    status = b"\x10\x04\x01\x10\x04\x02\x10\x04\x03\x10\x04\x04"
    assert bytes(mem.written) == status + body + b"\x1dr\x01"
    await svc.close()


async def test_printer_driver_silent_printer_is_offline(tmp_path: Path) -> None:
    mem = MemoryTransport()
    mem.answer = False
    svc = memory_service(tmp_path, mem)
    with pytest.raises(PrinterOffline) as err:
        await svc.status()
    assert "离线" in err.value.message_zh
    await svc.close()


def test_printer_config_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        PrinterConfig(kind="memory", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="host"):
        PrinterConfig(kind="network")
    with pytest.raises(ValueError, match="profile"):
        PrinterConfig(kind="memory", profile="nope")
    cfg = PrinterConfig(kind="usb", vendor_id="0x0416", product_id="5011")  # type: ignore[arg-type]
    assert (cfg.vendor_id, cfg.product_id) == (0x0416, 0x5011)


async def test_printer_driver_slow_printer_is_not_offline(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    # ~1 kB at 600 B/s drains for ~1.8 s; the status queries sent meanwhile queue behind the
    # data, far past status_timeout_s. That is "unconfirmed", not "offline".
    printer.set_fault(slow_bps=600)
    cfg = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port,
                        status_timeout_s=0.3, job_timeout_s=15.0, reconnect_attempts=0)
    svc = PrinterService(cfg, tmp_path / "jobs.db", clock=clock)
    outcome = await svc.print(samples["lab_report"](), job_id="lab-slow")
    assert outcome.state == "printed", outcome.reason
    (job,) = printer.wait_for_jobs(1)
    assert not job.interrupted and "血常规检验报告单" in job.text
    assert svc.job("lab-slow").state == "printed"  # type: ignore[union-attr]
    await svc.close()


async def test_printer_driver_slow_printer_times_out_only_at_job_timeout(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    import time

    printer.set_fault(slow_bps=100)  # ~10 s of data: cannot finish inside job_timeout_s
    cfg = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port,
                        status_timeout_s=0.2, job_timeout_s=1.5, reconnect_attempts=0)
    svc = PrinterService(cfg, tmp_path / "jobs.db", clock=clock)
    started = time.monotonic()
    outcome = await svc.print(samples["lab_report"](), job_id="lab-slower")
    assert (outcome.state, outcome.reason) == ("failed", "timeout")
    assert time.monotonic() - started >= 1.5
    printer.clear_faults()
    await svc.close()


async def _print_and_fault_midway(
    printer: VirtualPrinter, svc: PrinterService, doc: Document, job_id: str,
    after_bytes: int, **fault: bool,
) -> object:
    import asyncio

    task = asyncio.create_task(svc.print(doc, job_id=job_id))
    await wait_until_async(lambda: printer.bytes_received >= after_bytes, 4,
                           what=f"{after_bytes} bytes at the printer")
    assert not task.done()
    printer.set_fault(**fault)
    return await task


async def test_printer_driver_cover_opened_mid_job_fails_with_cover_open(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    printer.set_fault(slow_bps=2000)
    svc = PrinterService(net_config(printer.port), tmp_path / "jobs.db", clock=clock)
    outcome = await _print_and_fault_midway(
        printer, svc, samples["lab_report"](), "lab-cover", 300, cover_open=True)
    assert (outcome.state, outcome.reason) == ("failed", "cover_open")  # type: ignore[attr-defined]
    await svc.close()
    printer.stop()  # close the link: the half-printed job is filed as interrupted
    assert printer.jobs[0].interrupted


async def test_printer_driver_connection_dropped_mid_job_fails_connection_lost(
    printer: VirtualPrinter, samples: Samples, tmp_path: Path
) -> None:
    printer.set_fault(drop_after_bytes=300)  # the printer loses power 300 bytes in
    svc = PrinterService(net_config(printer.port), tmp_path / "jobs.db", clock=clock)
    outcome = await svc.print(samples["lab_report"](), job_id="lab-drop")
    assert (outcome.state, outcome.reason) == ("failed", "connection_lost")
    assert printer.wait_for_jobs(1)[0].cut is False
    # Back on: a reprint goes over a fresh connection and is marked as a copy.
    again = await svc.reprint("lab-drop")
    assert again.state == "printed" and again.copy
    await svc.close()


async def test_printer_driver_without_gs_r_trusts_the_status_after_the_data(
    samples: Samples, tmp_path: Path
) -> None:
    import dataclasses

    mem = MemoryTransport()
    svc = memory_service(tmp_path, mem)
    svc.profile = dataclasses.replace(svc.profile, sequenced_status=False)
    assert (await svc.print(samples["slip"](), job_id="s-1")).state == "printed"
    assert b"\x1dr\x01" not in mem.written
    mem.paper_out_after_jobs = mem.jobs_printed + 1  # this job empties the roll
    outcome = await svc.print(samples["refund"](), job_id="r-1")
    assert (outcome.state, outcome.reason) == ("failed", "paper_out")
    await svc.close()
