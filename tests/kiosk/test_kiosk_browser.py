"""The kiosk and cashier UIs in headless Chromium against the site-in-a-box.

Every process is real (pcscd+vpcd card reader, edge daemon, kiosk server, Mosquitto, central,
reference platform, virtual ESC/POS printer). Screenshots of each screen go to docs/screens,
and every screenshot also checks that nothing spills off the screen.

A few states cannot be reached on demand with the real stack in seconds (a pick-up needs a
booking for a session of today that has not closed; an unresolved payment needs the full
30 s confirmation window to run out; the terminal daemon being down) — those are rendered
from view models served in place of the kiosk server's event stream (``stub_page``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from yikatong.site.demo import DEMO_PATIENTS, DEMO_STAFF_PIN

pytestmark = pytest.mark.stack

PORTRAIT = {"width": 1080, "height": 1920}
LANDSCAPE = {"width": 1920, "height": 1080}
CJK = "\u4e00-\u9fff"


def platform_rows(site, sql, *args):
    """Read the reference platform's seeded data (test set-up only)."""
    db = sqlite3.connect(f"file:{Path(site.workdir, 'platform.db')}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def as_card(row):
    """A seeded platform patient as a virtual card holder for Site.insert_card."""
    name, sex, birth, id_number, card_no = row
    return {"name": name, "sex": "1" if sex == "M" else "2", "ethnicity": "01",
            "birth_date": birth.replace("-", ""), "id_number": id_number,
            "card_number": card_no}


NOT_BLOCKED = "card_no NOT IN (SELECT card_no FROM hotlist_change)"
CARD_COLS = "p.name, p.sex, p.birth_date, p.id_number, p.card_no"


def fresh(site, dev):
    """Start from the idle screen, whatever an earlier test left on the terminal's server."""
    ui = site.terminal(dev).ui_url
    httpx.post(ui + "api/action", json={"action": "home", "args": {}}, timeout=10)
    httpx.post(ui + "api/action", json={"action": "end" if dev.startswith("kiosk") else "lock",
                                        "args": {}}, timeout=10)


def fault(site, **spec):
    """Inject a fault at the reference platform (cleared by the kiosk fixture)."""
    httpx.post(f"{site.platform_url}/admin/faults", json=spec, timeout=10).raise_for_status()


def clear_faults(site):
    httpx.delete(f"{site.platform_url}/admin/faults", timeout=10)


@pytest.fixture
def kiosk(browser, site):
    fresh(site, "kiosk-001")
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    pg = ctx.new_page()
    pg.goto(site.terminal("kiosk-001").ui_url)
    pg.get_by_test_id("prompt").wait_for()
    yield pg
    ctx.close()
    if site.terminal("kiosk-001").patient_slot.is_inserted:
        site.remove_card("kiosk-001")
    clear_faults(site)


@pytest.fixture
def cashier(browser, site):
    fresh(site, "cashier-001")
    ctx = browser.new_context(viewport=LANDSCAPE, locale="zh-CN")
    pg = ctx.new_page()
    pg.goto(site.terminal("cashier-001").ui_url)
    yield pg
    ctx.close()
    if site.terminal("cashier-001").patient_slot.is_inserted:
        site.remove_card("cashier-001")


OVERFLOW_JS = """() => {
  const d = document.documentElement;
  return [d.scrollWidth - innerWidth, d.scrollHeight - innerHeight];
}"""


def shot(pg, screens_dir, name):
    """Screenshot for docs/screens; the screen must fit (no scrolling on a kiosk)."""
    pg.wait_for_timeout(150)  # let the last view paint
    pg.screenshot(path=screens_dir / f"{name}.png")
    dx, dy = pg.evaluate(OVERFLOW_JS)
    assert dx <= 0 and dy <= 0, f"{name}: content spills off the screen by {dx}×{dy} px"


def tour(pg, screens_dir, name, check=None):
    """One screen in Chinese, English and elder mode (适老化); ``check`` runs before each."""
    for want, elder, suffix in (("zh", False, "zh"), ("en", False, "en"), ("zh", True, "elder-zh")):
        lang(pg, want)
        if elder:
            pg.get_by_test_id("elder").click()
        if check:
            check(pg)
        shot(pg, screens_dir, f"{name}-{suffix}")
        if elder:
            pg.get_by_test_id("elder").click()


def rotated(pg, screens_dir, name, size):
    """The same screen on a display mounted the other way."""
    before = pg.viewport_size
    pg.set_viewport_size(size)
    try:
        shot(pg, screens_dir, name)
    finally:
        pg.set_viewport_size(before)


def lang(pg, want):
    cur = "en" if pg.get_by_test_id("lang").inner_text() == "中文" else "zh"
    if cur != want:
        pg.get_by_test_id("lang").click()


def main_text(pg):
    return pg.inner_text("main")


def slow_shown(pg):
    assert pg.get_by_test_id("slow").is_visible(), "the slow notice is not on screen"


def keypad_type(pg, text, pad):
    """Type on the on-screen keypad, as a patient at a kiosk without a keyboard must."""
    for ch in text:
        pg.get_by_test_id(f"keypad-{pad}").locator(f"[data-key='{ch}']").click()


def open_slot(pg):
    """Walk departments and days (today's sessions may have closed) until a slot is open."""
    for i in range(pg.locator("[data-dept]").count()):
        pg.locator("[data-dept]").nth(i).click()
        pg.locator("[data-day]").first.wait_for()
        for j in range(pg.locator("[data-day]").count()):
            pg.locator("[data-day]").nth(j).click()
            pg.wait_for_function(
                "j => document.querySelectorAll('[data-day]')[j]?.classList.contains('sel')",
                arg=j)
            if pg.locator("[data-slot]:not([disabled])").count():
                return
        pg.locator("[data-do=back]").click()
        pg.locator("[data-dept]").first.wait_for()
    raise AssertionError("no open slot in any department this week")


def no_glossary_chinese(text, chinese):
    """None of the platform's Chinese terms in ``chinese`` is left in an English ``text``."""
    left = [c for c in chinese if c and c in text]
    assert not left, f"untranslated on an English screen: {left}"


def test_patient_registers_pays_and_cancels(kiosk, site, screens_dir):
    pg = kiosk
    shot(pg, screens_dir, "kiosk-attract-zh")
    lang(pg, "en")
    shot(pg, screens_dir, "kiosk-attract-en")
    pg.get_by_test_id("elder").click()
    shot(pg, screens_dir, "kiosk-attract-elder-en")
    pg.get_by_test_id("elder").click()
    lang(pg, "zh")

    patient = DEMO_PATIENTS[1]  # 李秀英
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-register").wait_for(timeout=20_000)
    assert pg.get_by_test_id("patient-name").inner_text() == "李*英"
    body = pg.inner_text("body")
    assert patient["id_number"] not in body and patient["name"] not in body
    assert "310***********0022" in body
    assert "您好，李*英" in main_text(pg)
    tour(pg, screens_dir, "kiosk-menu")
    lang(pg, "en")
    assert "Hello, 李*英" in main_text(pg) and "，" not in main_text(pg)
    lang(pg, "zh")
    rotated(pg, screens_dir, "kiosk-menu-landscape-zh", LANDSCAPE)

    pg.get_by_test_id("menu-register").click()
    pg.locator("[data-dept]").first.wait_for()
    tour(pg, screens_dir, "kiosk-departments")
    open_slot(pg)
    tour(pg, screens_dir, "kiosk-slots")
    lang(pg, "en")
    slots_en = main_text(pg)
    assert "医师" not in slots_en and "Physician" in slots_en
    lang(pg, "zh")
    pg.locator("[data-slot]:not([disabled])").first.click()
    pg.get_by_test_id("confirm").wait_for()
    # the settlement switch: two large options, exactly one chosen
    self_pay, insured = pg.get_by_test_id("insured-0"), pg.get_by_test_id("insured-1")
    assert self_pay.bounding_box()["height"] >= 88 and insured.bounding_box()["height"] >= 88
    self_pay.click()
    pg.wait_for_function("() => document.querySelector('[data-testid=insured-0]')"
                         ".getAttribute('aria-checked') === 'true'")
    assert insured.get_attribute("aria-checked") == "false"
    insured.click()
    pg.wait_for_function("() => document.querySelector('[data-testid=insured-1]')"
                         ".getAttribute('aria-checked') === 'true'")
    tour(pg, screens_dir, "kiosk-confirm")
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-prepaid").wait_for(timeout=30_000)
    tour(pg, screens_dir, "kiosk-pay-method")
    pg.get_by_test_id("method-prepaid").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    queue = pg.get_by_test_id("queue").inner_text()
    assert queue.isdigit()
    tour(pg, screens_dir, "kiosk-done")
    lang(pg, "en")
    assert "Outpatient Building" in main_text(pg) and "医师" not in main_text(pg)
    lang(pg, "zh")

    job = site.terminal("kiosk-001").printer.jobs[-1]
    text = "\n".join(job.lines)
    assert "李*英" in text and queue in text
    assert patient["id_number"].encode() not in job.raw

    site.remove_card("kiosk-001")
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    assert "李*英" not in pg.inner_text("body")

    # 退号: the same registration is in the cancel list; cancelling refunds the fee
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-cancel").click(timeout=20_000)
    pg.locator("[data-booking]").first.wait_for(timeout=20_000)
    assert pg.locator("[data-booking]").count() >= 1
    tour(pg, screens_dir, "kiosk-cancel-list")
    pg.locator("[data-booking]").first.click()
    pg.get_by_test_id("confirm").wait_for(timeout=10_000)
    assert "退款将按原支付方式退回" in main_text(pg)
    tour(pg, screens_dir, "kiosk-cancel-confirm")
    fault(site, op="reg.cancel", latency_ms=5000)
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("slow").wait_for(state="visible", timeout=4000)
    assert "正在退号" in main_text(pg)
    shot(pg, screens_dir, "kiosk-cancelling-zh")
    pg.get_by_test_id("done").wait_for(timeout=20_000)
    assert "退号成功" in main_text(pg) and "¥0.00" not in main_text(pg)
    tour(pg, screens_dir, "kiosk-cancel-done")


def test_registration_fee_by_payment_code_being_confirmed(kiosk, site, screens_dir):
    pg = kiosk
    site.insert_card("kiosk-001", DEMO_PATIENTS[2])
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    open_slot(pg)
    pg.locator("[data-slot]:not([disabled])").first.click()
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-code").click(timeout=30_000)
    pg.get_by_test_id("scan-input").wait_for()
    tour(pg, screens_dir, "kiosk-scan-code")
    # WeChat code ending in 5: the wallet asks the user to confirm, approved ~10 s later.
    # shown to the (simulated) hardware scanner: the daemon keeps the code, the kiosk gets
    # a masked handle through the event stream
    r = httpx.post(site.panel_url + "api/kiosk-001/scan", json={"text": "134567890123456785"},
                   timeout=10)
    assert "134567890123456785" not in r.text
    pg.get_by_test_id("confirming").wait_for(timeout=20_000)
    assert "正在确认支付结果，请勿重复支付" in main_text(pg)
    assert pg.locator("[data-method]").count() == 0  # no way to pay again meanwhile
    tour(pg, screens_dir, "kiosk-confirming")
    pg.get_by_test_id("done").wait_for(timeout=40_000)
    # the code never reached a log in clear
    for log in Path(site.workdir, "logs").glob("*.log"):
        assert "134567890123456785" not in log.read_text(errors="replace"), log.name


def test_card_pulled_mid_flow_wipes_the_session(kiosk, site):
    pg = kiosk
    site.insert_card("kiosk-001", DEMO_PATIENTS[0])
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    assert "张*" in pg.inner_text("body")
    site.remove_card("kiosk-001")
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    body = pg.inner_text("body")
    assert "张*" not in body and "110***********0037" not in body
    state = httpx.get(site.terminal("kiosk-001").ui_url + "api/state", timeout=10).json()
    assert state["session"] is None and state["view"]["patient"] is None


def test_card_pulled_mid_payment_keeps_the_outcome_on_screen(kiosk, site, screens_dir):
    """The card leaves while a code payment is being confirmed: the screen keeps saying so,
    then shows the outcome (paid, queue number, slip at the counter); charged once."""
    pg = kiosk
    patient = as_card(platform_rows(site, f"""SELECT {CARD_COLS} FROM patient_row p
        WHERE {NOT_BLOCKED} AND NOT EXISTS (SELECT 1 FROM booking_row b
        WHERE b.patient_id = p.patient_id) ORDER BY p.patient_id DESC LIMIT 1 OFFSET 10""")[0])
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    open_slot(pg)
    pg.locator("[data-slot]:not([disabled])").first.click()
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-code").click(timeout=30_000)
    paid_before = payments_of(site, patient["id_number"])
    # WeChat code ending in 6: the wallet asks the user to confirm, approved ~10 s later
    httpx.post(site.panel_url + "api/kiosk-001/scan", json={"text": "134567890123456786"},
               timeout=10).raise_for_status()
    pg.get_by_test_id("confirming").wait_for(timeout=20_000)
    site.remove_card("kiosk-001")
    pg.get_by_test_id("card-gone").wait_for(timeout=10_000)
    assert "请勿重复支付" in main_text(pg) and pg.locator("[data-method]").count() == 0
    shot(pg, screens_dir, "kiosk-card-gone-confirming-zh")
    pg.get_by_test_id("print-failed").wait_for(timeout=40_000)
    text = main_text(pg)
    assert "已支付成功" in text and pg.get_by_test_id("queue").inner_text().isdigit()
    assert pg.locator("[data-testid=reprint]").count() == 0  # no card, no slip here
    assert "人工窗口" in text
    shot(pg, screens_dir, "kiosk-card-gone-paid-zh")
    assert payments_of(site, patient["id_number"]) == paid_before + 1


def test_idle_countdown_warns_then_ends_the_session(browser, site, screens_dir):
    """A short idle timeout (config served to the page): a big countdown, "still here"
    restarts it, and when it runs out the session ends."""
    fresh(site, "kiosk-001")
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    ui = site.terminal("kiosk-001").ui_url

    def short_idle(route):
        cfg = httpx.get(ui + "api/config", timeout=10).json()
        cfg["ui"].update(idle_timeout_s=7, countdown_s=6)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(cfg))

    ctx.route("**/api/config", short_idle)
    pg = ctx.new_page()
    try:
        pg.goto(ui)
        pg.get_by_test_id("prompt").wait_for()
        site.insert_card("kiosk-001", DEMO_PATIENTS[0])
        pg.get_by_test_id("menu-register").wait_for(timeout=20_000)
        pg.get_by_test_id("timeout").wait_for(state="visible", timeout=8000)
        left = int(pg.get_by_test_id("timeout-left").inner_text())
        assert 0 < left <= 6
        shot(pg, screens_dir, "kiosk-timeout-zh")
        lang(pg, "en")
        shot(pg, screens_dir, "kiosk-timeout-en")
        lang(pg, "zh")
        pg.get_by_test_id("stay").click()
        pg.get_by_test_id("timeout").wait_for(state="hidden", timeout=2000)
        assert pg.get_by_test_id("patient-name").is_visible()
        # untouched, it comes back and then ends the session: the card is asked for first
        pg.get_by_test_id("take-card").wait_for(timeout=20_000)
        assert "张*" not in pg.inner_text("body")
        stays(pg, "take-card", 1)
        site.remove_card("kiosk-001")
        pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    finally:
        ctx.close()
        site.remove_card("kiosk-001")


