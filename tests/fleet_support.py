"""The fleet-trust rig for tests/central/test_fleet_*.py (importable as ``fleet_support``).

:func:`fleet_rig` builds what ``ykt central`` runs with ``[fleet]``: central's store and
registry (no device passwords), the fleet service with its CA, signing key and real
enrollment Mosquitto, the device broker (a real Mosquitto: loopback plain listener for
central, mutual-TLS listener with the fleet CA's CRL), central's config/command publisher
and the forwarder. Devices are played by paho clients: :class:`RawClient` (blocking, run
through ``asyncio.to_thread``) and helpers that make keys and CSRs as a device does.
"""

from __future__ import annotations

import asyncio
import json
import queue
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from support import Broker, wait_until_async

from central.app import device_tls_listener
from central.authz import Guard
from central.broker import Listener, free_port
from central.config import BrokerTlsSection
from central.fleet import FleetSection
from central.fleet.service import FleetService
from central.forwarder import Forwarder, ForwarderSettings
from central.hotlist import FleetPublisher
from central.platform.base import PlatformAdapter
from central.platform.errors import PlatformUnavailable
from central.registry import Registry
from central.store import Store, open_store
from yikatong.mqtt.session import state_payload
from yikatong.protocol.envelope import Envelope, decode, encode, new_envelope

FACTS = {"model": "YKT-K1", "mac": "dc:a6:32:01:02:03", "hostname": "kiosk-lobby",
         "version": "1.4.0"}


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class NoPlatform(PlatformAdapter):
    """Fleet requests never reach the platform; anything else is 'unavailable'."""

    async def call(self, op: str, body: dict[str, Any], *, idempotency_key: str,
                   timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109
        raise PlatformUnavailable(f"no platform in this test ({op})")

    async def aclose(self) -> None:
        return None


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(cn: str, key: Any = None) -> tuple[str, Any]:
    """A CSR with CN = ``cn`` from ``key`` (a new P-256 key by default): (PEM, key)."""
    key = key or make_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def key_pem(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()))


def csr_envelope(serial: str, csr: str, **facts: Any) -> bytes:
    body = {"serial": serial, "csr": csr, "facts": {"serial": serial, **FACTS, **facts}}
    return encode(new_envelope("enroll.csr", "enroll", body, now=datetime.now(UTC)))


class RawClient:
    """A paho client (3.1.1) with blocking helpers; call them through ``asyncio.to_thread``."""

    def __init__(self, client_id: str, *, port: int, username: str | None = None,
                 password: str | None = None, cafile: Path | None = None,
                 certfile: Path | None = None, keyfile: Path | None = None) -> None:
        self.client_id = client_id
        self.port = port
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._subacks: dict[int, list[int]] = {}
        self._sub_done = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=True)
        if username is not None:
            c.username_pw_set(username, password)
        if cafile is not None:
            c.tls_set(ca_certs=str(cafile), certfile=str(certfile) if certfile else None,
                      keyfile=str(keyfile) if keyfile else None, cert_reqs=ssl.CERT_REQUIRED)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = lambda _c, _u, m: self.messages.put(m)
        c.on_subscribe = self._on_subscribe
        self.c = c

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = int(getattr(rc, "value", rc))
        if self.connack == 0:
            self.disconnected.clear()
            self.connected.set()
        else:
            self.disconnected.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected.clear()
        self.disconnected.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any = None) -> None:
        with self._sub_done:
            self._subacks[mid] = [int(getattr(r, "value", r)) for r in rcs]
            self._sub_done.notify_all()
        return None

    def connect(self, timeout: float = 5.0) -> bool:
        """Connect; True if the broker accepted (False: refused, TLS failure or timeout)."""
        try:
            self.c.connect("127.0.0.1", self.port, keepalive=20)
        except (OSError, ssl.SSLError):
            return False
        self.c.loop_start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self.connected.is_set() or self.disconnected.is_set():
                break
            deadline.wait(0.02)
        return self.connected.is_set()

    def subscribe(self, topic: str, timeout: float = 5.0) -> int:
        """Subscribe at QoS 1; return the granted QoS (128 = refused by the broker)."""
        _rc, sent_mid = self.c.subscribe(topic, 1)
        mid = int(sent_mid or 0)
        with self._sub_done:
            self._sub_done.wait_for(lambda: mid in self._subacks, timeout)
            return self._subacks.get(mid, [-1])[0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                timeout: float = 5.0) -> bool:
        """Publish QoS 1 and wait for PUBACK (Mosquitto acks refused publishes too)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout)
        return info.is_published()

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_env(self, timeout: float = 5.0) -> Envelope | None:
        msg = self.get(timeout)
        return None if msg is None else decode(bytes(msg.payload))

    def close(self) -> None:
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()


@dataclass
class Identity:
    """An enrolled device's files: key, certificate, the chain."""

    dev: str
    key: Path
    cert: Path
    chain: Path
    serial: str = ""


