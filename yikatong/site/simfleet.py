"""``ykt sim fleet``: many simulated terminals against a running central.

``ykt sim fleet --workdir SITE --devices N --duration S`` reads a site-in-a-box's working
directory (``ykt demo``: ``central.toml``, ``claim/``, ``secrets/``), or is pointed at a central
with ``--central``/``--token-file``/``--broker``, and then:

1. **Provisions** N devices the way real ones are provisioned (docs/fleet-trust.md,
   "Enrollment by claim"): each makes its own EC P-256 key and CSR, asks on the enrollment
   broker with the site's claim credential, and a technician — this tool, signed in with
   the admin token — approves its pairing code through the REST API
   (``POST /api/enrollments/{code}/approve``). Enrollments run ``--enroll-batch`` at a time
   (under central's ``max_open_enrollments``). Identities are cached in
   ``SITE/simfleet/identities/`` and reused by the next run while central still knows the
   device, the certificate is valid and the claim CA is the same.
2. **Runs** them in ``--procs`` worker processes (yikatong/site/simdevice.py: one asyncio
   loop per process drives every device's paho client; mutual TLS with the device's own
   certificate, retained birth and Will, telemetry, events, config reports) with a request
   mix of ``--rate`` requests per second over the whole fleet (``--mix``: identify, slots,
   book, reports at kiosks; pay at cashier desks, which sign in with a staff badge first).
   Patients come from the reference platform (its admin API), so every reply is real and
   checked.
3. **Reports** what was sent, what came back (by request type and outcome), latencies
   (p50/p90/p99/max), errors with counts, connection times, and presence as central shows
   it (``/api/devices``) with the fleet up and after it went offline. The exit status is
   1 when anything unexpected happened (an error, a device that did not connect, presence
   wrong), 2 when the site could not be used at all.

docs/performance.md ("Fleet") has the figures ``bench/fleet.py`` measured with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import queue
import resource
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from yikatong.common.errors import LocalizedError
from yikatong.protocol import topics
from yikatong.protocol.envelope import decode, encode, new_envelope
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import TYPE_ENROLL_CSR, EnrollStatus
from yikatong.protocol.signing import public_key_from_pem, verify
from yikatong.site.simdevice import VISITS, DeviceSpec, PahoLoop, Plan, worker_entry

__all__ = ["DEFAULT_MIX", "CentralSite", "FleetOptions", "FleetRun", "SimFleetError", "Target",
           "add_sim_fleet_arguments", "device_ids", "format_summary", "load_patients", "main",
           "presence", "provision",
           "run_fleet", "summarize"]

#: Visit weights of ``--mix`` when none is given (a visit is 1–6 requests).
DEFAULT_MIX: dict[str, float] = {"identify": 2, "slots": 1, "book": 3, "reports": 2, "pay": 2}
_SERIAL_PREFIX = "SIMFLEET-"


class SimFleetError(LocalizedError):
    """The fleet simulator cannot run against this site."""

    code = "simfleet"

    def __init__(self, reason: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=reason)


# -- the site ------------------------------------------------------------------------------


@dataclass
class Target:
    """Where central is and what a device and a technician need to talk to it."""

    dashboard_url: str  # ends with /
    admin_token: str
    brokers: list[tuple[str, int]]  # the devices' mutual-TLS listeners
    enroll: tuple[str, int]
    ca_file: Path  # the claim bundle's CA (chain)
    claim_password: str
    signing_pub_pem: bytes
    platform_url: str | None
    workdir: Path

    def headers(self) -> dict[str, str]:
        """A technician's (here: the administrator token's) authorization."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Target:
        """From ``--workdir`` (a ``ykt demo`` site), with the explicit options on top."""
        wd: Path = args.workdir.resolve()
        raw: dict[str, Any] = {}
        cfg = wd / "central.toml"
        if cfg.exists():
            raw = tomllib.loads(cfg.read_text())
        elif args.central is None:
            raise SimFleetError("no_site", f"{cfg} does not exist: give the site's --workdir "
                                "(ykt demo) or --central, --token-file and --broker",
                                f"{cfg} 不存在：请指定站点目录 --workdir，或 --central、"
                                "--token-file 与 --broker")
        dash = raw.get("dashboard", {})
        url = args.central or f"http://{dash.get('host', '127.0.0.1')}:{dash.get('port', 8800)}/"
        url = url.rstrip("/") + "/"
        token_file = args.token_file or (Path(dash["admin_token_file"])
                                         if dash.get("admin_token_file") else None)
        if token_file is None or not Path(token_file).exists():
            raise SimFleetError("no_token", "no admin token file (--token-file): the simulator "
                                "approves its devices as a technician",
                                "缺少管理员令牌文件（--token-file）：模拟器须以技术员身份批准设备")
        token = Path(token_file).read_text().strip()
        tls = raw.get("broker", {}).get("tls", {})
        brokers = [_host_port(b) for b in args.broker] if args.broker else [
            (_loopback(tls.get("host", "127.0.0.1")), int(tls.get("port", 8883)))]
        fleet = raw.get("fleet", {})
        enroll = _host_port(args.enroll) if args.enroll else (
            _loopback(fleet.get("enroll_host", "127.0.0.1")), int(fleet.get("enroll_port", 8884)))
        platform = args.platform or raw.get("platform", {}).get("base_url")
        claim = wd / "claim"
        if not (claim / "ca.pem").exists():
            fetch_claim_bundle(url, token, claim)
        return cls(url, token, brokers, enroll, claim / "ca.pem",
                   (claim / "claim.password").read_text().strip(),
                   (claim / "central-signing.pub").read_bytes(), platform, wd)


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - a listen address


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SimFleetError("bad_address", f"{text!r} is not HOST:PORT",
                            f"{text} 不是 主机:端口 形式")
    return host, int(port)


