"""``ykt sim printer``: run the virtual ESC/POS network printer in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from edge.devices.printer.escpos.profiles import PROFILES
from edge.devices.printer.sim.control import PrinterControl, serve_stdin
from edge.devices.printer.sim.server import VirtualPrinter

__all__ = ["add_sim_printer_commands", "run_sim_printer"]


def add_sim_printer_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``printer`` command to an argparse subparsers object (``ykt sim …``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "printer",
        help="run a virtual ESC/POS network printer",
        description="Virtual ESC/POS printer on TCP: decodes jobs, saves PNGs, answers DLE EOT.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=9100, help="TCP port (0 = any free port)")
    p.add_argument("--out", default=None, help="directory for job-NNNN.png/.bin files")
    p.add_argument(
        "--profile", default="xprinter_xp80", choices=sorted(PROFILES),
        help="printer model to emulate (paper width for the PNGs)",
    )
    p.add_argument("--paper-out", action="store_true", help="start with the paper out")
    p.add_argument("--near-end", action="store_true", help="start with the paper near its end")
    p.add_argument(
        "--control-port", type=int, default=None, metavar="PORT",
        help="loopback HTTP port for fault commands while running (0 = any free port); "
             "e.g. curl -d paper-out http://127.0.0.1:PORT/",
    )
    p.add_argument(
        "--stdin", action="store_true",
        help="also read fault commands from stdin (paper-out, near-end, cover-open, "
             "cover-close, cutter-error, slow [bps], fast, drop-next-job, paper-lines N, clear)",
    )
    p.set_defaults(func=run_sim_printer)
    return p


def _say(text: str) -> None:
    print(text, flush=True)


def run_sim_printer(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); returns the exit code."""
    try:
        printer = VirtualPrinter(args.host, args.port, args.out, profile=args.profile).start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}")
        return 2
    printer.set_fault(paper_out=args.paper_out, near_end=args.near_end)
    control = None
    if args.control_port is not None:
        try:
            control = PrinterControl(printer, args.control_port).start()
        except OSError as exc:
            printer.stop()
            print(f"cannot listen on 127.0.0.1:{args.control_port} for control: {exc}")
            return 2
        print(f"printer control on http://127.0.0.1:{control.port}/", flush=True)
    if args.stdin:
        threading.Thread(target=serve_stdin, args=(printer, sys.stdin, _say),
                         name="printer-stdin", daemon=True).start()
    done = stop or threading.Event()
    if stop is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    print(f"virtual printer listening on {printer.host}:{printer.port}", flush=True)
    try:
        done.wait()
    finally:
        if control is not None:
            control.stop()
        printer.stop()
        print(f"virtual printer stopped after {len(printer.jobs)} job(s)", flush=True)
    return 0
