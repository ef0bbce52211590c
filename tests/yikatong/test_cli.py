"""Every ``ykt`` subcommand answers --help with real options."""

import subprocess
import sys

import pytest

COMMANDS = [
    [], ["edge"], ["kiosk"], ["central"], ["platform-sim"], ["demo"],
    ["card"], ["card", "read"], ["card", "sam"],
    ["sim"], ["sim", "card", "insert"], ["sim", "card", "remove"], ["sim", "printer"],
    ["fw"], ["fw", "keygen"], ["fw", "device", "add"], ["fw", "device", "list"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "ykt")
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "yikatong.cli", *cmd, "--help"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "usage: ykt" in r.stdout
    assert "--" in r.stdout or "COMMAND" in r.stdout  # it lists options or subcommands
