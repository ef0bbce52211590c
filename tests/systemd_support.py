"""``systemd-analyze verify`` on an offline root: what tests/test_systemd_units.py and
tests/test_install_device.py share (docs/operations.md, "Units").

``verify`` needs every unit a service pulls in (sysinit.target, basic.target, …) and checks
that each Exec*= binary exists and is executable — inside ``--root``, symlinks included. So a
test root gets the host's own unit directory (Debian's ``systemd`` package) and the tree the
device installer makes; the units are checked there, never against this machine's /opt.

systemd 252 returns 0 for many mistakes it only warns about and ignores (an unknown
``Restart=`` value, a bad ``DeviceAllow=`` right): a unit passes only with exit 0 **and** no
diagnostic output at all.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["HOST_UNITS", "SYSTEMD_ANALYZE", "add_host_units", "verify_units"]

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
#: Debian's system units (/lib is a symlink to /usr/lib on bookworm).
HOST_UNITS = Path("/usr/lib/systemd/system")


def add_host_units(root: Path) -> None:
    """Copy the host's system units (targets, sockets) into ``root``'s /usr/lib."""
    if not Path(SYSTEMD_ANALYZE).is_file() or not (HOST_UNITS / "sysinit.target").is_file():
        raise AssertionError(
            f"{SYSTEMD_ANALYZE} and {HOST_UNITS} are needed: install Debian's `systemd` "
            "package (bash scripts/install.sh does)")
    dest = root / "usr/lib/systemd/system"
    if not dest.exists():
        shutil.copytree(HOST_UNITS, dest, symlinks=True)


def verify_units(root: Path, units: list[str]) -> tuple[int, str]:
    """Run ``systemd-analyze verify`` on ``units`` (names under root/etc/systemd/system).

    Returns the exit code and everything it printed (stdout + stderr).
    """
    res = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", "--generators=no", *units],
        capture_output=True, text=True, timeout=60, check=False)
    return res.returncode, (res.stdout + res.stderr).strip()
