"""Scanner config validation, model rows, driver registry and the polling watcher."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.devices.scanner.base import DeviceInfo
from edge.devices.scanner.config import ScannerConfig
from edge.devices.scanner.models import MODELS, match_usb
from edge.devices.scanner.serial_port import SerialScanner
from edge.devices.scanner.watcher import (
    DRIVERS,
    DeviceWatcher,
    ScannerAdded,
    ScannerRemoved,
    diff_devices,
    list_input_devices,
    list_serial_ports,
)


def test_defaults() -> None:
    cfg = ScannerConfig()
    assert cfg.enabled and cfg.devices == [] and cfg.dedup_window_s == 1.5


def test_full_config_loads() -> None:
    cfg = ScannerConfig.model_validate({
        "devices": [
            {"name": "desk", "kind": "serial", "port": "/dev/serial/by-id/usb-x",
             "model": "honeywell_xenon_1900_serial", "baudrate": 115200},
            {"name": "kiosk", "kind": "hid", "usb_id": "05E0:1200", "layout": "de"},
        ],
        "specimen_regex": r"^S\d{10}$", "staff_badge_regex": r"^YG\d{6}$",
        "dedup_window_s": 0.5,
    })
    assert cfg.devices[1].usb_id == "05e0:1200" and cfg.devices[1].vid_pid == (0x05E0, 0x1200)
    assert cfg.devices[1].model_name == "generic_hid"
    rules = cfg.rules()
    assert rules.specimen is not None and rules.specimen.fullmatch("S2024000001")


@pytest.mark.parametrize(("data", "fragment"), [
    ({"specimen_regex": "S(\\d+"}, "specimen_regex"),
    ({"staff_badge_regex": ".*"}, "empty string"),
    ({"unknown_key": 1}, "unknown_key"),
    ({"dedup_window_s": -1}, "dedup_window_s"),
    ({"devices": [{"name": "a", "kind": "serial"}]}, "port or usb_id"),
    ({"devices": [{"name": "a", "kind": "hid", "port": "/dev/ttyACM0"}]}, "kind=serial"),
    ({"devices": [{"name": "a", "kind": "hid", "evdev_path": "/x", "model": "zebra_ds2208_cdc"}]},
     "not kind=hid"),
    ({"devices": [{"name": "a", "kind": "serial", "port": "/x", "model": "nope"}]},
     "unknown scanner model"),
    ({"devices": [{"name": "a", "kind": "serial", "usb_id": "0c2e-0cd4"}]}, "usb_id"),
    ({"devices": [{"name": "a", "kind": "hid", "evdev_path": "/x", "layout": "fr"}]}, "layout"),
    ({"devices": [{"name": "a", "kind": "serial", "port": "/x"},
                  {"name": "a", "kind": "serial", "port": "/y"}]}, "duplicate"),
])
def test_bad_config_names_the_problem(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        ScannerConfig.model_validate(data)
    assert fragment in str(info.value)


def test_model_rows_are_consistent() -> None:
    for name, m in MODELS.items():
        assert m.name == name and m.interface in ("serial", "hid")
    assert {"generic_serial", "generic_hid"} <= set(MODELS)


def test_match_usb_exact_then_vendor_and_by_interface() -> None:
    assert match_usb("hid", 0x05E0, 0x1200) is MODELS["zebra_ds2208_hid"]
    assert match_usb("serial", 0x05E0, 0x1200) is None  # HID pid is not a serial scanner
    assert match_usb("serial", 0x1EAB, 0x1234) is MODELS["newland_fr40_serial"]
    assert match_usb("hid", 0x1EAB, 0x1234) is MODELS["newland_fr40_hid"]
    assert match_usb("hid", None, None) is None
    assert match_usb("serial", 0x1234, 0x5678) is None


def test_driver_registry_decides_support_and_builds_drivers() -> None:
    assert set(DRIVERS) == {"serial", "hid"}
    tty = DeviceInfo(bus="serial", path="/dev/ttyACM0", vid=0x0C2E, pid=0x0CD4)
    assert DRIVERS["serial"].supports(tty) is MODELS["honeywell_xenon_1900_serial"]
    assert DRIVERS["hid"].supports(tty) is None
    scanner = DRIVERS["serial"].create(tty.path, MODELS["generic_serial"], lambda e: None,
                                       name="x", layout="us")
    assert isinstance(scanner, SerialScanner) and scanner.path == tty.path
    assert tty.usb_id == "0c2e:0cd4"


def test_diff_devices() -> None:
    a = DeviceInfo("serial", "/dev/ttyACM0", 1, 2)
    b = DeviceInfo("serial", "/dev/ttyACM1", 1, 2)
    b2 = DeviceInfo("serial", "/dev/ttyACM1", 1, 3)
    added, removed = diff_devices({"a": a, "b": b}, {"b": b2})
    assert added == [b2] and removed == [a, b]


async def test_watcher_emits_added_and_removed_for_scanners_only() -> None:
    tty = DeviceInfo("serial", "/dev/ttyACM0", 0x0C2E, 0x0CD4)
    keyboard = DeviceInfo("hid", "/dev/input/event0", 0x046D, 0xC31C, "Logitech keyboard")
    wedge = DeviceInfo("hid", "/dev/input/event3", 0x05E0, 0x1200, "Symbol scanner")
    state: dict[str, list[DeviceInfo]] = {"serial": [], "hid": [keyboard]}
    calls = {"broken": 0}

    def broken() -> list[DeviceInfo]:
        calls["broken"] += 1
        raise OSError("sysfs unreadable")

    watcher = DeviceWatcher({"serial": lambda: state["serial"], "hid": lambda: state["hid"],
                             "other": broken})
    assert await watcher.poll() == []
    state["serial"] = [tty]
    state["hid"] = [keyboard, wedge]
    events = await watcher.poll()
    assert ScannerAdded(tty, MODELS["honeywell_xenon_1900_serial"]) in events
    assert ScannerAdded(wedge, MODELS["zebra_ds2208_hid"]) in events and len(events) == 2
    assert await watcher.poll() == []
    state["serial"] = []
    assert await watcher.poll() == [ScannerRemoved(tty)]
    assert calls["broken"] == 4


async def test_watcher_events_loop_polls_with_the_injected_sleep() -> None:
    tty = DeviceInfo("serial", "/dev/ttyUSB0", 0x1EAB, 0x0001)
    snapshots = [[], [tty], [tty], []]
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    watcher = DeviceWatcher({"serial": lambda: snapshots.pop(0) if snapshots else []},
                            interval_s=0.25, sleep=fake_sleep)
    got = []
    async for ev in watcher.events():
        got.append(ev)
        if len(got) == 2:
            break
    assert got == [ScannerAdded(tty, MODELS["newland_fr40_serial"]), ScannerRemoved(tty)]
    assert sleeps and set(sleeps) == {0.25}


def test_real_listers_return_device_infos() -> None:
    # No scanners in CI; the listers must still run against the real sysfs / evdev.
    for info in [*list_serial_ports(), *list_input_devices()]:
        assert isinstance(info, DeviceInfo) and info.path


def test_per_port_framing_overrides_the_model_profile() -> None:
    cfg = ScannerConfig.model_validate({"devices": [
        {"name": "desk", "kind": "serial", "port": "/dev/ttyACM0",
         "model": "honeywell_xenon_1900_serial", "prefix": "\u0002", "suffix": "#",
         "terminator": "\r\n", "aim": False},
        {"name": "plain", "kind": "serial", "port": "/dev/ttyACM1",
         "model": "honeywell_xenon_1900_serial"},
    ]})
    frame = cfg.devices[0].profile().frame
    assert (frame.prefix, frame.suffix, frame.terminator, frame.aim) == (
        b"\x02", b"#", b"\r\n", False)
    assert cfg.devices[0].profile().baudrate == 115200  # the rest of the row is kept
    assert cfg.devices[1].profile() is MODELS["honeywell_xenon_1900_serial"]


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"terminator": ""}, "terminator"),
    ({"prefix": "0123456789"}, "prefix"),
])
def test_bad_framing_override_names_the_key(extra: dict[str, object], fragment: str) -> None:
    dev = {"name": "a", "kind": "serial", "port": "/x", **extra}
    with pytest.raises(ValidationError, match=fragment):
        ScannerConfig.model_validate({"devices": [dev]})


def test_framing_overrides_are_refused_for_hid() -> None:
    with pytest.raises(ValidationError, match="framing is for kind=serial"):
        ScannerConfig.model_validate({"devices": [
            {"name": "a", "kind": "hid", "evdev_path": "/x", "terminator": "\t"}]})
