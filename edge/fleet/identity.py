"""The device's enrolled identity and the durable state of its signed streams.

``data_dir/identity/`` (0700) holds (docs/fleet-trust.md, "Enrollment by claim"):

* ``device.key`` — the EC P-256 key, made on the device (0600); it never leaves it;
* ``device.pem`` — the client certificate central's fleet CA issued for it (CN = device id);
* ``chain.pem`` — the CA chain to trust (the device broker's server certificate too);
* ``identity.json`` — ``device_id, role, site, cert_serial, not_after``; written last, so
  it is the commit point of an enrollment: without it the device is not enrolled;
* ``fleet-state.db`` — :class:`FleetState`: the last accepted ``seq`` of the config and the
  command stream (written, fsynced, *before* the device acts on a message) and the journal
  of commands.

Every file is written atomically: a temporary file in the same folder, fsync, rename, and an
fsync of the folder, so a power cut leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from yikatong.common.errors import LocalizedError
from yikatong.common.storage import open_durable
from yikatong.protocol.topics import is_valid_device_id

if TYPE_CHECKING:
    from edge.config import EdgeConfig

__all__ = [
    "CommandRecord",
    "FleetState",
    "Identity",
    "IdentityError",
    "IdentityStore",
    "atomic_write",
    "check_issuer",
    "effective_config",
    "make_csr",
    "new_key",
]


class IdentityError(LocalizedError):
    """The identity files are missing, unreadable or do not belong together."""

    code = "identity_error"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically and durably (tmp, fsync, rename, dir fsync)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # an existing tmp file keeps its mode through O_CREAT
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut."""
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 device key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: the file is 0600 in a 0700 folder)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A PEM certificate request for ``key`` with ``CN = common_name``."""
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def _public_der(key: ec.EllipticCurvePublicKey | Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def check_certificate(cert_pem: bytes, key: ec.EllipticCurvePrivateKey,
                      device_id: str) -> x509.Certificate:
    """The certificate in ``cert_pem`` if it is for ``key`` and names ``device_id``.

    Raises IdentityError: a certificate for another key would never complete a TLS
    handshake, one for another name would make the broker treat us as another device.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise IdentityError("the certificate cannot be read", "证书无法读取") from exc
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise IdentityError("the certificate is not for this device's key",
                            "证书与本机密钥不符", reason="key_mismatch")
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        raise IdentityError(f"the certificate names {cns!r}, not {device_id!r}",
                            "证书中的设备编号不符", reason="cn_mismatch")
    return cert


