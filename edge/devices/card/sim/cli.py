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
Inserting into an occupied port removes the previous card first. ``remove`` notes when
the card left (``card-<port>.left``) and the next ``insert`` keeps the slot empty for
``MIN_ABSENT_S`` after that: pcscd misses a card swapped faster than its poll, and then
reports the reader empty for good.

Faults for technicians and test scripts (``Faults`` of the card simulator), health cards
only: ``--fault slow=200ms`` (every answer late), ``--fault disconnect-at=5`` (the card
leaves the field at APDU 5), ``--fault wrong-sw=3:6A82`` (APDU 3 answers that SW),
``--fault stuck-sw=4:6110`` (from APDU 4 on, only that SW — a stuck 61xx), ``--fault
corrupt-tlv=DDF1/EF06`` (first record's length byte broken), ``--fault no-sfi`` (SFI
reads refused with 6A81; ``no-sfi=6986`` refuses them with that SW instead), and
``--expired``, ``--blocked-auth``. ``--contactless`` gives the card the ATR a PC/SC reader
reports for an ISO 14443-4 card (``contactless_atr``); ``--photo FILE`` personalises
DDF1/EF07 with FILE's bytes as they are (a broken image is a test case too).
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

from edge.devices.card.errors import CardError, CardParameterError
from edge.devices.card.protocol.files import FILES, FileKind
from edge.devices.card.protocol.security import atr_historical_bytes
from edge.devices.card.sim.cardos import (
    BANK_ATR,
    BLANK_ATR,
    HEALTH_ATR,
    BankCardSim,
    BlankCardSim,
    Faults,
    HealthCardSim,
    contactless_atr,
)
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import MIN_ABSENT_S, VirtualCardSlot
from yikatong.common.privacy import mask_card_number, mask_name

__all__ = [
    "DEFAULT_PORT",
    "add_sim_card_commands",
    "build_card",
    "card_spec",
    "main",
    "parse_fault",
]

DEFAULT_PORT = 35963  # vpcd's default port for its first slot
_MODULE = "edge.devices.card.sim.cli"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 - per-user state only
    return Path(base) / f"ykt-sim-card-{os.getuid()}"


