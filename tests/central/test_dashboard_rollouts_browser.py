"""The dashboard's Rollouts page in headless Chromium (docs/updates.md "Rollouts"): the list
with its progress bar, a rollout paused at its failure threshold with the reason, the
devices with their states and codes, and the buttons each role may use (pause, resume).

Central here is the dashboard app on loopback over a real fleet service and rollout service;
the fleet service is not started (no brokers): its publisher records, the scheduler's rounds
and the devices' ``update.status`` are driven by the test (in a helper thread: Playwright's
sync API holds an event loop in this one). Writes docs/screens/dashboard-rollouts.png.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from bundle_support import small_bundle_tar
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.broker import free_port
from central.dashboard.app import create_dashboard
from central.fleet import FleetSection
from central.fleet.bundles import bundles_of
from central.fleet.service import FleetService
from central.registry import Registry
from central.store import open_store
from yikatong.protocol.update import UpdateStatus

ADMIN = "boot-token-for-rollout-page"
NOW = datetime(2026, 3, 9, 23, 5, 7, tzinfo=UTC)
PLAN = {"kiosk-001": "committed", "kiosk-002": "committed", "kiosk-003": "failed",
        "kiosk-004": "rolled_back", "kiosk-005": None, "cashier-001": None}


class Recorder:
    connected = True

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        return None


def in_thread(coro: Coroutine[Any, Any, Any]) -> Any:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(coro)))
    t.start()
    t.join(30)
    return out[0]


def bundle_tar(version: str) -> bytes:
    return small_bundle_tar(version, Ed25519PrivateKey.generate())


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[str, FleetService, str]]:
    store = open_store(tmp_path / "central.db")
    registry = Registry(store, tmp_path / "broker", legacy_passwords=False)
    fleet = FleetService(store, registry, FleetSection(
        public_url="http://10.0.0.5:8800", rollout_scheduler=False, enroll_port=free_port()),
        data_dir=tmp_path)
    fleet.publisher = Recorder()
    F = fleet.tables.FleetDevice
    for dev in PLAN:
        store.add_device(dev, "cashier" if dev.startswith("cashier") else "kiosk", NOW)
        F.create(dev=dev, site="门诊楼", facts=json.dumps({"model": "YKT-K1"}))
        store.apply_state(dev, online=True, boot_seq=1, version="1.4.0", now=NOW)

    async def setup() -> str:
        async def chunks() -> AsyncIterator[bytes]:
            yield bundle_tar("1.5.0")

        await bundles_of(fleet).upload("1.5.0", chunks(), actor="chen.jie")
        svc = fleet.rollouts
        ro = await svc.create({"version": "1.5.0", "site": "门诊楼", "role": "kiosk",
                               "max_per_minute": 10, "max_in_flight": 4,
                               "failure_threshold": 2, "notes": "夜间升级 night update"},
                              actor="chen.jie")
        rid = ro["rollout_id"]
        await svc.tick()
        for dev, final in PLAN.items():
            if final is None:
                continue
            for state in ("downloading", "downloaded", "verified", "installing",
                          "awaiting_health"):
                await svc.on_status(dev, UpdateStatus(rollout_id=rid, version="1.5.0",
                                                      state=state, bytes_done=4096,
                                                      bytes_total=4096))
            code = {"failed": "hash_mismatch", "rolled_back": "health_failed"}.get(final)
            msg = {"failed": "wheels/pyscard hash differs",
                   "rolled_back": "reader not found within 120 s"}.get(final)
            await svc.on_status(dev, UpdateStatus(
                rollout_id=rid, version="1.5.0", state=final, code=code, message=msg,  # type: ignore[arg-type]
                running_version="1.5.0" if final == "committed" else "1.4.0"))
        return rid

    rid = in_thread(setup())
    app = create_dashboard(store, registry, ADMIN, site_name="示范市第一人民医院",
                           timezone="Asia/Shanghai", fleet=fleet)
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
        yield url, fleet, rid
    finally:
        server.should_exit = True
        thread.join(5)
        store.close()


def test_the_rollouts_page_shows_a_paused_rollout_and_resumes_it(
        browser: Any, central: tuple[str, FleetService, str], screens_dir: Path) -> None:
    url, fleet, rid = central
    assert fleet.rollouts.detail(rid)["state"] == "paused"
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    try:
        page.goto(url)
        page.locator("#login-view summary").click()
        page.fill("#login-token", ADMIN)
        page.click("#login-token-btn")
        page.locator("#me-name").wait_for(timeout=15_000)
        page.click("nav a[data-view=rollouts]")
        row = page.locator(f"#ro-rows tr[data-rollout='{rid}']")
        row.wait_for(timeout=10_000)
        assert "已暂停 Paused" in row.inner_text() and "4/5" in row.inner_text()
        assert row.locator(".ro-bar span").count() == 4  # committed, failed, rolled back, queued
        detail = page.locator("#ro-detail")
        detail.wait_for(timeout=10_000)
        reason = page.locator("#ro-reason")
        assert "failure threshold" in reason.inner_text()
        assert "2 device(s) failed" in reason.inner_text()
        devs = page.locator("#ro-devs tr")
        assert devs.count() == 5  # the kiosks of 门诊楼; the cashier is not a target
        failed = page.locator("#ro-devs tr[data-ro-dev='kiosk-003']").inner_text()
        assert "失败 Failed" in failed and "hash_mismatch" in failed
        rolled = page.locator("#ro-devs tr[data-ro-dev='kiosk-004']").inner_text()
        assert "已回滚 Rolled back" in rolled and "reader not found" in rolled
        assert "排队 Queued" in page.locator("#ro-devs tr[data-ro-dev='kiosk-005']").inner_text()
        assert page.locator("[data-count=committed] b").inner_text() == "2"
        assert page.locator("button[data-ro-act=pause]").is_disabled()
        assert not page.locator("button[data-ro-act=resume]").is_disabled()
        page.screenshot(path=screens_dir / "dashboard-rollouts.png", full_page=True)

        # Resume (administrator): the state changes on the page and in central.
        page.click("button[data-ro-act=resume]")
        page.locator("#ro-msg.ok").wait_for(timeout=10_000)
        assert fleet.rollouts.detail(rid)["state"] == "running"
        page.locator("#ro-state [data-state=running]").wait_for(timeout=10_000)
        assert not page.locator("button[data-ro-act=pause]").is_disabled()
    finally:
        ctx.close()
