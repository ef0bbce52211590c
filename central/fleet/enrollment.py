"""Enrollment by claim: pairing codes, certificate requests, and the answers a device gets.

Pure helpers; :class:`central.fleet.service.FleetService` keeps the records and talks MQTT.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from central.fleet.errors import FleetError
from yikatong.protocol.fleet import PAIRING_CODE_RE

__all__ = ["CROCKFORD", "CsrCheck", "check_csr", "new_pairing_code", "normalise_code",
           "status_body"]

#: Crockford base32: digits and letters without I, L, O, U.
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CODE = re.compile(PAIRING_CODE_RE)
# What people read wrong off a screen (Crockford's decoding rules).
_LOOKALIKE = str.maketrans({"I": "1", "L": "1", "O": "0"})


def new_pairing_code(taken: Callable[[str], bool] | None = None) -> str:
    """A random ``XXXX-XXXX`` code (40 bits, from ``secrets``) for which ``taken`` is False."""
    for _ in range(100):
        raw = "".join(secrets.choice(CROCKFORD) for _ in range(8))
        code = f"{raw[:4]}-{raw[4:]}"
        if taken is None or not taken(code):
            return code
    raise FleetError(503, "no_code", "could not find a free pairing code",
                     "无法生成配对码")  # pragma: no cover - 2**40 codes


def normalise_code(code: str) -> str:
    """A typed pairing code in canonical form (upper case, ``-`` in the middle, I/L→1, O→0).

    Raises FleetError 404 when it cannot be a pairing code at all.
    """
    text = re.sub(r"[\s-]", "", str(code)).upper().translate(_LOOKALIKE)
    candidate = f"{text[:4]}-{text[4:]}"
    if len(text) != 8 or not _CODE.fullmatch(candidate):
        raise FleetError(404, "unknown_code", "no enrollment request has this pairing code",
                         "没有此配对码的入网申请")
    return candidate


@dataclass(frozen=True, slots=True)
class CsrCheck:
    """A certificate request that passed :func:`check_csr`."""

    pem: str
    fingerprint: str  # SHA-256 (hex) of the public key's SubjectPublicKeyInfo DER


def check_csr(pem: str, serial: str) -> CsrCheck:
    """Parse and check a device's CSR: self-signed, EC P-256, CN = ``serial``.

    Raises FleetError 422 with ``code`` ``bad_csr`` or ``bad_key``.
    """
    try:
        csr = x509.load_pem_x509_csr(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise FleetError(422, "bad_csr", "the certificate request cannot be read",
                         "证书申请格式错误") from None
    if not csr.is_signature_valid:
        raise FleetError(422, "bad_csr", "the certificate request's signature does not verify",
                         "证书申请签名无效")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise FleetError(422, "bad_key", "device keys must be EC P-256",
                         "设备密钥须为 EC P-256")
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [serial]:
        raise FleetError(422, "bad_csr", "the request's CN is not the device's serial number",
                         "证书申请中的序列号不符")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return CsrCheck(pem, hashlib.sha256(der).hexdigest())


def same_public_key(csr_pem: str, cert_pem: str) -> bool:
    """True if the CSR asks for the key the certificate already certifies."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(csr.public_key().public_bytes(serialization.Encoding.DER, spki)
                == cert.public_key().public_bytes(serialization.Encoding.DER, spki))


def status_body(request_id: str, status: str, **fields: Any) -> dict[str, Any]:
    """An ``enroll.status`` body without None fields."""
    return {"request_id": request_id, "status": status,
            **{k: v for k, v in fields.items() if v is not None}}