@dataclass
class FleetRig:
    """Central with fleet trust on two real brokers (see the module docstring)."""

    workdir: Path
    clock: Clock
    store: Store
    registry: Registry
    fleet: FleetService
    broker: Broker
    forwarder: Forwarder
    guard: Guard
    clients: list[RawClient] = field(default_factory=list)

    @property
    def plain_port(self) -> int:
        return self.broker.mosquitto.cfg.listeners[0].port

    @property
    def tls_port(self) -> int:
        return self.broker.mosquitto.cfg.listeners[1].port

    @property
    def enroll_port(self) -> int:
        return self.fleet.enroll_broker.port

    @property
    def chain(self) -> Path:
        return self.fleet.ca.chain_file

    def track(self, client: RawClient) -> RawClient:
        self.clients.append(client)
        return client

    def claim(self, serial: str, *, password: str | None = None,
              client_id: str | None = None) -> RawClient:
        """A new device on the enrollment broker with the claim credential."""
        return self.track(RawClient(
            client_id or serial, port=self.enroll_port, username="claim",
            password=password if password is not None
            else self.fleet.claim_bundle()["claim_password"], cafile=self.chain))

    def device(self, ident: Identity, *, client_id: str | None = None) -> RawClient:
        """A device on the device broker's mutual-TLS listener with its certificate."""
        return self.track(RawClient(client_id or ident.dev, port=self.tls_port,
                                    cafile=ident.chain, certfile=ident.cert,
                                    keyfile=ident.key))

    async def enroll(self, serial: str, dev: str, *, role: str = "kiosk",
                     site: str = "门诊楼") -> Identity:
        """Enroll ``serial`` as ``dev`` over MQTT end to end; return its identity files."""
        csr, key = make_csr(serial)
        c = self.claim(serial)
        assert await asyncio.to_thread(c.connect)
        assert await asyncio.to_thread(c.subscribe, f"ykt/v1/enroll/{serial}/cert") == 1
        await asyncio.to_thread(c.publish, f"ykt/v1/enroll/{serial}/csr",
                                csr_envelope(serial, csr))
        pending = await asyncio.to_thread(c.get_env, 10)
        assert pending is not None and pending.body["status"] == "pending", pending
        await self.fleet.approve(pending.body["code"], device_id=dev, role=role, site=site,
                                 actor="tech-wang")
        approved = await asyncio.to_thread(c.get_env, 10)
        assert approved is not None and approved.body["status"] == "approved", approved
        await asyncio.to_thread(c.close)
        return self.write_identity(dev, key, approved.body["cert"], approved.body["chain"])

    def write_identity(self, dev: str, key: Any, cert: str, chain: str) -> Identity:
        serial = str(x509.load_pem_x509_certificate(cert.encode()).serial_number)
        d = self.workdir / "devices" / dev / serial  # one folder per certificate
        d.mkdir(parents=True, exist_ok=True)
        (d / "device.key").write_bytes(key_pem(key))
        (d / "device.pem").write_text(cert)
        (d / "chain.pem").write_text(chain)
        return Identity(dev, d / "device.key", d / "device.pem", d / "chain.pem", serial)

    async def online(self, ident: Identity, *, boot_seq: int = 1) -> RawClient:
        """Connect ``ident`` with its certificate, subscribe its down/#, publish its birth."""
        c = self.device(ident)
        assert await asyncio.to_thread(c.connect), f"{ident.dev} was refused"
        assert await asyncio.to_thread(c.subscribe, f"ykt/v1/dev/{ident.dev}/down/#") == 1
        birth = state_payload(dev=ident.dev, online=True, boot_seq=boot_seq,
                              now=datetime.now(UTC), version="1.4.0", role="kiosk")
        await asyncio.to_thread(c.publish, f"ykt/v1/dev/{ident.dev}/state", birth, retain=True)
        dev = ident.dev
        await wait_until_async(lambda: (d := self.store.device(dev)) is not None and d.online,
                               10, what=f"{dev} online at central")
        return c

    async def refused(self, ident: Identity, wait_s: float = 10.0) -> bool:
        """True once the device broker refuses ``ident``'s certificate (a reload is async)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            c = RawClient(ident.dev, port=self.tls_port, cafile=ident.chain,
                          certfile=ident.cert, keyfile=ident.key)
            ok = await asyncio.to_thread(c.connect, 3.0)
            await asyncio.to_thread(c.close)
            if not ok:
                return True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.2)

    async def send(self, c: RawClient, dev: str, kind: str, type_: str,
                   body: dict[str, Any], **kw: Any) -> Envelope:
        env = new_envelope(type_, dev, body, now=datetime.now(UTC), **kw)
        await asyncio.to_thread(c.publish, f"ykt/v1/dev/{dev}/up/{kind}", encode(env))
        return env

    async def request(self, c: RawClient, dev: str, type_: str, body: dict[str, Any],
                      wait_s: float = 10.0) -> dict[str, Any]:
        """A request on up/req; returns the reply body (``down/resp`` with corr = its id)."""
        now = datetime.now(UTC)
        env = await self.send(c, dev, "req", type_, body, exp=now + timedelta(minutes=5))
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            msg = await asyncio.to_thread(c.get, 0.5)
            if msg is None or not msg.topic.endswith("/down/resp"):
                continue
            reply = json.loads(msg.payload)
            if reply.get("corr") == env.id:
                return dict(reply["body"])
        raise AssertionError(f"no reply to {type_}")

    async def next_on(self, c: RawClient, suffix: str, wait_s: float = 10.0) -> Envelope:
        """The next message ``c`` gets on a topic ending in ``suffix`` (others skipped)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while asyncio.get_running_loop().time() < deadline:
            msg = await asyncio.to_thread(c.get, 0.5)
            if msg is not None and msg.topic.endswith(suffix):
                return decode(bytes(msg.payload))
        raise AssertionError(f"nothing on *{suffix}")

    def audits(self, action: str) -> list[dict[str, Any]]:
        return [{"actor": e.actor, **e.detail} for e in self.store.audit_entries()
                if e.action == action]


