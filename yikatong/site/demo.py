"""``ykt demo``: the site-in-a-box.

Starts, on this machine and on loopback only: the reference platform, central (which runs
and supervises its own Mosquitto), and two simulated terminals — a self-service kiosk and a
cashier desk — each with its own private pcscd + vpcd card reader (patient slot and SAM
slot), a virtual ESC/POS network printer, ``ykt edge`` and ``ykt kiosk``. A small hardware
panel lets a person insert and remove virtual health cards and see the printed paper.
Every process is a real one started through the ``ykt`` command; one that dies is restarted
with a backoff and a limit (``Supervised``), and says so; Ctrl-C stops them all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import tomli_w

from yikatong.site.data import (
    CARD_VARIANTS,
    DEMO_BADGE,
    DEMO_LOST_PATIENT,
    DEMO_PATIENTS,
    DEMO_STAFF_PIN,
    SAM_PIN,
)

__all__ = ["CARD_VARIANTS", "DEMO_BADGE", "DEMO_LOST_PATIENT", "DEMO_PATIENTS", "Site",
           "Supervised", "add_demo_arguments", "describe_exit", "free_port", "guide", "main",
           "secret_file", "terminate_group", "toml_text", "wait_http"]

def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """``preferred`` when it is free on loopback (stable URLs for people), else any free port."""
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers below 500; fail early when ``proc`` has exited."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f}s ({last})")


def secret_file(path: Path, value: str) -> Path:
    """Write ``value`` to a file only its owner can read (created 0600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


def toml_text(data: dict[str, Any]) -> str:
    """TOML for a generated config (tomli-w; the loaders read it back with tomllib)."""
    return tomli_w.dumps(data)


def describe_exit(code: int | None) -> str:
    """``exited with code 1`` / ``was killed by SIGKILL`` for a Popen return code."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def terminate_group(proc: Any, timeout: float = 10.0) -> None:
    """SIGTERM ``proc``'s process group (it leads one), SIGKILL after ``timeout``; reap it.

    Also when ``proc`` itself has already died: what it left in its group goes too.
    """
    from edge.devices.card.sim.pcscd import group_members

    deadline = time.monotonic() + timeout
    if proc.poll() is None or group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    while group_members(proc.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)


class Supervised:
    """One child of the demo, restarted with a backoff when it exits unexpectedly.

    ``start()`` runs the process factory; ``poll()`` (the demo calls it several times a
    second) notices an exit, waits ``backoff_s`` doubling up to ``max_backoff_s`` and starts
    the part again. After ``max_restarts`` restarts within ``window_s`` it gives up on this
    part only. A part that stays up ``stable_s`` starts over with a clean count. ``halt()``
    (or ``stop()``, which also ends the process) forbids any further restart, also one that
    is waiting out its backoff. Every event is one ``[demo] …`` line on ``out``. Thread-safe:
    ``halt()`` from another thread never races a restart.
    """

    def __init__(self, name: str, factory: Callable[[], Any], *,
                 stopper: Callable[[Any], None] = terminate_group, out: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, backoff_s: float = 0.5,
                 max_backoff_s: float = 10.0, max_restarts: int = 5, window_s: float = 60.0,
                 stable_s: float = 30.0) -> None:
        self.name = name
        self._factory = factory
        self._stopper = stopper
        self._out = out  # None: sys.stdout at the time of printing
        self._clock = clock
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_restarts, self.window_s, self.stable_s = max_restarts, window_s, stable_s
        self.proc: Any = None
        self.restarts = 0  # restarts over the whole run
        self.gave_up = False
        self.halted = False
        self._recent: deque[float] = deque()  # restart times still counted against the limit
        self._due: float | None = None  # a restart waits for this clock time
        self._started_at = 0.0
        self._lock = threading.RLock()

    def _say(self, text: str) -> None:
        print(f"[demo] {self.name} {text}", file=self._out or sys.stdout, flush=True)

    def start(self) -> Any:
        """Start the part (the first time; failures propagate to the caller)."""
        with self._lock:
            self.proc = self._factory()
            self._started_at = self._clock()
            return self.proc

    @property
    def restart_pending(self) -> bool:
        """True while a restart waits out its backoff."""
        return self._due is not None

    def poll(self) -> None:
        """Check the part once: note an exit, or do a restart whose backoff has passed."""
        with self._lock:
            if self.halted or self.gave_up:
                return
            now = self._clock()
            if self._due is not None:
                if now >= self._due:
                    self._due = None
                    self._restart(now)
                return
            if self.proc is None:
                return
            code = self.proc.poll()
            if code is None:
                if self._recent and now - self._started_at >= self.stable_s:
                    self._recent.clear()  # it stayed up: count and backoff start over
                return
            with contextlib.suppress(Exception):
                self._stopper(self.proc)  # whatever it left in its process group
            self._schedule(describe_exit(code), now)

    def _schedule(self, what: str, now: float) -> None:
        while self._recent and now - self._recent[0] >= self.window_s:
            self._recent.popleft()
        if len(self._recent) >= self.max_restarts:
            self.gave_up = True
            self._say(f"{what}; giving up after {len(self._recent)} restarts in "
                      f"{self.window_s:g} s (the rest of the site keeps running)")
            return
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** len(self._recent))
        self._recent.append(now)
        self.restarts += 1
        self._due = now + delay
        self._say(f"{what}; restarting in {delay:g} s (restart {len(self._recent)})")

    def _restart(self, now: float) -> None:
        try:
            self.proc = self._factory()
        except Exception as exc:  # any failure is one more failed attempt
            self.proc = None
            self._schedule(f"could not be restarted ({exc})", now)
            return
        self._started_at = self._clock()
        self._say(f"restarted (pid {self.proc.pid})")

    def halt(self) -> None:
        """No restart from now on (the process itself is left to the caller)."""
        with self._lock:
            self.halted = True
            self._due = None

    def stop(self) -> None:
        """Halt and end the process; nothing of this part is left running."""
        self.halt()
        with self._lock:
            proc = self.proc
        if proc is not None:
            self._stopper(proc)


@dataclass
class Terminal:
    """One simulated terminal: its hardware and its two processes."""

    device_id: str
    role: str
    api_port: int
    ui_port: int
    printer: Any = None
    pcscd: Any = None
    patient_slot: Any = None
    sam_slot: Any = None
    terminal_number: bytes = b""  # the SAM's, to put a new one in after a pcscd restart
    parts: list[Supervised] = field(default_factory=list)  # pcscd, edge, kiosk
    serial: str = ""  # its hardware serial: what it enrolls with (docs/fleet-trust.md)
    approve: bool = True  # the demo approves it; False: it waits for a person to

    @property
    def procs(self) -> list[Any]:
        """The terminal's current processes (pcscd, edge, kiosk)."""
        return [p.proc for p in self.parts if p.proc is not None]

    @property
    def ui_url(self) -> str:
        """URL of this terminal's UI."""
        return f"http://127.0.0.1:{self.ui_port}/"


class Site:
    """Owns every process and simulator of the site-in-a-box; ``stop()`` undoes ``start()``."""

    def __init__(self, workdir: Path, *, ykt: list[str] | None = None, seed: int = 1,
                 log_to_files: bool = True, stable_ports: bool = False,
                 out: TextIO | None = None) -> None:
        self.workdir = workdir.resolve()
        self.ykt = ykt or [sys.executable, "-m", "yikatong.cli"]
        self.seed = seed
        self.log_to_files = log_to_files
        self.out = out  # where restart notices go (None: stdout)
        self.parts: list[Supervised] = []  # the ykt children, each restarted when it dies
        self.terminals: list[Terminal] = []
        # People get the same URLs every run (when free); tests take whatever is free.
        self._stable = stable_ports
        self.platform_port = self._port(8600)
        self.dashboard_port = self._port(8800)
        self.broker_port = self._port(1883)
        self.tls_port = self._port(8883)  # devices: mutual TLS with their enrolled certificate
        self.enroll_port = self._port(8884)  # the enrollment broker (claim credential only)
        self.panel_port = self._port(8900)
        self.admin_token = secrets.token_urlsafe(24)
        self.claim_dir = self.workdir / "claim"  # the claim bundle the terminals enroll with
        self._panel: Any = None

    def _port(self, preferred: int) -> int:
        return free_port(preferred=preferred if self._stable else None)

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               label: str | None = None) -> subprocess.Popen[bytes]:
        logdir = self.workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        def factory() -> subprocess.Popen[bytes]:
            out: Any = open(logdir / f"{name}.log", "ab") if self.log_to_files else None  # noqa: SIM115
            try:
                return subprocess.Popen([*self.ykt, *args], stdout=out, stderr=subprocess.STDOUT
                                        if out else None, env=full_env, start_new_session=True)
            finally:
                if out is not None:
                    out.close()

        part = Supervised(label or name, factory, out=self.out)
        self.parts.append(part)
        proc: subprocess.Popen[bytes] = part.start()
        return proc

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """(log name, current process) of every ``ykt`` child, oldest first."""
        return [(p.name, p.proc) for p in self.parts if p.proc is not None]

    def _pcscd_part(self, term: Terminal) -> Supervised:
        """Supervise ``term``'s pcscd; after a restart the SAM goes back into its slot."""
        from edge.devices.card.sim.sam import SamSim

        def factory() -> Any:
            term.pcscd.stop()  # whatever a crashed one left (relays, ports); no-op at first
            term.pcscd.start()
            if term.sam_slot is not None:
                term.sam_slot.insert(SamSim(SAM_PIN, terminal_number=term.terminal_number))
            return term.pcscd._proc  # the daemon's process, to watch

        part = Supervised(f"{term.device_id} pcscd", factory,
                          stopper=lambda _proc: term.pcscd.stop(), out=self.out)
        term.parts.append(part)
        return part

    def poll_parts(self) -> None:
        """Let every supervised child notice an exit or do a due restart (the demo's loop)."""
        for part in [*self.parts, *(p for t in self.terminals for p in t.parts)]:
            part.poll()

    def start(self) -> None:
        """Bring the whole site up; on any failure everything started so far is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        from edge.devices.card.sim.pcscd import PcscDaemon, free_port_pair
        from edge.devices.card.sim.sam import SamSim
        from edge.devices.card.sim.vpcd import VirtualCardSlot
        from edge.devices.printer.sim.server import VirtualPrinter

        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        admin_file = secret_file(wd / "secrets" / "central-admin.token", self.admin_token)

        # 1. reference platform (admin endpoints on: the panel registers demo patients)
        plat_cfg = wd / "platform-sim.toml"
        plat_cfg.write_text(toml_text({"platform_sim": {
            "db_path": str(wd / "platform.db"), "seed": self.seed, "admin_enabled": True,
            "demo_staff_pin": DEMO_STAFF_PIN}}))
        plat = self._spawn("platform", ["platform-sim", "--config", str(plat_cfg),
                                        "--host", "127.0.0.1", "--port", str(self.platform_port)])
        wait_http(f"{self.platform_url}/openapi.json", 30, plat)
        for p in DEMO_PATIENTS:
            self.add_patient(p, demo_records=True)
        self.add_patient(DEMO_LOST_PATIENT)
        httpx.post(f"{self.platform_url}/admin/hotlist", json={
            "card_no": DEMO_LOST_PATIENT["card_number"], "action": "add", "reason": "lost"},
            timeout=10).raise_for_status()

        # 2. central (+ its own Mosquitto, the fleet CA and the enrollment broker)
        central_cfg = wd / "central.toml"
        central_cfg.write_text(toml_text({
            "central": {"data_dir": str(wd / "central"), "site_name": "示范市第一人民医院"},
            # Devices connect with the certificates they get at enrollment, never passwords.
            "broker": {"mode": "embedded", "host": "127.0.0.1", "port": self.broker_port,
                       "tls": {"host": "127.0.0.1", "port": self.tls_port,
                               "require_certificate": True}},
            "fleet": {"enroll_host": "127.0.0.1", "enroll_port": self.enroll_port,
                      "server_names": ["127.0.0.1", "localhost"],
                      # where the terminals fetch update bundles (docs/updates.md)
                      "public_url": f"http://127.0.0.1:{self.dashboard_port}"},
            "platform": {"kind": "reference", "base_url": self.platform_url},
            "dashboard": {"host": "127.0.0.1", "port": self.dashboard_port,
                          "admin_token_file": str(admin_file)},
        }))
        central = self._spawn("central", ["central", "--config", str(central_cfg)])
        wait_http(f"{self.dashboard_url}api/status", 40, central)
        self._write_claim_bundle(wd / "claim")

        # 3. three terminals, each with its own card reader, SAM and printer. They come up
        # with no identity and ask central for one by claim; the demo approves the first
        # two as a technician would, and leaves the third waiting with its pairing code.
        plan = (("kiosk-001", "kiosk", True), ("cashier-001", "cashier", True),
                ("kiosk-002", "kiosk", False))
        for n, (dev, role, approve) in enumerate(plan):
            term = Terminal(dev, role, api_port=self._port(8701 + n), ui_port=self._port(8080 + n),
                            serial=f"DEMO{self.seed:04d}{n + 1:04d}", approve=approve)
            tdir = wd / dev
            term.printer = VirtualPrinter(host="127.0.0.1", port=0, out_dir=tdir / "paper")
            term.printer.start()
            term.pcscd = PcscDaemon(tdir / "pcscd", free_port_pair())
            self._pcscd_part(term).start()
            term.sam_slot = VirtualCardSlot(term.pcscd.sam_port)
            term.terminal_number = bytes.fromhex(f"1101000000{len(self.terminals) + 1:02d}")
            term.sam_slot.insert(SamSim(SAM_PIN, terminal_number=term.terminal_number))
            term.patient_slot = VirtualCardSlot(term.pcscd.patient_port)
            self._start_terminal(term, tdir)
            self.terminals.append(term)
        for term in self.terminals:
            if term.approve:
                self._approve(term)
        for term in self.terminals:
            if term.approve:
                self._wait_online(term)

        # 4. hardware panel
        from yikatong.site.panel import start_panel

        self._panel = start_panel(self, self.panel_port)

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def _write_claim_bundle(self, out: Path) -> None:
        """What a technician puts on a device image (``ykt fw claim-bundle``), from central."""
        r = httpx.get(f"{self.dashboard_url}api/fleet/claim-bundle", headers=self._admin(),
                      timeout=10)
        r.raise_for_status()
        bundle = r.json()
        out.mkdir(parents=True, exist_ok=True)
        (out / "ca.pem").write_text(bundle["ca_pem"])
        (out / "central-signing.pub").write_text(bundle["signing_pub_pem"])
        secret_file(out / "claim.password", bundle["claim_password"])
        self.claim_dir = out

    def pending_enrollment(self, serial: str, timeout: float = 40.0) -> dict[str, Any]:
        """The open enrollment request of the device with ``serial`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while True:
            r = httpx.get(f"{self.dashboard_url}api/enrollments", params={"status": "pending"},
                          headers=self._admin(), timeout=10)
            r.raise_for_status()
            rows = r.json()
            rows = rows.get("enrollments", rows) if isinstance(rows, dict) else rows
            for row in rows:
                if row["serial"] == serial and row["status"] == "pending":
                    return dict(row)
            if time.monotonic() > deadline:
                raise RuntimeError(f"no enrollment request from serial {serial} within "
                                   f"{timeout:.0f} s (see logs/)")
            time.sleep(0.2)

    def _approve(self, term: Terminal) -> None:
        req = self.pending_enrollment(term.serial)
        r = httpx.post(f"{self.dashboard_url}api/enrollments/{req['code']}/approve",
                       json={"device_id": term.device_id, "role": term.role, "site": "门诊楼"},
                       headers=self._admin(), timeout=20)
        r.raise_for_status()
        print(f"[demo] approved enrollment {req['code']} of serial {term.serial} as "
              f"{term.device_id} ({term.role}) — a technician does this with "
              f"`ykt fw enroll approve {req['code']} --name {term.device_id} --role "
              f"{term.role} --site 门诊楼`", file=self.out or sys.stdout, flush=True)

    def _wait_online(self, term: Terminal, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.dashboard_url}api/devices", headers=self._admin(), timeout=10)
            if r.status_code == 200 and any(d["id"] == term.device_id and d["online"]
                                            for d in r.json()["devices"]):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{term.device_id} did not come online with its certificate within "
                           f"{timeout:.0f} s (see logs/{term.device_id}-edge.log)")

    def _start_terminal(self, term: Terminal, tdir: Path) -> None:
        api_token = secrets.token_urlsafe(24)
        token_file = secret_file(tdir / "secrets" / "edge-api.token", api_token)
        pin_file = secret_file(tdir / "secrets" / "sam.pin", SAM_PIN)
        edge_cfg = tdir / "edge.toml"
        edge_cfg.write_text(toml_text({
            # No id or role: the device learns them when central approves its enrollment.
            "device": {"hospital_name": "示范市第一人民医院", "data_dir": str(tdir / "data")},
            "api": {"host": "127.0.0.1", "port": term.api_port, "token_file": str(token_file)},
            "card": {"patient_reader": term.pcscd.patient_reader,
                     "sam_reader": term.pcscd.sam_reader, "sam_pin_file": str(pin_file),
                     "hotlist_path": str(tdir / "data" / "hotlist.db")},
            "printer": {"kind": "network", "host": "127.0.0.1", "port": term.printer.port,
                        "profile": "xprinter_xp80"},
            "enrollment": {"host": "127.0.0.1", "port": self.enroll_port,
                           "cafile": str(self.claim_dir / "ca.pem"),
                           "claim_password_file": str(self.claim_dir / "claim.password"),
                           "signing_public_key": str(self.claim_dir / "central-signing.pub"),
                           "serial": term.serial, "model": "Yikatong demo kiosk",
                           "retry_s": 3.0},
            "uplink": {"host": "127.0.0.1", "port": self.tls_port,
                       "tls": {"cafile": str(self.claim_dir / "ca.pem")},
                       "outbox_path": str(tdir / "data" / "outbox.db"),
                       "state_path": str(tdir / "data" / "uplink-state.json"),
                       "retry_interval_s": 3.0},
        }))
        kiosk_cfg = tdir / "kiosk.toml"
        kiosk_cfg.write_text(toml_text({
            "server": {"host": "127.0.0.1", "port": term.ui_port},
            "edge": {"url": f"http://127.0.0.1:{term.api_port}", "token_file": str(token_file)},
            "ui": {"role": term.role, "language": "zh"},
        }))
        self._spawn(f"{term.device_id}-edge", ["edge", "--config", str(edge_cfg)],
                    env=term.pcscd.env, label=f"{term.device_id} edge")
        term.parts.append(self.parts[-1])
        ui = self._spawn(f"{term.device_id}-kiosk", ["kiosk", "--config", str(kiosk_cfg)],
                         label=f"{term.device_id} kiosk")
        term.parts.append(self.parts[-1])
        wait_http(term.ui_url + "api/config", 30, ui)

    # -- helpers used by the panel and by tests ------------------------------------------

    @property
    def platform_url(self) -> str:
        """Base URL of the reference platform."""
        return f"http://127.0.0.1:{self.platform_port}"

    @property
    def dashboard_url(self) -> str:
        """URL of the staff dashboard."""
        return f"http://127.0.0.1:{self.dashboard_port}/"

    @property
    def panel_url(self) -> str:
        """URL of the simulated-hardware panel."""
        return f"http://127.0.0.1:{self.panel_port}/"

    def add_patient(self, p: dict[str, str], *, demo_records: bool = False) -> None:
        """Make sure the platform knows a patient matching a virtual card (with bills,
        reports and a booking to pick up when ``demo_records``)."""
        sex = {"1": "M", "2": "F"}.get(p["sex"], "U")
        bd = p["birth_date"]
        body = {"card_no": p["card_number"], "id_number": p["id_number"], "name": p["name"],
                "sex": sex, "birth_date": f"{bd[:4]}-{bd[4:6]}-{bd[6:]}",
                "phone": p.get("phone", "13800000000"), "balance_fen": 50000, "insured": True,
                "demo_records": demo_records}
        r = httpx.post(f"{self.platform_url}/admin/patients", json=body, timeout=10)
        if r.status_code not in (200, 201, 409):
            r.raise_for_status()

    def insert_card(self, terminal: str, patient: dict[str, str],
                    variant: str | None = None) -> None:
        """Insert a virtual health card for ``patient`` into ``terminal``'s patient slot;
        ``variant`` (``CARD_VARIANTS``) makes it expired, the lost-listed card, or faulty."""
        from edge.devices.card.sim.cardos import Faults, HealthCardSim

        if variant is not None and variant not in CARD_VARIANTS:
            raise ValueError(f"unknown card variant {variant!r}")
        if variant == "lost":
            patient = DEMO_LOST_PATIENT
        # expired: the card's DDF1/EF08 expiry is in the past; faulty: its holder record's
        # TLV is broken, so every read fails (the patient is asked to retry or go to a desk).
        faults = Faults(expired=variant == "expired",
                        corrupt_tlv="DDF1/EF06" if variant == "faulty" else None)
        term = self.terminal(terminal)
        if term.patient_slot.is_inserted:
            term.patient_slot.remove()
        term.patient_slot.insert(HealthCardSim.from_holder(
            name=patient["name"], sex=patient["sex"], ethnicity=patient.get("ethnicity", "01"),
            birth_date=patient["birth_date"], id_number=patient["id_number"],
            card_number=patient["card_number"], faults=faults))

    def remove_card(self, terminal: str) -> None:
        """Take the card out of ``terminal``'s patient slot."""
        self.terminal(terminal).patient_slot.remove()

    def terminal(self, device_id: str) -> Terminal:
        """The terminal called ``device_id``."""
        for t in self.terminals:
            if t.device_id == device_id:
                return t
        raise KeyError(device_id)

    def stop(self) -> None:
        """Stop everything, newest first; nothing is left running (and nothing restarts)."""
        for part in [*self.parts, *(p for t in self.terminals for p in t.parts)]:
            part.halt()
        if self._panel is not None:
            with contextlib.suppress(Exception):
                self._panel.stop()
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for term in self.terminals:
            for part in (term.patient_slot, term.sam_slot):
                if part is not None and part.is_inserted:
                    with contextlib.suppress(Exception):
                        part.remove()
            if term.pcscd is not None:
                term.pcscd.stop()
            if term.printer is not None:
                term.printer.stop()
        self.parts.clear()


