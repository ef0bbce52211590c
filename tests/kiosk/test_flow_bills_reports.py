"""Bills, lab reports, cancellation and desk refunds against a scripted edge."""

from __future__ import annotations

from kiosk.edge_client import EdgeError
from kiosk.flows.bills import BillsFlow, default_selection, receipt_data, selection_total
from kiosk.flows.cancel import CancelFlow, cancellable
from kiosk.flows.refund import RefundFlow, check_form
from kiosk.flows.reports import ReportsFlow, printable


def err(code, status=503, **extra):
    return EdgeError(status, code, f"{code} (en)", f"{code}（中）", **extra)


def bill(bid, total, payable=True):
    return {"bill_id": bid, "date": "2026-11-22", "dept_name": "内科", "total_fen": total,
            "payable_here": payable,
            "items": [{"name": "血常规", "qty": 1, "unit_price_fen": total, "amount_fen": total}]}


BILLS = {"bills": [bill("B1", 2000), bill("B2", 3000), bill("B3", 400000, payable=False)]}
APPROVED = {"payment_id": "PAY9", "state": "approved", "amount_fen": 5000, "method": "prepaid",
            "txn_id": "HIS9", "balance_fen": 0}


def test_selection_helpers():
    bills = BILLS["bills"]
    assert default_selection(bills) == ["B1", "B2"]
    assert selection_total(bills, ["B1", "B2"]) == 5000
    r = receipt_data(bills, ["B2"], APPROVED)
    assert r["total_fen"] == 3000 and r["items"][0]["name"] == "血常规"


async def test_bills_all_selected_pay_and_receipt(make, edge):
    edge.script["bill.list"] = BILLS
    edge.script["pay"] = APPROVED
    f = make(BillsFlow)
    await f.start()
    assert f.data["selected"] == ["B1", "B2"] and f.data["total_fen"] == 5000
    await f.handle("next", {})
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done"
    assert edge.called("pay")[0]["refs"] == ["B1", "B2"]
    assert edge.called("print")[0]["kind"] == "payment_receipt"


async def test_bills_partial_selection(make, edge):
    edge.script["bill.list"] = BILLS
    edge.script["pay"] = dict(APPROVED, amount_fen=3000)
    f = make(BillsFlow)
    await f.start()
    await f.handle("toggle", {"bill_id": "B1"})
    assert f.data["selected"] == ["B2"] and f.data["total_fen"] == 3000
    await f.handle("next", {})
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert edge.called("pay")[0]["amount_fen"] == 3000


async def test_bill_not_payable_here_says_why(make, edge):
    edge.script["bill.list"] = BILLS
    f = make(BillsFlow)
    await f.start()
    await f.handle("toggle", {"bill_id": "B3"})
    assert f.error["code"] == "not_payable_here" and "人工收费窗口" in f.error["todo_zh"]
    desk = make(BillsFlow, role="cashier")
    await desk.start()
    await desk.handle("toggle", {"bill_id": "B3"})
    assert "B3" in desk.data["selected"]


async def test_nothing_selected_and_balance_low(make, edge):
    edge.script["bill.list"] = BILLS
    f = make(BillsFlow, patient={"patient_id": "P1", "balance_fen": 10})
    await f.start()
    for b in ("B1", "B2"):
        await f.handle("toggle", {"bill_id": b})
    await f.handle("next", {})
    assert f.error["code"] == "nothing_selected"
    await f.handle("toggle", {"bill_id": "B1"})
    await f.handle("next", {})
    await f.handle("confirm", {})
    prepaid = f.data["methods"][0]
    assert prepaid["ok"] is False and prepaid["why_zh"] == "余额不足"


async def test_bills_none_and_error(make, edge):
    edge.script["bill.list"] = [err("platform_unavailable"), {"bills": []}]
    f = make(BillsFlow)
    await f.start()
    assert f.state == "error"
    await f.handle("retry", {})
    assert f.state == "none"


async def test_bills_insufficient_balance_from_platform(make, edge):
    edge.script["bill.list"] = BILLS
    edge.script["pay"] = err("rejected", 422, reason="insufficient_balance")
    f = make(BillsFlow)
    await f.start()
    await f.handle("next", {})
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "declined" and "余额不足" in f.error["message_zh"]


REPORTS = {"reports": [
    {"report_no": "R1", "title": "血常规", "specimen": "血", "status": "ready", "printed": False},
    {"report_no": "R2", "title": "肝功", "specimen": "血", "status": "ready", "printed": True},
    {"report_no": "R3", "title": "尿常规", "specimen": "尿", "status": "pending", "printed": False},
]}


def test_printable():
    assert printable(REPORTS["reports"], staff=False) == ["R1"]
    assert printable(REPORTS["reports"], staff=True) == ["R1", "R2"]


async def test_reports_by_card_print_and_mark(make, edge):
    edge.script["report.list"] = REPORTS
    f = make(ReportsFlow)
    await f.start()
    assert f.state == "list" and f.data["selected"] == ["R1"]
    await f.handle("toggle", {"report_no": "R2"})
    assert f.error["code"] == "reprint_needs_staff"
    await f.handle("toggle", {"report_no": "R3"})
    assert f.error["code"] == "not_ready"
    await f.handle("print", {})
    assert f.state == "done" and f.data["reports"][0]["printed"] is True
    assert edge.called("print") == [{"kind": "lab_report", "data": {"report_no": "R1"},
                                     "copy": False}]


