"""systemd/*: every unit passes ``systemd-analyze verify`` in an offline root laid out as the
device installer makes it, a broken copy fails, and the device units run from the A/B slots.

docs/operations.md ("Units") and docs/updates.md describe the layout. tests/systemd_support.py
says why a unit passes only with exit 0 and no output.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from systemd_support import SYSTEMD_ANALYZE, add_host_units, verify_units

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.glob("*.service"))
DEVICE_UNITS = ["ykt-edge.service", "ykt-kiosk.service", "ykt-kiosk-browser.service"]
SERVER_UNITS = ["ykt-central.service", "ykt-platform-sim.service"]
GUARD = "/opt/yikatong/committed/bin/ykt update guard --root /opt/yikatong"


def _exe(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def lay_out_root(root: Path, *, server: bool = False) -> Path:
    """A device: the tree scripts/install-device.sh makes (slot a, the symlinks, the users)
    and the base system's /bin/sh and Chromium. A server (``server``): its one venv. Every
    unit of systemd/ is installed in both; each kind is verified where it belongs."""
    add_host_units(root)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        "ykt:x:990:990:Yikatong device:/var/lib/yikatong:/usr/sbin/nologin\n"
        "ykt-central:x:991:991:Yikatong central:/var/lib/yikatong:/usr/sbin/nologin\n"
        "kiosk:x:1001:1001:Kiosk screen:/home/kiosk:/bin/bash\n")
    (root / "etc/group").write_text(
        "root:x:0:\nlp:x:7:ykt\ndialout:x:20:ykt\ninput:x:101:ykt\n"
        "ykt:x:990:\nykt-central:x:991:\nkiosk:x:1001:\n")
    opt = root / "opt/yikatong"
    _exe(root / "bin/sh")
    dest = root / "etc/systemd/system"
    dest.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        (dest / name).write_bytes((UNIT_DIR / name).read_bytes())
    if server:
        _exe(opt / ".venv/bin/ykt")
        return root
    _exe(opt / "slots/a/bin/ykt")
    (opt / "slots/a/.slot.json").write_text(json.dumps(
        {"version": "0.1.0", "manifest_sha256": "0" * 64, "installed_at": "2025-01-01T00:00:00Z"}))
    (opt / "current").symlink_to("slots/a")
    (opt / "committed").symlink_to("slots/a")
    (opt / "update").mkdir()
    _exe(root / "usr/bin/chromium")
    return root


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → values in order (continuation lines joined, comments dropped)."""
    out: dict[str, list[str]] = {}
    section = ""
    logical = re.sub(r"\\\n\s*", " ", text)
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return lay_out_root(tmp_path / "root")


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    return lay_out_root(tmp_path / "server", server=True)


def test_the_unit_list_is_what_the_tests_expect() -> None:
    assert sorted(DEVICE_UNITS + SERVER_UNITS) == UNITS


@pytest.mark.parametrize("unit", UNITS)
def test_every_unit_verifies(root: Path, server_root: Path, unit: str) -> None:
    rc, out = verify_units(server_root if unit in SERVER_UNITS else root, [unit])
    assert (rc, out) == (0, ""), out


def test_device_units_verify_together(root: Path) -> None:
    rc, out = verify_units(root, DEVICE_UNITS)
    assert (rc, out) == (0, ""), out


def test_server_units_do_not_verify_on_a_device(root: Path) -> None:
    """A device has slots, not a server venv: the server units' binary is not there."""
    rc, out = verify_units(root, ["ykt-central.service"])
    assert rc != 0 and "/opt/yikatong/.venv/bin/ykt is not executable" in out, out


# Each: what is broken, how (on the unit text, or on the root), what verify must say.
BROKEN = [
    ("misspelt key", "ykt-edge.service", ("ExecStart=/opt", "ExecStrat=/opt"), "Unknown key"),
    ("bad Restart= value", "ykt-edge.service", ("Restart=always", "Restart=sometimes"),
     "restart specifier"),
    ("bad ProtectSystem= value", "ykt-kiosk.service", ("ProtectSystem=strict",
                                                        "ProtectSystem=very"), "protect system"),
    ("bad device right", "ykt-edge.service", ("char-input rw", "char-input rwx"),
     "Invalid device rights"),
    ("misspelt section", "ykt-kiosk.service", ("[Service]", "[Servise]"), "Unknown section"),
    ("pre-slot venv path", "ykt-edge.service", ("/opt/yikatong/current/bin/ykt edge",
                                                "/opt/yikatong/.venv/bin/ykt edge"),
     "is not executable"),
    ("no committed slot", "ykt-edge.service", "rm committed", "is not executable"),
    ("no current slot", "ykt-kiosk.service", "rm current", "is not executable"),
]


