"""The kiosk UI in headless Chromium against the site-in-a-box: a patient registers."""

from __future__ import annotations

import pytest

from central.demo import DEMO_PATIENTS

pytestmark = pytest.mark.stack


@pytest.fixture
def page(browser, site):
    ctx = browser.new_context(viewport={"width": 1080, "height": 1920}, locale="zh-CN")
    pg = ctx.new_page()
    pg.goto(site.terminal("kiosk-001").ui_url)
    yield pg
    ctx.close()
    if site.terminal("kiosk-001").patient_slot.is_inserted:
        site.remove_card("kiosk-001")


def test_patient_registers_in_the_browser(page, site, screens_dir):
    page.get_by_test_id("prompt").wait_for()
    assert "请插入您的居民健康卡" in page.inner_text("main")
    page.screenshot(path=screens_dir / "kiosk-attract-zh.png")

    patient = DEMO_PATIENTS[1]  # 李秀英
    site.insert_card("kiosk-001", patient)
    page.get_by_test_id("patient-name").wait_for(timeout=20_000)
    assert page.get_by_test_id("patient-name").inner_text() == "李*英"
    body = page.inner_text("body")
    assert patient["id_number"] not in body and patient["name"] not in body
    assert "310***********0022" in body
    page.screenshot(path=screens_dir / "kiosk-menu-zh.png")

    page.get_by_test_id("menu-register").click()
    page.locator("[data-dept]").first.wait_for()
    page.screenshot(path=screens_dir / "kiosk-departments-zh.png")
    # Walk departments and days (today's sessions may have closed) until a slot is open.
    found = False
    for i in range(page.locator("[data-dept]").count()):
        page.locator("[data-dept]").nth(i).click()
        page.locator("[data-day]").first.wait_for()
        for j in range(page.locator("[data-day]").count()):
            page.locator("[data-day]").nth(j).click()
            page.wait_for_function(
                "j => document.querySelectorAll('[data-day]')[j].classList.contains('sel')",
                arg=j)
            if page.locator("[data-slot]:not([disabled])").count():
                found = True
                break
        if found:
            break
        page.locator("[data-go=depts]").click()
    assert found, "no open slot in any department this week"
    page.screenshot(path=screens_dir / "kiosk-slots-zh.png")
    page.locator("[data-slot]:not([disabled])").first.click()
    page.get_by_test_id("confirm").wait_for()
    page.screenshot(path=screens_dir / "kiosk-confirm-zh.png")
    page.get_by_test_id("confirm").click()
    page.get_by_test_id("done").wait_for(timeout=30_000)
    queue = page.get_by_test_id("queue").inner_text()
    assert queue.isdigit()
    page.screenshot(path=screens_dir / "kiosk-done-zh.png")

    job = site.terminal("kiosk-001").printer.jobs[-1]
    assert "李*英" in "\n".join(job.lines)

    site.remove_card("kiosk-001")
    page.get_by_test_id("prompt").wait_for(timeout=10_000)
    assert "李*英" not in page.inner_text("body")


def test_english_switch(page, site, screens_dir):
    page.get_by_test_id("prompt").wait_for()
    page.locator("#lang").click()
    assert "Please insert your health card" in page.inner_text("main")
    page.screenshot(path=screens_dir / "kiosk-attract-en.png")
