"""Pure ESC/POS layout: byte builder, profiles, text fitting, status bits, document layouts."""

from edge.devices.printer.escpos.builder import EscPosBuilder
from edge.devices.printer.escpos.layout import render
from edge.devices.printer.escpos.profiles import PROFILES, PrinterProfile, get_profile
from edge.devices.printer.escpos.status import PrinterStatus, parse_status
from edge.devices.printer.escpos.text import display_width, format_fen, wrap

__all__ = [
    "PROFILES",
    "EscPosBuilder",
    "PrinterProfile",
    "PrinterStatus",
    "display_width",
    "format_fen",
    "get_profile",
    "parse_status",
    "render",
    "wrap",
]
