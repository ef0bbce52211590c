"""Central's certificate authority for the fleet: device and broker certificates, revocation.

Two levels, as IoT fleets run them (AWS IoT, Azure DPS): a **root** whose key signs only
issuing certificates (it can be moved offline once the issuing CA exists), and an
**issuing** CA that signs device certificates (EC P-256, CN = device id, client auth only),
the broker's server certificate, and the certificate revocation list the broker reads
(``crlfile``). Devices and the broker trust ``chain.pem`` (issuing + root).

Files in ``directory`` (keys 0600, the directory 0700)::

    root.key  root.pem  issuing.key  issuing.pem  chain.pem  crl.pem  issued.json

``issued.json`` records every certificate issued (serial → device id, expiry) and every
revocation, so the CRL can be rebuilt after an issuing-key rotation.

Rotation (docs/fleet-trust.md, ``ykt fw ca rotate``): the issuing CA is rotated with
:meth:`FleetCA.rotate_issuing` well before it expires; the old issuing certificate stays in
``chain.pem`` until the last device certificate it signed has expired or been re-issued
(devices rotate their own keys by command). The root is rotated only by re-enrolling the fleet.

The cryptography package does all of it; nothing here is hand-rolled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central.tlsgen import server_certificate
from yikatong.common.errors import LocalizedError
from yikatong.protocol.topics import is_valid_device_id

__all__ = ["CaError", "FleetCA", "Issued"]


class CaError(LocalizedError):
    """A certificate request was refused, or the CA's files are unusable (``code`` says why)."""

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate the CA issued."""

    serial: int
    subject: str
    not_after: datetime
    pem: bytes


def _name(cn: str, org: str = "Yikatong") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        key_cert_sign=sign_certs, crl_sign=sign_certs, encipher_only=False,
        decipher_only=False)


class FleetCA:
    """The fleet's CA in ``directory``; :meth:`open` creates it on first use."""

    def __init__(self, directory: Path, *, root_key: ec.EllipticCurvePrivateKey,
                 root: x509.Certificate, issuing_key: ec.EllipticCurvePrivateKey,
                 issuing: x509.Certificate, record: dict[str, Any]) -> None:
        self.directory = directory
        self._root_key = root_key
        self.root = root
        self._issuing_key = issuing_key
        self.issuing = issuing
        self._record = record

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, *, now: datetime | None = None,
             name: str = "Yikatong Fleet") -> FleetCA:
        """Load the CA from ``directory``, creating root and issuing CA the first time."""
        now = now or datetime.now(UTC)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        if not (directory / "root.key").exists():
            root_key = ec.generate_private_key(ec.SECP256R1())
            root = cls._ca_cert(_name(f"{name} Root CA"), root_key, _name(f"{name} Root CA"),
                                root_key, now, days=20 * 365, path_length=1)
            _write_private(directory / "root.key", _key_pem(root_key))
            (directory / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
            ca = cls(directory, root_key=root_key, root=root, issuing_key=root_key,
                     issuing=root, record={"issued": {}, "revoked": {}, "old_issuing": []})
            ca.rotate_issuing(now=now)
            return ca
        try:
            root_key = serialization.load_pem_private_key((directory / "root.key").read_bytes(),
                                                          None)
            issuing_key = serialization.load_pem_private_key(
                (directory / "issuing.key").read_bytes(), None)
            root = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
            issuing = x509.load_pem_x509_certificate((directory / "issuing.pem").read_bytes())
            record = json.loads((directory / "issued.json").read_text())
        except (OSError, ValueError) as exc:
            raise CaError("ca_unreadable", f"the CA in {directory} cannot be read: {exc}",
                          "证书中心文件无法读取") from exc
        if not isinstance(root_key, ec.EllipticCurvePrivateKey) or not isinstance(
                issuing_key, ec.EllipticCurvePrivateKey):
            raise CaError("ca_unreadable", "CA keys must be EC keys", "证书中心密钥类型错误")
        return cls(directory, root_key=root_key, root=root, issuing_key=issuing_key,
                   issuing=issuing, record=record)

    @staticmethod
    def _ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                 signer: ec.EllipticCurvePrivateKey, now: datetime, *, days: int,
                 path_length: int) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                           critical=True)
            .add_extension(_usage(sign_certs=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256())
        )

    def _save(self) -> None:
        d = self.directory
        _write_private(d / "issuing.key", _key_pem(self._issuing_key))
        (d / "issuing.pem").write_bytes(self.issuing.public_bytes(serialization.Encoding.PEM))
        chain = [self.issuing.public_bytes(serialization.Encoding.PEM)]
        chain += [p.encode() for p in self._record.get("old_issuing", [])]
        chain.append(self.root.public_bytes(serialization.Encoding.PEM))
        (d / "chain.pem").write_bytes(b"".join(chain))
        tmp = d / "issued.json.tmp"
        tmp.write_text(json.dumps(self._record, sort_keys=True, indent=1))
        tmp.replace(d / "issued.json")

    def retired_issuing(self) -> list[x509.Certificate]:
        """Issuing CAs rotated out, newest first (still trusted, still signing their CRL)."""
        return [x509.load_pem_x509_certificate(p.encode())
                for p in self._record.get("old_issuing", [])]

    @property
    def chain_file(self) -> Path:
        """What devices and the broker trust: issuing CA(s) and root."""
        return self.directory / "chain.pem"

    @property
    def crl_file(self) -> Path:
        """The revocation list the broker reads (``crlfile``)."""
        return self.directory / "crl.pem"

    def rotate_issuing(self, *, now: datetime | None = None, days: int = 5 * 365) -> None:
        """A new issuing key and certificate; the old one stays trusted in ``chain.pem``.

        The retired issuing key is kept (``retired/``, 0600) only to go on signing the
        revocation list of the certificates it issued: a broker that checks revocation
        refuses a certificate whose issuer has no CRL.
        """
        now = now or datetime.now(UTC)
        if self.issuing is not self.root:
            self._record.setdefault("old_issuing", []).insert(
                0, self.issuing.public_bytes(serialization.Encoding.PEM).decode())
            retired = self.directory / "retired"
            retired.mkdir(mode=0o700, exist_ok=True)
            _write_private(retired / f"{self.issuing.serial_number}.key",
                           _key_pem(self._issuing_key))
        key = ec.generate_private_key(ec.SECP256R1())
        # Each generation its own name: an operator (and OpenSSL) tells them apart at a glance.
        self.issuing = self._ca_cert(_name(f"Yikatong Fleet Issuing CA {now:%Y%m%d-%H%M%S}"),
                                     key, self.root.subject, self._root_key, now, days=days,
                                     path_length=0)
        self._issuing_key = key
        self._save()
        self.write_crl(now=now)

    # -- issuing -------------------------------------------------------------------------
    def issue_device(self, csr_pem: bytes, device_id: str, *, now: datetime | None = None,
                     days: int = 398, csr_cn: str | None = None) -> Issued:
        """A client certificate for ``device_id`` from the device's own CSR (EC P-256).

        The CSR must be signed by the key it carries and name ``csr_cn`` as its CN — by
        default the device id; enrollment passes the hardware serial, because a device asks
        before it has a name. The certificate's subject is always ``device_id``, set here,
        never copied from the request.
        """
        now = now or datetime.now(UTC)
        if not is_valid_device_id(device_id):
            raise CaError("bad_device_id", f"invalid device id {device_id!r}", "设备编号无效")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CaError("bad_csr", "the certificate request cannot be read",
                          "证书申请格式错误") from exc
        if not csr.is_signature_valid:
            raise CaError("bad_csr", "the certificate request's signature does not verify",
                          "证书申请签名无效")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CaError("bad_key", "device keys must be EC P-256", "设备密钥须为 EC P-256")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        want_cn = device_id if csr_cn is None else csr_cn
        if [a.value for a in cns] != [want_cn]:
            raise CaError("bad_csr", "the request's CN is not the device id"
                          if csr_cn is None else "the request's CN is not the serial number",
                          "证书申请中的设备编号不符")
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(device_id)).issuer_name(self.issuing.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._issuing_key.public_key()), critical=False)
            .sign(self._issuing_key, hashes.SHA256())
        )
        return self._remember(cert, device_id)

    def issue_server(self, hosts: list[str], *, now: datetime | None = None,
                     days: int = 398) -> tuple[Issued, bytes]:
        """The broker's certificate for ``hosts``; returns it and its new key (PEM)."""
        now = now or datetime.now(UTC)
        if not hosts:
            raise CaError("bad_hosts", "a server certificate needs a host", "缺少服务器地址")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = server_certificate(self.issuing.subject, self._issuing_key, key.public_key(),
                                  hosts, now=now, days=days, subject=_name(hosts[0]))
        return self._remember(cert, f"server:{hosts[0]}"), _key_pem(key)

    def _remember(self, cert: x509.Certificate, subject: str) -> Issued:
        not_after = cert.not_valid_after_utc
        self._record["issued"][str(cert.serial_number)] = {
            "subject": subject, "not_after": not_after.isoformat()}
        self._save()
        return Issued(cert.serial_number, subject, not_after,
                      cert.public_bytes(serialization.Encoding.PEM))

    # -- revocation ------------------------------------------------------------------------
    def revoke(self, serial: int, *, now: datetime | None = None,
               reason: x509.ReasonFlags = x509.ReasonFlags.unspecified) -> None:
        """Revoke a certificate this CA issued and rewrite the CRL."""
        self.revoke_many([serial], now=now, reason=reason)

    def revoke_many(self, serials: list[int], *, now: datetime | None = None,
                    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified) -> None:
        """Revoke several certificates: one save, one CRL (a device may hold a few)."""
        now = now or datetime.now(UTC)
        for serial in serials:
            if str(serial) not in self._record["issued"]:
                raise CaError("unknown_serial", f"serial {serial} was not issued here",
                              "该证书不是本中心签发的")
        for serial in serials:
            self._record["revoked"].setdefault(
                str(serial), {"at": now.isoformat(), "reason": reason.value})
        self._save()
        self.write_crl(now=now)

    def record_revoked(self, revoked: dict[int, datetime],
                       reason: x509.ReasonFlags = x509.ReasonFlags.unspecified) -> list[int]:
        """Take revocations decided elsewhere onto this CA's record; the serials new to it.

        With several central instances (docs/scaling.md) every instance holds a copy of the
        same CA, but each records only what it issued itself; the store's certificate table
        is what they share. A serial another instance issued and revoked is put on this
        copy's list too, so every instance's CRL names it. The caller writes the CRL.
        """
        new = [serial for serial in revoked if str(serial) not in self._record["revoked"]]
        for serial in new:
            self._record["revoked"][str(serial)] = {"at": revoked[serial].isoformat(),
                                                    "reason": reason.value}
        if new:
            self._save()
        return new

    def revoke_device(self, device_id: str, *, now: datetime | None = None) -> list[int]:
        """Revoke every certificate issued to ``device_id``; returns their serials."""
        serials = [int(s) for s, v in self._record["issued"].items()
                   if v["subject"] == device_id and s not in self._record["revoked"]]
        for s in serials:
            self.revoke(s, now=now, reason=x509.ReasonFlags.cessation_of_operation)
        return serials

    def active_serials(self, device_id: str) -> list[int]:
        """Serials issued to ``device_id`` and not revoked (expired ones included)."""
        return [int(s) for s, v in self._record["issued"].items()
                if v["subject"] == device_id and s not in self._record["revoked"]]

    def is_revoked(self, serial: int) -> bool:
        """True once :meth:`revoke` was called for ``serial``."""
        return str(serial) in self._record["revoked"]

    def write_crl(self, *, now: datetime | None = None, days: int = 7) -> Path:
        """(Re)write ``crl.pem``: one CRL per issuing CA (current and retired), ``days`` long.

        Every revoked serial goes on every list; a serial is unique to its issuer, so the
        extra entries never match another CA's certificates.
        """
        now = now or datetime.now(UTC)
        signers = [(self.issuing, self._issuing_key)]
        for pem in self._record.get("old_issuing", []):
            cert = x509.load_pem_x509_certificate(pem.encode())
            key = serialization.load_pem_private_key(
                (self.directory / "retired" / f"{cert.serial_number}.key").read_bytes(), None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                signers.append((cert, key))
        out = []
        for cert, key in signers:
            builder = (x509.CertificateRevocationListBuilder()
                       .issuer_name(cert.subject)
                       .last_update(now - timedelta(minutes=5))
                       .next_update(now + timedelta(days=days))
                       .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                           key.public_key()), critical=False))
            for serial, info in sorted(self._record["revoked"].items()):
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(serial))
                    .revocation_date(datetime.fromisoformat(info["at"]))
                    .add_extension(x509.CRLReason(x509.ReasonFlags(info["reason"])),
                                   critical=False)
                    .build())
            out.append(builder.sign(key, hashes.SHA256()).public_bytes(
                serialization.Encoding.PEM))
        tmp = self.directory / "crl.pem.tmp"
        tmp.write_bytes(b"".join(out))
        tmp.replace(self.crl_file)
        return self.crl_file
