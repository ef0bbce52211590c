"""Scans: classified codes become events; payment codes and e-health QRs stay here.

A payment code never leaves the daemon except inside ``pay.create``: the kiosk and the event
stream get a handle (the scan id) and a mask (docs/security.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.runtime.events import EventBus

if TYPE_CHECKING:
    from edge.devices.scanner.classify import ClassifierRules

__all__ = ["DEFAULT_BADGE_REGEX", "DEFAULT_SPECIMEN_REGEX", "PAY_CODE_TTL_S", "HeldCode",
           "ScanDesk"]

#: How long a scanned payment code may wait for its payment. Wallet codes are short-lived
#: (about a minute) and single-use: a stale one must not be charged later.
PAY_CODE_TTL_S = 60.0
#: Used when the daemon has no scanner config: the site-in-a-box's specimen and badge shapes.
DEFAULT_SPECIMEN_REGEX = r"[0-9A-Za-z][0-9A-Za-z-]{5,31}"
DEFAULT_BADGE_REGEX = r"S[0-9]{4}"


@dataclass
class HeldCode:
    """A scanned payment code waiting for its payment (never logged, never persisted)."""

    wallet: str
    code: str = field(repr=False)
    masked: str = ""
    at: float = 0.0


class ScanDesk:
    """Classifies scans and holds the one payment code and e-health QR of the moment."""

    def __init__(self, bus: EventBus, rules: ClassifierRules | None,
                 monotonic: Callable[[], float]) -> None:
        if rules is None:
            from edge.devices.scanner.classify import ClassifierRules

            rules = ClassifierRules.from_strings(DEFAULT_SPECIMEN_REGEX, DEFAULT_BADGE_REGEX)
        self.rules = rules
        self.bus = bus
        self.monotonic = monotonic
        self.codes: dict[str, HeldCode] = {}
        self._ehc_pending: str | None = None

    def scan_text(self, text: str, source: str = "ui") -> dict[str, Any]:
        """Classify text typed into the kiosk's scan field (a keyboard-wedge scanner)."""
        from edge.devices.scanner.classify import classify

        return self.scan_received(classify(text, self.rules), source)

    def scan_received(self, scan: Any, source: str = "scanner") -> dict[str, Any]:
        """Handle one classified scan; publish a ``scan`` event without secrets; return it."""
        from edge.devices.scanner.classify import (
            EhcQr,
            PaymentCode,
            SpecimenBarcode,
            StaffBadge,
        )

        now = self.monotonic()
        self.codes = {k: c for k, c in self.codes.items() if now - c.at <= PAY_CODE_TTL_S}
        event: dict[str, Any] = {"scan_id": secrets.token_hex(8), "source": source}
        if isinstance(scan, PaymentCode):
            # The code stays here; the kiosk and the event stream get a handle and a mask.
            self.codes = {event["scan_id"]: HeldCode(scan.wallet, scan.code, scan.masked, now)}
            event.update(kind="payment_code", wallet=scan.wallet, masked=scan.masked)
        elif isinstance(scan, SpecimenBarcode):
            event.update(kind="specimen", value=scan.value)
        elif isinstance(scan, StaffBadge):
            event.update(kind="staff_badge", value=scan.badge_id)
        elif isinstance(scan, EhcQr):
            self._ehc_pending = scan.raw
            event.update(kind="ehc_qr", qr=scan.kind)
        else:
            event.update(kind="unknown", length=getattr(scan, "length", 0))
        self.bus.publish("scan", event)
        return event

    def take_code(self, scan_id: str | None) -> HeldCode | None:
        """The payment code scanned as ``scan_id``, once, while it is fresh."""
        held = self.codes.pop(scan_id or "", None)
        if held is None or self.monotonic() - held.at > PAY_CODE_TTL_S:
            return None
        return held

    def take_qr(self) -> str | None:
        """The e-health QR scanned last, once."""
        raw, self._ehc_pending = self._ehc_pending, None
        return raw

    def clear_codes(self) -> None:
        """A scanned payment code never outlives the patient's session."""
        self.codes.clear()
