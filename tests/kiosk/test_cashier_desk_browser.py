"""The cashier desk on the site-in-a-box: refunds tied to the patient at the desk, cash
receipts with tendered/change, reprint of an earlier receipt, and the shift handover.

Every process is real (pcscd+vpcd, edge daemon, kiosk server, Mosquitto, central, reference
platform, virtual printer); screenshots go to docs/screens.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from yikatong.site.demo import DEMO_PATIENTS, DEMO_STAFF_PIN

pytestmark = pytest.mark.stack

LANDSCAPE = {"width": 1920, "height": 1080}
DESK = "cashier-001"

OVERFLOW_JS = """() => {
  const d = document.documentElement;
  return [d.scrollWidth - innerWidth, d.scrollHeight - innerHeight];
}"""


def shot(pg, screens_dir, name):
    """Screenshot for docs/screens; the screen must fit (no scrolling on a desk either)."""
    pg.wait_for_timeout(150)
    pg.screenshot(path=screens_dir / f"{name}.png")
    dx, dy = pg.evaluate(OVERFLOW_JS)
    assert dx <= 0 and dy <= 0, f"{name}: content spills off the screen by {dx}×{dy} px"


def lang(pg, want):
    cur = "en" if pg.get_by_test_id("lang").inner_text() == "中文" else "zh"
    if cur != want:
        pg.get_by_test_id("lang").click()


def api(site):
    """A client of the desk daemon's local API (as the kiosk server uses it)."""
    term = site.terminal(DESK)
    token = (Path(site.workdir) / DESK / "secrets" / "edge-api.token").read_text().strip()
    return httpx.Client(base_url=f"http://127.0.0.1:{term.api_port}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)


def jobs_text(site, n):
    """The text of the desk printer's job number ``n`` (1-based), waiting for it."""
    return "\n".join(site.terminal(DESK).printer.wait_for_jobs(n, timeout=15)[n - 1].lines)


def login(pg, badge="S1002"):
    pg.get_by_test_id("badge").fill(badge)
    pg.get_by_test_id("pin").fill(DEMO_STAFF_PIN)
    pg.get_by_test_id("login").click()
    pg.get_by_test_id("closing").wait_for(timeout=20_000)


def wait_menu(pg):
    pg.get_by_test_id("menu-topup").wait_for(timeout=20_000)


def cash_topup(pg, site, tendered: str, *, short_first: bool = False) -> str:
    """Top up ¥100 in cash; returns the payment number shown."""
    pg.get_by_test_id("menu-topup").click()
    pg.locator("[data-amount]").first.click()  # ¥100
    pg.get_by_test_id("method-cash").click(timeout=20_000)
    if short_first:
        pg.get_by_test_id("tendered").fill("50")
        pg.get_by_test_id("cash-ok").click()
        pg.get_by_test_id("message").wait_for(timeout=10_000)
        assert "实收金额不足" in pg.inner_text("main")
        # A valid amount typed: the warning goes at once (not only after the next submit).
        pg.get_by_test_id("tendered").fill(tendered)
        pg.wait_for_timeout(200)
        assert "实收金额不足" not in pg.inner_text("main")
    else:
        pg.get_by_test_id("tendered").fill(tendered)
    pg.get_by_test_id("cash-ok").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    return pg.get_by_test_id("payment-id").inner_text()


@pytest.fixture
def desk(browser, site):
    ui = site.terminal(DESK).ui_url
    httpx.post(ui + "api/action", json={"action": "home", "args": {}}, timeout=10)
    httpx.post(ui + "api/action", json={"action": "lock", "args": {}}, timeout=10)
    ctx = browser.new_context(viewport=LANDSCAPE, locale="zh-CN")
    pg = ctx.new_page()
    pg.goto(ui)
    pg.get_by_test_id("login").wait_for(timeout=20_000)
    yield pg
    ctx.close()
    if site.terminal(DESK).patient_slot.is_inserted:
        site.remove_card(DESK)


def test_cash_receipt_and_refund_of_the_patients_own_payment(desk, site, screens_dir):
    pg, printer = desk, site.terminal(DESK).printer
    a, b = DEMO_PATIENTS[1], DEMO_PATIENTS[2]
    login(pg)
    site.insert_card(DESK, a)
    wait_menu(pg)
    before = len(printer.jobs)
    payment_id = cash_topup(pg, site, "150", short_first=True)
    receipt = jobs_text(site, before + 1)
    assert re.search(r"实\s*收.*150\.00", receipt), receipt
    assert re.search(r"找\s*零.*50\.00", receipt), receipt
    pg.get_by_test_id("finish").click()

    # 退费: patient A's own payments are listed; the cashier picks one, no typed number.
    site.insert_card(DESK, a)
    wait_menu(pg)
    pg.get_by_test_id("menu-refund").click()
    row = pg.get_by_test_id(f"payment-{payment_id}")
    row.wait_for(timeout=20_000)
    text = row.inner_text()
    assert "现金" in text and "¥100.00" in text and "充值" in text
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", text)  # Beijing time
    assert pg.get_by_test_id("refund-payment").count() == 0  # nothing typed by hand
    shot(pg, screens_dir, "cashier-refund-list-zh")
    lang(pg, "en")
    shot(pg, screens_dir, "cashier-refund-list-en")
    lang(pg, "zh")
    row.click()
    amount = pg.get_by_test_id("refund-amount")
    amount.wait_for(timeout=10_000)
    assert amount.input_value() == "100.00"  # the refundable amount by default
    pg.get_by_test_id("refund-reason").fill("多充退回")
    shot(pg, screens_dir, "cashier-refund-form-zh")
    for typed, says in (("0", "退款金额"), ("250", "可退金额"), ("abc", "金额")):
        amount.fill(typed)
        pg.get_by_test_id("refund-next").click()
        # The previous error is still on screen: wait for this input's message, not for any.
        expect(pg.get_by_test_id("message")).to_contain_text(says, timeout=10_000)
        assert pg.get_by_test_id("id-checked").count() == 0  # errors before the ID check
    shot(pg, screens_dir, "cashier-refund-form-error-zh")
    amount.fill("20")
    pg.get_by_test_id("refund-next").click()
    pg.get_by_test_id("id-checked").click(timeout=10_000)
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert pg.get_by_test_id("refund-amount").inner_text() == "¥20.00"
    pg.locator("[data-top=home]").first.click()
    pg.get_by_test_id("menu-refund").click()
    row = pg.get_by_test_id(f"payment-{payment_id}")
    row.wait_for(timeout=20_000)
    assert "¥20.00" in row.inner_text() and "¥80.00" in row.inner_text()  # refunded, left

    # Patient B at the desk: A's payment is not B's to refund, although this desk identified
    # A minutes ago (central's grant still holds): the daemon refuses it, nothing refunded.
    site.insert_card(DESK, b)
    wait_menu(pg)
    with api(site) as c:
        r = c.post("/v1/refund", json={"payment_id": payment_id, "amount_fen": 100,
                                       "reason": "x"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_this_patient"
        assert "不属于当前读卡的患者" in r.json()["error"]["message_zh"]
        listed = c.get("/v1/payments").json()["payments"]
        assert payment_id not in [p["payment_id"] for p in listed]
    pg.get_by_test_id("menu-refund").click()
    pg.get_by_test_id("refund-list").wait_for(timeout=20_000)
    assert pg.get_by_test_id(f"payment-{payment_id}").count() == 0


def test_reprint_an_earlier_receipt_and_hand_over_the_shift(desk, site, screens_dir):
    pg, printer = desk, site.terminal(DESK).printer
    a = DEMO_PATIENTS[0]
    login(pg, "S1001")
    # Start from a handover, whatever this cashier took earlier today in other tests.
    pg.get_by_test_id("handover").click()
    pg.get_by_test_id("handover-confirm").click(timeout=10_000)
    pg.get_by_test_id("login").wait_for(timeout=20_000)
    login(pg, "S1001")
    site.insert_card(DESK, a)
    wait_menu(pg)
    first = cash_topup(pg, site, "100")
    pg.locator("[data-top=home]").first.click()
    cash_topup(pg, site, "120")  # a later receipt: "reprint last" would not give the first
    pg.locator("[data-top=home]").first.click()

    # 补打: by payment number, for a payment of this patient, marked as a copy
    before = len(printer.jobs)
    pg.get_by_test_id("menu-receipts").click()
    pg.get_by_test_id(f"reprint-{first}").wait_for(timeout=20_000)
    shot(pg, screens_dir, "cashier-reprint-list-zh")
    pg.get_by_test_id(f"reprint-{first}").click()
    pg.get_by_test_id("done").wait_for(timeout=20_000)
    copy = jobs_text(site, before + 1)
    assert "副本" in copy and first in copy and "100.00" in copy
    pg.get_by_test_id("finish").click()

    # 交班: this cashier's takings since sign-in, printed; then the desk is signed out
    before = len(printer.jobs)
    pg.get_by_test_id("handover").click(timeout=10_000)
    pg.get_by_test_id("shift-net").wait_for(timeout=10_000)
    assert pg.get_by_test_id("shift-net").inner_text() == "¥200.00"
    shot(pg, screens_dir, "cashier-shift-report-zh")
    pg.get_by_test_id("handover-confirm").click(timeout=10_000)
    report = jobs_text(site, before + 1)
    assert "交班报表" in report and "日结" not in report
    assert "收费员一" in report
    assert re.search(r"充值\s+2笔\s+[¥￥]200\.00", report), report
    pg.get_by_test_id("login").wait_for(timeout=20_000)
    shot(pg, screens_dir, "cashier-shift-done-zh")
    audit = sqlite3.connect(f"file:{Path(site.workdir, DESK, 'data', 'audit.db')}?mode=ro",
                            uri=True)
    try:
        actions = [r[0] for r in audit.execute("SELECT action FROM audit")]
    finally:
        audit.close()
    assert "shift.handover" in actions

    # The next handover on this desk starts after it: nothing handed over twice.
    login(pg, "S1001")
    before = len(printer.jobs)
    pg.get_by_test_id("handover").click(timeout=10_000)
    # As above: confirm only once the summary of this (empty) shift is on screen.
    pg.get_by_test_id("shift-net").wait_for(timeout=10_000)
    assert pg.get_by_test_id("shift-net").inner_text() == "¥0.00"
    pg.get_by_test_id("handover-confirm").click(timeout=10_000)
    assert "200.00" not in jobs_text(site, before + 1)
    pg.get_by_test_id("login").wait_for(timeout=20_000)
