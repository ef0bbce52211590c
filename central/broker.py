"""Central's own Mosquitto: typed config, pure renderers for mosquitto.conf / ACL, supervisor.

By default (single site) ``ykt central`` runs a real Mosquitto with a generated config. The
renderers are pure (tested against golden text); :class:`Mosquitto` is the only part that
does I/O (files, a child process, signals).

Why these limits (docs/architecture.md, "Delivery rules"): Mosquitto's default ``max_queued_messages
1000`` silently drops QoS 1 messages queued for a slow subscriber (a 5,000-message burst
arrived as 1,493), so central's broker raises it far above any burst a site produces. The
outbox still ends only on the application reply, so a drop costs a retry, never a request.

Why ``use_username_as_clientid`` (docs/security.md): MQTT lets a client pick
any client id, and a second connection with an id disconnects the first. Without the binding
any device with its own valid password could connect as ``cashier-001`` or as central's
forwarder and knock the real one off, over and over. With it the broker replaces the client
id by the username (on certificate listeners ``use_identity_as_username`` makes that the CN),
so only the holder of a credential can take over its connection. Hence every central
connection has its own broker account (``central/registry.py``).

Supervision (:class:`Mosquitto`): the child gets ``PR_SET_PDEATHSIG`` so it dies with
``ykt central`` even after ``kill -9``; a broker left over from an earlier run of the same
work directory (pid file, or any process whose command line names our config) is stopped
before a new one starts; and ``start`` only succeeds once the child itself owns every
listening socket — a child dying on "address in use" is an error, never "started".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import pwd
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yikatong.common.errors import LocalizedError

__all__ = [
    "BrokerError",
    "Listener",
    "Mosquitto",
    "MosquittoConfig",
    "TlsListener",
    "free_port",
    "mosquitto_passwd_delete",
    "mosquitto_passwd_set",
    "render_acl",
    "render_config",
    "write_atomic",
]

log = logging.getLogger(__name__)

# A username ends up substituted for %u in ACL patterns: anything with MQTT wildcards, a
# level separator or whitespace would widen the pattern, so the grammar is deliberately narrow.
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BrokerError(LocalizedError):
    """The broker could not be configured, started or stopped."""

    code = "broker_error"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsListener(_Strict):
    """TLS settings of one listener (certificates from central's CA)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    use_identity_as_username: bool = False
    tls_version: Literal["tlsv1.2", "tlsv1.3"] = "tlsv1.2"
    #: Revocation lists (central/ca.py writes one per issuing CA); re-read on SIGHUP.
    crlfile: Path | None = None

    @model_validator(mode="after")
    def _identity_needs_cert(self) -> TlsListener:
        if self.use_identity_as_username and not self.require_certificate:
            raise ValueError("use_identity_as_username needs require_certificate")
        return self


class Listener(_Strict):
    """One listener: address, port (0 = pick a free one at start) and optional TLS."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    tls: TlsListener | None = None
    #: Overrides :attr:`MosquittoConfig.use_username_as_clientid` for this listener (None =
    #: the broker-wide choice). The enrollment broker turns it off: its ACL confines the
    #: shared ``claim`` account by client id (``%c`` = the serial), not by username.
    use_username_as_clientid: bool | None = None


class MosquittoConfig(_Strict):
    """Everything central decides about its broker; rendered by :func:`render_config`."""

    listeners: list[Listener] = Field(min_length=1)
    persistence: bool = True
    persistence_dir: Path | None = None
    autosave_interval_s: int = Field(default=30, ge=0)
    # Far above the default 1000 (see module docstring); 0 would mean "unlimited", which
    # lets one stuck subscriber eat the broker's memory.
    max_queued_messages: int = Field(default=100_000, ge=1001)
    max_inflight_messages: int = Field(default=100, ge=1, le=65535)
    message_size_limit: int = Field(default=262_144, ge=1024, le=268_435_455)
    # Mosquitto leaves Nagle on by default: a small PUBLISH then waits for the peer's
    # delayed ACK, ~40 ms per hop on loopback (bench/uplink.py (d)). Request/reply traffic
    # is all small packets, so latency matters more than the few saved segments.
    tcp_nodelay: bool = True
    acl_file: Path | None = None
    password_file: Path | None = None
    allow_anonymous: bool = False
    # Mosquitto started as root drops to this user; None = do not emit the option.
    user: str | None = None
    # Client id := username (:= certificate CN on use_identity_as_username listeners); see
    # the module docstring. A listener option in Mosquitto 2.0 even with
    # per_listener_settings false (before the first listener it would configure the
    # implicit default listener on port 1883), so it is rendered in every listener block.
    use_username_as_clientid: bool = True
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")

    @model_validator(mode="after")
    def _auth_is_configured(self) -> MosquittoConfig:
        if self.persistence and self.persistence_dir is None:
            raise ValueError("persistence needs persistence_dir")
        cert_auth = all(
            lst.tls is not None and lst.tls.use_identity_as_username for lst in self.listeners
        )
        if not self.allow_anonymous and self.password_file is None and not cert_auth:
            raise ValueError(
                "no way to authenticate: set password_file or use_identity_as_username on "
                "every listener (allow_anonymous is false)"
            )
        return self


def render_config(cfg: MosquittoConfig) -> str:
    """Render a mosquitto.conf (Mosquitto 2.0 syntax) for ``cfg``; pure."""
    lines = [
        "# Generated by ykt central (central/broker.py). Do not edit by hand.",
        "per_listener_settings false",
        f"allow_anonymous {'true' if cfg.allow_anonymous else 'false'}",
    ]
    if cfg.user is not None:
        lines.append(f"user {cfg.user}")
    if cfg.password_file is not None:
        lines.append(f"password_file {cfg.password_file}")
    if cfg.acl_file is not None:
        lines.append(f"acl_file {cfg.acl_file}")
    lines += [
        f"max_queued_messages {cfg.max_queued_messages}",
        f"max_inflight_messages {cfg.max_inflight_messages}",
        f"message_size_limit {cfg.message_size_limit}",
    ]
    if cfg.tcp_nodelay:
        lines.append("set_tcp_nodelay true")
    if cfg.persistence and cfg.persistence_dir is not None:  # the validator pairs them
        lines += [
            "persistence true",
            f"persistence_location {str(cfg.persistence_dir).rstrip('/')}/",
            f"autosave_interval {cfg.autosave_interval_s}",
        ]
    else:
        lines.append("persistence false")
    lines.append("log_dest stderr")
    lines += [f"log_type {t}" for t in cfg.log_types]
    lines.append("connection_messages true")
    lines.append("log_timestamp true")
    for lst in cfg.listeners:
        lines.append("")
        lines.append(f"listener {lst.port} {lst.host}")
        bind_id = (cfg.use_username_as_clientid if lst.use_username_as_clientid is None
                   else lst.use_username_as_clientid)
        lines.append("use_username_as_clientid true" if bind_id
                     else "use_username_as_clientid false")
        if lst.tls is not None:
            lines += [
                f"cafile {lst.tls.cafile}",
                f"certfile {lst.tls.certfile}",
                f"keyfile {lst.tls.keyfile}",
                f"tls_version {lst.tls.tls_version}",
                f"require_certificate {'true' if lst.tls.require_certificate else 'false'}",
                "use_identity_as_username "
                + ("true" if lst.tls.use_identity_as_username else "false"),
            ]
            if lst.tls.crlfile is not None:
                lines.append(f"crlfile {lst.tls.crlfile}")
    return "\n".join(lines) + "\n"


def render_acl(*central_users: str) -> str:
    """Render the Mosquitto ACL file: devices confined to their own topics, central to ykt/v1/#.

    ``central_users`` are central's broker accounts, one per connection (forwarder, fleet
    publisher, further instances): with ``use_username_as_clientid`` two connections sharing
    a username would disconnect each other. Nobody else gets more than the device pattern.
    Device username = client id = certificate CN = device id, so ``%u`` names the device.
    ``pattern`` lines apply to every user (central too, harmlessly: it already has ykt/v1/#).
    Shared subscriptions (``$share/g/ykt/v1/...``) are checked against the topic without the
    prefix, so central's shared filters pass.

    EMQX equivalent (``acl.conf``, file authorizer, ``${username}`` placeholder; one
    ``{user, ...}`` line per central account)::

        {allow, {user, "central-fwd"}, all, ["ykt/v1/#"]}.
        {allow, all, publish, ["ykt/v1/dev/${username}/up/#", "ykt/v1/dev/${username}/state"]}.
        {allow, all, subscribe, ["ykt/v1/dev/${username}/down/#", "ykt/v1/fleet/hotlist"]}.
        {deny, all}.

    with ``authorization.no_match = deny`` (and ``peer_cert_as_username = cn`` for mTLS).
    """
    for user in central_users:
        if not USERNAME_RE.fullmatch(user):
            raise BrokerError(f"invalid central username {user!r}", f"中心用户名无效：{user!r}")
    lines = [
        "# Generated by ykt central (central/broker.py). Do not edit by hand.",
        "# Devices: username = client id = device id (%u). Anything not allowed is denied.",
        "pattern write ykt/v1/dev/%u/up/#",
        "pattern write ykt/v1/dev/%u/state",
        "pattern read ykt/v1/dev/%u/down/#",
        "pattern read ykt/v1/fleet/hotlist",
        "",
        "# Central: reads requests/events/state, writes replies, commands, config, hot list.",
    ]
    for user in dict.fromkeys(central_users):  # de-duplicated, order kept
        lines += [f"user {user}", "topic readwrite ykt/v1/#", ""]
    return "\n".join(lines)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a currently free TCP port on ``host`` (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _passwd_bin() -> str:
    found = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if Path("/usr/bin/mosquitto_passwd").exists() else None
    )
    if found is None:
        raise BrokerError("mosquitto_passwd not found", "找不到 mosquitto_passwd 程序")
    return found


_FILE_LOCKS: dict[Path, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.Lock:
    """One lock per file: two edits of the password file never interleave."""
    key = path.resolve()
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(key, threading.Lock())


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all: a private temporary file, fsync, rename.

    Mosquitto re-reads its password and ACL files on SIGHUP while ``ykt central`` may be
    writing the next version; an in-place rewrite lets it read half a file, and every
    connected client whose line is missing from that half is disconnected (the batch
    registrations in docs/performance.md, "Device list at fleet scale").
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _edit_password_file(password_file: Path, args: list[str], what: str, what_zh: str) -> None:
    """Run ``mosquitto_passwd *args`` on a copy of ``password_file``, then swap it in.

    mosquitto_passwd rewrites the file it is given in place (it copies its result back into
    the original); the broker must never see that half-written, so it edits a private copy
    (0600: the hashes are still secrets) that replaces the file in one rename.
    """
    password_file.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(password_file):
        old = password_file.read_bytes() if password_file.exists() else b""
        work = password_file.with_name(
            f".{password_file.name}.edit.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(work, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(old)
            proc = subprocess.run([_passwd_bin(), *args[:1], str(work), *args[1:]],
                                  capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                raise BrokerError(f"{what}: {proc.stderr.strip()}", what_zh)
            write_atomic(password_file, work.read_bytes())
        finally:
            with contextlib.suppress(OSError):
                work.unlink()


def mosquitto_passwd_set(password_file: Path, username: str, password: str) -> None:
    """Add or replace ``username`` in ``password_file`` (hashed by mosquitto_passwd -b).

    The file is replaced atomically (:func:`write_atomic`), never rewritten in place.
    """
    if not USERNAME_RE.fullmatch(username):
        raise BrokerError(f"invalid username {username!r}", f"用户名无效：{username!r}")
    # -b puts the password on the command line (visible in /proc for a moment to the same
    # user); acceptable for a local child process, and it is what the brief prescribes.
    _edit_password_file(password_file, ["-b", username, password],
                        f"mosquitto_passwd failed for {username}",
                        f"写入代理密码失败：{username}")


def mosquitto_passwd_delete(password_file: Path, username: str) -> None:
    """Remove ``username`` from ``password_file``; a missing user or file is not an error."""
    if not password_file.exists():
        return
    text = password_file.read_text()
    if not any(line.split(":", 1)[0] == username for line in text.splitlines()):
        return
    _edit_password_file(password_file, ["-D", username],
                        f"mosquitto_passwd -D failed for {username}",
                        f"删除代理密码失败：{username}")


# -- process supervision helpers (Linux: prctl, /proc) --------------------------------------

_PR_SET_PDEATHSIG = 1
_T = TypeVar("_T")


class _Spawner:
    """One long-lived daemon thread on which every broker child is forked.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, not the
    process. ``Mosquitto.start`` is called through ``asyncio.to_thread`` (and by the
    supervise loop), i.e. on executor threads that may be retired, which would SIGTERM a
    healthy broker. The main thread is not an option either (tests and embedders run
    central's loop elsewhere). So the fork itself is handed to this thread, which never
    returns: it lives exactly as long as the process, and the child dies with the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the spawner thread and return its result (or raise its error)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="broker-spawner",
                                                daemon=True)
                self._thread.start()
        fut: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)


