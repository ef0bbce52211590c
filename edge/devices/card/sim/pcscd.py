"""A private ``pcscd`` with two ``vpcd`` virtual readers (patient slot, SAM slot).

pcscd 1.9.9 always listens on ``/run/pcscd/pcscd.comm`` and ignores
``PCSCLITE_CSOCK_NAME``; the client library does honour it. So the daemon runs in its own
mount namespace (``unshare -m``) with a private directory bind-mounted over ``/run/pcscd``;
the socket then appears in that directory and clients point ``PCSCLITE_CSOCK_NAME`` at it.
The client library caches the socket path per process on first use: a process that wants
to talk to this daemon must set the variable before pyscard first contacts pcscd.

Loopback only. vpcd (vsmartcard-vpcd 3.3, "vpcd 0.9") cannot be told where to listen: its
reader.conf ``DEVICENAME`` is ``host:port``, and the host part only picks the mode — ``/dev/null``
makes vpcd a server whose ``opensock()`` binds ``INADDR_ANY`` (every interface, no option), any
other host makes vpcd a *client* that connects out to a card listening there (the "reversed"
mode, which our virtual cards do not speak). So pcscd also gets a private network namespace
(``unshare -n``) with only its own loopback up: there vpcd's wildcard listener reaches nothing
outside. Cards still connect from the host to ``127.0.0.1:<port>``: per port a ``socat`` on the
host listens on 127.0.0.1 only and relays each connection over a Unix socket in the run
directory (filesystem sockets cross network namespaces) to a ``socat`` inside the namespace,
which opens the TCP connection to vpcd — one card connection is still one vpcd connection, so
insertion and removal mean what they did. A firewall rule was not an option (it would be
host-wide state a test or the demo must not touch).

Readiness is checked without connecting to the vpcd ports (a connection *is* a card
insertion for vpcd): the socket file must exist, both ports must be in LISTEN state on
127.0.0.1 on the host, and vpcd's own listeners must be up inside the namespace (read from
``/proc/<pid>/net/tcp``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edge.devices.card.errors import PcscDaemonError

__all__ = ["VPCD_DRIVER", "PcscDaemon", "free_port_pair", "group_members", "listening_ports",
           "listening_sockets"]

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
_RUN_DIR = Path("/run/pcscd")
_READER_BASE = "Virtual PCD"


def free_port_pair(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """Return a base port such that base and base+1 are both free on loopback."""
    for _ in range(attempts):
        with socket.socket() as s:
            s.bind((host, 0))
            base = int(s.getsockname()[1])
        if base >= 65535:
            continue
        ok = True
        for port in (base, base + 1):
            with socket.socket() as t:
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    t.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise PcscDaemonError("No free pair of loopback ports found.", "找不到可用的端口。")


def listening_sockets(net_dir: str | Path = "/proc/net") -> set[tuple[str, int]]:
    """(address, port) of TCP sockets in LISTEN state, read from ``net_dir`` (no connection).

    ``/proc/net`` is this process's network namespace; ``/proc/<pid>/net`` is another's.
    """
    found: set[tuple[str, int]] = set()
    for name, width in (("tcp", 4), ("tcp6", 16)):
        try:
            lines = (Path(net_dir) / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                addr_hex, port_hex = parts[1].rsplit(":", 1)
                # /proc prints each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(bytes.fromhex(addr_hex[i:i + 8])[::-1]
                               for i in range(0, len(addr_hex), 8))
                family = socket.AF_INET if width == 4 else socket.AF_INET6
                found.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def group_members(pgid: int) -> set[int]:
    """Pids of live (not zombie) processes in process group ``pgid``, read from /proc."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            pids.add(int(entry.name))
    return pids


def listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state on this host (read from /proc, no connection made)."""
    return {port for _, port in listening_sockets()}


class PcscDaemon:
    """A pcscd process in a private mount namespace serving two vpcd readers."""

    def __init__(self, workdir: Path, base_port: int, *, ready_timeout: float = 10.0,
                 pcscd_binary: str = "pcscd", extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = Path(workdir)
        self.base_port = base_port
        self.ready_timeout = ready_timeout
        self.pcscd_binary = pcscd_binary
        self.extra_args = extra_args  # e.g. ("-d", "-a") for debug and APDU logs
        self._rundir = self.workdir / "run"
        self._confdir = self.workdir / "reader.conf.d"
        self._log_path = self.workdir / "pcscd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # --- properties -------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        """Path of the daemon's client socket (valid while it runs)."""
        return self._rundir / "pcscd.comm"

    @property
    def env(self) -> dict[str, str]:
        """Environment a client process needs to talk to this daemon."""
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    @property
    def patient_port(self) -> int:
        """TCP port where a virtual card in the patient slot connects."""
        return self.base_port

    @property
    def sam_port(self) -> int:
        """TCP port where a virtual SAM connects."""
        return self.base_port + 1

    @property
    def patient_reader(self) -> str:
        """PC/SC name of the patient reader."""
        return f"{_READER_BASE} 00 00"

    @property
    def sam_reader(self) -> str:
        """PC/SC name of the SAM reader."""
        return f"{_READER_BASE} 00 01"

    @property
    def pid(self) -> int | None:
        """Process id of the running daemon, or None."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self.pid is not None

    # --- lifecycle --------------------------------------------------------------------
    def _check_environment(self) -> None:
        if shutil.which("unshare") is None:
            raise PcscDaemonError("'unshare' (util-linux) is not installed.",
                                  "缺少 unshare 工具。")
        if shutil.which(self.pcscd_binary) is None:
            raise PcscDaemonError("pcscd is not installed (apt install pcscd).",
                                  "未安装 pcscd。")
        for tool, package in (("socat", "socat"), ("ip", "iproute2")):
            if shutil.which(tool) is None:
                raise PcscDaemonError(
                    f"'{tool}' is not installed (apt install {package}); the virtual readers "
                    "need it to stay on loopback.", f"缺少 {tool} 工具。")
        if not VPCD_DRIVER.exists():
            raise PcscDaemonError(
                f"vpcd driver missing at {VPCD_DRIVER} (apt install vsmartcard-vpcd).",
                "未安装 vsmartcard-vpcd 虚拟读卡器驱动。")

    def _write_config(self) -> None:
        self._rundir.mkdir(parents=True, exist_ok=True)
        self._confdir.mkdir(parents=True, exist_ok=True)
        # Stale files from a killed daemon would make pcscd think another one runs.
        for stale in ("pcscd.comm", "pcscd.pid", "pcscd.pub",
                      *(self._relay_socket(p).name for p in (self.patient_port, self.sam_port))):
            with contextlib.suppress(FileNotFoundError):
                (self._rundir / stale).unlink()
        (self._confdir / "vpcd").write_text(
            f'FRIENDLYNAME "{_READER_BASE}"\n'
            f"DEVICENAME /dev/null:{self.base_port}\n"
            f"LIBPATH {VPCD_DRIVER}\n"
            f"CHANNELID {self.base_port}\n"
        )

    def _relay_socket(self, port: int) -> Path:
        """Unix socket that carries connections for ``port`` into the daemon's namespace."""
        return self._rundir / f"vpcd-{port - self.base_port}.sock"

    def _script(self) -> str:
        """Shell script: host relays, then pcscd in private mount + network namespaces."""
        q = shlex.quote
        ports = (self.patient_port, self.sam_port)
        for port in ports:
            if len(str(self._relay_socket(port))) > 100:  # sun_path holds 108 bytes
                raise PcscDaemonError(f"Work directory path too long: {self.workdir}",
                                      "工作目录路径过长。")
        # -t 0.1: once one side has closed, close the other quickly (removal is prompt).
        # quickack on the namespace's loopback route: vpcd writes each message as a 2-byte
        # length and then the payload without TCP_NODELAY, so Nagle holds the payload until
        # the relay ACKs the length — 40 ms of delayed ACK per APDU (≈ 0.7 s per card read).
        # The route lives in pcscd's private namespace only.
        inner = (
            f"ip link set lo up && mount --bind {q(str(self._rundir))} {_RUN_DIR} || exit 1; "
            "ip route change local 127.0.0.1 dev lo table local proto kernel scope host "
            "src 127.0.0.1 quickack 1 || exit 1; "
        ) + "".join(
            f"socat -t 0.1 UNIX-LISTEN:{q(str(self._relay_socket(port)))},fork,unlink-early "
            f"TCP:127.0.0.1:{port},nodelay & "
            for port in ports
        ) + (f"exec {self.pcscd_binary} -f -c {q(str(self._confdir))}"
             + "".join(f" {q(a)}" for a in self.extra_args))
        outer = "".join(
            f"socat -t 0.1 TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,nodelay "
            f"UNIX-CONNECT:{q(str(self._relay_socket(port)))} & "
            for port in ports
        )
        # exec: the Popen pid becomes unshare, then pcscd itself (inside the namespaces).
        return outer + f"exec unshare -m -n --propagation private sh -c {q(inner)}"

    def start(self) -> None:
        """Start the daemon and wait until its socket and both vpcd ports are ready."""
        if self.running:
            return
        self._check_environment()
        self._write_config()
        busy = {self.patient_port, self.sam_port} & listening_ports()
        if busy:
            raise PcscDaemonError(f"Port(s) {sorted(busy)} already in use.", "端口已被占用。")
        # /run/pcscd must exist as a mount point; creating it is harmless for a system pcscd.
        _RUN_DIR.mkdir(parents=True, exist_ok=True)
        script = self._script()
        log = self._log_path.open("ab")
        try:
            # One process group (start_new_session) for pcscd and the four relays: stop()
            # and kill() signal the group, so nothing is left behind.
            self._proc = subprocess.Popen(
                ["sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        # An interpreter that exits without stop() (a crashed test or script) must not
        # leave pcscd behind. (PR_SET_PDEATHSIG is no option: it fires when the *thread*
        # that started us exits, e.g. an asyncio.to_thread worker.)
        atexit.register(self._stop_at_exit)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=2.0)

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-800:].strip()
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        proc = self._proc
        if proc is None:
            raise PcscDaemonError("pcscd was not started", "读卡服务未启动。")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self._log_tail()
                if "Operation not permitted" in tail or "permission denied" in tail.lower():
                    raise PcscDaemonError(
                        "Not permitted to create a private mount namespace for pcscd "
                        "(needs root or CAP_SYS_ADMIN; in containers run privileged): " + tail,
                        "没有权限启动私有读卡服务（需要 root 或 CAP_SYS_ADMIN）。")
                raise PcscDaemonError(
                    f"pcscd exited with code {proc.returncode}: {tail}",
                    "读卡服务意外退出。")
            if self.socket_path.exists() and self._ports_ready(proc.pid):
                return
            time.sleep(0.05)
        raise PcscDaemonError(
            f"pcscd not ready after {self.ready_timeout:.0f} s: {self._log_tail()}",
            "读卡服务启动超时。")

    def _ports_ready(self, pid: int) -> bool:
        """Host relays on 127.0.0.1 and vpcd's listeners inside pcscd's own namespace."""
        ports = (self.patient_port, self.sam_port)
        if not {("127.0.0.1", p) for p in ports} <= listening_sockets():
            return False
        if not all(self._relay_socket(p).exists() for p in ports):
            return False
        try:  # until unshare() ran, /proc/<pid>/net is still the host's namespace
            if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
                return False
        except OSError:
            return False
        # vpcd's wildcard listeners, inside the private namespace only (the point of it).
        inside = {("0.0.0.0", p) for p in ports}  # noqa: S104 - read, not bound, here
        return inside <= listening_sockets(f"/proc/{pid}/net")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL); leaves no process behind."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self._stop_at_exit)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        self._wait_group_gone(proc.pid, timeout)
        self._wait_ports_closed(timeout)

    def kill(self) -> None:
        """Kill the daemon with SIGKILL (a crash, for fault tests)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self._stop_at_exit)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        self._wait_group_gone(proc.pid, 5.0)
        self._wait_ports_closed(5.0)

    def restart(self) -> None:
        """Stop and start again on the same ports and socket path."""
        self.stop()
        self.start()

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        """Wait until the relays in pcscd's process group have exited too (SIGKILL late).

        Exited relays linger as zombies until init reaps them (here up to ~1.5 s): those
        run nothing and hold no socket, so they do not count.
        """
        deadline = time.monotonic() + timeout
        killed = False
        while True:
            if not group_members(pgid):
                return
            if not killed and time.monotonic() > deadline - timeout / 2:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                killed = True
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def _wait_ports_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while {self.patient_port, self.sam_port} & listening_ports():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def __enter__(self) -> PcscDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
