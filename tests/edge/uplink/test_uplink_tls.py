"""Mutual TLS: the broker takes the device id from the certificate CN; foreign certs fail."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import Broker

from central.broker import Listener, TlsListener, render_acl
from edge.uplink.client import Uplink
from edge.uplink.config import TlsConfig, UplinkConfig
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol.envelope import decode

NOW = datetime.now(UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False,
          server: bool = False) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


class Pki:
    """A throwaway CA issuing the broker's and clients' certificates."""

    def __init__(self, d: Path, name: str = "Yikatong Test CA") -> None:
        self.d = d
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = _cert(name, self.key, self.name, self.key, ca=True)
        self.cafile = d / f"{name.replace(' ', '_')}.pem"
        self.cafile.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = _key()
        cert = _cert(cn, key, self.name, self.key, server=server)
        certfile = self.d / f"{cn}-{id(cert)}.pem"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return certfile, _write_key(self.d / f"{cn}-{id(cert)}.key", key)


async def test_mutual_tls_with_identity_as_username(
        tmp_path: Path, make_broker: Callable[..., Broker]) -> None:
    pki = Pki(tmp_path)
    srv_cert, srv_key = pki.issue("broker", server=True)
    acl = tmp_path / "acl"
    acl.write_text(render_acl("central"))
    broker = make_broker(central=None, acl=acl, listeners=[
        Listener(host="127.0.0.1", port=0, tls=TlsListener(
            cafile=pki.cafile, certfile=srv_cert, keyfile=srv_key,
            require_certificate=True, use_identity_as_username=True))])
    c_cert, c_key = pki.issue("central")
    q: asyncio.Queue[InboundMessage] = asyncio.Queue()
    central = MqttSession(
        "central", host="127.0.0.1", port=broker.port,
        tls=TlsConfig(cafile=pki.cafile, certfile=c_cert, keyfile=c_key),
        subscriptions=[("ykt/v1/dev/+/state", 1)], on_message=q.put_nowait,
    )
    await central.start()
    assert await central.wait_connected(10)
    d_cert, d_key = pki.issue("kiosk-301")
    up = Uplink(
        UplinkConfig(
            host="127.0.0.1", port=broker.port,
            tls=TlsConfig(cafile=pki.cafile, certfile=d_cert, keyfile=d_key),
            outbox_path=tmp_path / "o.db", state_path=tmp_path / "s.json",
        ),
        "kiosk-301", role="kiosk", version="1",
    )
    await up.start()
    try:
        assert await up.wait_connected(10)
        msg = await asyncio.wait_for(q.get(), 10)
        assert msg.topic == "ykt/v1/dev/kiosk-301/state"
        assert decode(msg.payload).body["online"] is True
    finally:
        await up.stop()
        await central.stop()
    # a certificate from another CA is refused at the handshake
    rogue = Pki(tmp_path, "Rogue CA")
    r_cert, r_key = rogue.issue("kiosk-302")
    intruder = MqttSession(
        "kiosk-302", host="127.0.0.1", port=broker.port, backoff_min_s=0.05,
        backoff_max_s=0.2,
        tls=TlsConfig(cafile=pki.cafile, certfile=r_cert, keyfile=r_key),
    )
    await intruder.start()
    try:
        assert await intruder.wait_connected(1.0) is False
    finally:
        await intruder.stop()
