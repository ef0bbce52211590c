"""Classify scanned text into typed scans (pure, no I/O).

Order of the checks matters: e-health QR first (exact shape), then wallet payment codes,
then the site's staff-badge and specimen patterns, else unknown. Payment codes are checked
before the site patterns on purpose: a site regex that also matched an 18-digit WeChat code
would otherwise route a single-use payment secret into specimen handling, where it would be
logged and stored in clear. A site whose specimen numbers collide with wallet prefixes must
prefix them (most LIS systems do).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from edge.devices.scanner.errors import InvalidScanText
from yikatong.common.privacy import mask_payment_code, mask_text

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "ClassifierRules",
    "EhcQr",
    "PaymentCode",
    "Scan",
    "SpecimenBarcode",
    "StaffBadge",
    "UnknownScan",
    "classify",
    "mask_scan_text",
]

# A dynamic e-health QR is 99 characters; specimen and badge codes are far shorter. 512 leaves
# room for long vendor QR payloads while bounding what we hold and log.
DEFAULT_MAX_LENGTH = 512

_EHC_STATIC = re.compile(r"([0-9A-Fa-f]{64}):1")
_EHC_DYNAMIC = re.compile(r"([0-9A-Fa-f]{64}):0:([0-9A-Fa-f]{32})")
# docs/healthcard.md: WeChat Pay 18 digits starting 10-15; Alipay 16-24 digits starting 25-30.
# [0-9], not \d: \d also matches fullwidth and other Unicode digits no wallet issues.
_WECHAT = re.compile(r"1[0-5][0-9]{16}")
_ALIPAY = re.compile(r"(?:2[5-9]|30)[0-9]{14,22}")
# Digit runs long enough to be some other wallet's or bank's code (UnionPay QR, card PAN).
_LONG_DIGITS = re.compile(r"\d{12,}")
# Trimmed around a scan: scanners append CR/LF/Tab terminators, some pad with spaces.
_TRIM = " \t\r\n"
# Cc control, Cf format (zero-width, BOM, bidi overrides), Cs lone surrogates (from
# surrogateescape decoding), Co private use: none belongs in a code we act on.
_REJECTED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


def mask_scan_text(text: str) -> str:
    """Mask a scan's text for logs and reprs: payment codes, IDs, phones and long digit runs."""
    out = mask_text(text)
    return _LONG_DIGITS.sub(lambda m: mask_payment_code(m.group(0)), out)


@dataclass(frozen=True, slots=True)
class ClassifierRules:
    """Site patterns and limits; build once from config."""

    specimen: re.Pattern[str] | None = None
    staff_badge: re.Pattern[str] | None = None
    max_length: int = DEFAULT_MAX_LENGTH

    @classmethod
    def from_strings(
        cls,
        specimen_regex: str | None = None,
        staff_badge_regex: str | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> ClassifierRules:
        """Compile site regexes; raises ``re.error`` on a bad pattern (config validates first)."""
        return cls(
            specimen=re.compile(specimen_regex) if specimen_regex else None,
            staff_badge=re.compile(staff_badge_regex) if staff_badge_regex else None,
            max_length=max_length,
        )


@dataclass(frozen=True, slots=True)
class EhcQr:
    """An Electronic Health Card QR; ``raw`` goes to the platform unchanged."""

    empi_hex: str
    kind: Literal["static", "dynamic"]
    nonce: str | None
    raw: str = field(repr=False)

    def __repr__(self) -> str:
        # The EMPI is a stable person identifier: keep it out of logs too.
        return f"EhcQr(kind={self.kind!r}, empi={self.empi_hex[:4]}…{self.empi_hex[-4:]})"


@dataclass(frozen=True, slots=True, repr=False)
class PaymentCode:
    """A single-use wallet payment code; repr/str show only the masked form."""

    wallet: Literal["wechat", "alipay"]
    code: str

    @property
    def masked(self) -> str:
        """The code reduced to its first 2 and last 4 digits."""
        return mask_payment_code(self.code)

    def __repr__(self) -> str:
        return f"PaymentCode(wallet={self.wallet!r}, code={self.masked!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SpecimenBarcode:
    """A lab specimen or report barcode matching the site pattern."""

    value: str


@dataclass(frozen=True, slots=True)
class StaffBadge:
    """A staff badge matching the site pattern."""

    badge_id: str


@dataclass(frozen=True, slots=True)
class UnknownScan:
    """Text we do not act on; only a masked copy is kept."""

    raw_masked: str
    length: int


Scan = EhcQr | PaymentCode | SpecimenBarcode | StaffBadge | UnknownScan


def _validate(text: str, max_length: int) -> str:
    trimmed = text.strip(_TRIM)
    if not trimmed:
        raise InvalidScanText("empty", length=len(text))
    if len(trimmed) > max_length:
        raise InvalidScanText("too_long", length=len(trimmed))
    for pos, ch in enumerate(trimmed):
        if unicodedata.category(ch) in _REJECTED_CATEGORIES:
            raise InvalidScanText("control_character", length=len(trimmed), position=pos)
    return trimmed


def classify(text: str, rules: ClassifierRules) -> Scan:
    """Classify one scan; raises ``InvalidScanText`` for empty, over-long or control text."""
    t = _validate(text, rules.max_length)
    if m := _EHC_STATIC.fullmatch(t):
        return EhcQr(empi_hex=m.group(1), kind="static", nonce=None, raw=t)
    if m := _EHC_DYNAMIC.fullmatch(t):
        return EhcQr(empi_hex=m.group(1), kind="dynamic", nonce=m.group(2), raw=t)
    if _WECHAT.fullmatch(t):
        return PaymentCode(wallet="wechat", code=t)
    if _ALIPAY.fullmatch(t):
        return PaymentCode(wallet="alipay", code=t)
    if rules.staff_badge is not None and rules.staff_badge.fullmatch(t):
        return StaffBadge(badge_id=t)
    if rules.specimen is not None and rules.specimen.fullmatch(t):
        return SpecimenBarcode(value=t)
    return UnknownScan(raw_masked=mask_scan_text(t), length=len(t))
