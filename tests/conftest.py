"""Shared test rig: the site-in-a-box (real pcscd+vpcd, Mosquitto, central, platform, edge,
kiosk processes) and headless Chromium. Component rigs live in the conftest of their folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    # Without these Chromium keeps dialling out to Google, which this network refuses.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--disable-features=Translate,MediaRouter",
]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One whole site for the session: two terminals, central, Mosquitto, platform."""
    from central.demo import Site

    s = Site(tmp_path_factory.mktemp("site"))
    s.start()
    try:
        yield s
    finally:
        s.stop()
        leftovers = [name for name, proc in s.procs if proc.poll() is None]
        assert not leftovers, f"processes left running: {leftovers}"


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/install.sh")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screens_dir() -> Path:
    """Where UI screenshots are kept for people to look at (docs/screens)."""
    d = Path(__file__).resolve().parent.parent / "docs" / "screens"
    d.mkdir(parents=True, exist_ok=True)
    return d
