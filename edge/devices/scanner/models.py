"""Scanner model profiles as data: one frozen row per model and interface mode.

Values are the factory defaults from each vendor's manual as named in the row's comment. A
site may reprogram a scanner (baud, suffix, AIM id), so every value here is a default that
the config can override; where we could not confirm a value it says so. USB product ids
change with the interface mode the scanner is programmed for (keyboard vs. COM emulation),
which is why a model appears once per mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from edge.devices.scanner.frames import FrameFormat

__all__ = ["MODELS", "ScannerModel", "match_usb"]

Interface = Literal["serial", "hid"]


@dataclass(frozen=True, slots=True)
class ScannerModel:
    """One scanner model in one interface mode."""

    name: str
    vendor: str
    interface: Interface
    # (vid, pid); pid None matches any product of that vendor on this interface.
    usb_ids: tuple[tuple[int, int | None], ...] = ()
    baudrate: int = 9600
    frame: FrameFormat = field(default_factory=FrameFormat)
    keyboard_layout: Literal["us", "de"] = "us"


_ROWS = (
    # Honeywell Xenon 1900g/1902g, "Xenon/Granit 1900/1910/1980 User's Guide": RS-232 default
    # 115200 8N1; USB Serial Emulation (CDC-ACM) ignores the baud. Suffix CR per the guide's
    # RS-232 defaults (configurable). PID 0x0CD4 as seen in public device lists (unsure which
    # USB mode it belongs to; configure vid:pid explicitly if discovery misses the scanner).
    ScannerModel(
        name="honeywell_xenon_1900_serial", vendor="Honeywell", interface="serial",
        usb_ids=((0x0C2E, 0x0CD4),), baudrate=115200,
        frame=FrameFormat(terminator=b"\r", aim=True),
    ),
    # Honeywell Voyager 1200g, "Voyager 1200g User's Guide": USB keyboard (PC) is the factory
    # interface; Enter suffix and keyboard country USA by default. PID 0x0CAA per public lists.
    ScannerModel(
        name="honeywell_voyager_1200g_hid", vendor="Honeywell", interface="hid",
        usb_ids=((0x0C2E, 0x0CAA),),
    ),
    # Zebra (Symbol) DS2208, "DS2208 Digital Scanner Product Reference Guide" (MN-002874):
    # default host is USB HID Keyboard Emulation, Enter after data, US English keyboard.
    # PID 0x1200 is Symbol's HID-keyboard product id ("MS4404/MS4407 Integration Guide" 9-3),
    # which later Symbol/Zebra scanners keep in that mode.
    ScannerModel(
        name="zebra_ds2208_hid", vendor="Zebra", interface="hid",
        usb_ids=((0x05E0, 0x1200),),
    ),
    # Zebra DS2208 programmed for USB CDC Host (COM port emulation), same guide. Baud ignored
    # over CDC; 9600 is the RS-232 default. PID 0x1701 per public device lists (unsure).
    ScannerModel(
        name="zebra_ds2208_cdc", vendor="Zebra", interface="serial",
        usb_ids=((0x05E0, 0x1701),), baudrate=9600,
        frame=FrameFormat(terminator=b"\r"),
    ),
    # Newland NLS-FR40 desktop 2D (新大陆), "NLS-FR40 User Guide": USB-HID keyboard by default,
    # USB virtual COM (VCOM) or RS-232 9600 8N1 when programmed; terminator CR (default per
    # vendor manual, configurable). Newland's vendor id 0x1EAB covers the whole range; the
    # FR40 product id differs per mode and is not confirmed, so match the vendor.
    ScannerModel(
        name="newland_fr40_serial", vendor="Newland", interface="serial",
        usb_ids=((0x1EAB, None),), baudrate=9600,
        frame=FrameFormat(terminator=b"\r"),
    ),
    ScannerModel(
        name="newland_fr40_hid", vendor="Newland", interface="hid",
        usb_ids=((0x1EAB, None),),
    ),
    # Hikvision desktop 2D scanners (DS-TDSM series), vendor user manual: RS-232/VCOM 9600
    # 8N1, CR terminator — default per vendor manual, configurable. USB ids not confirmed:
    # configure vid:pid in the scanner config.
    ScannerModel(
        name="hikvision_desktop_2d_serial", vendor="Hikvision", interface="serial",
        baudrate=9600, frame=FrameFormat(terminator=b"\r"),
    ),
    # Generic fallbacks for scanners we have no row for: 9600 8N1 and CR are what nearly all
    # OEM 2D engines ship with; keyboard wedge with Enter.
    ScannerModel(name="generic_serial", vendor="generic", interface="serial",
                 frame=FrameFormat(terminator=b"\r")),
    ScannerModel(name="generic_hid", vendor="generic", interface="hid"),
)

MODELS: Mapping[str, ScannerModel] = MappingProxyType({m.name: m for m in _ROWS})


def match_usb(
    interface: Interface, vid: int | None, pid: int | None,
    models: Mapping[str, ScannerModel] = MODELS,
) -> ScannerModel | None:
    """Model for a USB device seen on ``interface``: exact vid:pid first, then vendor-wide."""
    if vid is None:
        return None
    candidates = [m for m in models.values() if m.interface == interface]
    for m in candidates:
        if (vid, pid) in m.usb_ids:
            return m
    for m in candidates:
        if (vid, None) in m.usb_ids:
            return m
    return None