def test_platform_slow_shows_honest_waiting(kiosk, site, screens_dir):
    pg = kiosk
    # the card is read, then the hospital is slow to answer who it is
    fault(site, op="patient.identify", latency_ms=7000)
    site.insert_card("kiosk-001", DEMO_PATIENTS[0])
    pg.get_by_test_id("identity-name").wait_for(timeout=10_000)
    pg.get_by_test_id("slow").wait_for(state="visible", timeout=4000)
    assert "请耐心等候" in main_text(pg)
    tour(pg, screens_dir, "kiosk-identifying", check=slow_shown)
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    fault(site, op="reg.slots", latency_ms=7000)
    pg.locator("[data-dept]").first.click()
    pg.get_by_test_id("slow").wait_for(state="visible", timeout=4000)
    assert "请耐心等候" in main_text(pg)
    # every shot is taken while the notice shows, not after the list arrived
    tour(pg, screens_dir, "kiosk-slow", check=slow_shown)
    assert pg.locator("[data-slot]").count() == 0
    pg.locator("[data-day]").first.wait_for(timeout=20_000)


def test_ehealth_qr_identifies_without_a_card(kiosk, site, screens_dir):
    pg = kiosk
    name, ehc_id = platform_rows(site, f"""SELECT p.name, p.ehc_id FROM patient_row p
        WHERE {NOT_BLOCKED} ORDER BY p.patient_id LIMIT 1 OFFSET 3""")[0]
    fault(site, op="patient.identify", latency_ms=4000)
    r = httpx.post(site.panel_url + "api/kiosk-001/scan", json={"text": f"{ehc_id}:1"},
                   timeout=10)
    r.raise_for_status()
    pg.get_by_text("正在核验电子健康卡").wait_for(timeout=10_000)
    pg.get_by_test_id("slow").wait_for(state="visible", timeout=4000)
    shot(pg, screens_dir, "kiosk-ehc-identifying-zh")
    lang(pg, "en")
    assert "e-health card" in main_text(pg)
    shot(pg, screens_dir, "kiosk-ehc-identifying-en")
    lang(pg, "zh")
    pg.get_by_test_id("menu-register").wait_for(timeout=20_000)
    shown = pg.get_by_test_id("patient-name").inner_text()
    assert shown[0] == name[0] and "*" in shown and name not in pg.inner_text("body")
    shot(pg, screens_dir, "kiosk-ehc-menu-zh")
    pg.get_by_test_id("finish").click()
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)