async def start_fleet_rig(workdir: Path, make_broker: Callable[..., Broker], *,
                          clock: Clock | None = None, db: Path | str | None = None,
                          **section: Any) -> FleetRig:
    """Build and start the rig in ``workdir`` (brokers stopped by ``make_broker``); central's
    store at ``db`` (tests/conftest.py ``central_db``: SQLite or PostgreSQL), by default
    ``workdir/central.db``."""
    clock = clock or Clock()
    store = open_store(db if db is not None else workdir / "central.db")
    registry = Registry(store, workdir / "broker", legacy_passwords=False, clock=clock)
    fwd_login = registry.central_credentials("central")
    cfg_login = registry.central_credentials("central-cfg")
    section.setdefault("enroll_port", free_port())
    fleet = FleetService(store, registry, FleetSection(**section), data_dir=workdir,
                         clock=clock)
    tls = device_tls_listener(BrokerTlsSection(port=8883, require_certificate=True), fleet)
    broker = make_broker(workdir / "broker", central=None, passwd=registry.password_file,
                         acl=registry.acl_file, persistence=False, listeners=[
                             Listener(host="127.0.0.1", port=0),
                             Listener(host="127.0.0.1", port=0, tls=tls)])
    registry._on_change = broker.mosquitto.reload  # type: ignore[assignment]
    fleet._reload_broker = broker.mosquitto.reload
    port = broker.mosquitto.cfg.listeners[0].port
    fleet.publisher = FleetPublisher(host="127.0.0.1", port=port, client_id="central-cfg",
                                     username=cfg_login.username, password=cfg_login.password,
                                     on_connected=fleet.on_publisher_connected)
    guard = Guard(store, clock=clock)
    fleet.install(guard)
    settings = ForwarderSettings(host="127.0.0.1", port=port, username=fwd_login.username,
                                 password=SecretStr(fwd_login.password), client_id="central",
                                 concurrency=4)
    forwarder = Forwarder(settings, store, NoPlatform(), guard=guard, fleet=fleet, clock=clock)
    await fleet.start()
    await forwarder.start()
    assert await fleet.wait_ready(10)
    assert await forwarder.wait_connected(10)
    return FleetRig(workdir, clock, store, registry, fleet, broker, forwarder, guard)


