"""Masking of personal data for screens, receipts and logs (pure, no I/O).

The rules follow common practice on Chinese hospital receipts and kiosks:
national ID ``110***********1234`` (first 3, last 4), name ``张*`` / ``欧阳**`` / ``张*丰``
(first character, and the last one for names of three or more), phone ``138****5678``,
payment codes reduced to the first 2 and last 4 digits.
"""

from __future__ import annotations

import re

__all__ = [
    "mask_card_number",
    "mask_id_number",
    "mask_name",
    "mask_payment_code",
    "mask_phone",
    "mask_text",
]


def mask_id_number(value: str) -> str:
    """Mask a national ID number (or any document number), keeping first 3 and last 4."""
    v = value.strip()
    if len(v) <= 7:
        return "*" * len(v)
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_name(value: str) -> str:
    """Mask a person's name: ``张三`` → ``张*``, ``张三丰`` → ``张*丰``, ``Li Lei`` → ``L*****``."""
    v = value.strip()
    if not v:
        return v
    if len(v) == 1:
        return "*"
    if len(v) == 2:
        return v[0] + "*"
    if v.isascii():
        return v[0] + "*" * (len(v) - 1)
    return v[0] + "*" * (len(v) - 2) + v[-1]


def mask_phone(value: str) -> str:
    """Mask a phone number, keeping the first 3 and last 4 digits."""
    v = value.strip()
    if len(v) <= 7:
        return "*" * len(v)
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_card_number(value: str) -> str:
    """Mask a health card number, keeping the first 4 and last 4 characters."""
    v = value.strip()
    if len(v) <= 8:
        return v[:2] + "*" * max(0, len(v) - 2)
    return v[:4] + "*" * (len(v) - 8) + v[-4:]


def mask_payment_code(value: str) -> str:
    """Reduce a wallet payment code to its first 2 and last 4 digits."""
    v = value.strip()
    if len(v) <= 6:
        return "*" * len(v)
    return v[:2] + "*" * (len(v) - 6) + v[-4:]


# National ID: 17 digits + digit/X (18), or the old 15-digit form. Not inside longer numbers.
_ID_RE = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8}|\d{6})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
# Mainland mobile numbers, optionally +86.
_PHONE_RE = re.compile(r"(?<!\d)(?:\+?86[- ]?)?(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
# WeChat Pay (18 digits, 10-15 prefix) and Alipay (16-24 digits, 25-30 prefix) payment codes.
_PAYCODE_RE = re.compile(r"(?<!\d)(?:1[0-5]\d{16}|(?:2[5-9]|30)\d{14,22})(?!\d)")
# Structured fields whose value is a person's name, in key=value or JSON form.
_NAME_FIELD_RE = re.compile(
    r"""(?P<key>["']?(?:name|holder|patient_name|holder_name|姓名)["']?\s*[:=]\s*["']?)"""
    r"""(?P<val>[^\s"',}{]+)""",
    re.IGNORECASE,
)


def mask_text(text: str, names: tuple[str, ...] = ()) -> str:
    """Mask ID numbers, phone numbers, payment codes and names anywhere in free text.

    ``names`` are known names (for example the holder of the card in the reader) to mask
    wherever they appear, not only in ``name=`` fields.
    """
    out = _PAYCODE_RE.sub(lambda m: mask_payment_code(m.group(0)), text)
    out = _ID_RE.sub(lambda m: mask_id_number(m.group(0)), out)
    out = _PHONE_RE.sub(lambda m: m.group(1) + "****" + m.group(3), out)
    out = _NAME_FIELD_RE.sub(lambda m: m.group("key") + mask_name(m.group("val")), out)
    for name in names:
        if len(name) >= 2 and name in out:
            out = out.replace(name, mask_name(name))
    return out
