"""Identifier rules: GB 11643 citizen ID numbers, payment-code patterns, e-health QR text."""

from __future__ import annotations

import re

__all__ = [
    "ALIPAY_CODE",
    "EHC_DYNAMIC",
    "EHC_STATIC",
    "WECHAT_CODE",
    "id_check_digit",
    "is_valid_id_number",
    "parse_ehc_qr",
    "wallet_of",
]

# GB 11643-1999: weights 2^(17-i) mod 11 for the first 17 digits; the sum mod 11
# indexes this table of check characters.
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_ID17 = re.compile(r"^\d{17}$")

#: WeChat Pay payment code: 18 digits starting 10–15 (docs/healthcard.md).
WECHAT_CODE = re.compile(r"^1[0-5]\d{16}$")
#: Alipay payment code: 16–24 digits starting 25–30.
ALIPAY_CODE = re.compile(r"^(?:2[5-9]|30)\d{14,22}$")
#: Electronic health card QR: static ``<64 hex>:1``, dynamic ``<64 hex>:0:<32 hex>``.
EHC_STATIC = re.compile(r"^([0-9A-Fa-f]{64}):1$")
EHC_DYNAMIC = re.compile(r"^([0-9A-Fa-f]{64}):0:[0-9A-Fa-f]{32}$")


def id_check_digit(first17: str) -> str:
    """Return the GB 11643 check character for the first 17 digits of an ID number."""
    if not _ID17.match(first17):
        raise ValueError("an ID number body is exactly 17 digits")
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def is_valid_id_number(value: str) -> bool:
    """True if ``value`` is an 18-character ID number with a correct check character."""
    if len(value) != 18 or not _ID17.match(value[:17]):
        return False
    return id_check_digit(value[:17]) == value[17].upper()


def parse_ehc_qr(text: str) -> str | None:
    """Return the 64-hex card identifier of an e-health QR text (lower case), or None."""
    m = EHC_STATIC.match(text) or EHC_DYNAMIC.match(text)
    return m.group(1).lower() if m else None


def wallet_of(auth_code: str) -> str | None:
    """Return "wechat" or "alipay" for a well-formed payment code, else None."""
    if WECHAT_CODE.match(auth_code):
        return "wechat"
    if ALIPAY_CODE.match(auth_code):
        return "alipay"
    return None
