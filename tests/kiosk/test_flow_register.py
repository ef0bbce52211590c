"""Registration and pick-up flows against a scripted edge: success and every failure branch."""

from __future__ import annotations

import pytest

from kiosk.edge_client import EdgeError
from kiosk.flows import IllegalTransition
from kiosk.flows.pickup import PickupFlow
from kiosk.flows.register import RegisterFlow, booking_days, slot_view


def err(code, status=503, **extra):
    return EdgeError(status, code, f"{code} (en)", f"{code}（中）", **extra)


DEPTS = {"departments": [{"code": "NK01", "name": "心血管内科", "name_en": "Cardiology",
                          "location": "3F"}]}
SLOT = {"slot_id": "SL1", "doctor_id": "D1", "doctor_name": "李明", "title": "主任医师",
        "specialty": "高血压", "date": "2026-11-22", "period": "am", "start": "09:00",
        "end": "09:30", "remaining": 3, "fee_fen": 5000, "closes_at": "11:30"}
BOOKING = {"booking_id": "BK1", "visit_no": "V1", "queue_no": 7, "dept_code": "NK01",
           "dept_name": "心血管内科", "doctor_name": "李明", "title": "主任医师",
           "date": "2026-11-22", "start": "09:00", "end": "09:30", "location": "3F",
           "fee_fen": 5000, "status": "booked"}
APPROVED = {"payment_id": "PAY1", "state": "approved", "amount_fen": 5000, "method": "prepaid",
            "txn_id": "HIS1", "balance_fen": 0}


def test_days_and_slot_views():
    from datetime import date
    days = booking_days(date(2026, 11, 30))
    assert days[0] == "2026-11-30" and days[2] == "2026-12-02" and len(days) == 8
    assert slot_view(SLOT, "08:00")["open"]
    closed = slot_view(SLOT, "11:30")
    assert not closed["open"] and closed["why_zh"] == "已停止挂号"
    full = slot_view(dict(SLOT, remaining=0), None)
    assert not full["open"] and full["why_zh"] == "已约满"


async def to_confirm(make, edge, now="08:00"):
    edge.script["reg.departments"] = DEPTS
    edge.script["reg.slots"] = {"slots": [SLOT]}
    f = make(RegisterFlow, now_hhmm=lambda: now)
    await f.start()
    await f.handle("dept", {"code": "NK01"})
    assert f.state == "slots"
    await f.handle("slot", {"slot_id": "SL1"})
    return f


async def test_register_pay_by_balance_prints_slip(make, edge):
    edge.script["reg.book"] = BOOKING
    edge.script["pay"] = APPROVED
    f = await to_confirm(make, edge)
    assert f.state == "confirm" and f.data["insured"] is True
    await f.handle("insured", {"insured": False})
    await f.handle("confirm", {})
    assert f.state == "pay_method"
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done"
    assert edge.called("reg.book")[0]["pay_method"] == "later"
    assert edge.called("reg.book")[0]["insured"] is False
    pay = edge.called("pay")[0]
    assert pay["purpose"] == "registration" and pay["refs"] == ["BK1"] and pay["amount_fen"] == 5000
    slip = edge.called("print")[0]
    assert slip["kind"] == "registration_slip" and slip["data"]["status"] == "paid"
    assert f.ctx.patient["balance_fen"] == 0
    assert f.history[-4:] == ["pay_method", "paying", "printing", "done"]


async def test_later_day_and_closed_slot(make, edge):
    f = await to_confirm(make, edge, now="12:00")
    # today after closing time: the slot is shown closed and cannot be chosen
    assert f.state == "slots" and not f.data["slots"][0]["open"]
    await f.handle("day", {"day": "2026-11-23"})
    assert f.data["day"] == "2026-11-23" and f.data["slots"][0]["open"]
    assert edge.called("reg.slots")[-1]["date"] == "2026-11-23"


async def test_balance_too_low_refuses_prepaid(make, edge):
    edge.script["reg.book"] = BOOKING
    f = await to_confirm(make, edge)
    f.ctx.patient["balance_fen"] = 100
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "pay_method" and f.error["message_zh"] == "余额不足"
    assert edge.called("pay") == []


