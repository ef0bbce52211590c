"""Fault control of a running virtual printer: commands, loopback HTTP, and `ykt sim printer`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.documents import Document
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.sim import VirtualPrinter
from edge.devices.printer.sim.control import CommandError, PrinterControl, apply_command


@pytest.fixture
def printer() -> Iterator[VirtualPrinter]:
    vp = VirtualPrinter().start()
    try:
        yield vp
    finally:
        vp.stop()


def post(port: int, command: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", data=command.encode(),
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def dle_eot(port: int, n: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(bytes([0x10, 0x04, n]))
        return s.recv(1)[0]


def test_printer_control_commands_switch_faults(printer: VirtualPrinter) -> None:
    assert apply_command(printer, "paper-out")["faults"]["paper_out"] is True
    assert apply_command(printer, " SLOW 1200 ")["faults"]["slow_bps"] == 1200
    assert apply_command(printer, "slow")["faults"]["slow_bps"] == 600
    assert apply_command(printer, "fast")["faults"]["slow_bps"] is None
    assert apply_command(printer, "paper-lines 40")["faults"]["paper_lines_left"] == 40
    assert apply_command(printer, "status")["faults"]["paper_out"] is True
    cleared = apply_command(printer, "clear")["faults"]
    assert not any(v for v in cleared.values())
    for bad in ["", "melt", "slow fast", "slow 0", "paper-lines", "clear now"]:
        with pytest.raises(CommandError):
            apply_command(printer, bad)


def test_printer_control_over_http_changes_what_the_printer_answers(
    printer: VirtualPrinter,
) -> None:
    control = PrinterControl(printer).start()
    try:
        assert dle_eot(printer.port, 4) == 0x12
        code, body = post(control.port, "near-end")
        assert code == 200 and body["faults"]["near_end"] is True
        assert dle_eot(printer.port, 4) == 0x1E  # near-end sensor bits set
        post(control.port, "cover-open")
        assert dle_eot(printer.port, 2) & 0x04
        code, body = post(control.port, "explode")
        assert code == 400 and "unknown command" in body["error"]
        with urllib.request.urlopen(f"http://127.0.0.1:{control.port}/", timeout=5) as resp:
            assert json.loads(resp.read())["faults"]["cover_open"] is True
    finally:
        control.stop()


def test_printer_control_refuses_a_non_loopback_address(printer: VirtualPrinter) -> None:
    with pytest.raises(ValueError, match="loopback"):
        PrinterControl(printer, host="0.0.0.0")


async def test_drop_next_job_hits_the_drivers_open_connection(
    printer: VirtualPrinter, samples: dict[str, Callable[[], Document]], tmp_path: Path
) -> None:
    cfg = PrinterConfig(kind="network", host="127.0.0.1", port=printer.port,
                        status_timeout_s=1.0, job_timeout_s=5.0, reconnect_attempts=1,
                        reconnect_delay_s=0.05)
    svc = PrinterService(cfg, tmp_path / "jobs.db")
    assert (await svc.status()).ready  # the driver now holds a connection open
    apply_command(printer, "drop-next-job")
    outcome = await svc.print(samples["lab_report"](), job_id="lab-1")
    assert (outcome.state, outcome.reason) == ("failed", "connection_lost")
    assert printer.wait_for_jobs(1)[0].interrupted
    assert printer.faults.drop_next_job is False  # one-shot
    assert (await svc.reprint("lab-1")).state == "printed"
    await svc.close()


def _read_until(proc: subprocess.Popen[str], prefix: str, seen: list[str] | None = None) -> str:
    assert proc.stdout is not None
    for line in seen or []:
        if line.startswith(prefix):
            return line.strip()
    for _ in range(20):
        line = proc.stdout.readline()
        if seen is not None:
            seen.append(line)
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting {prefix!r}")


def test_ykt_sim_printer_takes_commands_while_running(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "yikatong.cli", "sim", "printer", "--port", "0",
         "--control-port", "0", "--stdin", "--out", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        seen: list[str] = []
        listening = _read_until(proc, "virtual printer listening on ", seen)
        port = int(listening.rsplit(":", 1)[1])
        control = _read_until(proc, "printer control on ", seen)
        control_port = int(control.rsplit(":", 1)[1].strip("/"))
        assert post(control_port, "paper-out")[1]["faults"]["paper_out"] is True
        assert dle_eot(port, 4) & 0x60  # paper-end sensor bits
        assert proc.stdin is not None
        proc.stdin.write("clear\n")
        proc.stdin.flush()
        assert json.loads(_read_until(proc, "{"))["paper_out"] is False
        assert dle_eot(port, 4) == 0x12
        proc.stdin.write("melt\n")
        proc.stdin.flush()
        assert _read_until(proc, "error:").startswith("error: unknown command")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "stopped after" in out