def check_issuer(cert_pem: bytes, chain_pem: bytes, anchors_pem: bytes) -> None:
    """Raise IdentityError unless ``cert_pem`` chains to a CA certificate of ``anchors_pem``.

    The certificate must be signed by a certificate in ``anchors_pem`` (the claim bundle's
    fleet CA file), or by a CA certificate of ``chain_pem`` that is itself signed by one in
    ``anchors_pem``. Without it, whoever can publish on the enrollment broker could hand the
    device a certificate (and with ``chain.pem`` a trust anchor) of their own.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        anchors = x509.load_pem_x509_certificates(anchors_pem)
    except ValueError as exc:
        raise IdentityError("the certificate or the fleet CA file cannot be read",
                            "证书或根证书文件无法读取", reason="bad_certificate") from exc
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        chain = []
    if any(_issued_by(cert, ca) for ca in anchors):
        return
    for inter in chain:
        if _is_ca(inter) and _issued_by(cert, inter) and any(_issued_by(inter, ca)
                                                             for ca in anchors):
            return
    raise IdentityError("the certificate is not issued by the fleet CA",
                        "证书不是由设备管理中心的证书机构签发", reason="untrusted_issuer")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``cert`` names ``issuer`` (a CA certificate) and its signature verifies with it."""
    if not _is_ca(issuer):
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Identity:
    """Who central enrolled this device as (``identity.json``)."""

    device_id: str
    role: str
    site: str | None
    cert_serial: str
    not_after: str

    def to_json(self) -> bytes:
        """The file's bytes."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, indent=1).encode()


class IdentityStore:
    """The files of ``data_dir/identity/``."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "identity"
        self.key_file = self.dir / "device.key"
        self.cert_file = self.dir / "device.pem"
        self.chain_file = self.dir / "chain.pem"
        self.json_file = self.dir / "identity.json"

    def ensure_dir(self) -> Path:
        """Create the folder (0700) if needed; return it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        return self.dir

    # -- reading -----------------------------------------------------------------------------
    def load(self) -> Identity | None:
        """The enrolled identity, or None when the device is not enrolled (no identity.json).

        Raises IdentityError when identity.json exists but it, the key or the certificate
        is unreadable or they do not belong together (a technician must look).
        """
        try:
            raw = self.json_file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            ident = Identity(device_id=str(data["device_id"]), role=str(data["role"]),
                             site=None if data.get("site") is None else str(data["site"]),
                             cert_serial=str(data["cert_serial"]),
                             not_after=str(data["not_after"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{self.json_file} is unreadable", "设备身份文件损坏") from exc
        if not is_valid_device_id(ident.device_id) or ident.role not in ("kiosk", "cashier"):
            raise IdentityError(f"{self.json_file} names an invalid device", "设备身份文件无效")
        check_certificate(self._read(self.cert_file), self.load_key(), ident.device_id)
        if not self.chain_file.exists():
            raise IdentityError(f"{self.chain_file} is missing", "缺少证书链文件")
        return ident

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read {path}: {exc.strerror}",
                                "无法读取设备身份文件") from exc

    def load_key(self, path: Path | None = None) -> ec.EllipticCurvePrivateKey:
        """The device key (``device.key`` unless ``path``)."""
        path = path or self.key_file
        try:
            key = serialization.load_pem_private_key(self._read(path), None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{path} is not a readable key", "设备密钥无法读取") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{path} is not an EC key", "设备密钥类型错误")
        return key

    def enrollment_key(self, *, fresh: bool = False) -> ec.EllipticCurvePrivateKey:
        """The key to enroll with: the one a previous attempt left, or a new one.

        Re-using it across restarts keeps the same request at central (one per serial and
        public key); ``fresh`` (after a rejection or an expiry) makes and stores a new one.
        """
        self.ensure_dir()
        if not fresh and self.key_file.exists():
            with contextlib.suppress(IdentityError):
                return self.load_key()
        key = new_key()
        atomic_write(self.key_file, key_pem(key))
        return key

    # -- writing -----------------------------------------------------------------------------
    def save(self, *, device_id: str, role: str, site: str | None, cert_pem: bytes,
             chain_pem: bytes) -> Identity:
        """Check the certificate against our key and write the identity (identity.json last)."""
        cert = check_certificate(cert_pem, self.load_key(), device_id)
        ident = Identity(device_id=device_id, role=role, site=site,
                         cert_serial=format(cert.serial_number, "x"),
                         not_after=cert.not_valid_after_utc.isoformat())
        self.ensure_dir()
        atomic_write(self.cert_file, cert_pem, 0o644)
        atomic_write(self.chain_file, chain_pem, 0o644)
        atomic_write(self.json_file, ident.to_json(), 0o644)
        return ident

    def rotate(self, key: ec.EllipticCurvePrivateKey, cert_pem: bytes, chain_pem: bytes,
               identity: Identity) -> Identity:
        """Put a new key and certificate in place; the old ones are kept as ``*.old``.

        Until :meth:`drop_old` (the uplink connected with the new certificate) or
        :meth:`restore_old` (it did not), the old files stay next to the new ones.
        """
        cert = check_certificate(cert_pem, key, identity.device_id)
        for f in (self.key_file, self.cert_file, self.chain_file, self.json_file):
            old = f.with_name(f.name + ".old")
            atomic_write(old, f.read_bytes(), 0o600 if f == self.key_file else 0o644)
        new = Identity(device_id=identity.device_id, role=identity.role, site=identity.site,
                       cert_serial=format(cert.serial_number, "x"),
                       not_after=cert.not_valid_after_utc.isoformat())
        atomic_write(self.key_file, key_pem(key))
        atomic_write(self.cert_file, cert_pem, 0o644)
        atomic_write(self.chain_file, chain_pem, 0o644)
        atomic_write(self.json_file, new.to_json(), 0o644)
        return new

    def restore_old(self) -> Identity | None:
        """Put the ``*.old`` files back (a rotation that did not connect); the identity."""
        for f in (self.key_file, self.cert_file, self.chain_file, self.json_file):
            old = f.with_name(f.name + ".old")
            if old.exists():
                os.replace(old, f)
        fsync_dir(self.dir)
        return self.load()

    def recover(self) -> None:
        """Settle a rotation a crash interrupted (``*.old`` files left), before :meth:`load`.

        New files that belong together are kept (central may already have revoked the old
        certificate once the new one connected); a half-written set is replaced by the old.
        """
        if not self.dir.exists() or not any(self.dir.glob("*.old")):
            return
        try:
            ok = self.load() is not None
        except IdentityError:
            ok = False
        if ok:
            self.drop_old()
        else:
            self.restore_old()

    def drop_old(self) -> None:
        """Forget the files a completed rotation replaced."""
        for f in (self.key_file, self.cert_file, self.chain_file, self.json_file):
            with contextlib.suppress(FileNotFoundError):
                f.with_name(f.name + ".old").unlink()
        fsync_dir(self.dir)


def effective_config(cfg: EdgeConfig, identity: Identity) -> EdgeConfig:
    """``cfg`` as the enrolled device runs it: id and role from the identity, mutual TLS.

    The uplink connects with the identity's certificate and key and no username: the
    device broker takes the identity from the certificate (``use_identity_as_username``).
    """
    from edge.uplink.config import TlsConfig

    store = IdentityStore(cfg.device.data_dir)
    cafile = cfg.uplink.tls.cafile if cfg.uplink.tls is not None else store.chain_file
    tls = TlsConfig(cafile=cafile, certfile=store.cert_file, keyfile=store.key_file)
    device = cfg.device.model_copy(update={"id": identity.device_id, "role": identity.role})
    uplink = cfg.uplink.model_copy(update={"tls": tls, "username": None,
                                           "password_file": None})
    return cfg.model_copy(update={"device": device, "uplink": uplink})


# --------------------------------------------------------------------------- fleet state


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command in the journal."""

    command_id: str
    env_id: str
    seq: int
    name: str
    args: dict[str, Any]
    exp: str | None
    state: str
    code: str | None
    output: dict[str, Any]


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stream (dev TEXT NOT NULL, stream TEXT NOT NULL,"
    " last_seq INTEGER NOT NULL, last_id TEXT NOT NULL, state TEXT NOT NULL,"
    " updated TEXT NOT NULL, PRIMARY KEY (dev, stream))",
    "CREATE TABLE IF NOT EXISTS command (command_id TEXT PRIMARY KEY, dev TEXT NOT NULL,"
    " env_id TEXT NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,"
    " exp TEXT, state TEXT NOT NULL, code TEXT, output TEXT NOT NULL DEFAULT '{}',"
    " updated TEXT NOT NULL)",
)