async def test_departments_unavailable_then_retry(make, edge):
    edge.script["reg.departments"] = [err("platform_unavailable"), DEPTS]
    f = make(RegisterFlow)
    await f.start()
    assert f.state == "error" and f.error["todo_zh"].startswith("请稍后再试")
    await f.handle("retry", {})
    assert f.state == "depts"


async def test_slots_error(make, edge):
    edge.script["reg.departments"] = DEPTS
    edge.script["reg.slots"] = err("platform_unavailable")
    f = make(RegisterFlow)
    await f.start()
    await f.handle("dept", {"code": "NK01"})
    assert f.state == "error"


async def test_slot_full_at_booking(make, edge):
    edge.script["reg.book"] = err("rejected", 422, reason="slot_full")
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    assert f.state == "error" and f.error["todo_zh"] == "请选择其他时段或医生。"
    await f.handle("back", {})
    assert f.state == "depts"


async def test_printer_out_of_paper_warned_before_booking(make, edge):
    edge.script["printer"] = {"ready": False, "problem": "paper_out", "message": "No paper",
                              "message_zh": "打印机缺纸。"}
    edge.script["reg.book"] = BOOKING
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    assert f.state == "printer_warning" and f.error["message_zh"] == "打印机缺纸。"
    assert edge.called("reg.book") == [] and edge.called("pay") == []
    await f.handle("confirm", {"anyway": True})
    assert f.state == "pay_method" and f.data["printer_warning"]["code"] == "paper_out"


async def test_booking_outcome_unknown_is_resolved_not_rebooked(make, edge):
    edge.script["reg.book"] = err("outcome_unknown", 504)
    edge.script["request_result"] = [err("outcome_unknown", 504), BOOKING]
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    assert "booking_unknown" in f.history and f.state == "pay_method"
    assert len(edge.called("reg.book")) == 1


async def test_booking_never_confirmed(make, edge):
    edge.script["reg.book"] = err("outcome_unknown", 504)
    edge.script["request_result"] = err("outcome_unknown", 504)
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    assert f.state == "unresolved" and "请勿重复挂号" in f.error["message_zh"]


async def test_abandon_payment_cancels_unpaid_booking(make, edge):
    edge.script["reg.book"] = BOOKING
    edge.script["reg.cancel"] = {"booking_id": "BK1", "status": "cancelled", "refund_fen": 0}
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    await f.handle("abandon", {})
    assert f.state == "cancelled" and edge.called("reg.cancel") == [{"booking_id": "BK1"}]


async def test_free_or_prepaid_booking_prints_directly(make, edge):
    edge.script["reg.book"] = dict(BOOKING, status="paid")
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    assert f.state == "done" and edge.called("pay") == []


async def test_illegal_actions_are_refused(make, edge):
    f = await to_confirm(make, edge)
    with pytest.raises(IllegalTransition):
        await f.handle("reprint", {})
    with pytest.raises(IllegalTransition):
        await f.handle("fly", {})


async def test_pickup_paid_booking_prints(make, edge):
    edge.script["reg.bookings"] = {"bookings": [dict(BOOKING, status="paid"),
                                                dict(BOOKING, booking_id="BK0",
                                                     status="cancelled")]}
    f = make(PickupFlow)
    await f.start()
    assert [b["booking_id"] for b in f.data["bookings"]] == ["BK1"]
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done" and edge.called("pay") == []
    assert edge.called("reg.bookings")[0]["date"] == "2026-11-22"


async def test_pickup_due_booking_pays_first(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BOOKING]}
    edge.script["pay"] = APPROVED
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "pay_method"
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done" and edge.called("pay")[0]["refs"] == ["BK1"]


async def test_pickup_none_and_error(make, edge):
    edge.script["reg.bookings"] = [err("platform_unavailable"), {"bookings": []}]
    f = make(PickupFlow)
    await f.start()
    assert f.state == "error"
    await f.handle("retry", {})
    assert f.state == "none"


async def test_pickup_slip_fails_reprint_copy(make, edge):
    edge.script["reg.bookings"] = {"bookings": [dict(BOOKING, status="paid")]}
    edge.script["print"] = EdgeError(409, "bad_document", "x", "y")
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "print_failed"
