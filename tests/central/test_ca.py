"""The fleet CA (central/ca.py): device certificates from device-made keys, the broker's
certificate, revocation — checked with cryptography and against a real Mosquitto that
requires client certificates, takes the identity from the CN and reads the CRL."""

from __future__ import annotations

import os
import ssl
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import Broker, wait_until

from central.broker import Listener, TlsListener, render_acl
from central.ca import CaError, FleetCA

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def csr_for(cn: str, key: object | None = None) -> tuple[bytes, bytes]:
    """What a device makes itself: a P-256 key (kept) and a CSR naming it."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    pem_key = key.private_bytes(serialization.Encoding.PEM,  # type: ignore[union-attr]
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return csr.public_bytes(serialization.Encoding.PEM), pem_key


def test_device_certificate_chains_to_the_root_and_names_the_device(tmp_path: Path) -> None:
    ca = FleetCA.open(tmp_path / "ca", now=NOW)
    csr, _ = csr_for("kiosk-001")
    issued = ca.issue_device(csr, "kiosk-001", now=NOW)
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kiosk-001"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca.issuing)
    ca.issuing.verify_directly_issued_by(ca.root)
    assert cert.not_valid_after_utc - NOW == timedelta(days=398)
    # Keys are private to root; the directory too.
    for name in ("root.key", "issuing.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "ca" / name).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca").st_mode) == 0o700
    # Reopening loads the same CA.
    again = FleetCA.open(tmp_path / "ca", now=NOW)
    assert again.root == ca.root and again.issuing == ca.issuing


def test_bad_requests_are_refused_with_typed_errors(tmp_path: Path) -> None:
    ca = FleetCA.open(tmp_path / "ca", now=NOW)
    other, _ = csr_for("kiosk-002")
    with pytest.raises(CaError) as e:
        ca.issue_device(other, "kiosk-001")
    assert e.value.code == "bad_csr"
    rsa_csr, _ = csr_for("kiosk-001", rsa.generate_private_key(65537, 2048))
    with pytest.raises(CaError) as e:
        ca.issue_device(rsa_csr, "kiosk-001")
    assert e.value.code == "bad_key"
    with pytest.raises(CaError) as e:
        ca.issue_device(b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n", "kiosk-001")
    assert e.value.code == "bad_csr"
    with pytest.raises(CaError) as e:
        ca.issue_device(other, "../etc")
    assert e.value.code == "bad_device_id"


def test_revocation_survives_an_issuing_rotation(tmp_path: Path) -> None:
    ca = FleetCA.open(tmp_path / "ca", now=NOW)
    first = ca.issue_device(csr_for("kiosk-001")[0], "kiosk-001", now=NOW)
    ca.rotate_issuing(now=NOW)
    second = ca.issue_device(csr_for("kiosk-001")[0], "kiosk-001", now=NOW)
    assert ca.revoke_device("kiosk-001", now=NOW) == [first.serial, second.serial]
    crls = [x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + part)
            for part in ca.crl_file.read_bytes().split(b"-----BEGIN X509 CRL-----")[1:]]
    assert len(crls) == 2  # one per issuing CA, current and retired
    for crl in crls:
        assert crl.get_revoked_certificate_by_serial_number(first.serial) is not None
    chain = ca.chain_file.read_bytes()
    assert chain.count(b"BEGIN CERTIFICATE") == 3  # issuing, retired issuing, root


def _connect(port: int, ca_file: Path, cert: Path | None, key: Path | None,
             client_id: str) -> tuple[bool, int | None]:
    """(connected, reason code) of one mutual-TLS connection attempt to the broker."""
    done = threading.Event()
    result: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.tls_set(ca_certs=str(ca_file), certfile=str(cert) if cert else None,
              keyfile=str(key) if key else None, cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(_c: object, _u: object, _f: object, rc: object, _p: object = None) -> None:
        result.append(int(getattr(rc, "value", rc)))  # type: ignore[call-overload]
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_a, **_k: done.set()
    try:
        c.connect("127.0.0.1", port, keepalive=10)
    except (OSError, ssl.SSLError):
        return False, None
    c.loop_start()
    try:
        done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return bool(result) and result[0] == 0, result[0] if result else None


@pytest.mark.stack
def test_mosquitto_takes_the_identity_from_the_certificate_and_honours_the_crl(
        tmp_path: Path, make_broker: Callable[..., Broker]) -> None:
    ca = FleetCA.open(tmp_path / "ca")
    server, server_key = ca.issue_server(["127.0.0.1", "localhost"])
    (tmp_path / "broker.pem").write_bytes(server.pem)
    (tmp_path / "broker.key").write_bytes(server_key)

    def device(dev: str, signer: FleetCA) -> tuple[Path, Path, int]:
        csr, key = csr_for(dev)
        issued = signer.issue_device(csr, dev)
        (tmp_path / f"{dev}.pem").write_bytes(issued.pem)
        (tmp_path / f"{dev}.key").write_bytes(key)
        return tmp_path / f"{dev}.pem", tmp_path / f"{dev}.key", issued.serial

    good = device("kiosk-001", ca)
    revoked = device("kiosk-002", ca)
    stranger_ca = FleetCA.open(tmp_path / "other-ca")
    stranger = device("kiosk-003", stranger_ca)
    acl = tmp_path / "acl"
    acl.write_text(render_acl("central-x"))
    broker = make_broker(central=None, acl=acl, listeners=[
        Listener(host="127.0.0.1", port=0, tls=TlsListener(
            cafile=ca.chain_file, certfile=tmp_path / "broker.pem",
            keyfile=tmp_path / "broker.key", require_certificate=True,
            use_identity_as_username=True, crlfile=ca.crl_file))]).mosquitto
    port = broker.port
    assert _connect(port, ca.chain_file, good[0], good[1], "kiosk-001")[0]
    # Before revocation the second device gets in too ...
    assert _connect(port, ca.chain_file, revoked[0], revoked[1], "kiosk-002")[0]
    ca.revoke(revoked[2])
    broker.reload()  # SIGHUP: Mosquitto re-reads the CRL
    wait_until(lambda: not _connect(port, ca.chain_file, revoked[0], revoked[1], "kiosk-002")[0],
               10, what="the revoked certificate to be refused")
    # ... and after it, not; the other device is unaffected.
    assert _connect(port, ca.chain_file, good[0], good[1], "kiosk-001")[0]
    # A certificate from another CA, or none at all, never gets in.
    assert not _connect(port, ca.chain_file, stranger[0], stranger[1], "kiosk-003")[0]
    assert not _connect(port, ca.chain_file, None, None, "kiosk-004")[0]