def test_blocked_card_is_refused_with_what_to_do(kiosk, site, screens_dir):
    pg = kiosk
    row = platform_rows(site, f"""SELECT {CARD_COLS} FROM patient_row p WHERE p.card_no IN
        (SELECT card_no FROM hotlist_change WHERE action = 'add') LIMIT 1""")[0]
    site.insert_card("kiosk-001", as_card(row))
    pg.get_by_test_id("message").wait_for(timeout=20_000)
    text = main_text(pg)
    assert "挂失" in text and "人工窗口" in text
    assert pg.locator("[data-start]").count() == 0  # nothing can be started with it
    shot(pg, screens_dir, "kiosk-card-blocked-zh")
    lang(pg, "en")
    assert "lost" in main_text(pg).lower()
    shot(pg, screens_dir, "kiosk-card-blocked-en")
    lang(pg, "zh")


def test_out_of_service_says_what_still_works(kiosk, site, screens_dir):
    pg = kiosk
    fault(site, op="patient.identify", error_rate=1.0)
    site.insert_card("kiosk-001", DEMO_PATIENTS[0])
    pg.get_by_test_id("oos").wait_for(timeout=30_000)
    text = main_text(pg)
    assert "暂停服务" in text and "仍可使用" in text and "人工窗口" in text
    # the headline is the loudest text on the screen, louder than what still works
    head = pg.eval_on_selector(".oos-h", "e => parseFloat(getComputedStyle(e).fontSize)")
    works = pg.eval_on_selector(".works", "e => parseFloat(getComputedStyle(e).fontSize)")
    assert head >= 1.5 * works
    tour(pg, screens_dir, "kiosk-out-of-service")
    lang(pg, "en")
    assert "Still working" in main_text(pg)
    lang(pg, "zh")
    # back at the start screen, the next patient is told before inserting a card
    site.remove_card("kiosk-001")
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    pg.get_by_text("医院系统连接中断").wait_for(timeout=10_000)
    assert "dot off" in pg.get_attribute("#net", "class")
    shot(pg, screens_dir, "kiosk-attract-platform-down-zh")
    lang(pg, "en")
    shot(pg, screens_dir, "kiosk-attract-platform-down-en")
    lang(pg, "zh")