def guide(site: Site) -> str:
    """What a new user needs once the site is up: URLs, sign-in, secrets' places, flows."""
    kiosk, cashier, waiting = site.terminals
    admin_file = site.workdir / "secrets" / "central-admin.token"
    central = site.dashboard_url.rstrip("/")
    auth = f"--central {central} --token-file {admin_file}"
    return f"""
  Yikatong site-in-a-box is running.
    Kiosk UI (patient self-service) : {kiosk.ui_url}
    Cashier UI (desk terminal)      : {cashier.ui_url}
    Kiosk waiting for enrollment    : {waiting.ui_url}
    Staff dashboard (central)       : {site.dashboard_url}
      sign in there with 用管理员令牌登录 "Sign in with the admin token" (the file below)
    Central API                     : {site.dashboard_url}api/status
    Hardware panel (insert cards)   : {site.panel_url}
    Reference platform API docs     : {site.platform_url}/docs
    MQTT broker (Mosquitto)         : 127.0.0.1:{site.broker_port} (central), \
127.0.0.1:{site.tls_port} (devices, mutual TLS), 127.0.0.1:{site.enroll_port} (enrollment)
    Cashier sign-in                 : badge {DEMO_BADGE}, PIN {DEMO_STAFF_PIN}
    Admin token (ykt fw --token-file): {admin_file}
  Try each flow (cards in the panel; each demo patient has bills, reports and a booking):
    挂号 Register    : panel → insert a card into kiosk-001 → 挂号 → department, doctor, pay
    取号 Pick up     : insert the card → 预约取号 → today's booking → the slip prints
    缴费 Pay bills   : insert the card → 缴费 → pick bills → pay (panel: scan a pay code)
    报告 Lab reports : insert the card → 报告打印 → a ready report prints (one is still pending)
    收费 Cashier     : cashier-001 → sign in as above → insert a card → settle bills / top up
    异常卡 Bad cards : panel → 过期卡 expired / 挂失卡 lost / 故障卡 faulty → what to do
    设备 Fleet       : ykt fw device list {auth}
  Technician's path (enrollment by claim, docs/fleet-trust.md):
    {waiting.device_id} waits for approval: its screen {waiting.ui_url} and its printer show
    a pairing code. Approve it on the dashboard's enrollment page, or:
      ykt fw enroll list {auth}
      ykt fw enroll approve CODE --name {waiting.device_id} --role kiosk --site 门诊楼 \\
          {auth}
    Then push a setting and run a command on it:
      ykt fw config set device {waiting.device_id} ui.language=en {auth}
      ykt fw cmd {waiting.device_id} printer.test --wait {auth}
  Press Ctrl-C to stop everything.
"""


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ykt demo``."""
    p.add_argument("--workdir", type=Path, default=Path("var/demo"),
                   help="where the site keeps its databases, configs, logs and printed paper")
    p.add_argument("--seed", type=int, default=1, help="seed of the reference platform's data")
    p.add_argument("--fresh", action="store_true", help="wipe --workdir before starting")


def main(args: argparse.Namespace) -> int:
    """Run the site until Ctrl-C."""
    import shutil

    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    site = Site(args.workdir, seed=args.seed, stable_ports=True)
    stop = threading.Event()
    # Explicit handlers: a shell may start us with SIGINT ignored (background job), and a
    # closed terminal sends SIGHUP; every one of them must end in a clean stop.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    print("Starting the Yikatong site-in-a-box … (logs in", args.workdir / "logs", ")", flush=True)
    try:
        site.start()
        print(guide(site), flush=True)
        # A part that dies is restarted (with a backoff, a few times at most) and says so;
        # the rest of the site keeps running meanwhile.
        while not stop.wait(0.2):
            site.poll_parts()
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping …", flush=True)
        site.stop()
        print("Stopped; nothing left running.", flush=True)
    return 0
