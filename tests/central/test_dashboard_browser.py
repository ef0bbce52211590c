"""The staff dashboard in headless Chromium: terminals online with their telemetry, and alarms."""

from __future__ import annotations

import time

import httpx
import pytest
from fleet_support import enroll_on_site

pytestmark = pytest.mark.stack

OFFLINE_DEV = "kiosk-099"  # registered, never connects


def _signed_in(browser, site, **ctx_kw):
    """A page on the dashboard, signed in with the site's admin token (the sign-in form's
    bootstrap way); the dashboard shows nothing before sign-in."""
    ctx = browser.new_context(**ctx_kw)
    page = ctx.new_page()
    page.goto(site.dashboard_url)
    page.locator("#login-view summary").click()
    page.fill("#login-token", site.admin_token)
    page.click("#login-token-btn")
    page.locator("#me-name").wait_for(timeout=15_000)
    return ctx, page


def _auth(site):
    return {"Authorization": f"Bearer {site.admin_token}"}


def test_dashboard_lists_both_terminals_online_with_telemetry(browser, site):
    ctx, page = _signed_in(browser, site, viewport={"width": 1440, "height": 900},
                           locale="zh-CN")
    try:
        for dev in ("kiosk-001", "cashier-001"):
            row = page.locator(f"tr[data-device='{dev}']")
            row.wait_for(timeout=15_000)
            page.wait_for_function(
                "d => document.querySelector(`tr[data-device='${d}'] .on`) !== null", arg=dev,
                timeout=20_000)
            # The daemon's first telemetry sample goes out at start: reader and SAM are known.
            row.get_by_text("已连接 Present").wait_for(timeout=30_000)
        assert page.locator("#k-online").inner_text() == "2"
        assert "完整" in page.locator("#k-audit").inner_text()
        health = httpx.get(f"{site.dashboard_url}api/devices", headers=_auth(site),
                           timeout=10).json()["devices"]
        k1 = next(d for d in health if d["id"] == "kiosk-001")["health"]
        # The SAM opens at the first card read: before that it is "not_opened", no alarm.
        assert k1["telemetry_at"] is not None and k1["sam_state"] in ("ok", "not_opened")
        assert k1["disk_free_mb"] > 0 and k1["reader_present"] is True
    finally:
        ctx.close()


def test_dashboard_shows_paper_near_end_and_offline_alarms(browser, site, screens_dir, tmp_path):
    auth = {"Authorization": f"Bearer {site.admin_token}"}
    printer = site.terminal("kiosk-001").printer
    # enrolled (a technician approved it), then never connected
    enroll_on_site(site, "OFFLINE0099", OFFLINE_DEV, tmp_path / OFFLINE_DEV)
    printer.set_fault(near_end=True)  # the edge's idle status poll reports it to central
    ctx, page = _signed_in(browser, site, viewport={"width": 1440, "height": 900},
                           locale="zh-CN")
    try:
        near_end = page.locator("[data-alarm='paper_near_end'][data-device='kiosk-001']")
        near_end.wait_for(timeout=40_000)
        offline = page.locator(f"[data-alarm='offline'][data-device='{OFFLINE_DEV}']")
        offline.wait_for(timeout=15_000)
        assert near_end.is_visible() and offline.is_visible()
        assert "打印纸将尽" in near_end.inner_text()
        assert "Printer paper near end" in near_end.inner_text()
        assert "设备离线" in offline.inner_text() and "Device offline" in offline.inner_text()
        assert "error" in (offline.get_attribute("class") or "")
        assert "warning" in (near_end.get_attribute("class") or "")
        row = page.locator("tr[data-device='kiosk-001']")
        assert "将尽 Near end" in row.inner_text()
        # The printer.status event is in the recent events table too.
        page.locator("tr[data-event='printer.status']").first.wait_for(timeout=10_000)
        page.screenshot(path=screens_dir / "dashboard.png", full_page=True)
        box = page.locator(".cards").bounding_box()  # header, alarms panel and the counts
        assert box is not None
        top = {"x": 0, "y": 0, "width": 1440, "height": box["y"] + box["height"] + 20}
        page.screenshot(path=screens_dir / "dashboard-alarms.png", clip=top)
    finally:
        ctx.close()
        printer.set_fault(near_end=False)
        httpx.post(f"{site.dashboard_url}api/devices/{OFFLINE_DEV}/disable", headers=auth,
                   timeout=10)