def test_lab_report_printed_by_scanned_barcode_and_reprint_refused(kiosk, site, screens_dir):
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    barcode, title, report_no = platform_rows(
        site, "SELECT specimen_barcode, title, report_no FROM report_row WHERE reported_at IS "
        "NOT NULL AND printed = 0 ORDER BY report_no LIMIT 1")[0]
    pg.get_by_test_id("reports-nocard").click()
    pg.get_by_test_id("scan-input").wait_for()
    tour(pg, screens_dir, "kiosk-report-scan")
    keypad_type(pg, barcode, "code")  # no keyboard on a kiosk
    assert pg.get_by_test_id("scan-input").input_value() == barcode
    pg.get_by_test_id("scan-input").press("Enter")
    pg.get_by_test_id("print-reports").wait_for(timeout=20_000)
    tour(pg, screens_dir, "kiosk-reports")
    lang(pg, "en")
    no_glossary_chinese(main_text(pg), [title, "全血", "血清"])
    lang(pg, "zh")
    before = len(printer.jobs)
    pg.get_by_test_id("print-reports").click()
    pg.get_by_test_id("printed-tag").first.wait_for(timeout=30_000)
    tile = pg.locator(f"[data-report='{report_no}']")
    assert "已打印" in tile.inner_text() and "☐" not in tile.inner_text()
    tour(pg, screens_dir, "kiosk-reports-printed")
    job = printer.wait_for_jobs(before + 1, timeout=10)[-1]
    text = "\n".join(job.lines)
    assert title in text and report_no in text
    name = platform_rows(site, "SELECT p.name FROM patient_row p JOIN report_row r ON "
                         "r.patient_id = p.patient_id WHERE r.report_no = ?", report_no)[0][0]
    assert name not in text  # masked on paper
    assert platform_rows(site, "SELECT printed FROM report_row WHERE report_no = ?",
                         report_no)[0][0] == 1

    # A second print of the same report is not done at a kiosk: it says to ask staff.
    printed_jobs = len(printer.jobs)
    pg.locator("[data-do=more]").click()
    pg.get_by_test_id("print-reports").wait_for(timeout=10_000)
    tile = pg.locator(f"[data-report='{report_no}']")
    assert "已打印" in tile.inner_text() and "on" not in (tile.get_attribute("class") or "")
    tile.click()
    pg.get_by_test_id("message").wait_for(timeout=10_000)
    assert "补打需要工作人员" in main_text(pg) and "人工窗口" in main_text(pg)
    assert "on" not in (tile.get_attribute("class") or "").split()  # still not selected
    tour(pg, screens_dir, "kiosk-reprint-needs-staff")
    assert pg.get_by_test_id("print-reports").is_disabled()  # nothing left to print here
    assert len(printer.jobs) == printed_jobs


def cashier_login(pg, badge="S1001"):
    pg.get_by_test_id("badge").fill(badge)
    pg.get_by_test_id("pin").fill(DEMO_STAFF_PIN)
    pg.get_by_test_id("login").click()
    pg.get_by_test_id("closing").wait_for(timeout=20_000)


def test_cashier_settles_a_bill_with_a_payment_code(cashier, site, screens_dir):
    pg = cashier
    pg.get_by_test_id("login").wait_for()
    tour(pg, screens_dir, "cashier-login")
    pg.get_by_test_id("badge").fill("S1001")
    pg.get_by_test_id("pin").fill("0000")
    pg.get_by_test_id("login").click()
    pg.get_by_test_id("message").wait_for(timeout=20_000)
    shot(pg, screens_dir, "cashier-login-refused-zh")
    lang(pg, "en")
    shot(pg, screens_dir, "cashier-login-refused-en")
    lang(pg, "zh")
    cashier_login(pg)
    shot(pg, screens_dir, "cashier-waiting-card-zh")

    row = platform_rows(site, f"""SELECT {CARD_COLS}
        FROM patient_row p WHERE {NOT_BLOCKED} AND EXISTS (SELECT 1 FROM bill_row b WHERE
        b.patient_id = p.patient_id AND b.status = 'unpaid' AND b.total_fen <= 300000)
        ORDER BY p.patient_id LIMIT 1""")[0]
    site.insert_card("cashier-001", as_card(row))
    pg.get_by_test_id("menu-bills").wait_for(timeout=20_000)
    assert pg.get_by_test_id("menu-refund").is_visible()  # desk-only tool
    tour(pg, screens_dir, "cashier-menu")
    pg.get_by_test_id("menu-bills").click()
    pg.get_by_test_id("next").wait_for(timeout=20_000)
    tour(pg, screens_dir, "cashier-bills")
    rotated(pg, screens_dir, "cashier-bills-portrait-zh", PORTRAIT)
    pg.get_by_test_id("next").click()
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-cash").wait_for(timeout=20_000)
    tour(pg, screens_dir, "cashier-pay-method")
    lang(pg, "en")
    prepaid = pg.get_by_test_id("method-prepaid").inner_text()
    assert prepaid.count("Card balance") <= 1 and "Available" in prepaid
    lang(pg, "zh")
    before = len(site.terminal("cashier-001").printer.jobs)
    pg.get_by_test_id("method-code").click()
    pg.get_by_test_id("scan-input").fill("284567890123456780")  # Alipay, approved at once
    pg.get_by_test_id("scan-input").press("Enter")
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    payment_id = pg.get_by_test_id("payment-id").inner_text()
    tour(pg, screens_dir, "cashier-paid")
    job = site.terminal("cashier-001").printer.wait_for_jobs(before + 1, timeout=10)[-1]
    text = "\n".join(job.lines)
    assert "收费员一" in text  # the operator is on the receipt
    assert row[0] not in text and row[3] not in text

    # reprint of the last receipt is marked as a copy; the closing report lists the payment
    pg.get_by_test_id("finish").click()
    pg.get_by_test_id("reprint-last").click(timeout=10_000)
    copy = site.terminal("cashier-001").printer.wait_for_jobs(before + 2, timeout=10)[-1]
    assert "副本" in "\n".join(copy.lines) or "COPY" in "\n".join(copy.lines).upper()
    pg.get_by_test_id("closing").click()
    closing = site.terminal("cashier-001").printer.wait_for_jobs(before + 3, timeout=10)[-1]
    assert "收费员一" in "\n".join(closing.lines)
    pg.get_by_text("日结报表已打印").wait_for(timeout=10_000)
    shot(pg, screens_dir, "cashier-closing-zh")
    lang(pg, "en")
    shot(pg, screens_dir, "cashier-closing-en")
    lang(pg, "zh")

    # 退费: the same payment, part of it, back to Alipay, after the ID check
    site.insert_card("cashier-001", as_card(row))
    pg.get_by_test_id("menu-refund").click(timeout=20_000)
    pg.get_by_test_id(f"payment-{payment_id}").click(timeout=20_000)  # the patient's own
    pg.get_by_test_id("refund-amount").fill("1.50")
    pg.get_by_test_id("refund-reason").fill("检查项目取消")
    tour(pg, screens_dir, "cashier-refund-form")
    pg.get_by_test_id("refund-next").click()
    pg.get_by_test_id("id-checked").wait_for(timeout=10_000)
    check = main_text(pg)
    assert payment_id in check and "¥1.50" in check and row[3] not in check
    assert row[3][:3] in check and row[3][-4:] in check  # masked ID to compare with
    tour(pg, screens_dir, "cashier-refund-id-check")
    before = len(site.terminal("cashier-001").printer.jobs)
    pg.get_by_test_id("id-checked").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert pg.get_by_test_id("refund-amount").inner_text() == "¥1.50"
    assert pg.get_by_test_id("refund-method").inner_text() == "支付宝"
    tour(pg, screens_dir, "cashier-refund-done")
    receipt = "\n".join(site.terminal("cashier-001").printer.wait_for_jobs(
        before + 1, timeout=10)[-1].lines)
    assert "退费凭条" in receipt and "支付宝" in receipt and "1.50" in receipt
    assert payment_id in receipt and "收费员一" in receipt and row[0] not in receipt
    assert platform_rows(site, "SELECT SUM(amount_fen) FROM refund_row WHERE payment_id = ?",
                         payment_id)[0][0] == 150
    pg.get_by_test_id("finish").click()
    pg.get_by_test_id("lock").click(timeout=10_000)
    pg.get_by_test_id("login").wait_for(timeout=10_000)