def fetch_claim_bundle(url: str, token: str, out: Path) -> None:
    """Write the claim bundle (``ykt fw claim-bundle``) from central to ``out``."""
    r = httpx.get(f"{url}api/fleet/claim-bundle", headers={"Authorization": f"Bearer {token}"},
                  timeout=20)
    if r.status_code != 200:
        raise SimFleetError("claim_bundle", f"central refused the claim bundle "
                            f"(HTTP {r.status_code}): is fleet trust on, is the token an "
                            "administrator's?", f"中心拒绝提供认领包（HTTP {r.status_code}）")
    b = r.json()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.pem").write_text(b["ca_pem"])
    (out / "central-signing.pub").write_text(b["signing_pub_pem"])
    fd = os.open(out / "claim.password", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(b["claim_password"] + "\n")


class CentralSite:
    """Central (with its Mosquitto, fleet CA and enrollment broker) and the reference platform
    in ``workdir``, in the site-in-a-box's layout but without terminals: what the fleet
    simulator needs, for tests and bench/fleet.py. ``fleet`` adds keys to ``[fleet]``."""

    def __init__(self, workdir: Path, *, seed: int = 1, fleet: dict[str, Any] | None = None,
                 central: dict[str, Any] | None = None) -> None:
        from yikatong.site.demo import Site

        self.site = Site(workdir, seed=seed)
        self._fleet = fleet or {}
        self._central = central or {}

    @property
    def workdir(self) -> Path:
        """The site's directory (``--workdir`` of ``ykt sim fleet``)."""
        return Path(self.site.workdir)

    @property
    def dashboard_url(self) -> str:
        """Central's dashboard/API URL."""
        return str(self.site.dashboard_url)

    def pid(self, name: str) -> int | None:
        """Process id of ``central`` or ``platform``."""
        return next((p.pid for n, p in self.site.procs if n == name), None)

    def start(self) -> None:
        """Platform, then central; the claim bundle written to ``workdir/claim``."""
        from yikatong.site.data import DEMO_STAFF_PIN
        from yikatong.site.demo import secret_file, toml_text, wait_http

        s = self.site
        try:
            wd = self.workdir
            wd.mkdir(parents=True, exist_ok=True)
            admin_file = secret_file(wd / "secrets" / "central-admin.token", s.admin_token)
            plat_cfg = wd / "platform-sim.toml"
            plat_cfg.write_text(toml_text({"platform_sim": {
                "db_path": str(wd / "platform.db"), "seed": s.seed, "admin_enabled": True,
                "demo_staff_pin": DEMO_STAFF_PIN}}))
            plat = s._spawn("platform", ["platform-sim", "--config", str(plat_cfg), "--host",
                                         "127.0.0.1", "--port", str(s.platform_port)])
            wait_http(f"{s.platform_url}/openapi.json", 30, plat)
            (wd / "central.toml").write_text(toml_text({
                "central": {"data_dir": str(wd / "central"), "site_name": "模拟设备群",
                            **self._central},
                "broker": {"mode": "embedded", "host": "127.0.0.1", "port": s.broker_port,
                           "tls": {"host": "127.0.0.1", "port": s.tls_port,
                                   "require_certificate": True}},
                "fleet": {"enroll_host": "127.0.0.1", "enroll_port": s.enroll_port,
                          "server_names": ["127.0.0.1", "localhost"], **self._fleet},
                "platform": {"kind": "reference", "base_url": s.platform_url},
                "dashboard": {"host": "127.0.0.1", "port": s.dashboard_port,
                              "admin_token_file": str(admin_file)},
            }))
            central = s._spawn("central", ["central", "--config", str(wd / "central.toml")])
            wait_http(f"{s.dashboard_url}api/status", 60, central)
            fetch_claim_bundle(s.dashboard_url, s.admin_token, wd / "claim")
        except BaseException:
            s.stop()
            raise

    def stop(self) -> None:
        """Stop both (and Mosquitto with central); nothing is left running."""
        self.site.stop()


# -- provisioning --------------------------------------------------------------------------


def device_ids(n: int, cashier_share: float) -> list[tuple[str, str]]:
    """(device id, role) of a fleet of ``n``: cashier desks ``simc-…``, kiosks ``simk-…``."""
    cashiers = min(n, round(n * cashier_share)) if n > 1 else 0
    return ([(f"simk-{i:05d}", "kiosk") for i in range(1, n - cashiers + 1)]
            + [(f"simc-{i:05d}", "cashier") for i in range(1, cashiers + 1)])


@dataclass
class Provisioned:
    """The fleet's identities and how they were obtained."""

    specs: list[DeviceSpec]
    reused: int = 0
    enrolled: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def _ca_hash(target: Target) -> str:
    return hashlib.sha256(target.ca_file.read_bytes()).hexdigest()


def _cached(d: Path, role: str, ca_hash: str, known: dict[str, Any], dev: str) -> bool:
    try:
        meta = json.loads((d / "identity.json").read_text())
        not_after = datetime.fromisoformat(meta["not_after"])
    except (OSError, ValueError, KeyError):
        return False
    row = known.get(dev)
    return (meta.get("role") == role and meta.get("ca_sha256") == ca_hash
            and (d / "device.key").exists() and (d / "device.pem").exists()
            and not_after > datetime.now(UTC) + timedelta(days=1)
            and row is not None and row.get("role") == role)


async def provision(target: Target, wanted: list[tuple[str, str]], *, batch: int = 100,
                    say: Callable[[str], None] = print) -> Provisioned:
    """Identities for ``wanted`` (cached ones reused, the rest enrolled by claim)."""
    t0 = time.monotonic()
    cache = target.workdir / "simfleet" / "identities"
    async with httpx.AsyncClient(timeout=60, headers=target.headers()) as http:
        r = await http.get(f"{target.dashboard_url}api/fleet/devices")
        if r.status_code != 200:
            raise SimFleetError("no_fleet_api", f"GET /api/fleet/devices: HTTP {r.status_code}",
                                f"无法读取设备列表（HTTP {r.status_code}）")
        known = {row["id"]: row for row in r.json()["devices"]}
        ca_hash = _ca_hash(target)
        out = Provisioned([])
        todo: list[tuple[str, str]] = []
        for dev, role in wanted:
            d = cache / dev
            if _cached(d, role, ca_hash, known, dev):
                out.specs.append(DeviceSpec(dev, role, str(d / "device.key"),
                                            str(d / "device.pem")))
                out.reused += 1
            else:
                todo.append((dev, role))
        if todo:
            say(f"[sim] enrolling {len(todo)} devices ({out.reused} reused), {batch} at a time")
            enroller = _Enroller(target, http, ca_hash, cache)
            await enroller.run(todo, batch, out, say)
    order = {dev: i for i, (dev, _r) in enumerate(wanted)}
    out.specs.sort(key=lambda s: order[s.dev])
    out.seconds = time.monotonic() - t0
    return out


class _Enroller:
    """Enrollment by claim for many devices at once, on one PahoLoop."""

    def __init__(self, target: Target, http: httpx.AsyncClient, ca_hash: str,
                 cache: Path) -> None:
        self.t = target
        self.http = http
        self.ca_hash = ca_hash
        self.cache = cache
        self.signing = public_key_from_pem(target.signing_pub_pem)

    async def run(self, todo: list[tuple[str, str]], batch: int, out: Provisioned,
                  say: Callable[[str], None]) -> None:
        loop = asyncio.get_running_loop()
        self.paho = PahoLoop(loop, threads=8)
        self.paho.start()
        sem = asyncio.Semaphore(batch)
        done = 0

        async def one(dev: str, role: str) -> None:
            nonlocal done
            async with sem:
                try:
                    out.specs.append(await self.enroll(dev, role))
                    out.enrolled += 1
                except (SimFleetError, OSError, TimeoutError, ProtocolError, ValueError,
                        httpx.HTTPError) as exc:
                    reason = exc.reason if isinstance(exc, SimFleetError) else type(exc).__name__
                    out.failed[f"{reason}: {exc}"[:160]] += 1
                done += 1
                if done % 500 == 0:
                    say(f"[sim] enrolled {done}/{len(todo)}")

        try:
            await asyncio.gather(*(one(dev, role) for dev, role in todo))
        finally:
            await self.paho.close()

    async def enroll(self, dev: str, role: str) -> DeviceSpec:
        """One device: key, CSR, claim connection, approval through the API, files."""
        serial = _SERIAL_PREFIX + dev
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
               .sign(key, hashes.SHA256()))
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        connack: asyncio.Future[int] = loop.create_future()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, protocol=mqtt.MQTTv311,
                        clean_session=True)
        c.username_pw_set("claim", self.t.claim_password)
        c.tls_set(ca_certs=str(self.t.ca_file))

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            if not connack.done():
                connack.set_result(int(getattr(rc, "value", rc)))

        c.on_connect = on_connect
        c.on_message = lambda _c, _u, m: inbox.put_nowait(bytes(m.payload))
        self.paho.attach(c)
        body = {"serial": serial, "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                "facts": {"serial": serial, "model": "ykt sim fleet", "version": "9.9.9-sim"}}
        try:
            await self.paho.connect(c, *self.t.enroll, 60)
            if await asyncio.wait_for(connack, 30) != 0:
                raise SimFleetError("claim_refused", "the enrollment broker refused the claim "
                                    "credential", "认领凭据被注册代理拒绝")
            self.paho.live[id(c)] = c
            c.subscribe(topics.enroll(serial, "cert"), 1)
            status = await self._ask(c, serial, body, inbox, "pending")
            r = await self.http.post(
                f"{self.t.dashboard_url}api/enrollments/{status.code}/approve",
                json={"device_id": dev, "role": role, "site": "模拟设备群"})
            if r.status_code != 200:
                raise SimFleetError("approve", f"approve {dev}: HTTP {r.status_code} "
                                    f"{r.text[:120]}", f"批准 {dev} 失败（HTTP {r.status_code}）")
            approved = await self._wait(inbox, "approved", 60)
        finally:
            c.disconnect()
            self.paho.live.pop(id(c), None)
        if approved.device_id != dev or approved.cert is None:
            raise SimFleetError("approve", f"{dev}: the approval names {approved.device_id}",
                                f"{dev}：批准结果的设备号不符")
        cert = x509.load_pem_x509_certificate(approved.cert.encode())
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise SimFleetError("approve", f"{dev}: the certificate is not for its key",
                                f"{dev}：证书与密钥不符")
        d = self.cache / dev
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / "device.key", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        (d / "device.pem").write_text(approved.cert)
        (d / "identity.json").write_text(json.dumps({
            "id": dev, "role": role, "serial": serial, "ca_sha256": self.ca_hash,
            "not_after": cert.not_valid_after_utc.isoformat()}))
        return DeviceSpec(dev, role, str(d / "device.key"), str(d / "device.pem"))

    async def _ask(self, c: mqtt.Client, serial: str, body: dict[str, Any],
                   inbox: asyncio.Queue[bytes], want: str) -> EnrollStatus:
        for _ in range(3):  # a device asks again every 30 s until it gets an answer
            env = new_envelope(TYPE_ENROLL_CSR, "enroll", body, now=datetime.now(UTC))
            c.publish(topics.enroll(serial, "csr"), encode(env), qos=1)
            with contextlib.suppress(TimeoutError):
                return await self._wait(inbox, want, 30)
        raise SimFleetError("no_answer", "central did not answer the enrollment request",
                            "中心未答复注册请求")

    async def _wait(self, inbox: asyncio.Queue[bytes], want: str,
                    timeout: float) -> EnrollStatus:  # noqa: ASYNC109
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            payload = await asyncio.wait_for(inbox.get(), max(left, 0.01))
            env = decode(payload)
            verify(env, self.signing)  # as a device does, before it reads anything in it
            st = EnrollStatus.model_validate(env.body)
            if st.status == want:
                return st
            if st.status in ("rejected", "expired"):
                raise SimFleetError("enroll_" + st.status, f"enrollment {st.status}: "
                                    f"{st.message or ''}", f"注册被{st.status}")


# -- the run -------------------------------------------------------------------------------


@dataclass
class FleetOptions:
    """What ``ykt sim fleet`` runs (also built by bench/fleet.py)."""

    devices: int = 20
    duration_s: float = 20.0
    rate: float = 2.0
    telemetry_s: float = 30.0
    event_s: float = 300.0
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    cashier_share: float = 0.2
    procs: int = 0  # 0: one per 2,500 devices, at most the CPU count
    enroll_batch: int = 100
    connect_concurrency: int = 64
    reply_timeout_s: float = 30.0
    badge: str = "S1001"
    pin: str = ""
    inject_mismatch: tuple[str, ...] = ()
    check_presence: bool = True
    requests: bool = True
    seed: int = 1


@dataclass
class FleetRun:
    """Everything one run produced (``summarize`` makes the report of it)."""

    options: FleetOptions
    provisioned: Provisioned
    workers: list[dict[str, Any]]
    connect_wall_s: float
    presence_online: dict[str, Any]
    presence_offline: dict[str, Any]
    traffic_s: float
    crashed: list[str]


def load_patients(target: Target) -> list[dict[str, str]]:
    """Patients whose cards the platform knows and has not blocked (its admin API)."""
    if not target.platform_url:
        raise SimFleetError("no_platform", "no platform URL (--platform): the simulator needs "
                            "the reference platform's patients for real replies",
                            "缺少平台地址（--platform）：模拟器需要参考平台的患者数据")
    base = target.platform_url.rstrip("/")
    try:
        r = httpx.get(f"{base}/admin/patients", timeout=30)
        h = httpx.get(f"{base}/api/v1/hotlist", params={"since_version": 0}, timeout=30)
    except httpx.HTTPError as exc:
        raise SimFleetError("platform", f"the platform at {base} does not answer: {exc}",
                            f"平台 {base} 无应答") from None
    if r.status_code != 200 or h.status_code != 200:
        raise SimFleetError("platform_admin", f"{base}/admin/patients, /api/v1/hotlist: HTTP "
                            f"{r.status_code}, {h.status_code} (the reference platform with "
                            "admin_enabled)", f"{base} 的患者或挂失列表不可用")
    blocked = set(h.json()["added"])  # since 0: the whole list of lost cards
    rows = r.json()
    rows = rows.get("patients", rows) if isinstance(rows, dict) else rows
    out = []
    for row in rows:
        p = row.get("patient", row)
        if p["card_no"] not in blocked:
            out.append({"card_no": p["card_no"]})
    if not out:
        raise SimFleetError("no_patients", "the platform has no usable patient",
                            "平台上没有可用的患者")
    return out


def presence(target: Target, ids: set[str]) -> dict[str, Any]:
    """How many of ``ids`` central shows online, and how long ``/api/devices`` took."""
    t0 = time.monotonic()
    r = httpx.get(f"{target.dashboard_url}api/devices", headers=target.headers(), timeout=120)
    took = time.monotonic() - t0
    r.raise_for_status()
    rows = [d for d in r.json()["devices"] if d["id"] in ids]
    return {"known": len(rows), "online": sum(1 for d in rows if d.get("online")),
            "seconds": took}


def _wait_presence(target: Target, ids: set[str], want_online: int, timeout: float
                   ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        p = presence(target, ids)
        if p["online"] == want_online or time.monotonic() > deadline:
            return p
        time.sleep(1.0)


def run_fleet(target: Target, opts: FleetOptions, *, say: Callable[[str], None] = print,
              during: Callable[[], None] | None = None) -> FleetRun:
    """Provision, connect, check presence, run the traffic, disconnect, check presence.

    ``during`` (bench/fleet.py) runs in this process while the traffic runs.
    """
    _raise_nofile()
    wanted = device_ids(opts.devices, opts.cashier_share)
    prov = asyncio.run(provision(target, wanted, batch=opts.enroll_batch, say=say))
    if prov.failed:
        say(f"[sim] {sum(prov.failed.values())} enrollments failed: "
            f"{prov.failed.most_common(3)}")
    specs = prov.specs
    brokers = target.brokers
    specs = [DeviceSpec(s.dev, s.role, s.key, s.cert, i % len(brokers))
             for i, s in enumerate(specs)]
    nprocs = opts.procs or max(1, min(os.cpu_count() or 1, math.ceil(len(specs) / 2500)))
    nprocs = max(1, min(nprocs, len(specs)))
    patients = load_patients(target) if opts.requests and opts.rate > 0 else []
    shares = [specs[i::nprocs] for i in range(nprocs)]
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    go, abort = ctx.Event(), ctx.Event()
    procs = []
    for i, share in enumerate(shares):
        plan = Plan(brokers=brokers, ca_file=str(target.ca_file),
                    signing_pub_pem=target.signing_pub_pem, duration_s=opts.duration_s,
                    telemetry_s=opts.telemetry_s, event_s=opts.event_s,
                    rate=opts.rate * len(share) / max(1, len(specs)), mix=opts.mix,
                    patients=patients, badge=opts.badge, pin=opts.pin,
                    reply_timeout_s=opts.reply_timeout_s, inject_mismatch=opts.inject_mismatch,
                    connect_concurrency=opts.connect_concurrency, seed=opts.seed + i,
                    requests=opts.requests)
        p = ctx.Process(target=worker_entry, args=(i, plan, share, out),
                        kwargs={"go": go, "abort": abort}, name=f"ykt-sim-fleet-{i}")
        p.start()
        procs.append(p)
    say(f"[sim] {len(specs)} devices in {nprocs} processes connecting to "
        f"{', '.join(f'{h}:{p}' for h, p in brokers)}")
    t0 = time.monotonic()
    stats: dict[int, dict[str, Any]] = {}
    crashed: list[str] = []
    connected = 0
    try:
        pending = set(range(nprocs))
        while pending:
            i, ev, data = _next(out, procs)
            if ev == "connected":
                pending.discard(i)
                connected += data["connected"]
            elif ev == "crashed":
                pending.discard(i)
                crashed.append(data["error"])
        connect_wall = time.monotonic() - t0
        say(f"[sim] {connected}/{len(specs)} connected in {connect_wall:.1f} s")
        ids = {s.dev for s in specs}
        online = (_wait_presence(target, ids, connected, 30) if opts.check_presence else {})
        if online:
            say(f"[sim] central shows {online['online']}/{len(ids)} online "
                f"(/api/devices took {online['seconds']:.2f} s)")
        say(f"[sim] traffic for {opts.duration_s:g} s at {opts.rate:g} requests/s, "
            f"telemetry every {opts.telemetry_s:g} s")
        t1 = time.monotonic()
        go.set()
        if during is not None:
            during()
        running = set(range(nprocs)) - {i for i in range(nprocs) if i in stats}
        traffic_s = 0.0
        while running:
            i, ev, data = _next(out, procs)
            if ev == "traffic_done" and not traffic_s:
                traffic_s = time.monotonic() - t1
            elif ev == "stats":
                stats[i] = data
                running.discard(i)
            elif ev == "crashed":
                crashed.append(data["error"])
                running.discard(i)
        traffic_s = traffic_s or time.monotonic() - t1
        offline = (_wait_presence(target, ids, 0, 30) if opts.check_presence else {})
    finally:
        abort.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
    return FleetRun(opts, prov, [stats[i] for i in sorted(stats)], connect_wall, online,
                    offline, traffic_s, crashed)


def _next(out: Any, procs: list[Any]) -> tuple[int, str, dict[str, Any]]:
    while True:
        try:
            item: tuple[int, str, dict[str, Any]] = out.get(timeout=1.0)
            return item
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SimFleetError("worker_died", f"worker {dead[0].name} exited with code "
                                    f"{dead[0].exitcode}", f"工作进程 {dead[0].name} 异常退出"
                                    ) from None


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the report ----------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(run: FleetRun) -> dict[str, Any]:
    """The JSON summary of a run (what ``--json`` prints)."""
    sent: Counter[str] = Counter()
    sent_before_go: Counter[str] = Counter()
    replies: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    visits: Counter[str] = Counter()
    received: Counter[str] = Counter()
    lat: dict[str, list[float]] = {}
    connect_s: list[float] = []
    connected = failed = 0
    for w in run.workers:
        sent.update(w["sent"])
        sent_before_go.update(w["sent_before_go"])
        replies.update(w["replies"])
        errors.update(w["errors"])
        notes.update(w["notes"])
        visits.update(w["visits"])
        received.update(w["received"])
        for k, v in w["latency"].items():
            lat.setdefault(k, []).extend(v)
        connect_s.extend(w["connect_s"])
        connected += w["connected"]
        failed += w["connect_failed"]
    n = len(run.provisioned.specs)
    problems: list[str] = []
    if run.provisioned.failed:
        problems.append(f"{sum(run.provisioned.failed.values())} enrollments failed")
    if connected < n:
        problems.append(f"{n - connected} devices did not connect")
    if errors:
        problems.append(f"{sum(errors.values())} unexpected replies or errors")
    if run.crashed:
        problems.append(f"{len(run.crashed)} worker processes crashed")
    if run.presence_online and run.presence_online["online"] != connected:
        problems.append(f"central shows {run.presence_online['online']} of {connected} "
                        "connected devices online")
    if run.presence_offline and run.presence_offline["online"] != 0:
        problems.append(f"central still shows {run.presence_offline['online']} devices "
                        "online after they left")
    reqs = sum(v for k, v in sent.items() if k.startswith("req "))
    return {
        "devices": {"wanted": run.options.devices, "provisioned": n,
                    "reused": run.provisioned.reused, "enrolled": run.provisioned.enrolled,
                    "enroll_failed": dict(run.provisioned.failed),
                    "enroll_s": round(run.provisioned.seconds, 2),
                    "connected": connected, "connect_failed": failed,
                    "connect_wall_s": round(run.connect_wall_s, 2),
                    "connect_s": _percentiles(connect_s)},
        "traffic_s": round(run.traffic_s, 2),
        "requests_per_s": round(reqs / run.traffic_s, 2) if run.traffic_s else 0.0,
        "sent": dict(sorted(sent.items())),
        "sent_before_go": dict(sorted(sent_before_go.items())),
        "received": dict(sorted(received.items())),
        "visits": dict(sorted(visits.items())),
        "replies": dict(sorted(replies.items())),
        "latency_s": {k: _percentiles(v) for k, v in sorted(lat.items())},
        "errors": dict(errors.most_common()),
        "notes": dict(notes.most_common()),
        "presence": {"online_while_up": run.presence_online,
                     "online_after_stop": run.presence_offline},
        "crashed": run.crashed,
        "simulator": {"processes": len(run.workers),
                      "cpu_s": round(sum(w.get("cost", {}).get("cpu_s", 0.0)
                                         for w in run.workers), 2),
                      "rss_kb": sum(w.get("cost", {}).get("rss_kb", 0) for w in run.workers)},
        "ok": not problems,
        "problems": problems,
    }


def _percentiles(v: list[float]) -> dict[str, float]:
    return {"n": len(v), "p50": round(_pct(v, 0.5), 4), "p90": round(_pct(v, 0.9), 4),
            "p99": round(_pct(v, 0.99), 4), "max": round(max(v), 4) if v else 0.0}


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable table."""
    d = s["devices"]
    lines = [
        f"devices   {d['connected']}/{d['provisioned']} connected ({d['reused']} identities "
        f"reused, {d['enrolled']} enrolled in {d['enroll_s']} s); connect p50 "
        f"{d['connect_s']['p50']:.3f} s, max {d['connect_s']['max']:.3f} s; all connected in "
        f"{d['connect_wall_s']} s",
        f"traffic   {s['traffic_s']} s, {s['requests_per_s']} requests/s",
        "",
        f"{'sent':<34}{'count':>9}",
    ]
    lines += [f"  {k:<32}{v:>9}" for k, v in s["sent"].items()]
    lines += ["", f"{'received (by topic)':<34}{'count':>9}"]
    lines += [f"  {k:<32}{v:>9}" for k, v in s["received"].items()]
    lines += ["", f"{'reply (type outcome)':<34}{'count':>9}"]
    lines += [f"  {k:<32}{v:>9}" for k, v in s["replies"].items()]
    lines += ["", f"{'latency (s)':<22}{'n':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
    for k, v in s["latency_s"].items():
        lines.append(f"  {k:<20}{v['n']:>7}{v['p50']:>9.3f}{v['p90']:>9.3f}{v['p99']:>9.3f}"
                     f"{v['max']:>9.3f}")
    p = s["presence"]
    if p["online_while_up"]:
        lines += ["", f"presence  online while up: {p['online_while_up']['online']}/"
                  f"{d['connected']}, after stop: {p['online_after_stop'].get('online')}"]
    if s["notes"]:
        lines += ["", "notes (expected):"] + [f"  {v:>7}  {k}" for k, v in s["notes"].items()]
    if s["errors"]:
        lines += ["", "ERRORS:"] + [f"  {v:>7}  {k}" for k, v in s["errors"].items()]
    lines += ["", "result    " + ("OK" if s["ok"] else "FAILED: " + "; ".join(s["problems"]))]
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------


def _mix(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k not in VISITS:
            raise argparse.ArgumentTypeError(f"unknown visit {k!r}; one of {', '.join(VISITS)}")
        try:
            out[k] = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: weight must be a number") from None
    return out


def add_sim_fleet_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ykt sim fleet``."""
    p.add_argument("--workdir", type=Path, default=Path("var/demo"),
                   help="the site's working directory (ykt demo --workdir); identities are "
                   "cached under WORKDIR/simfleet/")
    p.add_argument("--devices", type=int, default=20, help="number of simulated devices")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of traffic")
    p.add_argument("--rate", type=float, default=2.0,
                   help="requests per second over the whole fleet (0: telemetry only)")
    p.add_argument("--telemetry-s", type=float, default=30.0, help="telemetry interval")
    p.add_argument("--event-s", type=float, default=300.0,
                   help="printer.status event interval per device (0: none)")
    p.add_argument("--mix", type=_mix, default=dict(DEFAULT_MIX),
                   help="visit weights, e.g. identify=2,slots=1,book=3,reports=2,pay=2 "
                   "(pay at cashier desks, the others at kiosks)")
    p.add_argument("--cashiers", type=float, default=0.2, help="share of cashier desks")
    p.add_argument("--procs", type=int, default=0,
                   help="worker processes (0: one per 2,500 devices, at most the CPUs)")
    p.add_argument("--enroll-batch", type=int, default=100,
                   help="enrollments at once (below central's max_open_enrollments)")
    p.add_argument("--reply-timeout", type=float, default=30.0, help="seconds to wait for a reply")
    p.add_argument("--badge", default=None, help="staff badge the cashier desks sign in with")
    p.add_argument("--pin-file", type=Path, default=None,
                   help="file with the badge's PIN (default: the site-in-a-box's demo PIN)")
    p.add_argument("--central", default=None, help="central's dashboard URL (default: from "
                   "WORKDIR/central.toml)")
    p.add_argument("--token-file", type=Path, default=None, help="admin token file")
    p.add_argument("--broker", action="append", default=[], metavar="HOST:PORT",
                   help="a device (mutual TLS) listener; repeat for several central instances")
    p.add_argument("--enroll", default=None, metavar="HOST:PORT", help="the enrollment broker")
    p.add_argument("--platform", default=None, help="the reference platform's URL")
    p.add_argument("--inject-mismatch", action="append", default=[], metavar="TYPE",
                   help="self-test of the checker: treat every reply to TYPE as wrong")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated traffic")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    """Run ``ykt sim fleet``; 0 all good, 1 something unexpected, 2 the site is unusable."""
    from yikatong.site.data import DEMO_BADGE, DEMO_STAFF_PIN

    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else \
        (lambda text: print(text, flush=True))
    try:
        target = Target.from_args(args)
        pin = args.pin_file.read_text().strip() if args.pin_file else DEMO_STAFF_PIN
        opts = FleetOptions(devices=args.devices, duration_s=args.duration, rate=args.rate,
                            telemetry_s=args.telemetry_s, event_s=args.event_s, mix=args.mix,
                            cashier_share=args.cashiers, procs=args.procs,
                            enroll_batch=args.enroll_batch, reply_timeout_s=args.reply_timeout,
                            badge=args.badge or DEMO_BADGE, pin=pin,
                            inject_mismatch=tuple(args.inject_mismatch), seed=args.seed)
        run = run_fleet(target, opts, say=say)
    except SimFleetError as exc:
        print(f"ykt sim fleet: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"ykt sim fleet: central does not answer / 中心无应答: {exc}", file=sys.stderr)
        return 2
    summary = summarize(run)
    print(json.dumps(summary, ensure_ascii=False, indent=1) if args.json
          else format_summary(summary))
    return 0 if summary["ok"] else 1
