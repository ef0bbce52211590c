"""Bills, lab reports, cancellation and desk refunds against a scripted edge."""

from __future__ import annotations

from kiosk.edge_client import EdgeError
from kiosk.flows.bills import BillsFlow, default_selection, selection_total
from kiosk.flows.cancel import CancelFlow, cancellable
from kiosk.flows.refund import RefundFlow, check_form, parse_yuan
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
    # By reference: the daemon builds the receipt from the payment and the bills it paid.
    assert edge.called("print") == [{"kind": "payment_receipt", "ref": "PAY9", "copy": False}]


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
    assert edge.called("print") == [{"kind": "lab_report", "ref": "R1", "copy": False}]


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
    # a platform that does not say the new balance: it is read again
    edge.script["identify"] = {"patient": {"balance_fen": 10000}}
    await f.handle("confirm", {})
    assert f.state == "done" and f.data["refund_fen"] == 5000
    assert f.ctx.patient["balance_fen"] == 10000
    (slip,) = edge.called("print")
    assert slip == {"kind": "cancellation_slip", "ref": "BK1", "copy": False}


async def test_cancel_shows_the_platforms_new_balance_and_prints_a_slip(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BK]}
    edge.script["reg.cancel"] = {"booking_id": "BK1", "status": "cancelled", "refund_fen": 5000,
                                 "refund_method": "prepaid", "refund_id": "RF1",
                                 "balance_fen": 12345}
    f = make(CancelFlow, now_hhmm=lambda: "09:00")
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    await f.handle("confirm", {})
    assert f.state == "done" and f.data["balance_fen"] == 12345
    assert f.ctx.patient["balance_fen"] == 12345
    assert edge.called("identify") == []
    (slip,) = edge.called("print")
    assert slip["ref"] == "BK1" and f.data["print"]["state"] == "printed"


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


PAID = {"payment_id": "PAY1", "created_at": "2026-11-22T01:30:00.000Z", "purpose": "bills",
        "method": "wechat", "amount_fen": 1000, "refunded_fen": 300, "refundable_fen": 700,
        "state": "approved"}


def test_refund_form_checks():
    assert parse_yuan("12.5") == 1250 and parse_yuan("¥3") == 300 and parse_yuan("abc") is None
    assert check_form(PAID, "abc", "x")[1]["code"] == "bad_amount"
    assert check_form(PAID, "0", "x")[1]["code"] == "zero_amount"
    assert check_form(PAID, "7.01", "x")[1]["code"] == "too_much"
    assert check_form(PAID, "1", " ")[1]["code"] == "no_reason"
    assert check_form(PAID, "7", "开错药") == (700, None)


async def refund_form(make, edge):
    edge.script["payments"] = [[dict(PAID), {**PAID, "payment_id": "PAY2", "refundable_fen": 0}]]
    f = make(RefundFlow, role="cashier", staff={"name": "收费员一"})
    await f.start()
    assert f.state == "list" and [p["payment_id"] for p in f.data["payments"]] == ["PAY1"]
    assert f.data["payments"][0]["when"] == "2026-11-22 09:30"  # Beijing time
    await f.handle("pick", {"payment_id": "PAY1"})
    assert f.state == "form" and f.data["amount_text"] == "7.00"
    return f


async def test_refund_of_a_listed_payment_with_id_check_prints_receipt(make, edge):
    edge.script["refund"] = {"refund_id": "RF1", "payment_id": "PAY1", "amount_fen": 100,
                             "state": "refunded", "method": "wechat"}
    f = await refund_form(make, edge)
    await f.handle("submit", {"amount": "8", "reason": "退药"})
    assert f.state == "form" and f.error["code"] == "too_much"  # before the ID check
    await f.handle("submit", {"amount": "1", "reason": "退药"})
    assert f.state == "id_check" and f.data["id_number"] == "310***********0022"
    assert edge.called("refund") == []  # nothing before the ID check
    await f.handle("id_checked", {})
    assert f.state == "done"
    assert edge.called("refund") == [{"payment_id": "PAY1", "amount_fen": 100,
                                      "reason": "退药"}]
    doc = edge.called("print")[0]
    assert doc == {"kind": "refund_receipt", "ref": "RF1", "copy": False}


async def test_refund_refused_says_what_to_do_at_the_desk(make, edge):
    edge.script["refund"] = err("rejected", 422, reason="refund_exceeds")
    f = await refund_form(make, edge)
    await f.handle("submit", {"amount": "1", "reason": "r"})
    await f.handle("id_checked", {})
    assert f.state == "error" and "可退金额" in f.error["todo_zh"]
    await f.handle("back", {})
    assert f.state == "form"


async def test_refund_of_another_patients_payment_is_said_plainly(make, edge):
    edge.script["refund"] = err("rejected", 422, reason="forbidden")
    f = await refund_form(make, edge)
    await f.handle("submit", {"amount": "1", "reason": "r"})
    await f.handle("id_checked", {})
    assert f.state == "error" and f.error["code"] == "not_this_patient"
    assert "不属于当前读卡的患者" in f.error["message_zh"]
    assert "another patient" in f.error["message"]
    assert "读取" in f.error["todo_zh"] and "求助" not in f.error["todo_zh"]


def test_the_desk_gets_staff_advice_not_patient_advice():
    from kiosk.flows.base import advice

    for exc in (err("platform_unavailable"), err("edge_timeout", 504), err("weird", 500),
                err("rejected", 422, reason="insufficient_balance"), err("no_card", 409)):
        desk, kiosk = advice(exc, "cashier"), advice(exc)
        for said in (desk["todo"], desk["todo_zh"]):
            assert "staff" not in said and "工作人员" not in said and "人工窗口" not in said
        assert desk != kiosk
    assert advice(err("weird", 500))["todo_zh"] == "请重试，或向工作人员求助。"  # a patient


async def test_reprint_an_earlier_receipt_of_this_patient(make, edge):
    from kiosk.flows.receipts import ReceiptsFlow

    edge.script["payments"] = [[dict(PAID), {**PAID, "payment_id": "PAY9", "state": "declined"}]]
    edge.script["reprint_payment"] = {"state": "printed", "job_id": "j", "copy": True}
    f = make(ReceiptsFlow, role="cashier", staff={"name": "x"})
    await f.start()
    assert [p["payment_id"] for p in f.data["payments"]] == ["PAY1"]
    await f.handle("reprint", {"payment_id": "PAY9"})  # typed, not a paid one of this patient
    assert f.state == "list" and f.error["code"] == "not_this_patient"
    assert edge.called("reprint_payment") == []
    await f.handle("reprint", {"payment_id": "PAY1"})
    assert f.state == "done" and edge.called("reprint_payment") == ["PAY1"]
