"""Fault control of a running virtual printer: one-line commands over loopback HTTP or stdin.

``ykt sim printer --control-port 9101`` listens on 127.0.0.1 only (the commands change what
the demo's printer does, so never on a LAN). ``GET /`` returns the state as JSON; ``POST /``
with a command line as the body applies it and returns the new state, e.g.::

    curl -d paper-out http://127.0.0.1:9101/
    curl -d 'slow 600' http://127.0.0.1:9101/

Commands: ``paper-out``, ``near-end``, ``cover-open``, ``cover-close``, ``cutter-error``,
``slow [bytes/s]`` (default 600), ``fast``, ``drop-next-job``, ``paper-lines N``,
``clear``, ``status``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from edge.devices.printer.sim.server import VirtualPrinter

__all__ = ["COMMANDS", "CommandError", "PrinterControl", "apply_command", "serve_stdin"]

log = logging.getLogger(__name__)

_MAX_BODY = 256

# command → (fault changes, or None for "clear"); "slow" and "paper-lines" take a number.
COMMANDS: dict[str, dict[str, Any] | None] = {
    "paper-out": {"paper_out": True},
    "near-end": {"near_end": True},
    "cover-open": {"cover_open": True},
    "cover-close": {"cover_open": False},
    "cutter-error": {"cutter_error": True},
    "fast": {"slow_bps": None},
    "drop-next-job": {"drop_next_job": True},
    "clear": None,
    "status": {},
}
# command → (fault key, default when no number is given, lowest, highest)
_NUMERIC: dict[str, tuple[str, int | None, int, int]] = {
    "slow": ("slow_bps", 600, 1, 10_000_000),
    "paper-lines": ("paper_lines_left", None, 1, 1_000_000),
}


class CommandError(ValueError):
    """A control command that is unknown or has a bad argument."""


def state(printer: VirtualPrinter) -> dict[str, Any]:
    """The printer's fault switches and counters, JSON-ready."""
    return {"faults": dataclasses.asdict(printer.faults), "jobs": len(printer.jobs),
            "connections": printer.connections, "bytes_received": printer.bytes_received}


def apply_command(printer: VirtualPrinter, line: str) -> dict[str, Any]:
    """Apply one command line (``"slow 600"``) and return the new state; CommandError if bad."""
    words = line.strip().lower().split()
    if not words:
        raise CommandError("empty command")
    name, args = words[0], words[1:]
    if name in _NUMERIC:
        key, default, low, high = _NUMERIC[name]
        if len(args) > 1 or (not args and default is None):
            raise CommandError(f"usage: {name} <number>")
        try:
            value = int(args[0]) if args else default
        except ValueError:
            raise CommandError(f"{name}: not a whole number: {args[0]!r}") from None
        if value is None or not low <= value <= high:
            raise CommandError(f"{name}: {value} is outside {low}..{high}")
        printer.set_fault(**{key: value})
    elif name in COMMANDS:
        if args:
            raise CommandError(f"{name} takes no argument")
        changes = COMMANDS[name]
        if changes is None:
            printer.clear_faults()
        elif changes:
            printer.set_fault(**changes)
    else:
        known = sorted([*COMMANDS, *_NUMERIC])
        raise CommandError(f"unknown command {name!r}; known: {', '.join(known)}")
    return state(printer)


class PrinterControl:
    """Loopback HTTP control of one virtual printer, on its own thread: ``start()``, ``stop()``."""

    def __init__(self, printer: VirtualPrinter, port: int = 0, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the printer control port listens on loopback only")
        self.printer = printer
        self._server = ThreadingHTTPServer((host, port), _handler(printer))
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> PrinterControl:
        """Serve on a background thread; returns self."""
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="printer-control", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _handler(printer: VirtualPrinter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply(200, state(printer))

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= _MAX_BODY:
                self._reply(400, {"error": f"send one command line of 1..{_MAX_BODY} bytes"})
                return
            line = self.rfile.read(length).decode("utf-8", "replace")
            try:
                self._reply(200, apply_command(printer, line))
            except CommandError as exc:
                self._reply(400, {"error": str(exc)})

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("control: " + format, *args)

    return Handler


def serve_stdin(printer: VirtualPrinter, stream: TextIO, out: Callable[[str], None]) -> None:
    """Read commands line by line until EOF (run on a thread), answering through ``out``."""
    for line in stream:
        if not line.strip():
            continue
        try:
            out(json.dumps(apply_command(printer, line)["faults"]))
        except CommandError as exc:
            out(f"error: {exc}")
