"""``ykt fw device list`` against a real central API (uvicorn on loopback) and the CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn

from central.dashboard.app import create_dashboard
from central.registry import Registry
from central.store import open_store
from yikatong.site.demo import free_port

SEEN = datetime(2026, 3, 9, 23, 5, 7, 123456, tzinfo=UTC)  # 07:05:07 next day in Beijing


@pytest.fixture
def central_url(tmp_path: Path) -> Iterator[str]:
    store = open_store(tmp_path / "central.db")
    store.add_device("kiosk-001", "kiosk", SEEN)
    store.apply_state("kiosk-001", online=True, boot_seq=1, version="1.2.0", now=SEEN)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), "tok",
                           site_name="测试", timezone="Asia/Shanghai")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{url}/api/status", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(5)
        store.close()


def _ykt(*args: str) -> subprocess.CompletedProcess[str]:
    # The technician's laptop is in UTC: the times must still be the site's. Reading the
    # fleet needs a sign-in: the admin token (the bootstrap administrator) here.
    env = {**os.environ, "TZ": "UTC", "YKT_CENTRAL_ADMIN_TOKEN": "tok",
           "YKT_FW_SESSION": os.devnull}
    return subprocess.run([sys.executable, "-m", "yikatong.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def test_device_list_prints_site_time_to_the_second(central_url: str) -> None:
    r = _ykt("fw", "device", "list", "--central", central_url)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("kiosk-001"))
    assert row.endswith("2026-03-10 07:05:07"), row
    assert "Asia/Shanghai" in r.stdout  # the header says which zone the times are in


def test_device_list_json_stays_iso(central_url: str) -> None:
    r = _ykt("fw", "device", "list", "--central", central_url, "--json")
    assert r.returncode == 0, r.stderr
    (dev,) = json.loads(r.stdout)
    assert datetime.fromisoformat(dev["last_seen"]) == SEEN