@pytest.mark.parametrize(("what", "unit", "change", "expect"), BROKEN,
                         ids=[b[0] for b in BROKEN])
def test_a_broken_unit_fails(root: Path, what: str, unit: str,
                             change: tuple[str, str] | str, expect: str) -> None:
    path = root / "etc/systemd/system" / unit
    if isinstance(change, tuple):
        text = path.read_text()
        assert change[0] in text, f"{what}: the unit no longer has {change[0]!r}"
        path.write_text(text.replace(change[0], change[1], 1))
    else:
        (root / "opt/yikatong" / change.split()[1]).unlink()
    rc, out = verify_units(root, [unit])
    assert (rc, out) != (0, ""), f"{what}: verify accepted a broken unit"
    assert expect in out, out


def test_device_units_run_from_the_slots() -> None:
    edge = parse_unit((UNIT_DIR / "ykt-edge.service").read_text())
    kiosk = parse_unit((UNIT_DIR / "ykt-kiosk.service").read_text())
    assert edge["Service.ExecStart"] == [
        "/opt/yikatong/current/bin/ykt edge --config /etc/yikatong/edge.toml"]
    assert edge["Service.ExecStartPre"] == [GUARD]
    assert edge["Service.ReadWritePaths"] == ["/opt/yikatong"]
    assert kiosk["Service.ExecStart"] == [
        "/opt/yikatong/current/bin/ykt kiosk --config /etc/yikatong/kiosk.toml"]
    assert kiosk["Unit.PartOf"] == ["ykt-edge.service"]
    for unit in (edge, kiosk):
        assert unit["Service.User"] == ["ykt"]
        assert unit["Unit.StartLimitIntervalSec"] == ["0"]
        # The hardening stays: read-only system, no home, private /tmp, no capabilities.
        for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                           ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                           ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
                           ("ProtectControlGroups", "yes"), ("CapabilityBoundingSet", ""),
                           ("UMask", "0077")]:
            assert unit[f"Service.{key}"] == [value], key
    assert "Service.ReadWritePaths" not in kiosk  # the UI writes nothing
    for name in DEVICE_UNITS:
        assert "/opt/yikatong/.venv" not in (UNIT_DIR / name).read_text(), name
    for name in SERVER_UNITS:  # a server has one venv and no slots
        text = (UNIT_DIR / name).read_text()
        assert "/opt/yikatong/.venv/bin/ykt" in text and "current" not in text, name


def test_polkit_rule_and_edge_config_name_the_installed_units() -> None:
    rule = (UNIT_DIR / "50-yikatong.rules").read_text()
    named = set(re.findall(r'"(ykt-[a-z-]+\.service)"', rule))
    assert named == {"ykt-edge.service", "ykt-kiosk.service"}
    assert named <= set(UNITS)
    for cfg in ("edge-kiosk.toml", "edge-cashier.toml"):
        text = (REPO / "config" / cfg).read_text()
        assert 'edge_unit = "ykt-edge.service"' in text
        assert 'kiosk_unit = "ykt-kiosk.service"' in text


#: `systemd-analyze security` exposure (0 best … 10 worst) measured when the slots came in.
EXPOSURE_LIMIT = {"ykt-edge.service": 3.5, "ykt-kiosk.service": 3.5,
                  "ykt-central.service": 4.7}


@pytest.mark.parametrize("unit", sorted(EXPOSURE_LIMIT))
def test_hardening_does_not_regress(root: Path, server_root: Path, unit: str) -> None:
    where = server_root if unit in SERVER_UNITS else root
    res = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", f"--root={where}",
                          "--no-pager", unit], capture_output=True, text=True, timeout=60,
                         check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= EXPOSURE_LIMIT[unit], res.stdout