async def test_reports_by_barcode_without_card(make, edge):
    edge.script["report.list"] = REPORTS
    f = make(ReportsFlow, patient={})
    await f.start()
    assert f.state == "scan"
    assert await f.on_scan({"kind": "specimen", "value": "81234567890"})
    assert edge.called("report.list") == [{"specimen_barcode": "81234567890"}]
    assert f.state == "list"


async def test_unknown_barcode(make, edge):
    edge.script["report.list"] = err("rejected", 422, reason="not_found")
    f = make(ReportsFlow, patient={})
    await f.start()
    await f.on_scan({"kind": "specimen", "value": "80000000000"})
    assert f.state == "scan" and f.error["code"] == "barcode_unknown"


async def test_staff_reprints_as_copy(make, edge):
    edge.script["report.list"] = REPORTS
    f = make(ReportsFlow, role="cashier", staff={"name": "收费员一"})
    await f.start()
    await f.handle("print", {})
    assert [c["copy"] for c in edge.called("print")] == [False, True]


async def test_report_paper_out_stops_and_says_so(make, edge):
    edge.script["report.list"] = REPORTS
    edge.script["print"] = {"state": "failed", "reason": "paper_out"}
    f = make(ReportsFlow, role="cashier", staff={"name": "x"})
    await f.start()
    await f.handle("print", {})
    assert len(edge.called("print")) == 1 and f.error["code"] == "print_failed"
    assert f.data["reports"][0]["printed"] is False


async def test_reports_error(make, edge):
    edge.script["report.list"] = err("platform_unavailable")
    f = make(ReportsFlow)
    await f.start()
    assert f.state == "error"
    await f.handle("retry", {})
    assert f.state == "scan"


BK = {"booking_id": "BK1", "date": "2026-11-22", "start": "14:00", "status": "paid",
      "fee_fen": 5000, "dept_name": "内科", "doctor_name": "李明"}


def test_cancellable():
    old = dict(BK, date="2026-11-21")
    started = dict(BK, start="08:00")
    gone = dict(BK, status="cancelled")
    assert cancellable([BK, old, started, gone], "2026-11-22", "09:00") == [BK]


async def test_cancel_paid_booking_refunds(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BK]}
    edge.script["reg.cancel"] = {"booking_id": "BK1", "status": "cancelled", "refund_fen": 5000}
    f = make(CancelFlow, now_hhmm=lambda: "09:00")
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.data["refund_fen"] == 5000
    await f.handle("confirm", {})
    assert f.state == "done" and f.data["refund_fen"] == 5000


async def test_cancel_failures(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BK]}
    edge.script["reg.cancel"] = [err("rejected", 422, reason="too_late_to_cancel"),
                                 err("outcome_unknown", 504)]
    f = make(CancelFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    await f.handle("confirm", {})
    assert f.state == "error"
    g = make(CancelFlow)
    await g.start()
    await g.handle("pick", {"booking_id": "BK1"})
    await g.handle("confirm", {})
    assert g.state == "unresolved" and "请勿重复操作" in g.error["message_zh"]


async def test_cancel_none(make, edge):
    edge.script["reg.bookings"] = [err("platform_unavailable"), {"bookings": []}]
    f = make(CancelFlow)
    await f.start()
    await f.handle("retry", {})
    assert f.state == "none"


def test_refund_form_checks():
    assert check_form("", 100, "x")["code"] == "bad_payment_id"
    assert check_form("PAY1", 0, "x")["code"] == "bad_amount"
    assert check_form("PAY1", 100, " ")["code"] == "no_reason"
    assert check_form("PAY1", 100, "开错药") is None


async def test_refund_with_id_check_prints_receipt(make, edge):
    edge.script["refund"] = {"refund_id": "RF1", "payment_id": "PAY1", "amount_fen": 100,
                             "state": "refunded", "method": "wechat"}
    f = make(RefundFlow, role="cashier", staff={"name": "收费员一"})
    await f.handle("submit", {"payment_id": "PAY1", "amount_fen": 100, "reason": "退药"})
    assert f.state == "id_check" and f.data["id_number"] == "310***********0022"
    assert edge.called("refund") == []  # nothing before the ID check
    await f.handle("id_checked", {})
    assert f.state == "done"
    doc = edge.called("print")[0]
    assert doc["kind"] == "refund_receipt" and doc["data"]["method"] == "wechat"


async def test_refund_refused(make, edge):
    edge.script["refund"] = err("rejected", 422, reason="refund_exceeds")
    f = make(RefundFlow, role="cashier", staff={"name": "x"})
    await f.handle("submit", {"payment_id": "PAY1", "amount_fen": 100, "reason": "r"})
    await f.handle("id_checked", {})
    assert f.state == "error"
    await f.handle("back", {})
    assert f.state == "form"