_SPAWNER = _Spawner()


def _die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when its parent (thread) dies.

    SIGTERM rather than SIGKILL: Mosquitto then still writes its persistence file, so the
    forwarder's persistent session and queued messages survive a crash of central.
    """
    parent = os.getpid()
    try:  # resolved in the parent: no dlopen between fork and exec
        prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def preexec() -> None:
        if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    return preexec


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _brokers_using(config_path: Path, pid_file: Path) -> list[int]:
    """PIDs of Mosquittos started with ``-c config_path`` (pid file first, then /proc)."""
    want = str(config_path)

    def ours(pid: int) -> bool:
        args = _cmdline(pid)
        return bool(args) and "mosquitto" in Path(args[0]).name and want in args[1:]

    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
        if pid != os.getpid() and ours(pid):
            found.append(pid)
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in found and int(entry) != os.getpid() \
                    and ours(int(entry)):
                found.append(int(entry))
    return [p for p in found if _alive(p)]


def _terminate_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM ``pid`` (not our child), wait until it is gone, SIGKILL after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError as exc:
            raise BrokerError(f"leftover mosquitto pid {pid} belongs to another user",
                              "旧的消息代理进程属于其他用户，无法停止") from exc
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
    raise BrokerError(f"leftover mosquitto pid {pid} did not stop", "旧的消息代理进程无法停止")


def _listening_inodes(port: int) -> set[int] | None:
    """Socket inodes in LISTEN state on ``port`` (None: /proc/net not readable)."""
    inodes: set[int] = set()
    seen_any = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(f[9]))
    return inodes if seen_any else None


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    found.add(int(link[8:-1]))
    return found


def _owns_listener(pid: int, port: int) -> bool:
    """True if process ``pid`` holds the listening socket on ``port``.

    A bare connect is not proof: a leftover broker may answer on the port while our child is
    about to exit on "address in use".
    """
    listening = _listening_inodes(port)
    if listening is None:  # no /proc/net: fall back to "something answers"
        return True
    return bool(listening & _socket_inodes(pid))


class Mosquitto:
    """Supervisor of one Mosquitto child process with a generated config in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        cfg: MosquittoConfig,
        *,
        binary: str = "mosquitto",
        start_timeout_s: float = 10.0,
        reload_delay_s: float = 0.25,
    ) -> None:
        self.workdir = Path(workdir)
        self._binary = shutil.which(binary) or (
            "/usr/sbin/mosquitto" if binary == "mosquitto" else binary
        )
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._ready = False  # our child owns every listener (set by start, cleared by stop)
        self._lock = threading.Lock()  # start/stop from the loop and from to_thread
        self.restarts = 0
        self.last_error: str | None = None
        self.adopted: list[int] = []  # leftover brokers of this workdir we stopped
        #: SIGHUPs sent, and reload requests that shared one (:meth:`request_reload`).
        self.reloads = 0
        self.reloads_coalesced = 0
        self.reload_delay_s = reload_delay_s
        self._reload_lock = threading.Lock()
        self._reload_timer: threading.Timer | None = None
        self.started_pids: list[int] = []  # every child ever started (tests check none is left)
        # Port 0 is resolved once, so restarts come back on the same port (clients reconnect).
        listeners = [
            lst if lst.port != 0 else lst.model_copy(update={"port": free_port(lst.host)})
            for lst in cfg.listeners
        ]
        update: dict[str, object] = {"listeners": listeners}
        if cfg.user is None and os.geteuid() == 0:
            # As root Mosquitto would drop to user "mosquitto", which cannot read our 0600
            # password file; stay the user that owns the workdir instead.
            update["user"] = pwd.getpwuid(os.geteuid()).pw_name
        self.cfg = cfg.model_copy(update=update)

    @property
    def port(self) -> int:
        """Port of the first listener."""
        return self.cfg.listeners[0].port

    @property
    def host(self) -> str:
        """Host of the first listener."""
        return self.cfg.listeners[0].host

    @property
    def config_path(self) -> Path:
        """Where the rendered mosquitto.conf is written."""
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """Broker log (stderr of the child)."""
        return self.workdir / "mosquitto.log"

    @property
    def pid_path(self) -> Path:
        """PID of the child we started (lets the next run find a broker we left behind)."""
        return self.workdir / "mosquitto.pid"

    @property
    def pid(self) -> int | None:
        """PID of the running broker, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def running(self) -> bool:
        """True while the child this supervisor started is alive and was seen listening."""
        return self._ready and self._proc is not None and self._proc.poll() is None

    def status(self) -> dict[str, object]:
        """Health for the dashboard: running, pid, restarts, last_error."""
        return {"running": self.running(), "pid": self.pid, "restarts": self.restarts,
                "last_error": self.last_error}

    def write_config(self) -> Path:
        """Write mosquitto.conf (and create the persistence dir); return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.cfg.persistence_dir is not None:
            self.cfg.persistence_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.cfg))
        return self.config_path

    def stop_leftovers(self, timeout_s: float = 5.0) -> list[int]:
        """Stop brokers of an earlier run of this workdir (not our child); return their pids."""
        mine = self.pid
        stopped = []
        for pid in _brokers_using(self.config_path, self.pid_path):
            if pid == mine:
                continue
            log.warning("stopping leftover mosquitto pid=%s from an earlier run of %s",
                        pid, self.workdir)
            _terminate_pid(pid, timeout_s)
            stopped.append(pid)
        self.adopted += stopped
        return stopped

    def start(self, *, _restart: bool = False) -> None:
        """Write the config, start Mosquitto and wait until it owns every listener."""
        with self._lock:
            if self.running():
                return
            self._stopping = False
            self._ready = False
            try:
                self._start_locked()
            except BrokerError as exc:
                self.last_error = exc.message
                raise
            self.last_error = None
            if _restart:
                self.restarts += 1
            self._ready = True

    def _start_locked(self) -> None:
        self.write_config()
        self.stop_leftovers()
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as logf:
            args = [self._binary, "-c", str(self.config_path)]
            preexec = _die_with_parent()
            proc: subprocess.Popen[bytes] = _SPAWNER.run(lambda: subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # our signals only, not the terminal's
                preexec_fn=preexec,  # noqa: PLW1509 - only prctl + getppid, no locks
            ))
        self._proc = proc
        self.started_pids.append(proc.pid)
        self.pid_path.write_text(f"{proc.pid}\n")
        try:
            self._wait_listening(proc, offset)
        except BrokerError:
            self._reap(proc)
            raise
        log.info("mosquitto started pid=%s port=%s", proc.pid, self.port)

    def _wait_listening(self, proc: subprocess.Popen[bytes], offset: int) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        pending = list(self.cfg.listeners)
        while pending:
            if proc.poll() is not None:
                tail = self._tail_log(offset=offset)
                why = "port already in use" if "in use" in tail.lower() else "exited"
                raise BrokerError(
                    f"mosquitto {why} (exit {proc.returncode}): {tail}",
                    "消息代理启动失败：端口被占用" if why != "exited" else "消息代理启动失败",
                )
            lst = pending[0]
            try:
                with socket.create_connection((lst.host, lst.port), timeout=0.5):
                    pass
                if _owns_listener(proc.pid, lst.port):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept on {lst.host}:{lst.port}: "
                    f"{self._tail_log(offset=offset)}",
                    "消息代理端口未就绪",
                )
            time.sleep(0.05)
        if proc.poll() is not None:  # died right after binding: still not "started"
            raise BrokerError(f"mosquitto exited with {proc.returncode}: "
                              f"{self._tail_log(offset=offset)}", "消息代理启动失败")

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.pid_path.unlink()

    def _tail_log(self, n: int = 5, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-n:]) or "(empty log)"

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns when the process is gone."""
        with self._reload_lock:  # the next start reads the files anyway
            timer, self._reload_timer = self._reload_timer, None
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._stopping = True
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait(timeout=timeout_s)
            self._proc = None
            self._ready = False
            with contextlib.suppress(OSError):
                self.pid_path.unlink()

    def leftovers(self) -> list[int]:
        """PIDs this supervisor started that are still alive (should be empty after stop)."""
        return [pid for pid in self.started_pids if _alive(pid)]

    def kill9(self) -> None:
        """SIGKILL the broker (fault injection); in-memory state is lost, as in a crash."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop (gracefully, saving persistence) and start again on the same ports."""
        self.stop()
        self.start(_restart=True)

    def reload(self) -> bool:
        """SIGHUP: Mosquitto re-reads the password and ACL files (after register/disable).

        Only ever our own child. Returns False (and logs) when it is not running: the next
        start reads the files anyway.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)
            self.reloads += 1
            return True
        log.warning("mosquitto not running; password/ACL reload deferred to its next start")
        return False

    def request_reload(self) -> None:
        """Reload within ``reload_delay_s``; every request meanwhile shares that one SIGHUP.

        What the registry calls after each change: a batch of registrations (hundreds of
        password-file edits) costs a few reloads, not one each. Each reload re-checks every
        connected client's password in the broker, so fewer is cheaper for the whole site.
        The files are always whole when read (:func:`write_atomic`), so no reload drops a
        client whose account is unchanged. Thread-safe; returns at once.
        """
        with self._reload_lock:
            if self._reload_timer is not None:
                self.reloads_coalesced += 1
                return
            timer = threading.Timer(self.reload_delay_s, self._reload_due)
            timer.daemon = True
            self._reload_timer = timer
        timer.start()

    def _reload_due(self) -> None:
        with self._reload_lock:
            self._reload_timer = None
        self.reload()

    def reload_pending(self) -> bool:
        """True while a requested reload has not been sent yet."""
        return self._reload_timer is not None

    async def supervise(self, check_interval_s: float = 0.5, max_backoff_s: float = 10.0) -> None:
        """Run forever (as a task): restart the broker whenever it dies unexpectedly."""
        backoff = check_interval_s
        while True:
            await asyncio.sleep(check_interval_s)
            if self._stopping or self.running():
                backoff = check_interval_s
                continue
            code = self._proc.returncode if self._proc is not None else None
            self.last_error = f"mosquitto died (exit {code})"
            log.warning("mosquitto died (exit %s); restarting", code)
            try:
                # The fork itself runs on _SPAWNER (PDEATHSIG), not on this worker thread.
                await asyncio.to_thread(self.start, _restart=True)
                backoff = check_interval_s
            except BrokerError as exc:
                log.error("mosquitto restart failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
