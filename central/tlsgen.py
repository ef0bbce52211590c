"""Self-signed CA + broker server certificate for the embedded broker's TLS listener.

For a site without central's CA yet, for the demo and for the tests: ``write_broker_tls``
creates a CA, a server certificate for the given names/addresses signed by it, and writes
``ca.pem`` (give this to the devices, ``[uplink.tls] cafile``), ``broker.pem`` and
``broker.key`` (0600; ``[broker.tls]`` in central.toml). Per-device client certificates
come with enrollment (a later issue). Pure apart from :func:`write_broker_tls`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["BrokerTlsFiles", "CertificateAuthority", "general_name", "server_certificate",
           "write_broker_tls"]


@dataclass(frozen=True, slots=True)
class BrokerTlsFiles:
    """Where :func:`write_broker_tls` put the CA and the broker's certificate and key."""

    cafile: Path
    certfile: Path
    keyfile: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def general_name(host: str) -> x509.GeneralName:
    """A subjectAltName entry for ``host``: an IP address or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def server_certificate(issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
                       public_key: ec.EllipticCurvePublicKey, hosts: Sequence[str], *,
                       now: datetime, days: int, subject: x509.Name) -> x509.Certificate:
    """A TLS server certificate for ``hosts`` (subjectAltName), signed by ``issuer_key``."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([general_name(h) for h in hosts]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A small ECDSA P-256 CA that issues TLS server certificates."""

    def __init__(self, common_name: str, *, now: datetime, days: int = 3650) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(common_name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate (what clients trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue_server(self, hosts: Sequence[str], *, now: datetime, days: int = 825,
                     common_name: str | None = None) -> tuple[bytes, bytes]:
        """A server certificate for ``hosts`` (DNS names or IP addresses): (cert, key) PEM."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = server_certificate(self.name, self.key, key.public_key(), hosts, now=now,
                                  days=days, subject=_name(common_name or hosts[0]))
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_broker_tls(
    directory: Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    ca: CertificateAuthority | None = None,
    ca_name: str = "Yikatong Site CA",
    now: datetime | None = None,
) -> BrokerTlsFiles:
    """Write ``ca.pem``, ``broker.pem`` and ``broker.key`` (0600) into ``directory``."""
    now = now or datetime.now(UTC)
    ca = ca or CertificateAuthority(ca_name, now=now)
    cert_pem, key_pem = ca.issue_server(hosts, now=now)
    directory.mkdir(parents=True, exist_ok=True)
    files = BrokerTlsFiles(directory / "ca.pem", directory / "broker.pem",
                           directory / "broker.key")
    files.cafile.write_bytes(ca.cert_pem)
    files.certfile.write_bytes(cert_pem)
    fd = os.open(files.keyfile, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return files
