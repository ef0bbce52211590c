"""Ed25519 signatures over envelopes, key helpers and replay protection (pure, no I/O).

Procedure (docs/protocol.md, "Signatures"): ``sig`` = base64url without padding of the
64-byte Ed25519 signature over :func:`~yikatong.protocol.envelope.signing_bytes` — the
canonical JSON of the envelope without ``sig``. Key helpers turn bytes into keys and back;
reading and writing the files is the caller's job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from yikatong.protocol.envelope import (
    Envelope,
    check_not_expired,
    signing_bytes,
)
from yikatong.protocol.errors import BadKey, BadSignature, BadTopic, SequenceReplay

__all__ = [
    "SeqGuard",
    "b64url_decode",
    "b64url_encode",
    "generate_private_key",
    "key_id",
    "private_key_from_hex",
    "private_key_from_pem",
    "private_key_to_hex",
    "private_key_to_pem",
    "public_key_from_hex",
    "public_key_from_pem",
    "public_key_to_hex",
    "public_key_to_pem",
    "sign",
    "verify",
    "verify_any",
    "verify_command",
]


# --------------------------------------------------------------------------- base64url


def b64url_encode(data: bytes) -> str:
    """Encode bytes as base64url without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly (re-encoding must give the same text)."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError("not base64url") from e
    # Refuse non-zero padding bits and stray characters: one signature, one spelling.
    if b64url_encode(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


# --------------------------------------------------------------------------- keys


def generate_private_key() -> Ed25519PrivateKey:
    """Make a new Ed25519 private key (randomness from the OS, via cryptography)."""
    return Ed25519PrivateKey.generate()


def _hex32(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except (ValueError, AttributeError) as e:
        raise BadKey("not hex") from e
    if len(raw) != 32:
        raise BadKey(f"{len(raw)} bytes, need 32")
    return raw


def private_key_from_hex(text: str) -> Ed25519PrivateKey:
    """Load a private key from its 32-byte seed in hex (RFC 8032 "SECRET KEY")."""
    return Ed25519PrivateKey.from_private_bytes(_hex32(text))


def private_key_to_hex(key: Ed25519PrivateKey) -> str:
    """Return the 32-byte seed of a private key as lower-case hex."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return raw.hex()


def public_key_from_hex(text: str) -> Ed25519PublicKey:
    """Load a public key from its 32 raw bytes in hex."""
    raw = _hex32(text)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise BadKey("not a valid Ed25519 point") from e


def public_key_to_hex(key: Ed25519PublicKey) -> str:
    """Return the 32 raw bytes of a public key as lower-case hex."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def private_key_from_pem(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Load a PKCS#8 PEM private key (optionally encrypted); raise BadKey if not Ed25519."""
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadKey(f"cannot load PEM private key: {type(e).__name__}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey(f"PEM holds a {type(key).__name__}, not Ed25519")
    return key


def private_key_to_pem(key: Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    """Serialise a private key as PKCS#8 PEM, encrypted when a password is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_key_from_pem(data: bytes) -> Ed25519PublicKey:
    """Load a SubjectPublicKeyInfo PEM public key; raise BadKey if not Ed25519."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise BadKey(f"cannot load PEM public key: {type(e).__name__}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise BadKey(f"PEM holds a {type(key).__name__}, not Ed25519")
    return key


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    """Serialise a public key as SubjectPublicKeyInfo PEM."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PublicKey) -> str:
    """Return a short fingerprint (first 16 hex of SHA-256 of the raw key) for logs."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------- sign / verify


def sign(env: Envelope, private_key: Ed25519PrivateKey) -> Envelope:
    """Return a copy of ``env`` whose ``sig`` signs everything else in it."""
    signature = private_key.sign(signing_bytes(env))
    return env.model_copy(update={"sig": b64url_encode(signature)})


def verify(env: Envelope, public_key: Ed25519PublicKey) -> None:
    """Check ``env.sig`` against ``public_key``; raise BadSignature if it does not verify."""
    if env.sig is None:
        raise BadSignature("missing")
    try:
        raw = b64url_decode(env.sig)
    except ValueError as e:
        raise BadSignature("malformed") from e
    if len(raw) != 64:
        raise BadSignature("malformed")
    try:
        public_key.verify(raw, signing_bytes(env))
    except InvalidSignature as e:
        raise BadSignature("mismatch") from e


def verify_any(env: Envelope, public_keys: Iterable[Ed25519PublicKey]) -> Ed25519PublicKey:
    """Verify against any of several trusted keys (key rotation); return the one that matched."""
    last: BadSignature = BadSignature("no_keys")
    for key in public_keys:
        try:
            verify(env, key)
        except BadSignature as e:
            if e.reason != "mismatch":
                raise  # missing/malformed signatures fail the same way for every key
            last = e
        else:
            return key
    raise last


# --------------------------------------------------------------------------- replay guard


@dataclass(slots=True)
class SeqGuard:
    """Replay protection for one signed stream (a device's ``cmd`` or its ``config``).

    Accepts only messages whose ``seq`` is above the last accepted one and that are not
    expired. Pure: the caller loads ``last_seq`` from durable storage, and after
    :meth:`accept` stores the new value *before* acting on the message, so a power cut
    cannot make an old command acceptable again.

    Keep one guard per stream: central may number both streams from one counter, and a
    retained config published before a command must still be accepted after it.
    """

    last_seq: int | None = None

    def check(self, env: Envelope, now: datetime) -> int:
        """Return ``env.seq`` if it would be accepted now, else raise SequenceReplay/Expired."""
        seq = env.seq
        if seq is None:
            raise SequenceReplay(None, self.last_seq)
        if self.last_seq is not None and seq <= self.last_seq:
            raise SequenceReplay(seq, self.last_seq)
        check_not_expired(env, now)
        return seq

    def accept(self, env: Envelope, now: datetime) -> int:
        """Check ``env`` and record its seq; return the new last seq for the caller to persist."""
        self.last_seq = self.check(env, now)
        return self.last_seq


def verify_command(
    env: Envelope,
    public_keys: Ed25519PublicKey | Iterable[Ed25519PublicKey],
    guard: SeqGuard,
    *,
    dev: str,
    now: datetime,
) -> int:
    """Run every check a device makes on a signed cmd/config, in order; return the new seq.

    Signature first (so an unsigned message cannot move the guard), then that it is meant
    for this device, then expiry and sequence. Raises BadSignature, BadTopic, Expired or
    SequenceReplay.
    """
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    verify_any(env, keys)
    if env.dev != dev:
        raise BadTopic(f"dev={env.dev}", f"signed for another device, this is {dev!r}")
    return guard.accept(env, now)
