"""Virtual ESC/POS network printer and its pure decoder."""

from edge.devices.printer.sim.decoder import DecodedJob, EscPosDecoder, decode
from edge.devices.printer.sim.server import Faults, VirtualPrinter

__all__ = ["DecodedJob", "EscPosDecoder", "Faults", "VirtualPrinter", "decode"]
