"""Fixtures shared by the device tests: a real pseudo-terminal pair made by socat."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(device end, port the driver opens): a serial line between two real ptys (socat)."""
    device_end, port = str(tmp_path / "device"), str(tmp_path / "port")
    proc = subprocess.Popen(["socat", f"pty,raw,echo=0,link={device_end}",
                             f"pty,raw,echo=0,link={port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not (os.path.exists(device_end) and os.path.exists(port)):
            assert time.monotonic() < deadline, "socat did not start"
            time.sleep(0.02)
        yield device_end, port
    finally:
        proc.terminate()
        proc.wait(timeout=5)