def test_cashier_cash_topup_and_landscape_screens(cashier, site, screens_dir):
    pg = cashier
    cashier_login(pg, "S1002")
    site.insert_card("cashier-001", DEMO_PATIENTS[0])
    pg.get_by_test_id("menu-topup").click(timeout=20_000)
    pg.locator("[data-amount]").first.wait_for()
    assert pg.locator("[data-keypad]").count() == 0  # the desk has a keyboard
    shot(pg, screens_dir, "cashier-topup-zh")
    pg.locator("[data-amount]").first.click()
    pg.get_by_test_id("method-cash").click(timeout=20_000)
    pg.get_by_test_id("tendered").fill("150")
    tour(pg, screens_dir, "cashier-cash")
    rotated(pg, screens_dir, "cashier-cash-portrait-zh", PORTRAIT)
    pg.get_by_test_id("cash-ok").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert pg.get_by_test_id("change").inner_text() == "¥50.00"
    assert pg.get_by_test_id("tendered-done").inner_text() == "¥150.00"
    change_px = pg.eval_on_selector("[data-testid=change]",
                                    "e => parseFloat(getComputedStyle(e).fontSize)")
    assert change_px >= 64  # the one number the cashier reads out
    tour(pg, screens_dir, "cashier-topup-done")
    pg.get_by_test_id("finish").click()
    pg.get_by_test_id("lock").click(timeout=10_000)
    pg.get_by_test_id("login").wait_for()


def payments_of(site, id_number):
    return platform_rows(site, "SELECT COUNT(*) FROM payment_row y JOIN patient_row p ON "
                         "p.patient_id = y.patient_id WHERE p.id_number = ?", id_number)[0][0]


def test_paid_but_no_slip_offers_a_copy_and_never_charges_again(kiosk, site, screens_dir):
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    # a seeded patient: the demo patients' bookings are left to other tests (one booking
    # per patient and slot)
    patient = as_card(platform_rows(site, f"""SELECT {CARD_COLS} FROM patient_row p
        WHERE {NOT_BLOCKED} AND p.balance_fen >= 10000 AND NOT EXISTS (SELECT 1 FROM
        booking_row b WHERE b.patient_id = p.patient_id)
        ORDER BY p.patient_id DESC LIMIT 1 OFFSET 5""")[0])
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    open_slot(pg)
    pg.locator("[data-slot]:not([disabled])").first.click()
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-prepaid").wait_for(timeout=30_000)
    paid_before = payments_of(site, patient["id_number"])
    printer.set_fault(paper_lines_left=3)  # the roll runs out in the middle of the slip
    try:
        pg.get_by_test_id("method-prepaid").click()
        pg.get_by_test_id("reprint").wait_for(timeout=40_000)
        assert "不会重复收费" in main_text(pg)
        # paid: the queue number is on screen even without paper, next to a big reprint
        queue = pg.get_by_test_id("queue").inner_text()
        assert queue.isdigit()
        assert pg.get_by_test_id("reprint").bounding_box()["height"] >= 100
        tour(pg, screens_dir, "kiosk-print-failed")
    finally:
        printer.clear_faults()
    before = len(printer.jobs)
    pg.get_by_test_id("reprint").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    copy = printer.wait_for_jobs(before + 1, timeout=10)[-1]
    assert "COPY" in "\n".join(copy.lines) and queue in "\n".join(copy.lines)
    assert payments_of(site, patient["id_number"]) == paid_before + 1  # charged once


def test_printer_out_of_paper_is_said_before_payment(kiosk, site, screens_dir):
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    row = platform_rows(site, f"""SELECT {CARD_COLS}
        FROM patient_row p WHERE {NOT_BLOCKED} AND p.balance_fen >= 10000
        AND NOT EXISTS (SELECT 1 FROM booking_row b WHERE b.patient_id = p.patient_id)
        ORDER BY p.patient_id DESC LIMIT 1 OFFSET 20""")[0]
    patient = as_card(row)
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    open_slot(pg)
    pg.locator("[data-slot]:not([disabled])").first.click()
    printer.set_fault(paper_out=True)
    try:
        paid_before = payments_of(site, patient["id_number"])
        pg.get_by_test_id("confirm").click()
        pg.get_by_test_id("continue-anyway").wait_for(timeout=30_000)
        assert "缺纸" in main_text(pg)
        tour(pg, screens_dir, "kiosk-printer-warning")
        pg.get_by_test_id("continue-anyway").click()
        pg.get_by_test_id("method-prepaid").wait_for(timeout=30_000)
        assert "缺纸" in main_text(pg)  # still said on the payment screen
        pg.locator("[data-do=abandon]").click()
        pg.get_by_text("已取消，未扣款").wait_for(timeout=30_000)
        shot(pg, screens_dir, "kiosk-cancelled-zh")
        lang(pg, "en")
        assert "not charged" in main_text(pg)
        shot(pg, screens_dir, "kiosk-cancelled-en")
        lang(pg, "zh")
        assert payments_of(site, patient["id_number"]) == paid_before
    finally:
        printer.clear_faults()