async def stop_fleet_rig(rig: FleetRig) -> None:
    for c in rig.clients:
        await asyncio.to_thread(c.close)
    await rig.forwarder.stop()
    await rig.fleet.stop()
    leftover = rig.fleet.enroll_broker.mosquitto
    assert leftover is None or not leftover.leftovers(), "enrollment broker left running"
    rig.store.close()


@pytest.fixture(name="rig")
async def rig_fixture(tmp_path: Path, make_broker: Callable[..., Broker],
                      central_db: Callable[[Path], Path | str]) -> AsyncIterator[FleetRig]:
    """A started :class:`FleetRig` in ``tmp_path`` (its store on the test's engine:
    ``central_db``); everything stopped afterwards."""
    r = await start_fleet_rig(tmp_path, make_broker, db=central_db(tmp_path))
    try:
        yield r
    finally:
        await stop_fleet_rig(r)


def enroll_on_site(site: Any, serial: str, dev: str, out: Path, *, role: str = "kiosk",
                   site_name: str = "门诊楼") -> Identity:
    """Enroll a device on a running site-in-a-box the way a real one does: claim credential on
    the enrollment broker, CSR, a technician's approval through the dashboard API, certificate
    back. Returns its identity files under ``out`` (the device never has to connect)."""
    import httpx

    csr, key = make_csr(serial)
    c = RawClient(serial, port=site.enroll_port, username="claim",
                  password=(site.claim_dir / "claim.password").read_text().strip(),
                  cafile=site.claim_dir / "ca.pem")
    try:
        assert c.connect(10), f"the enrollment broker refused the claim credential ({c.connack})"
        assert c.subscribe(f"ykt/v1/enroll/{serial}/cert") == 1
        c.publish(f"ykt/v1/enroll/{serial}/csr", csr_envelope(serial, csr))
        pending = c.get_env(15)
        assert pending is not None and pending.body["status"] == "pending", pending
        auth = {"Authorization": f"Bearer {site.admin_token}"}
        r = httpx.post(f"{site.dashboard_url}api/enrollments/{pending.body['code']}/approve",
                       json={"device_id": dev, "role": role, "site": site_name},
                       headers=auth, timeout=20)
        r.raise_for_status()
        approved = c.get_env(15)
        assert approved is not None and approved.body["status"] == "approved", approved
    finally:
        c.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "device.key").write_bytes(key_pem(key))
    (out / "device.pem").write_text(approved.body["cert"])
    (out / "chain.pem").write_text(approved.body["chain"])
    cert_serial = str(x509.load_pem_x509_certificate(approved.body["cert"].encode()).serial_number)
    return Identity(dev, out / "device.key", out / "device.pem", out / "chain.pem", cert_serial)
