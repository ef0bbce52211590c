"""Central's Ed25519 signing key: made on first use, kept 0600, public half beside it.

Every ``config.desired`` and ``cmd`` central sends is signed with it
(:func:`yikatong.protocol.signing.sign`); devices get the public key in their claim bundle.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from central.fleet.errors import FleetError
from yikatong.protocol.envelope import Envelope
from yikatong.protocol.errors import BadKey
from yikatong.protocol.signing import (
    generate_private_key,
    key_id,
    private_key_from_pem,
    private_key_to_pem,
    public_key_to_pem,
    sign,
)

__all__ = ["FleetSigner"]

_LOCK = threading.Lock()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)


class FleetSigner:
    """The signing key at ``path`` (PKCS#8 PEM, 0600) and its public key at ``path.pub``."""

    def __init__(self, path: Path, key: Ed25519PrivateKey) -> None:
        self.path = path
        self._key = key

    @classmethod
    def open(cls, path: Path) -> FleetSigner:
        """Load the key, creating it (and the ``.pub`` file) the first time."""
        path = Path(path)
        with _LOCK:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                key = generate_private_key()
                tmp = path.with_name(path.name + ".tmp")
                _write_private(tmp, private_key_to_pem(key))
                tmp.replace(path)
            else:
                try:
                    key = private_key_from_pem(path.read_bytes())
                except (OSError, BadKey) as exc:
                    raise FleetError(503, "signing_key_unreadable",
                                     f"central's signing key {path} cannot be read: {exc}",
                                     "中心签名密钥无法读取") from exc
                if os.stat(path).st_mode & 0o077:
                    os.chmod(path, 0o600)
            signer = cls(path, key)
            pub = signer.public_path
            if not pub.exists() or pub.read_bytes() != signer.public_pem:
                pub.write_bytes(signer.public_pem)
        return signer

    @property
    def public_path(self) -> Path:
        """Where the public key is written (``signing.pub`` next to ``signing.key``)."""
        return self.path.with_suffix(".pub")

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public key devices verify with."""
        return self._key.public_key()

    @property
    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM (what the claim bundle carries)."""
        return public_key_to_pem(self.public_key)

    @property
    def key_id(self) -> str:
        """Short fingerprint of the public key, for logs and the dashboard."""
        return key_id(self.public_key)

    def sign(self, env: Envelope) -> Envelope:
        """``env`` with ``sig`` set (Ed25519 over its canonical bytes)."""
        return sign(env, self._key)