def test_bills_declined_then_paid_topup_by_keypad_and_empty_lists(kiosk, site, screens_dir):
    """A seeded patient with two bills and no bookings: bills (declined, then paid), top-up
    typed on the keypad, and what pick-up and cancel say when there is nothing."""
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    row = platform_rows(site, f"""SELECT {CARD_COLS}, p.patient_id, p.balance_fen
        FROM patient_row p WHERE {NOT_BLOCKED} AND (SELECT COUNT(*) FROM bill_row b WHERE
        b.patient_id = p.patient_id AND b.status = 'unpaid' AND b.total_fen <= 300000) >= 2
        AND NOT EXISTS (SELECT 1 FROM booking_row k WHERE k.patient_id = p.patient_id)
        ORDER BY p.patient_id LIMIT 1""")[0]
    patient_id, balance = row[5], row[6]
    items = [r[0] for r in platform_rows(site, """SELECT i.name FROM bill_item_row i JOIN
        bill_row b ON b.bill_id = i.bill_id WHERE b.patient_id = ? AND b.status = 'unpaid'""",
                                           patient_id)]
    site.insert_card("kiosk-001", as_card(row[:5]))
    pg.get_by_test_id("menu-bills").click(timeout=20_000)
    pg.get_by_test_id("next").wait_for(timeout=20_000)
    # every bill line with its own amount
    first = pg.locator("[data-bill]").first
    assert first.locator(".item").count() >= 1
    assert all("¥" in t for t in first.locator(".item").all_inner_texts())
    tour(pg, screens_dir, "kiosk-bills")
    lang(pg, "en")
    no_glossary_chinese(main_text(pg), items)
    assert "（" not in main_text(pg) and "selected)" in main_text(pg)
    lang(pg, "zh")
    first.click()
    pg.wait_for_function("() => !document.querySelector('[data-bill]').classList.contains('on')")
    total = pg.get_by_test_id("total").inner_text()
    assert "已选" in main_text(pg) and total.startswith("¥")
    shot(pg, screens_dir, "kiosk-bills-partial-zh")
    pg.get_by_test_id("next").click()
    pg.get_by_test_id("confirm").wait_for(timeout=10_000)
    assert pg.locator("[data-bill]").count() >= 1
    tour(pg, screens_dir, "kiosk-bills-confirm")
    pg.get_by_test_id("confirm").click()
    pg.get_by_test_id("method-code").click(timeout=20_000)
    paid_before = payments_of(site, row[3])
    keypad_type(pg, "134567890123456788", "code")  # WeChat, declined: no funds
    pg.get_by_test_id("scan-input").press("Enter")
    pg.get_by_test_id("other-method").wait_for(timeout=20_000)
    assert "未扣款" in main_text(pg)
    tour(pg, screens_dir, "kiosk-declined")
    pg.get_by_test_id("other-method").click()
    pg.get_by_test_id("method-code").click(timeout=10_000)
    before = len(printer.jobs)
    keypad_type(pg, "134567890123456780", "code")  # WeChat, approved at once
    pg.get_by_test_id("scan-input").press("Enter")
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert pg.locator("[data-method]").count() == 0
    tour(pg, screens_dir, "kiosk-bills-paid")
    assert printer.wait_for_jobs(before + 1, timeout=10)
    assert payments_of(site, row[3]) == paid_before + 2  # the declined one and the paid one

    # top-up: an amount of one's own, typed on the keypad, paid by code
    pg.locator("[data-top=home]").click()
    pg.get_by_test_id("menu-topup").click()
    pg.locator("[data-amount]").first.wait_for(timeout=20_000)
    tour(pg, screens_dir, "kiosk-topup")
    keypad_type(pg, "150", "amount")
    assert pg.get_by_test_id("custom-amount").input_value() == "150"
    pg.get_by_test_id("custom-next").click()
    pg.get_by_test_id("method-code").click(timeout=20_000)
    pg.get_by_test_id("scan-input").wait_for()
    assert "¥150.00" in main_text(pg)
    tour(pg, screens_dir, "kiosk-topup-scan")
    keypad_type(pg, "284567890123456781", "code")  # Alipay, approved at once
    pg.get_by_test_id("scan-input").press("Enter")
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert (platform_rows(site, "SELECT balance_fen FROM patient_row WHERE patient_id = ?",
                          patient_id)[0][0]) == balance + 15000
    tour(pg, screens_dir, "kiosk-topup-done")

    # nothing booked: pick-up and cancel say so, and offer the way home
    pg.locator("[data-top=home]").click()
    pg.get_by_test_id("menu-pickup").click()
    pg.get_by_text("今天没有可取的预约").wait_for(timeout=20_000)
    assert pg.locator("[data-booking]").count() == 0
    shot(pg, screens_dir, "kiosk-pickup-none-zh")
    pg.locator("[data-top=home]").click()
    pg.get_by_test_id("menu-cancel").click()
    pg.get_by_text("没有可退的挂号").wait_for(timeout=20_000)
    assert pg.locator("[data-booking]").count() == 0
    shot(pg, screens_dir, "kiosk-cancel-none-zh")


# -- states rendered from view models (see the module docstring) -----------------------------

MASKED = {"patient_id": "P000002", "name": "李*英", "id_number": "310***********0022",
          "balance_fen": 48500, "insured": True}
BOOKING = {"booking_id": "BK1", "visit_no": "V1", "queue_no": 17, "dept_code": "XNK",
           "dept_name": "心血管内科", "doctor_name": "王建国", "title": "主任医师",
           "date": "2026-11-27", "start": "08:00", "end": "11:30", "location": "门诊楼3层A区",
           "fee_fen": 5000, "status": "booked"}


def view(flow=None, *, screen="flow", role="kiosk", edge=True, platform=True):
    return {"v": 1, "role": role, "screen": screen, "identity": None, "patient": MASKED,
            "flow": flow, "staff": None, "error": None, "notice": None,
            "online": {"edge": edge, "platform": platform}, "today": "2026-11-27"}


