"""Fixtures of the fleet-trust tests: the test plays central (signing key, fleet CA, brokers).

Central's own code is not used to sign or answer: the tests sign with their own Ed25519 key
and issue certificates with :class:`central.ca.FleetCA` (tests may import central; the
device code may not).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import Broker

from central.broker import Listener, TlsListener, mosquitto_passwd_set, render_acl
from central.ca import FleetCA
from yikatong.protocol.envelope import encode, format_ts, new_envelope
from yikatong.protocol.fleet import (
    TYPE_CMD,
    TYPE_CONFIG_DESIRED,
    RemoteSettings,
    settings_hash,
)
from yikatong.protocol.messages import dump_body
from yikatong.protocol.signing import public_key_to_pem, sign

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


class Clock:
    """A settable UTC clock (callable)."""

    def __init__(self, now: datetime = NOW) -> None:
        self.t = now

    def __call__(self) -> datetime:
        return self.t

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class Signer:
    """Central's signing side: config.desired and cmd envelopes, signed (or not)."""

    def __init__(self, key: Ed25519PrivateKey, clock: Clock) -> None:
        self.key = key
        self.clock = clock

    def pub_pem(self) -> bytes:
        return public_key_to_pem(self.key.public_key())

    def config_env(self, dev: str, seq: int, settings: dict[str, Any] | None = None, *,
                   version: int | None = None, exp_s: float = 30 * 86400,
                   key: Ed25519PrivateKey | None = None, body: dict[str, Any] | None = None,
                   signed: bool = True, exp: bool = True):
        rs = RemoteSettings.model_validate(settings or {})
        b = body if body is not None else {"version": version or seq, "hash": settings_hash(rs),
                                           "settings": dump_body(rs)}
        env = new_envelope(TYPE_CONFIG_DESIRED, dev, b, now=self.clock(), seq=seq,
                           exp=self.clock() + timedelta(seconds=exp_s) if exp else None)
        return sign(env, key or self.key) if signed else env

    def config(self, *a: Any, **kw: Any) -> bytes:
        return encode(self.config_env(*a, **kw))

    def cmd(self, dev: str, seq: int, name: str, args: dict[str, Any] | None = None, *,
            command_id: str | None = None, exp_s: float = 600,
            key: Ed25519PrivateKey | None = None) -> bytes:
        body = {"command_id": command_id or secrets.token_hex(16), "name": name,
                "args": args or {}}
        env = new_envelope(TYPE_CMD, dev, body, now=self.clock(), seq=seq,
                           exp=self.clock() + timedelta(seconds=exp_s))
        return encode(sign(env, key or self.key))


@dataclass
class FakeLink:
    """Stands in for the uplink: keeps results; answers requests from ``answers``."""

    results: list[tuple[str, dict[str, Any], str | None]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)
    handlers: dict[str, list[Any]] = field(default_factory=dict)
    connected: bool = True

    async def publish_result(self, type: str, body: dict[str, Any], *, corr: str | None) -> str:
        self.results.append((type, body, corr))
        return secrets.token_hex(16)

    async def request(self, type: str, body: dict[str, Any], **kw: Any) -> Any:
        self.requests.append((type, body))
        answer = self.answers[type]
        return answer(body) if callable(answer) else answer

    def on_message(self, kind: str, handler: Any) -> None:
        self.handlers.setdefault(kind, []).append(handler)

    def states(self, command_id: str | None = None) -> list[str]:
        """cmd.result states (of one command), in order."""
        return [b["state"] for t, b, _ in self.results if t == "cmd.result"
                and (command_id is None or b.get("command_id") == command_id)]

    def config_reports(self) -> list[dict[str, Any]]:
        return [b for t, b, _ in self.results if t == "config.report"]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def signer(clock: Clock) -> Signer:
    return Signer(Ed25519PrivateKey.generate(), clock)


@pytest.fixture
def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
def fleet_ca(tmp_path: Path) -> FleetCA:
    return FleetCA.open(tmp_path / "ca")


@dataclass
class EnrollBroker:
    """The enrollment broker (TLS, claim account, %c ACL) and central's account on it."""

    broker: Broker
    port: int
    cafile: Path
    claim_password_file: Path
    central_user: str
    central_password: str


