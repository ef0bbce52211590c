"""Fixtures shared by the device tests: a real pseudo-terminal pair made by socat."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import Procs, wait_until


@pytest.fixture
def pty_pair(tmp_path: Path, procs: Procs) -> tuple[str, str]:
    """(device end, port the driver opens): a serial line between two real ptys (socat)."""
    device_end, port = str(tmp_path / "device"), str(tmp_path / "port")
    procs.spawn("socat", ["socat", f"pty,raw,echo=0,link={device_end}",
                          f"pty,raw,echo=0,link={port}"])  # stopped by ``procs``
    wait_until(lambda: os.path.exists(device_end) and os.path.exists(port), 5,
               what="socat's ptys")
    return device_end, port
