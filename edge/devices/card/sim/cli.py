"""``ykt sim card insert|remove``: keep a virtual card in a vpcd reader between commands.

Design: ``insert`` starts a detached child process (``python -m
edge.devices.card.sim.cli serve …``, own session, output to a log file) that builds the
simulated card, connects it to vpcd with ``VirtualCardSlot`` and stays connected — that
is the card sitting in the reader. If pcscd restarts, the child reconnects the same card
(with the same state) when vpcd listens again, as a physical card would still be in the
reader. The child writes a ready file once connected; ``insert`` waits for it (or for the
child's exit, reporting its log) and then records ``{pid, port, kind}`` in
``<state-dir>/card-<port>.json``. ``remove`` sends SIGTERM to that pid — only after checking
that the process is still our serve child — waits for it, and deletes the state file.
Inserting into an occupied port removes the previous card first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.common.privacy import mask_card_number, mask_name
from edge.devices.card.errors import CardError
from edge.devices.card.sim.cardos import BankCardSim, BlankCardSim, HealthCardSim
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot

__all__ = ["DEFAULT_PORT", "add_sim_card_commands", "build_card", "main"]

DEFAULT_PORT = 35963  # vpcd's default port for its first slot
_MODULE = "edge.devices.card.sim.cli"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 - per-user state only
    return Path(base) / f"ykt-sim-card-{os.getuid()}"


def build_card(spec: dict[str, Any]) -> Any:
    """A simulator from a JSON-able spec (``kind`` health | sam | bank | blank)."""
    kind = spec.get("kind", "health")
    if kind == "bank":
        return BankCardSim()
    if kind == "blank":
        return BlankCardSim()
    if kind == "sam":
        pin = Path(spec["pin_file"]).read_text(encoding="ascii").strip()
        return SamSim(pin, terminal_number=bytes.fromhex(spec.get("terminal_number",
                                                                  "110100000001")))
    holder = {k: spec[k] for k in ("name", "sex", "ethnicity", "birth_date", "id_number",
                                   "card_number", "city_code", "expiry") if spec.get(k)}
    return HealthCardSim.from_holder(**holder)


def _state_file(state_dir: Path, port: int) -> Path:
    return state_dir / f"card-{port}.json"


def _is_our_child(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return False
    return _MODULE.encode() in cmdline and b"serve" in cmdline


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    if not _is_our_child(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_our_child(pid):
        # Reap it if it is our own child (tests call insert and remove in one process).
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    if _is_our_child(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cmd_remove(args: argparse.Namespace) -> int:
    """``ykt sim card remove``."""
    state = _state_file(args.state_dir, args.port)
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        print(f"no virtual card recorded for port {args.port}", file=sys.stderr)
        return 1
    _stop_pid(int(info["pid"]))
    state.unlink(missing_ok=True)
    print(f"removed virtual card from port {args.port}")
    return 0


def cmd_insert(args: argparse.Namespace) -> int:
    """``ykt sim card insert``."""
    spec: dict[str, Any] = {"kind": args.kind, "name": args.name, "sex": args.sex,
                            "ethnicity": args.ethnicity, "birth_date": args.birth_date,
                            "id_number": args.id_number, "card_number": args.card_number,
                            "city_code": args.city_code, "expiry": args.expiry}
    if args.kind == "sam":
        if not args.pin_file:
            print("--pin-file is required for --kind sam", file=sys.stderr)
            return 2
        spec["pin_file"] = str(Path(args.pin_file).resolve())
        spec["terminal_number"] = args.terminal_number
    try:
        build_card(spec)  # validate here so mistakes are reported to the caller
    except (CardError, ValueError, OSError, KeyError) as exc:
        print(f"invalid card: {exc}", file=sys.stderr)
        return 2
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _state_file(state_dir, args.port)
    if state.exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            _stop_pid(int(json.loads(state.read_text())["pid"]))
        state.unlink(missing_ok=True)
    spec_file = state_dir / f"card-{args.port}.spec.json"
    spec_file.write_text(json.dumps(spec, ensure_ascii=False))
    ready = state_dir / f"card-{args.port}.ready"
    ready.unlink(missing_ok=True)
    log_path = state_dir / f"card-{args.port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "serve", "--spec-file", str(spec_file),
             "--port", str(args.port), "--host", args.host, "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + args.timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tail = log_path.read_text(errors="replace")[-600:]
            print(f"virtual card did not connect to vpcd on port {args.port}:\n{tail}",
                  file=sys.stderr)
            return 1
        time.sleep(0.02)
    state.write_text(json.dumps({"pid": proc.pid, "port": args.port, "kind": args.kind}))
    who = ""
    if args.kind == "health":
        who = f" of {mask_name(args.name or '张三')}"
        if args.card_number:
            who += f", card {mask_card_number(args.card_number)}"
    print(f"inserted {args.kind} card{who} into port {args.port} (pid {proc.pid})")
    return 0


def serve(spec_file: Path, port: int, host: str, ready_file: Path | None,
          give_up_s: float = 120.0) -> int:
    """Child process: keep the card connected until SIGTERM, reconnecting after pcscd restarts.

    Exits by itself (code 3) when vpcd has been unreachable for ``give_up_s`` — the pcscd
    it belonged to is gone for good and nobody is left to call ``remove``.
    """
    card = build_card(json.loads(spec_file.read_text()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    slot = VirtualCardSlot(port, host, connect_timeout=10.0)
    slot.insert(card)
    if ready_file is not None:
        ready_file.write_text(str(os.getpid()))
    slot.connect_timeout = 1.0  # reconnect attempts stay short so SIGTERM is served quickly
    lost_since: float | None = None
    while not stop.wait(0.2):
        if slot.is_inserted:
            lost_since = None
            continue
        lost_since = lost_since or time.monotonic()
        with contextlib.suppress(CardError):
            slot.insert(card)
        if not slot.is_inserted and time.monotonic() - lost_since > give_up_s:
            return 3
    slot.remove()
    return 0


def add_sim_card_commands(subparsers: Any) -> None:
    """Add ``card insert`` / ``card remove`` to the ``ykt sim`` subparsers object."""
    card = subparsers.add_parser("card", help="virtual health cards in vpcd readers")
    sub = card.add_subparsers(dest="sim_card_command", required=True)
    ins = sub.add_parser("insert", help="insert a virtual card (stays until remove)")
    ins.add_argument("--kind", choices=("health", "sam", "bank", "blank"), default="health")
    ins.add_argument("--name", default="张三")
    ins.add_argument("--sex", default="1", choices=("0", "1", "2", "9"))
    ins.add_argument("--ethnicity", default="01")
    ins.add_argument("--birth-date", default="19800101")
    ins.add_argument("--id-number", default="110101198001011234")
    ins.add_argument("--card-number")
    ins.add_argument("--city-code", default="110100")
    ins.add_argument("--expiry")
    ins.add_argument("--pin-file", help="SAM PIN file (for --kind sam)")
    ins.add_argument("--terminal-number", default="110100000001", help="6 bytes hex (SAM)")
    ins.add_argument("--port", type=int, default=DEFAULT_PORT)
    ins.add_argument("--host", default="127.0.0.1")
    ins.add_argument("--state-dir", type=Path, default=_default_state_dir())
    ins.add_argument("--timeout", type=float, default=10.0)
    ins.set_defaults(func=cmd_insert)
    rem = sub.add_parser("remove", help="remove the virtual card")
    rem.add_argument("--port", type=int, default=DEFAULT_PORT)
    rem.add_argument("--state-dir", type=Path, default=_default_state_dir())
    rem.set_defaults(func=cmd_remove)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached child (``serve``)."""
    p = argparse.ArgumentParser(prog=_MODULE)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--spec-file", type=Path, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--ready-file", type=Path)
    args = p.parse_args(argv)
    return serve(args.spec_file, args.port, args.host, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
