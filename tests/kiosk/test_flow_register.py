"""Registration and pick-up flows against a scripted edge: success and every failure branch."""

from __future__ import annotations

import pytest

from kiosk.edge_client import EdgeError
from kiosk.flows import IllegalTransition
from kiosk.flows.pickup import PickupFlow
from kiosk.flows.register import RegisterFlow, booking_days, fee_due, slot_view


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


@pytest.fixture(autouse=True)
def _platform_records(edge):
    """Check-in and "slip printed" answers (the flows send them around every slip)."""
    edge.script["reg.checkin"] = lambda body: dict(BOOKING, booking_id=body["booking_id"],
                                                   status="paid",
                                                   checked_in_at="2026-11-22T01:00:00.000Z")
    edge.script["reg.printed"] = lambda body: {"booking_id": body["booking_id"],
                                               "printed": True}


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
    assert slip == {"kind": "registration_slip", "ref": "BK1", "copy": False}
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


# -- issue 6: back from error, insured share, abandonment, slips --------------------------


async def test_back_from_error_before_departments_loaded_reloads_them(make, edge):
    edge.script["reg.departments"] = [err("platform_unavailable"), err("platform_unavailable"),
                                      DEPTS]
    f = make(RegisterFlow)
    await f.start()
    assert f.state == "error" and "departments" not in f.data
    await f.handle("back", {})  # still down: an error again, never a list without data
    assert f.state == "error" and "departments" not in f.data
    await f.handle("back", {})
    assert f.state == "depts" and f.data["departments"] == DEPTS["departments"]
    assert f.history == ["loading_depts", "error", "loading_depts", "error", "loading_depts",
                         "depts"]


def test_fee_due_insured_share_and_self_pay():
    quoted = dict(SLOT, insured_fee_fen=1500)
    assert fee_due(quoted, True) == {"due_fen": 1500, "insurance_fen": 3500}
    assert fee_due(quoted, False) == {"due_fen": 5000, "insurance_fen": 0}
    assert fee_due(SLOT, True) == {"due_fen": 5000, "insurance_fen": 0}  # no quote


async def test_insured_choice_changes_the_fee_and_reaches_the_platform(make, edge):
    edge.script["reg.departments"] = DEPTS
    edge.script["reg.slots"] = {"slots": [dict(SLOT, insured_fee_fen=1500)]}
    edge.script["reg.book"] = lambda body: dict(
        BOOKING, fee_fen=1500 if body["insured"] else 5000, insured=body["insured"],
        insurance_fen=3500 if body["insured"] else 0)
    edge.script["pay"] = lambda kw: dict(APPROVED, amount_fen=kw["amount_fen"])
    f = make(RegisterFlow, now_hhmm=lambda: "08:00")
    await f.start()
    await f.handle("dept", {"code": "NK01"})
    await f.handle("slot", {"slot_id": "SL1"})
    assert (f.data["insured"], f.data["due_fen"], f.data["insurance_fen"]) == (True, 1500, 3500)
    await f.handle("insured", {"insured": False})
    assert (f.data["due_fen"], f.data["insurance_fen"]) == (5000, 0)
    await f.handle("insured", {"insured": True})
    await f.handle("confirm", {})
    assert edge.called("reg.book")[0]["insured"] is True
    assert f.state == "pay_method" and f.data["amount_fen"] == 1500
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done" and edge.called("pay")[0]["amount_fen"] == 1500


async def test_uninsured_patient_cannot_switch_to_insured(make, edge):
    edge.script["reg.departments"] = DEPTS
    edge.script["reg.slots"] = {"slots": [dict(SLOT, insured_fee_fen=1500)]}
    f = make(RegisterFlow, patient={"patient_id": "P9", "balance_fen": 0, "insured": False},
             now_hhmm=lambda: "08:00")
    await f.start()
    await f.handle("dept", {"code": "NK01"})
    await f.handle("slot", {"slot_id": "SL1"})
    await f.handle("insured", {"insured": True})
    assert f.data["insured"] is False and f.data["due_fen"] == 5000


@pytest.mark.parametrize("state_setup", ["pay_method", "scan_code", "declined"])
async def test_leaving_with_an_unpaid_booking_cancels_it(make, edge, state_setup):
    edge.script["reg.book"] = BOOKING
    edge.script["reg.cancel"] = {"booking_id": "BK1", "status": "cancelled", "refund_fen": 0}
    edge.script["pay"] = err("rejected", 422, reason="insufficient_balance")
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    if state_setup == "scan_code":
        await f.handle("method", {"method": "code"})
    elif state_setup == "declined":
        await f.handle("method", {"method": "prepaid"})
    assert f.state == state_setup
    await f.on_abandon()
    assert edge.called("reg.cancel") == [{"booking_id": "BK1"}]


async def test_leaving_never_cancels_a_paid_or_confirming_booking(make, edge):
    edge.script["reg.book"] = BOOKING
    edge.script["pay"] = APPROVED
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done"
    await f.on_abandon()
    edge.script["pay"] = err("rejected", 422, reason="payment_in_progress")
    g = await to_confirm(make, edge)
    await g.handle("confirm", {})
    await g.handle("method", {"method": "prepaid"})
    assert g.state == "declined"
    await g.on_abandon()  # an earlier payment may still land on it
    assert edge.called("reg.cancel") == []


async def test_cancel_failure_when_leaving_is_swallowed(make, edge):
    edge.script["reg.book"] = BOOKING
    edge.script["reg.cancel"] = err("platform_unavailable")
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    await f.on_abandon()
    assert len(edge.called("reg.cancel")) == 1


async def test_printed_slip_is_recorded_at_the_platform(make, edge):
    edge.script["reg.book"] = BOOKING
    edge.script["pay"] = APPROVED
    f = await to_confirm(make, edge)
    await f.handle("confirm", {})
    await f.handle("method", {"method": "prepaid"})
    assert edge.called("reg.printed") == [{"booking_id": "BK1"}]
    assert edge.called("reg.checkin") == []  # same-day registration stays cancellable