def stub_page(browser, site, v, viewport=PORTRAIT):
    """The kiosk page with ``v`` served as the server's view stream (rendering only)."""
    ctx = browser.new_context(viewport=viewport, locale="zh-CN")
    body = f"retry: 300\nevent: view\ndata: {json.dumps(v, ensure_ascii=False)}\n\n"
    ctx.route("**/api/events", lambda route: route.fulfill(
        status=200, headers={"content-type": "text/event-stream; charset=utf-8"}, body=body))
    pg = ctx.new_page()
    pg.goto(site.terminal("kiosk-001").ui_url)
    return ctx, pg


def slot(i, **kw):
    base = {"slot_id": f"S{i}", "doctor_id": f"D{i}", "doctor_name": "周志强", "title": "主任医师",
            "specialty": "冠心病", "date": "2026-11-27", "period": "am", "start": "08:00",
            "end": "11:30", "remaining": 4, "fee_fen": 5000, "closes_at": "11:00", "open": True}
    return {**base, **kw}


CONTRAST_JS = r"""e => {
  // null when a colour is not (yet) an rgb() value, e.g. while the page re-renders.
  const lum = (c) => { const m = (c || "").match(/[0-9.]+/g); if (!m || m.length < 3) return null;
    const [r, g, b] = m.slice(0, 3).map((v) => {
      v = Number(v) / 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  let bg = e, op = 1;
  for (let n = e; n; n = n.parentElement) op *= Number(getComputedStyle(n).opacity);
  const clear = (n) => /rgba\(.*, 0\)|transparent/.test(getComputedStyle(n).backgroundColor);
  while (bg && clear(bg)) bg = bg.parentElement;
  const fg = getComputedStyle(e).color;
  const back = getComputedStyle(bg || document.body).backgroundColor;
  const a = lum(fg), b = lum(back);
  const ratio = a === null || b === null ? null
    : (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  return { ratio, opacity: op, fg, bg: back, connected: e.isConnected };
}"""


