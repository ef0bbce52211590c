"""The overview's Devices table at 10,000 devices, in headless Chromium.

The page asks for one page of 100 devices (``/api/devices?limit=100``), never the whole
list; the counts, the state filter, the id search and next / previous come from the API;
the alarms panel shows the first 100 of the fleet's alarms and says how many more there
are; the audit chain card says how the chain is checked (docs/performance.md, "Fleet").
"""

from __future__ import annotations

import concurrent.futures
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from dashboard_fleet_fake import FakeFleet, serve

from central.dashboard.app import create_dashboard
from central.dashboard.auth import StaffAccounts
from central.fleet_health import DeviceHealth
from central.registry import Registry
from central.store import Store, open_store

pytestmark = pytest.mark.stack

N = 10_000
NOW = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
ADMIN = "devices-page-admin-token"
PASSWORD = "correct horse battery"


def _fill(store: Store) -> None:
    """``dev-00000`` …: every third offline, every seventh disabled, every 50th paper out."""
    m = store.models
    devices, health = [], []
    for i in range(N):
        dev = f"dev-{i:05d}"
        devices.append({"id": dev, "role": "kiosk" if i % 2 else "cashier",
                        "enabled": i % 7 != 0, "online": i % 3 != 0,
                        "created_at": NOW.timestamp(), "last_seen": NOW.timestamp() - i,
                        "last_boot_seq": 1, "version": "1.4.0"})
        view = DeviceHealth(telemetry_at=NOW, updated_at=NOW, uptime_s=3600, cpu_temp_c=51.5,
                            disk_free_mb=12_000, outbox_depth=0, load_1m=0.3, sam_state="ok",
                            reader_present=True,
                            printer={"online": True, "paper": "out" if i % 50 == 0 else "ok",
                                     "cover_open": False})
        health.append({"dev": dev, "updated_at": NOW.timestamp(), "body": view.to_json()})
    with store.atomic():
        for model, rows in ((m.Device, devices), (m.DeviceHealthRow, health)):
            for k in range(0, len(rows), 500):
                model.insert_many(rows[k:k + 500]).execute()
    for i in range(30):
        store.audit(NOW, "forwarder", "request.done", {"n": i})
    store.db.close()  # this thread's connection


@pytest.fixture
def fleet_site(tmp_path: Path):
    store = open_store(tmp_path / "central.db")
    # Playwright's sync API holds this thread's event loop: the fleet is filled on another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_fill, store).result(120)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="示范市第一人民医院", fleet=FakeFleet(),
                           accounts=StaffAccounts(store))
    with serve(app) as url:
        httpx.post(f"{url}/api/users", headers={"Authorization": f"Bearer {ADMIN}"},
                   timeout=10, json={"username": "wang.fang", "name": "王芳",
                                     "role": "administrator", "password": PASSWORD}
                   ).raise_for_status()
        yield url
    store.close()


def test_the_devices_table_pages_through_ten_thousand_devices(browser, fleet_site,
                                                              screens_dir) -> None:
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="zh-CN")
    page = ctx.new_page()
    problems: list[str] = []
    lists: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: lists.append(r.url) if "/api/devices" in r.url else None)
    rows = page.locator("#rows tr")

    def ids() -> list[str]:
        return [r.get_attribute("data-device") or "" for r in rows.all()]

    def wait_first(dev: str) -> None:
        page.locator(f"#rows tr:first-child[data-device='{dev}']").wait_for(timeout=15_000)

    try:
        page.goto(fleet_site)
        page.fill("#login-user", "wang.fang")
        page.fill("#login-pass", PASSWORD)
        t0 = time.monotonic()
        page.click("#login-btn")
        wait_first("dev-00000")
        shown_s = time.monotonic() - t0
        assert ids() == [f"dev-{i:05d}" for i in range(100)]
        disabled = len(range(0, N, 7))
        online = sum(1 for i in range(N) if i % 3 and i % 7)
        assert page.locator("#k-total").inner_text() == str(N)
        assert page.locator("#k-online").inner_text() == str(online)
        assert page.locator("#k-offline").inner_text() == str(N - online)
        counts = {b.get_attribute("data-state"): b.locator("b").inner_text()
                  for b in page.locator("#dev-filter button").all()}
        assert counts == {"": str(N), "online": str(online),
                          "offline": str(N - online - disabled), "disabled": str(disabled)}
        assert page.locator("#dev-range").inner_text() == "第 1 页 page 1 · 1–100 / 10000"
        assert page.locator("#dev-prev").is_disabled()
        link = page.locator("tr[data-device='dev-00001'] a")
        assert link.get_attribute("href") == "#/device/dev-00001"
        # Alarms: the first 100 (errors first), the rest as a number.
        alarms = httpx.get(f"{fleet_site}/api/alarms?limit=1",
                           headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
        assert page.locator("#k-alarms").inner_text() == str(alarms["total"])
        assert page.locator("#alarms .alarm").count() == 100
        more = page.locator("[data-more]")
        assert more.get_attribute("data-more") == str(alarms["total"] - 100)
        assert "另有" in more.inner_text() and "more alarms" in more.inner_text()
        how = page.locator("#k-audit-how").inner_text()
        assert "全链每 15 分钟复查，旧记录被改在复查时发现" in how
        assert "Whole chain: every 15 min, which finds a changed old record" in how
        assert "完整" in page.locator("#k-audit").inner_text()
        page.screenshot(path=screens_dir / "dashboard-devices-paged.png", full_page=True)

        page.click("#dev-next")
        wait_first("dev-00100")
        assert ids() == [f"dev-{i:05d}" for i in range(100, 200)]
        assert page.locator("#dev-range").inner_text() == "第 2 页 page 2 · 101–200 / 10000"
        page.click("#dev-prev")
        wait_first("dev-00000")
        assert page.locator("#dev-prev").is_disabled()

        page.click("#dev-filter button[data-state='offline']")
        wait_first("dev-00003")
        assert all(i % 3 == 0 and i % 7 for i in (int(d[4:]) for d in ids()))
        assert all("离线 Offline" in t for t in page.locator("#rows tr td:nth-child(3)")
                   .all_inner_texts())
        page.fill("#dev-search", "DEV-0999")  # typed in capitals: ids are lower case
        page.wait_for_function(
            "document.querySelector('#rows tr').dataset.device === 'dev-09990'",
            timeout=15_000)
        assert ids() == [f"dev-{i:05d}" for i in range(9990, 10000) if i % 3 == 0 and i % 7]
        assert page.locator("#dev-next").is_disabled()
        page.click("#dev-filter button[data-state='']")
        page.wait_for_function("document.querySelectorAll('#rows tr').length === 10",
                               timeout=15_000)
        page.fill("#dev-search", "kiosk-")
        page.locator("#rows td", has_text="没有以 “kiosk-” 开头的设备").wait_for(timeout=15_000)

        # The administrator's "check all": the whole chain now.
        page.fill("#dev-search", "")
        wait_first("dev-00000")
        page.click("#k-audit-full")
        page.wait_for_function(
            "!document.querySelector('#k-audit-full').disabled", timeout=15_000)
        assert "完整" in page.locator("#k-audit").inner_text()
        # The page never asked for the whole list, only for pages of 100.
        assert lists and all("limit=100" in u for u in lists), lists
        assert problems == []
        print(f"first page of {N:,} devices shown {shown_s:.2f} s after sign-in")
    finally:
        ctx.close()
