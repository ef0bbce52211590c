"""Issue 10 (items 6, 7, 3) on the site-in-a-box: slips after paper-out, 退号 and payments
whose outcome the kiosk learnt only after the patient left.

The fixtures and helpers are the ones of test_kiosk_browser.py (same site, same screens).
"""

from __future__ import annotations

import httpx
import pytest

from edge.devices.printer.sim.control import PrinterControl
from tests.kiosk.test_kiosk_browser import (  # noqa: F401 - fixtures are used by name
    CARD_COLS,
    NOT_BLOCKED,
    as_card,
    kiosk,
    main_text,
    open_slot,
    platform_rows,
    shot,
    tour,
)

pytestmark = pytest.mark.stack


def _fresh_patient(site, offset):
    """A seeded patient with money on the card and no bookings yet."""
    return as_card(platform_rows(site, f"""SELECT {CARD_COLS} FROM patient_row p
        WHERE {NOT_BLOCKED} AND p.balance_fen >= 10000 AND NOT EXISTS (SELECT 1 FROM
        booking_row b WHERE b.patient_id = p.patient_id)
        ORDER BY p.patient_id DESC LIMIT 1 OFFSET {offset}""")[0])


def _balance(site, card):
    return platform_rows(site, "SELECT balance_fen FROM patient_row WHERE card_no = ?",
                         card["card_number"])[0][0]


def _register_prepaid(pg, site, patient, *, warned=False):
    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-register").click(timeout=20_000)
    pg.locator("[data-dept]").first.wait_for()
    open_slot(pg)
    pg.locator("[data-slot]:not([disabled])").first.click()
    pg.get_by_test_id("confirm").click()
    if warned:
        pg.get_by_test_id("continue-anyway").click(timeout=30_000)
    pg.get_by_test_id("method-prepaid").click(timeout=30_000)


@pytest.fixture
def printer_control(site):
    """The kiosk printer's fault control port (``ykt sim printer --control-port``)."""
    ctl = PrinterControl(site.terminal("kiosk-001").printer).start()
    url = f"http://127.0.0.1:{ctl.port}/"

    def send(command):
        r = httpx.post(url, content=command.encode(), timeout=5)
        r.raise_for_status()
        return r.json()

    try:
        yield send
    finally:
        send("clear")
        ctl.stop()


def test_slip_that_never_printed_prints_as_the_original_after_a_refill(
        kiosk, site, screens_dir, printer_control):  # noqa: F811
    """Item 7: paper out → paid, no slip; refill; the first 补打 prints the original."""
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    patient = _fresh_patient(site, 8)
    printer_control("paper-out")
    _register_prepaid(pg, site, patient, warned=True)
    pg.get_by_test_id("reprint").wait_for(timeout=40_000)
    queue = pg.get_by_test_id("queue").inner_text()
    before = len(printer.jobs)
    printer_control("clear")  # the roll is refilled
    pg.get_by_test_id("reprint").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    slip = "\n".join(printer.wait_for_jobs(before + 1, timeout=10)[-1].lines)
    assert queue in slip
    # nothing came out before: this is the patient's only slip, so it is the original
    assert "COPY" not in slip and "副本" not in slip and "仅供参考" not in slip
    tour(pg, screens_dir, "kiosk-reprint-original")


def test_reprint_while_the_paper_is_still_out_says_why_and_keeps_the_reprint(
        kiosk, site, screens_dir, printer_control):  # noqa: F811
    """Item 7: 补打 before the refill is refused with the reason; after it, it prints."""
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    patient = _fresh_patient(site, 9)
    printer_control("paper-out")
    _register_prepaid(pg, site, patient, warned=True)
    pg.get_by_test_id("reprint").wait_for(timeout=40_000)
    pg.get_by_test_id("reprint").click()
    pg.wait_for_function("() => document.querySelector('main').innerText.includes('缺纸')",
                         timeout=30_000)
    pg.get_by_test_id("reprint").wait_for(timeout=10_000)  # still offered: not spent
    tour(pg, screens_dir, "kiosk-reprint-paper-still-out")
    before = len(printer.jobs)
    printer_control("clear")
    pg.get_by_test_id("reprint").click()
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    slip = "\n".join(printer.wait_for_jobs(before + 1, timeout=10)[-1].lines)
    assert "COPY" not in slip


def test_cancel_refreshes_the_balance_and_prints_a_cancellation_slip(
        kiosk, site, screens_dir):  # noqa: F811
    """Item 6: after 退号 the balance on screen is the platform's, and a slip prints."""
    pg, printer = kiosk, site.terminal("kiosk-001").printer
    patient = _fresh_patient(site, 10)
    start_balance = _balance(site, patient)
    _register_prepaid(pg, site, patient)
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    site.remove_card("kiosk-001")
    pg.get_by_test_id("prompt").wait_for(timeout=10_000)

    site.insert_card("kiosk-001", patient)
    pg.get_by_test_id("menu-cancel").click(timeout=20_000)
    pg.locator("[data-booking]").first.click(timeout=20_000)
    before = len(printer.jobs)
    pg.get_by_test_id("confirm").click(timeout=10_000)
    pg.get_by_test_id("done").wait_for(timeout=30_000)
    assert _balance(site, patient) == start_balance  # the platform refunded the fee
    want = f"¥{start_balance / 100:.2f}"
    assert want in pg.get_by_test_id("patient-strip").inner_text()
    assert pg.get_by_test_id("new-balance").inner_text() == want
    slip = "\n".join(printer.wait_for_jobs(before + 1, timeout=15)[-1].lines)
    assert "退号" in slip and patient["name"] not in slip
    assert patient["card_number"] not in slip
    tour(pg, screens_dir, "kiosk-cancel-done-balance")