def contrasts(pg: Any, sel: str) -> list[dict[str, Any]]:
    """Contrast of every element matching ``sel``, once the page has settled (≤ 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        found = pg.locator(sel).evaluate_all(f"es => es.map({CONTRAST_JS})")
        if all(c["ratio"] is not None for c in found):
            return list(found)
        if time.monotonic() > deadline:
            raise AssertionError(f"no readable colours for {sel}: {found}")
        time.sleep(0.1)


def test_closed_and_full_slots_stay_readable(browser, site, screens_dir):
    """WCAG AA (4.5:1) for the reason a slot cannot be taken, in every mode; not faded."""
    dept = {"code": "XNK", "name": "心血管内科", "name_en": "Cardiology",
            "location": "门诊楼3层A区"}
    v = view({"name": "register", "state": "slots", "busy": False, "error": None, "data": {
        "dept": dept, "departments": [dept], "day": "2026-11-27",
        "days": ["2026-11-27", "2026-11-28", "2026-11-29"],
        "slots": [slot(1, open=False, why="Closed", why_zh="已停止挂号"),
                  slot(2, open=False, remaining=0, why="Full", why_zh="已约满",
                       doctor_name="陈丽华", title="副主任医师", specialty="心律失常"),
                  slot(3, period="pm", start="13:30", end="17:00", closes_at="16:30",
                       doctor_name="刘洋", title="主治医师", specialty="高血压")]}})
    ctx, pg = stub_page(browser, site, v)
    try:
        pg.locator("[data-slot]").first.wait_for()
        assert pg.locator("[data-slot][disabled]").count() == 2
        for want, elder in (("zh", False), ("en", False), ("zh", True)):
            lang(pg, want)
            if elder:
                pg.get_by_test_id("elder").click()
            for sel in ("[data-slot][disabled] .why", "[data-slot][disabled] .t",
                        "[data-slot][disabled] .s"):
                for c in contrasts(pg, sel):
                    assert c["opacity"] == 1 and c["ratio"] >= 4.5, (want, elder, sel, c)
            if elder:
                pg.get_by_test_id("elder").click()
        lang(pg, "en")
        no_glossary_chinese(main_text(pg), ["主任医师", "副主任医师", "冠心病", "心律失常",
                                            "已停止挂号"])
        lang(pg, "zh")
        tour(pg, screens_dir, "kiosk-slots-closed")
    finally:
        ctx.close()


def test_rare_states_render(browser, site, screens_dir):
    pickup = {"name": "pickup", "busy": False, "error": None}
    unresolved_err = {
        "code": "unresolved", "message": "We could not confirm this payment yet. Do not pay "
        "again: staff will check it and contact you.",
        "message_zh": "暂时无法确认支付结果。请勿重复支付，工作人员将核实后联系您。",
        "todo": "Please take your card and go to a staffed counter with this screen's "
                "payment number.", "todo_zh": "请取卡并到人工窗口出示本页支付编号。"}
    cases = [
        ("kiosk-pickup-list", view({**pickup, "state": "list", "data": {
            "bookings": [BOOKING, {**BOOKING, "booking_id": "BK2", "status": "paid",
                                   "dept_name": "眼科", "title": "主治医师",
                                   "location": "门诊楼5层B区", "start": "13:30",
                                   "end": "17:00"}]}})),
        ("kiosk-pickup-pay", view({**pickup, "state": "pay_method", "data": {
            "booking": BOOKING, "amount_fen": 5000, "refs": ["BK1"], "printer_warning": None,
            "methods": [{"method": "prepaid", "ok": True, "balance_fen": 48500},
                        {"method": "code", "ok": True}]}})),
        ("kiosk-pickup-done", view({**pickup, "state": "done", "data": {
            "booking": {**BOOKING, "status": "paid"}}})),
        # the daemon refused the reprint: no reprint button, the counter and the queue number
        ("kiosk-reprint-refused", view({"name": "register", "state": "print_failed",
                                        "busy": False, "data": {
            "booking": {**BOOKING, "status": "paid"},
            "print": {"state": "failed", "reason": "not_reprintable", "job_id": "slip-BK1"}},
            "error": {"code": "print_failed",
                      "message": "Done, but the paper did not print (This document cannot be "
                                 "reprinted here.).",
                      "message_zh": "已办理成功，但凭条打印失败（该凭条无法在此补打，"
                                    "请到人工窗口。）。"}})),
        ("kiosk-unresolved", view({"name": "bills", "state": "unresolved", "busy": False,
                                   "error": {**unresolved_err, "payment_id": "PAY20261127001"},
                                   "data": {"amount_fen": 33960,
                                            "payment_id": "PAY20261127001"}})),
    ]
    for name, v in cases:
        ctx, pg = stub_page(browser, site, v)
        try:
            pg.wait_for_function("() => document.querySelector('main').dataset.state")
            text = main_text(pg)
            if name == "kiosk-pickup-list":
                assert "待缴费" in text and "已缴费" in text and "王建国" in text
            if name in ("kiosk-pickup-done", "kiosk-reprint-refused"):
                assert pg.get_by_test_id("queue").inner_text() == "17"
            if name == "kiosk-reprint-refused":
                assert pg.locator("[data-testid=reprint]").count() == 0
                assert "人工窗口补打" in text and "不会重复收费" in text
            if name == "kiosk-unresolved":
                assert "请勿重复支付" in text and "PAY20261127001" in text
                assert pg.locator("[data-method], [data-do]").count() == 0  # no paying again
            tour(pg, screens_dir, name)
            lang(pg, "en")
            en = main_text(pg)
            no_glossary_chinese(en, ["心血管内科", "眼科", "主任医师", "主治医师", "门诊楼"])
            if name in ("kiosk-pickup-list", "kiosk-pickup-done"):
                assert "王建国" in en  # people's names are never translated
        finally:
            ctx.close()

    ctx, pg = stub_page(browser, site, view(screen="attract", edge=False))
    try:
        pg.get_by_test_id("edge-down").wait_for()
        assert "终端服务未运行" in main_text(pg) and "人工窗口" in main_text(pg)
        assert pg.locator("[data-start], [data-top]").count() == 0
        tour(pg, screens_dir, "kiosk-edge-down")
    finally:
        ctx.close()


# -- from the user trial ---------------------------------------------------------------------

def scan_qr(site, ehc_id):
    """Show an e-health card QR to the (simulated) hardware scanner."""
    httpx.post(site.panel_url + "api/kiosk-001/scan", json={"text": f"{ehc_id}:1"},
               timeout=10).raise_for_status()


def stays(pg, testid, seconds):
    """``testid`` stays on screen for ``seconds`` (polled, so a flash away is caught too)."""
    for _ in range(int(seconds * 10)):
        assert pg.get_by_test_id(testid).count() == 1, f"{testid} left the screen"
        pg.wait_for_timeout(100)


@pytest.mark.parametrize(("menu", "ready", "has"), [
    ("bills", "next", "bill_row b WHERE b.status = 'unpaid' AND b.total_fen <= 300000"),
    ("reports", "print-reports", "report_row b WHERE b.reported_at IS NOT NULL AND NOT b.printed"),
])
def test_ehealth_qr_patient_stays_in_bills_and_reports(kiosk, site, screens_dir, menu, ready,
                                                      has):
    """Identified by e-health QR (no card in the slot): the list stays until they leave it."""
    pg = kiosk
    (ehc_id,) = platform_rows(site, f"""SELECT p.ehc_id FROM patient_row p WHERE {NOT_BLOCKED}
        AND EXISTS (SELECT 1 FROM {has} AND b.patient_id = p.patient_id)
        ORDER BY p.patient_id LIMIT 1""")[0]
    scan_qr(site, ehc_id)
    pg.get_by_test_id(f"menu-{menu}").click(timeout=20_000)
    pg.get_by_test_id(ready).wait_for(timeout=20_000)
    stays(pg, ready, 4)
    shot(pg, screens_dir, f"kiosk-ehc-{menu}-zh")
    # leaving a QR session: no card to take back, straight to the start screen
    pg.locator("[data-top=home]").click()
    pg.get_by_test_id("finish").click(timeout=10_000)
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    assert pg.get_by_test_id("take-card").count() == 0


@pytest.mark.parametrize("how", ["card", "qr"])
def test_first_patient_after_a_quiet_minute_is_not_timed_out(browser, site, how):
    """Nobody touched the kiosk for 65 s (the page's clock jumps ahead): a card going in,
    or a QR shown, starts the idle count afresh; no countdown, the menu stays."""
    fresh(site, "kiosk-001")
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    pg = ctx.new_page()
    try:
        pg.clock.install()
        pg.goto(site.terminal("kiosk-001").ui_url)
        pg.get_by_test_id("prompt").wait_for()
        pg.clock.fast_forward("01:05")
        pg.wait_for_timeout(700)  # a tick of the page's idle clock on the start screen
        if how == "card":
            site.insert_card("kiosk-001", DEMO_PATIENTS[0])
        else:
            (ehc_id,) = platform_rows(site, f"""SELECT p.ehc_id FROM patient_row p
                WHERE {NOT_BLOCKED} ORDER BY p.patient_id LIMIT 1 OFFSET 3""")[0]
            scan_qr(site, ehc_id)
        pg.get_by_test_id("menu-register").wait_for(timeout=20_000)
        for _ in range(30):
            assert pg.locator("#overlay").is_hidden(), "the idle countdown came up"
            assert pg.get_by_test_id("menu-register").count() == 1, "the session ended"
            pg.wait_for_timeout(100)
    finally:
        ctx.close()
        if site.terminal("kiosk-001").patient_slot.is_inserted:
            site.remove_card("kiosk-001")


def test_finish_asks_for_the_card_until_it_is_out(browser, site, screens_dir):
    """After "完成，退出" with the card still in the slot the kiosk says (and speaks) "take
    your card" and waits; once the card is out, the start screen."""
    fresh(site, "kiosk-001")
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    ui = site.terminal("kiosk-001").ui_url
    spoken = []

    def voice_on(route):
        cfg = httpx.get(ui + "api/config", timeout=10).json()
        cfg["ui"].update(voice=True)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(cfg))

    def record(route):
        spoken.append(route.request.url.rsplit("/", 1)[-1])
        route.fulfill(status=404)

    ctx.route("**/api/config", voice_on)
    ctx.route("**/api/voice/*", record)
    pg = ctx.new_page()
    try:
        pg.goto(ui)
        pg.get_by_test_id("prompt").wait_for()
        site.insert_card("kiosk-001", DEMO_PATIENTS[0])
        pg.get_by_test_id("finish").click(timeout=20_000)
        pg.get_by_test_id("take-card").wait_for(timeout=10_000)
        assert "请取走您的卡" in main_text(pg) and "Please take your card" in main_text(pg)
        assert "张*" not in pg.inner_text("body")
        for _ in range(50):  # the page asks for the spoken prompt as the screen shows
            if "take_out_zh.wav" in spoken:
                break
            pg.wait_for_timeout(100)
        assert "take_out_zh.wav" in spoken
        tour(pg, screens_dir, "kiosk-take-card")
        stays(pg, "take-card", 2)
        assert pg.locator("#overlay").is_hidden()
        site.remove_card("kiosk-001")
        pg.get_by_test_id("prompt").wait_for(timeout=10_000)
    finally:
        ctx.close()
        if site.terminal("kiosk-001").patient_slot.is_inserted:
            site.remove_card("kiosk-001")