def _apdu_index(value: str, what: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise CardParameterError(f"{what}: APDU number must be an integer ≥ 1, not {value!r}",
                                 "故障参数错误：APDU 序号须为正整数")
    return int(value)


def _index_sw(value: str, what: str) -> list[int]:
    n, sep, sw = value.partition(":")
    if not sep or len(sw) != 4:
        raise CardParameterError(f"{what}: expected N:SW, e.g. 3:6A82, not {value!r}",
                                 "故障参数错误：格式应为 序号:状态字")
    try:
        word = int(sw, 16)
    except ValueError as exc:
        raise CardParameterError(f"{what}: status word {sw!r} is not 4 hex digits",
                                 "故障参数错误：状态字须为 4 位十六进制") from exc
    return [_apdu_index(n, what), word]


def parse_fault(text: str) -> dict[str, Any]:
    """One ``--fault`` value → ``Faults`` fields (JSON-able); CardParameterError if bad."""
    key, sep, value = text.strip().partition("=")
    key = key.strip().lower()
    value = value.strip()
    if key == "slow":
        unit = "ms" if value.endswith("ms") else "s" if value.endswith("s") else ""
        try:
            amount = float(value[:-len(unit)]) if unit else float("nan")
        except ValueError:
            amount = float("nan")
        if not unit or not 0 <= amount <= (60_000 if unit == "ms" else 60):
            raise CardParameterError(f"slow: expected a delay such as 200ms or 1.5s (≤ 60 s), "
                                     f"not {value!r}", "故障参数错误：延迟格式如 200ms")
        return {"delay_s": amount / 1000 if unit == "ms" else amount}
    if key == "disconnect-at":
        return {"disconnect_at": _apdu_index(value, key)}
    if key == "wrong-sw":
        return {"wrong_sw_at": _index_sw(value, key)}
    if key == "stuck-sw":
        return {"stuck_sw_from": _index_sw(value, key)}
    if key == "corrupt-tlv":
        spec = FILES.get(value.upper())
        if spec is None or spec.kind is not FileKind.RECORDS:
            files = ", ".join(p for p, f in FILES.items() if f.kind is FileKind.RECORDS)
            raise CardParameterError(f"corrupt-tlv: {value!r} is not a TLV record file "
                                     f"({files})", "故障参数错误：文件不是 TLV 记录文件")
        return {"corrupt_tlv": spec.path}
    if key == "no-sfi" and not sep:
        return {"supports_sfi": False}
    if key == "no-sfi":
        try:
            word = int(value, 16) if len(value) == 4 else -1
        except ValueError:
            word = -1
        if word < 0:
            raise CardParameterError(f"no-sfi: status word {value!r} is not 4 hex digits "
                                     "(e.g. no-sfi=6986)", "故障参数错误：状态字须为 4 位十六进制")
        return {"supports_sfi": False, "sfi_refusal_sw": word}
    raise CardParameterError(
        f"unknown fault {text!r} (slow=200ms, disconnect-at=N, wrong-sw=N:SW, "
        "stuck-sw=N:SW, corrupt-tlv=DDF1/EF06, no-sfi[=SW])", "未知的故障类型")


def _faults(spec: dict[str, Any]) -> Faults:
    f = dict(spec.get("faults") or {})
    for name in ("wrong_sw_at", "stuck_sw_from"):  # JSON lists back to tuples
        if f.get(name) is not None:
            f[name] = tuple(f[name])
    return Faults(**f)


def _atr(default: bytes, contactless: bool) -> bytes:
    return contactless_atr(atr_historical_bytes(default)) if contactless else default


def build_card(spec: dict[str, Any]) -> Any:
    """A simulator from a JSON-able spec (``kind`` health | sam | bank | blank)."""
    kind = spec.get("kind", "health")
    contactless = bool(spec.get("contactless"))
    if kind != "health" and (spec.get("faults") or spec.get("photo_file")):
        raise CardParameterError(f"faults and photos are for health cards, not {kind}",
                                 "仅健康卡支持故障和照片参数")
    if kind == "bank":
        return BankCardSim(_atr(BANK_ATR, contactless))
    if kind == "blank":
        return BlankCardSim(_atr(BLANK_ATR, contactless))
    if kind == "sam":
        if contactless:
            raise CardParameterError("a SAM is a contact-only module", "PSAM 仅支持接触式")
        pin = Path(spec["pin_file"]).read_text(encoding="ascii").strip()
        return SamSim(pin, terminal_number=bytes.fromhex(spec.get("terminal_number",
                                                                  "110100000001")))
    holder = {k: spec[k] for k in ("name", "sex", "ethnicity", "birth_date", "id_number",
                                   "card_number", "city_code", "expiry") if spec.get(k)}
    extra: dict[str, Any] = {}
    if spec.get("photo_file"):
        extra["photo"] = Path(spec["photo_file"]).read_bytes()
    return HealthCardSim.from_holder(**holder, faults=_faults(spec),
                                     atr=_atr(HEALTH_ATR, contactless), **extra)


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


def _left_file(state_dir: Path, port: int) -> Path:
    return state_dir / f"card-{port}.left"


def _mark_left(state_dir: Path, port: int) -> None:
    # CLOCK_MONOTONIC is one clock for every process of the machine, so the next insert
    # (another process) can compare against it.
    with contextlib.suppress(OSError):
        _left_file(state_dir, port).write_text(repr(time.monotonic()))


def _wait_absent(state_dir: Path, port: int, min_absent_s: float) -> None:
    """Keep the slot empty ``min_absent_s`` after the last card left (see ``vpcd``): pcscd
    never notices a card that left and came back between two of its polls, so a quick
    remove + insert from two processes would leave the reader "empty" for good."""
    try:
        left_at = float(_left_file(state_dir, port).read_text())
    except (OSError, ValueError):
        return
    wait = left_at + min_absent_s - time.monotonic()
    if 0 < wait <= min_absent_s:
        time.sleep(wait)


def cmd_remove(args: argparse.Namespace) -> int:
    """``ykt sim card remove``."""
    state = _state_file(args.state_dir, args.port)
    try:
        info = json.loads(state.read_text())
    except (OSError, ValueError):
        print(f"no virtual card recorded for port {args.port}", file=sys.stderr)
        return 1
    _stop_pid(int(info["pid"]))
    _mark_left(args.state_dir, args.port)
    state.unlink(missing_ok=True)
    print(f"removed virtual card from port {args.port}")
    return 0


def card_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The child's card spec from ``insert``'s options; CardParameterError when unusable."""
    spec: dict[str, Any] = {"kind": args.kind, "name": args.name, "sex": args.sex,
                            "ethnicity": args.ethnicity, "birth_date": args.birth_date,
                            "id_number": args.id_number, "card_number": args.card_number,
                            "city_code": args.city_code, "expiry": args.expiry}
    if args.kind == "sam":
        if not args.pin_file:
            raise CardParameterError("--pin-file is required for --kind sam",
                                     "PSAM 须指定 --pin-file")
        spec["pin_file"] = str(Path(args.pin_file).resolve())
        spec["terminal_number"] = args.terminal_number
    faults: dict[str, Any] = {}
    for text in args.fault:
        faults.update(parse_fault(text))
    if args.expired:
        faults["expired"] = True
    if args.blocked_auth:
        faults["auth_blocked"] = True
    if faults:
        spec["faults"] = faults
    if args.contactless:
        spec["contactless"] = True
    if args.photo:
        spec["photo_file"] = str(Path(args.photo).resolve())
    return spec


def cmd_insert(args: argparse.Namespace) -> int:
    """``ykt sim card insert``."""
    try:
        spec = card_spec(args)
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
        _mark_left(state_dir, args.port)
        state.unlink(missing_ok=True)
    _wait_absent(state_dir, args.port, MIN_ABSENT_S)
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
    how = " (contactless)" if args.contactless else ""
    if args.fault or args.expired or args.blocked_auth:
        how += " with faults: " + ", ".join(
            [*args.fault, *(["expired"] if args.expired else []),
             *(["blocked-auth"] if args.blocked_auth else [])])
    print(f"inserted {args.kind} card{who}{how} into port {args.port} (pid {proc.pid})")
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
        if getattr(card, "removed", False):
            # A scripted fault (--fault disconnect-at) pulled the card: it stays out, as a
            # card pulled by hand would. Only a vpcd that went away brings it back.
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
    ins.add_argument("--fault", action="append", default=[], metavar="FAULT",
                     help="scripted fault (repeatable): slow=200ms, disconnect-at=N, "
                          "wrong-sw=N:SW, stuck-sw=N:61xx, corrupt-tlv=DDF1/EF06, "
                          "no-sfi[=SW]")
    ins.add_argument("--expired", action="store_true", help="card past its expiry date")
    ins.add_argument("--blocked-auth", action="store_true",
                     help="the card answers EXTERNAL AUTHENTICATE with 6983 (blocked)")
    ins.add_argument("--contactless", action="store_true",
                     help="ATR of an ISO 14443-4 card as a PC/SC reader reports it")
    ins.add_argument("--photo", type=Path, metavar="FILE",
                     help="personalise the photo file with FILE's bytes (≤ 3070)")
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
