"""Printer models and their quirks as data (one frozen row per model, with its manual)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edge.devices.printer.errors import PrinterConfigError

__all__ = ["PROFILES", "PrinterProfile", "get_profile"]


@dataclass(frozen=True)
class PrinterProfile:
    """What the layout needs to know about one printer model."""

    name: str
    model: str
    columns: int  # Font A characters per line (12x24 dots each)
    dots_per_line: int  # printable width in dots
    dpi: int
    chinese_mode: bool  # has a GB font selected with FS & / FS .
    gb18030_four_byte: bool  # prints GB18030 four-byte codes (else GBK two-byte only)
    cutter: Literal["partial", "full", "none"]
    qr: bool  # supports GS ( k QR Code functions
    qr_module_size: int  # dots per QR module that scans well on this head
    sequenced_status: bool  # answers GS r 1 in sequence (reply means "printed so far")
    feed_before_cut: int  # lines between the last print line and the cutter blade
    manual: str

    @property
    def column_dots(self) -> int:
        """Width of one half-width column in dots."""
        return self.dots_per_line // self.columns


PROFILES: dict[str, PrinterProfile] = {
    p.name: p
    for p in (
        # Epson "TM-T88VI/TM-T88VII Technical Reference Guide" (China model -C with the
        # GB18030 font): 180 dpi, 512 dots, Font A 42 columns, autocutter, GS ( k QR.
        PrinterProfile(
            name="epson_tm_t88", model="Epson TM-T88VI-C", columns=42, dots_per_line=512,
            dpi=180, chinese_mode=True, gb18030_four_byte=True, cutter="partial", qr=True,
            qr_module_size=8, sequenced_status=True, feed_before_cut=4,
            manual="Epson TM-T88VI Technical Reference Guide; ESC/POS Command Reference",
        ),
        # Epson "TM-T20III Technical Reference Guide" (China model): 203 dpi, 576 dots,
        # Font A 48 columns.
        PrinterProfile(
            name="epson_tm_t20", model="Epson TM-T20III-C", columns=48, dots_per_line=576,
            dpi=203, chinese_mode=True, gb18030_four_byte=True, cutter="partial", qr=True,
            qr_module_size=8, sequenced_status=True, feed_before_cut=4,
            manual="Epson TM-T20III Technical Reference Guide; ESC/POS Command Reference",
        ),
        # Xprinter "XP-80 系列 编程手册" (ESC/POS compatible): 203 dpi, 576 dots, 48 columns,
        # GBK font (no four-byte GB18030 codes), FS & Chinese mode, GS ( k QR, GS r status.
        PrinterProfile(
            name="xprinter_xp80", model="Xprinter XP-80C/XP-Q800", columns=48,
            dots_per_line=576, dpi=203, chinese_mode=True, gb18030_four_byte=False,
            cutter="partial", qr=True, qr_module_size=8, sequenced_status=True,
            feed_before_cut=4, manual="Xprinter XP-80 Programming Manual (编程手册)",
        ),
        # Xprinter "XP-58 编程手册": 58 mm paper, 384 dots, 32 columns, no cutter.
        PrinterProfile(
            name="xprinter_xp58", model="Xprinter XP-58IIH", columns=32, dots_per_line=384,
            dpi=203, chinese_mode=True, gb18030_four_byte=False, cutter="none", qr=True,
            qr_module_size=5, sequenced_status=True, feed_before_cut=3,
            manual="Xprinter XP-58 Programming Manual (编程手册)",
        ),
        # Sunmi "内置打印机 ESC/POS 指令集" for the 80 mm T2/K2 kiosks: 576 dots, 48 columns,
        # GB18030 font, cutter.
        PrinterProfile(
            name="sunmi_80", model="Sunmi T2/K2 80 mm", columns=48, dots_per_line=576,
            dpi=203, chinese_mode=True, gb18030_four_byte=True, cutter="full", qr=True,
            qr_module_size=8, sequenced_status=True, feed_before_cut=4,
            manual="Sunmi ESC/POS command set for built-in printers (商米打印机指令集)",
        ),
        # Same Sunmi manual, 58 mm models (V2/P2): 384 dots, 32 columns, tear bar, no cutter.
        PrinterProfile(
            name="sunmi_58", model="Sunmi V2/P2 58 mm", columns=32, dots_per_line=384,
            dpi=203, chinese_mode=True, gb18030_four_byte=True, cutter="none", qr=True,
            qr_module_size=5, sequenced_status=True, feed_before_cut=3,
            manual="Sunmi ESC/POS command set for built-in printers (商米打印机指令集)",
        ),
    )
}


def get_profile(name: str) -> PrinterProfile:
    """Look a profile up by name; unknown names raise PrinterConfigError listing the known."""
    try:
        return PROFILES[name]
    except KeyError:
        raise PrinterConfigError(
            "profile", f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None