class FleetState:
    """Durable state of the signed streams (SQLite, ``synchronous=FULL``: fsync per commit).

    Per device id and stream (``config`` / ``cmd``): the last accepted ``seq``, the id of
    that envelope and what became of it (``accepted`` → ``applied`` / ``failed`` …). A commit
    returns only once it is on disk, so "record, then act" survives a power cut: after a
    restart an old message is still refused. Keyed by device id: an identity issued under a
    new id starts its own counters.
    """

    def __init__(self, path: Path, clock: Any = None) -> None:
        self.path = Path(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._db = open_durable(self.path)
        for ddl in _SCHEMA:
            self._db.execute(ddl)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _now(self) -> str:
        return str(self._clock().isoformat())

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- streams -----------------------------------------------------------------------------
    def last(self, dev: str, stream: str) -> tuple[int | None, str | None, str | None]:
        """``(last_seq, last_id, state)`` of a stream; all None before the first message."""
        with self._lock:
            row = self._db.execute("SELECT last_seq, last_id, state FROM stream WHERE dev = ? "
                                   "AND stream = ?", (dev, stream)).fetchone()
        return (None, None, None) if row is None else (int(row[0]), str(row[1]), str(row[2]))

    def accept(self, dev: str, stream: str, seq: int, env_id: str, *,
               state: str = "accepted", command: dict[str, Any] | None = None) -> None:
        """Record ``seq`` as the stream's last (and the command, if any) in one fsynced commit."""
        now = self._now()
        with self._tx() as db:
            row = db.execute("SELECT last_seq FROM stream WHERE dev = ? AND stream = ?",
                             (dev, stream)).fetchone()
            if row is not None and int(row[0]) >= seq:
                raise ValueError(f"seq {seq} is not above {row[0]}")  # the caller's guard failed
            db.execute("INSERT OR REPLACE INTO stream VALUES (?, ?, ?, ?, ?, ?)",
                       (dev, stream, seq, env_id, state, now))
            if command is not None:
                db.execute("INSERT OR REPLACE INTO command VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL,"
                           " '{}', ?)",
                           (command["command_id"], dev, env_id, seq, command["name"],
                            json.dumps(command.get("args") or {}, sort_keys=True),
                            command.get("exp"), state, now))

    def set_state(self, dev: str, stream: str, env_id: str, state: str) -> None:
        """What became of the stream's last message (only if it still is ``env_id``)."""
        with self._tx() as db:
            db.execute("UPDATE stream SET state = ?, updated = ? WHERE dev = ? AND stream = ? "
                       "AND last_id = ?", (state, self._now(), dev, stream, env_id))

    # -- commands ------------------------------------------------------------------------------
    def command(self, command_id: str) -> CommandRecord | None:
        """A command from the journal."""
        with self._lock:
            row = self._db.execute(
                "SELECT command_id, env_id, seq, name, args, exp, state, code, output "
                "FROM command WHERE command_id = ?", (command_id,)).fetchone()
        return None if row is None else _record(row)

    def command_state(self, command_id: str, state: str, *, code: str | None = None,
                      output: dict[str, Any] | None = None) -> None:
        """Move a command to ``state`` (durably)."""
        with self._tx() as db:
            db.execute("UPDATE command SET state = ?, code = ?, output = ?, updated = ? "
                       "WHERE command_id = ?",
                       (state, code, json.dumps(output or {}, sort_keys=True, default=str),
                        self._now(), command_id))

    def unfinished(self, dev: str, final: frozenset[str]) -> list[CommandRecord]:
        """Commands of ``dev`` whose state is not one of ``final``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT command_id, env_id, seq, name, args, exp, state, code, output "
                "FROM command WHERE dev = ? ORDER BY seq", (dev,)).fetchall()
        return [r for r in map(_record, rows) if r.state not in final]


def _record(row: tuple[Any, ...]) -> CommandRecord:
    return CommandRecord(command_id=str(row[0]), env_id=str(row[1]), seq=int(row[2]),
                         name=str(row[3]), args=json.loads(row[4]),
                         exp=None if row[5] is None else str(row[5]), state=str(row[6]),
                         code=None if row[7] is None else str(row[7]),
                         output=json.loads(row[8] or "{}"))
