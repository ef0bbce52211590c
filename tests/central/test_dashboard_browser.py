"""The staff dashboard in headless Chromium shows the site's terminals online."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.stack


def test_dashboard_lists_both_terminals_online(browser, site, screens_dir):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, locale="zh-CN")
    page = ctx.new_page()
    try:
        page.goto(site.dashboard_url)
        for dev in ("kiosk-001", "cashier-001"):
            row = page.locator(f"tr[data-device='{dev}']")
            row.wait_for(timeout=15_000)
            page.wait_for_function(
                "d => document.querySelector(`tr[data-device='${d}'] .on`) !== null", arg=dev,
                timeout=20_000)
        assert page.locator("#k-online").inner_text() == "2"
        assert "完整" in page.locator("#k-audit").inner_text()
        page.screenshot(path=screens_dir / "dashboard.png")
    finally:
        ctx.close()
