"""PIN hashing (scrypt, salted) and masking of payment codes."""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["hash_pin", "mask_auth_code", "verify_pin"]

# scrypt cost: n=2^14, r=8 (≈16 MiB, tens of ms) — enough to make offline guessing of a
# short PIN slow while keeping a login quick on the platform.
_N, _R, _P = 2**14, 8, 1


def hash_pin(pin: str, salt: bytes) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` for ``pin`` (salt must be random per account)."""
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    enc = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${enc(salt).decode()}${enc(digest).decode()}"


def verify_pin(pin: str, stored: str) -> bool:
    """Check ``pin`` against a ``hash_pin`` string in constant time."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            pin.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, expected)


def mask_auth_code(code: str) -> str:
    """Keep the first 2 and last 4 digits of a payment code (never stored in clear)."""
    if len(code) <= 6:
        return "*" * len(code)
    return code[:2] + "*" * (len(code) - 6) + code[-4:]