def test_dashboard_lists_refused_requests_as_security_events(browser, site, screens_dir, tmp_path):
    """A kiosk that asks for what its role may not: refused by central and shown in words."""
    import asyncio
    import concurrent.futures
    import random

    from edge.uplink.client import Uplink
    from edge.uplink.config import TlsConfig, UplinkConfig
    from edge.uplink.errors import Rejected

    # A genuinely enrolled kiosk (its own certificate): the stolen-device case.
    ident = enroll_on_site(site, "ROGUE0097", "kiosk-097", tmp_path / "kiosk-097")

    async def misbehave() -> list[str]:
        cfg = UplinkConfig(host="127.0.0.1", port=site.tls_port,
                           tls=TlsConfig(cafile=ident.chain, certfile=ident.cert,
                                         keyfile=ident.key),
                           outbox_path=tmp_path / "outbox.db", state_path=tmp_path / "state.json")
        up = Uplink(cfg, "kiosk-097", role="kiosk", version="1.0.0", rng=random.Random(1))
        await up.start()
        codes = []
        try:
            assert await up.wait_connected(20)
            for type_, body in (("staff.login", {"badge": "S1001", "pin": "000000"}),
                                ("pay.refund", {"payment_id": "PAY1", "amount_fen": 100,
                                                "reason": "test"})):
                try:
                    await up.request(type_, body, timeout=15)
                except Rejected as exc:
                    codes.append(exc.code)
        finally:
            await up.stop()
        return codes

    # Playwright's sync API holds this thread's event loop: the device runs on another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, misbehave()).result(60) == ["forbidden", "forbidden"]
    ctx, page = _signed_in(browser, site, viewport={"width": 1440, "height": 900},
                           locale="zh-CN")
    try:
        row = page.locator("tr[data-security='request.forbidden']").first
        row.wait_for(timeout=15_000)
        text = page.locator("[data-testid='security']").inner_text()
        assert "kiosk-097" in text and "越权请求 Request refused" in text
        assert "退款 refund" in text and "收费员登录 staff sign-in" in text
        assert "{" not in text  # words, not JSON
        page.locator("[data-testid='security']").scroll_into_view_if_needed()
        page.screenshot(path=screens_dir / "dashboard-security.png", full_page=True)
    finally:
        ctx.close()


def test_dashboard_shows_site_times_and_event_details_in_words(browser, site, screens_dir):
    """A browser in UTC still reads Beijing time; every event's detail is words, not JSON."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from yikatong.site.demo import DEMO_PATIENTS

    status = httpx.get(f"{site.dashboard_url}api/status", timeout=10).json()
    assert status["timezone"] == "Asia/Shanghai"
    # A card in and out of the kiosk (card.inserted, card.removed, audit records), a card
    # the kiosk cannot read (card.read_failed), and the printer's status changes.
    site.insert_card("kiosk-001", DEMO_PATIENTS[0])
    time.sleep(2)
    site.remove_card("kiosk-001")
    site.insert_card("kiosk-001", DEMO_PATIENTS[0], variant="faulty")
    time.sleep(2)
    site.remove_card("kiosk-001")
    printer = site.terminal("kiosk-001").printer
    printer.set_fault(near_end=True)
    ctx, page = _signed_in(browser, site, viewport={"width": 1440, "height": 1100},
                           locale="zh-CN", timezone_id="UTC")
    try:
        for ev in ("card.inserted", "card.removed", "card.read_failed", "printer.status"):
            page.locator(f"tr[data-event='{ev}']").first.wait_for(timeout=40_000)
        events = httpx.get(f"{site.dashboard_url}api/events?limit=20", headers=_auth(site),
                           timeout=10).json()["events"]
        assert page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone") == "UTC"
        first = page.locator("[data-testid='events'] tbody tr").first
        ts = dt.datetime.fromisoformat(events[0]["ts"])
        shown = first.locator("td").first.inner_text()
        # Same event, same second: the dashboard polls, so allow the newest to move on.
        beijing = {dt.datetime.fromisoformat(e["ts"]).astimezone(ZoneInfo("Asia/Shanghai"))
                   .strftime("%Y-%m-%d %H:%M:%S") for e in events}
        assert shown in beijing, (shown, beijing, ts)
        utc = ts.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert shown != utc
        text = page.locator("[data-testid='events']").inner_text()
        assert "{" not in text and '"' not in text, text
        assert "拔卡 Card removed" in text and "读卡失败 Read failed" in text
        assert "插卡 Card inserted" in text
        page.locator("[data-testid='events']").scroll_into_view_if_needed()
        page.screenshot(path=screens_dir / "dashboard-events.png", full_page=True)
    finally:
        ctx.close()
        printer.set_fault(near_end=False)