@pytest.fixture
def make_enroll_broker(make_broker: Callable[..., Broker], fleet_ca: FleetCA, tmp_path: Path
                       ) -> Callable[[], EnrollBroker]:
    """``make_enroll_broker()``: a started enrollment Mosquitto as docs/fleet-trust.md has it."""
    def make() -> EnrollBroker:
        d = tmp_path / "enroll-broker"
        d.mkdir(exist_ok=True)
        issued, key = fleet_ca.issue_server(["127.0.0.1", "localhost"])
        (d / "server.pem").write_bytes(issued.pem)
        (d / "server.key").write_bytes(key)
        (d / "server.key").chmod(0o600)
        passwd = d / "passwd"
        claim_pw, central_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        mosquitto_passwd_set(passwd, "claim", claim_pw)
        mosquitto_passwd_set(passwd, "central-enroll", central_pw)
        acl = d / "acl"
        acl.write_text("pattern write ykt/v1/enroll/%c/csr\n"
                       "pattern read ykt/v1/enroll/%c/cert\n\n"
                       "user central-enroll\ntopic readwrite ykt/v1/enroll/#\n")
        b = make_broker(d, central=None, passwd=passwd, acl=acl,
                        use_username_as_clientid=False, listeners=[
                            Listener(host="127.0.0.1", port=0, tls=TlsListener(
                                cafile=fleet_ca.chain_file, certfile=d / "server.pem",
                                keyfile=d / "server.key"))])
        pw = tmp_path / "claim.password"
        pw.write_text(claim_pw + "\n")
        pw.chmod(0o600)
        return EnrollBroker(b, b.port, fleet_ca.chain_file, pw, "central-enroll", central_pw)
    return make


@pytest.fixture
def make_device_broker(make_broker: Callable[..., Broker], fleet_ca: FleetCA, tmp_path: Path
                       ) -> Callable[[], tuple[Broker, Path, Path]]:
    """``make_device_broker()``: mutual TLS, identity = certificate CN; returns the broker
    and central's client certificate and key (CN ``central``)."""
    def make() -> tuple[Broker, Path, Path]:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from edge.fleet.identity import make_csr

        d = tmp_path / "device-broker"
        d.mkdir(exist_ok=True)
        issued, key = fleet_ca.issue_server(["127.0.0.1", "localhost"])
        (d / "server.pem").write_bytes(issued.pem)
        (d / "server.key").write_bytes(key)
        (d / "server.key").chmod(0o600)
        ckey = ec.generate_private_key(ec.SECP256R1())
        (d / "central.key").write_bytes(ckey.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (d / "central.key").chmod(0o600)
        # FleetCA issues to device ids only; "central" is reserved there, "central-x" is not.
        (d / "central.pem").write_bytes(fleet_ca.issue_device(make_csr(ckey, "central-x"),
                                                              "central-x").pem)
        acl = d / "acl"
        acl.write_text(render_acl("central-x"))
        b = make_broker(d, central=None, acl=acl, listeners=[
            Listener(host="127.0.0.1", port=0, tls=TlsListener(
                cafile=fleet_ca.chain_file, certfile=d / "server.pem", keyfile=d / "server.key",
                require_certificate=True, use_identity_as_username=True))])
        return b, d / "central.pem", d / "central.key"
    return make


@pytest.fixture
def fleet() -> dict[str, Any]:
    """Test helper classes (test modules cannot import a conftest)."""
    return {"Clock": Clock, "Signer": Signer, "FakeLink": FakeLink, "format_ts": format_ts,
            "NOW": NOW}



@pytest.fixture
def issue(fleet_ca: FleetCA) -> Callable[..., bytes]:
    """``issue(csr_pem, dev)``: a client certificate for the CSR's key with CN = ``dev``,
    signed by the fleet CA's issuing key (as central does at approval: the device's CSR names
    its serial, the certificate the device id)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def make(csr_pem: bytes | str, dev: str, *, days: int = 398) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        key = serialization.load_pem_private_key(
            (fleet_ca.directory / "issuing.key").read_bytes(), None)
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                            "Yikatong"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, dev)]))
                .issuer_name(fleet_ca.issuing.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
        return cert.public_bytes(serialization.Encoding.PEM)
    return make
