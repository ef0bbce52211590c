"""``ykt demo`` for a new user: what it prints, what the panel's cards can do (live site)."""

from __future__ import annotations

import httpx
import pytest

from yikatong.site.demo import DEMO_BADGE, DEMO_PATIENTS, DEMO_STAFF_PIN, guide

pytestmark = pytest.mark.stack


def test_start_up_prints_sign_in_api_token_file_and_flows(site):
    text = guide(site)
    assert f"badge {DEMO_BADGE}, PIN {DEMO_STAFF_PIN}" in text
    assert f"{site.dashboard_url}api/status" in text
    assert str(site.workdir / "secrets" / "central-admin.token") in text
    assert site.admin_token not in text  # where the token is, never the token
    for flow in ("挂号", "取号", "缴费", "报告", "收费", "过期卡", "挂失卡", "故障卡"):
        assert flow in text, flow
    for url in (site.panel_url, site.terminal("kiosk-001").ui_url, site.platform_url):
        assert url in text


def test_panel_patients_have_bills_reports_and_a_booking(site):
    patients = [row["patient"] for row in
                httpx.get(f"{site.platform_url}/admin/patients", timeout=10).json()]
    for card in DEMO_PATIENTS:
        pid = next(p["patient_id"] for p in patients if p["card_no"] == card["card_number"])
        bills = httpx.get(f"{site.platform_url}/api/v1/bills", params={"patient_id": pid},
                          timeout=10).json()["bills"]
        assert len(bills) >= 2 and all(b["total_fen"] > 0 for b in bills)
        reports = httpx.get(f"{site.platform_url}/api/v1/reports", params={"patient_id": pid},
                            timeout=10).json()["reports"]
        states = sorted(r["status"] for r in reports)
        assert states.count("ready") >= 2 and "pending" in states, states
        bookings = httpx.get(f"{site.platform_url}/api/v1/bookings", params={"patient_id": pid},
                             timeout=10).json()["bookings"]
        assert any(b["status"] == "paid" and not b.get("checked_in_at") for b in bookings)


@pytest.mark.parametrize(("variant", "says"), [
    ("expired", "过有效期"), ("lost", "挂失"), ("faulty", "重试")])
def test_panel_inserts_bad_cards_the_kiosk_explains(browser, site, screens_dir, variant, says):
    ctx = browser.new_context(viewport={"width": 1080, "height": 1920}, locale="zh-CN")
    pg = ctx.new_page()
    try:
        pg.goto(site.terminal("kiosk-001").ui_url)
        pg.get_by_test_id("prompt").wait_for(timeout=20_000)
        r = httpx.post(f"{site.panel_url}api/kiosk-001/bad-card/{variant}", timeout=10)
        r.raise_for_status()
        pg.get_by_test_id("message").wait_for(timeout=40_000)
        pg.wait_for_function("s => document.querySelector('main').innerText.includes(s)",
                             arg=says, timeout=40_000)
        assert "人工窗口" in pg.inner_text("main") or "发卡机构" in pg.inner_text("main")
        if variant == "lost":
            panel = ctx.new_page()
            panel.set_viewport_size({"width": 1280, "height": 900})
            panel.goto(site.panel_url)
            panel.screenshot(path=screens_dir / "demo-panel.png", full_page=True)
            panel.close()
    finally:
        site.remove_card("kiosk-001")
        ctx.close()
