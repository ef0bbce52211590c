"""The slip a device prints while it waits for enrollment: its pairing code, big.

:class:`PairingSlip` is a printable document like those of
:mod:`edge.devices.printer.documents`; its layout is added to the printer's layout table
when this module is imported, so :meth:`PrinterService.print` renders it as any other
document (durable job, printed once per job id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from edge.devices.printer.errors import InvalidDocument
from edge.devices.printer.escpos import layout as _layout

__all__ = ["PairingSlip"]


@dataclass(frozen=True)
class PairingSlip:
    """设备配对码 / Pairing code: what a technician reads to approve this device.

    Times are local (the site's time zone), as on every slip.
    """

    kind: ClassVar[str] = "pairing_slip"

    hospital_name: str
    code: str
    serial: str
    printed_at: datetime
    expires_at: datetime | None = None
    model: str = ""
    copy: bool = False

    def __post_init__(self) -> None:
        for name in ("hospital_name", "code", "serial"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise InvalidDocument(self.kind, name, "must not be empty")
        if not isinstance(self.printed_at, datetime):
            raise InvalidDocument(self.kind, "printed_at", "must be a datetime")


def _pairing(doc: PairingSlip, page: _layout._Page) -> None:
    page.header(doc.hospital_name, "设备配对码", doc.copy)
    page.text("PAIRING CODE", align="center", bold=True)
    page.b.feed(1)
    page.text(doc.code, align="center", bold=True, width=2, height=2)
    page.b.feed(1)
    page.rule()
    page.kv("设备序列号", doc.serial)
    page.text("Serial: " + doc.serial)
    if doc.model:
        page.kv("设备型号", doc.model)
    if doc.expires_at is not None:
        stamp = doc.expires_at.strftime("%Y-%m-%d %H:%M")
        page.kv("有效期至", stamp)
        page.text("Expires: " + stamp)
    page.footer(doc.printed_at, [
        "请将配对码告知管理员，在中心批准后本机自动启用。",
        "Give this code to the administrator; the terminal starts once it is approved.",
    ], doc.copy)


_layout._LAYOUTS.setdefault(PairingSlip, _pairing)  # type: ignore[arg-type]
