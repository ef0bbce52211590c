"""Pick-up (预约取号): check-in before the slip, copies after a first slip, the way back for
"paid but no slip", cancelled bookings left out, and cancel's list."""

from __future__ import annotations

import pytest

from kiosk.edge_client import EdgeError
from kiosk.flows.cancel import CancelFlow, cancellable
from kiosk.flows.pickup import PickupFlow, pickable


def err(code, status=503, **extra):
    return EdgeError(status, code, f"{code} (en)", f"{code}（中）", **extra)


UNAVAILABLE = err("platform_unavailable")
UNKNOWN = err("outcome_unknown", 504)

TODAY = "2026-11-22"
BOOKING = {"booking_id": "BK1", "visit_no": "V1", "queue_no": 7, "dept_code": "NK01",
           "dept_name": "心血管内科", "doctor_name": "李明", "title": "主任医师",
           "date": TODAY, "start": "14:00", "end": "14:30", "location": "3F",
           "fee_fen": 5000, "status": "booked"}
PAID = dict(BOOKING, status="paid", slip_printed=False)
CHECKED = "2026-11-22T01:00:00.000Z"
APPROVED = {"payment_id": "PAY1", "state": "approved", "amount_fen": 5000,
            "method": "prepaid", "txn_id": "HIS1", "balance_fen": 0}


@pytest.fixture(autouse=True)
def _platform(edge):
    edge.script["reg.checkin"] = lambda body: dict(PAID, booking_id=body["booking_id"],
                                                   checked_in_at=CHECKED)
    edge.script["reg.printed"] = lambda body: {"booking_id": body["booking_id"],
                                               "printed": True}


def order(edge):
    """The calls that matter for a slip, in order."""
    return [k for k, _ in edge.calls if k in ("pay", "reg.checkin", "print", "reg.printed")]


def test_pickable_leaves_out_cancelled_and_other_days_and_marks_copies():
    got = pickable([
        dict(BOOKING, booking_id="A"),
        dict(BOOKING, booking_id="B", status="cancelled"),
        dict(BOOKING, booking_id="C", date="2026-11-23"),
        dict(PAID, booking_id="D"),
        dict(PAID, booking_id="E", checked_in_at=CHECKED),
        dict(PAID, booking_id="F", slip_printed=True, checked_in_at=CHECKED),
    ], TODAY)
    assert [b["booking_id"] for b in got] == ["A", "D", "E", "F"]
    assert [b["copy"] for b in got] == [False, False, True, True]
    assert [b["slip_missing"] for b in got] == [False, True, True, False]


async def test_paid_booking_checks_in_then_prints_original_and_records_it(make, edge):
    edge.script["reg.bookings"] = {"bookings": [PAID, dict(PAID, booking_id="BK0",
                                                           status="cancelled")]}
    f = make(PickupFlow)
    await f.start()
    assert [b["booking_id"] for b in f.data["bookings"]] == ["BK1"]
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done" and f.history[-3:] == ["checking_in", "printing", "done"]
    assert order(edge) == ["reg.checkin", "print", "reg.printed"]
    slip = edge.called("print")[0]
    assert slip == {"kind": "registration_slip", "ref": "BK1", "copy": False}
    assert f.data["booking"]["checked_in_at"] == CHECKED
    assert edge.called("reg.printed") == [{"booking_id": "BK1"}]


async def test_due_booking_pays_then_checks_in_then_prints(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BOOKING]}
    edge.script["pay"] = APPROVED
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "pay_method" and edge.called("reg.checkin") == []
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "done" and order(edge) == ["pay", "reg.checkin", "print", "reg.printed"]


async def test_slip_already_printed_gives_a_copy_without_charge_or_new_checkin(make, edge):
    edge.script["reg.bookings"] = {"bookings": [dict(PAID, slip_printed=True,
                                                     checked_in_at=CHECKED)]}
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done" and edge.called("pay") == [] and edge.called("reg.checkin") == []
    assert edge.called("print")[0]["copy"] is True
    assert edge.called("reg.printed") == []  # already known


async def test_checked_in_but_no_slip_is_the_way_back_and_prints_a_copy(make, edge):
    # an earlier visit checked in, then the card was pulled / the paper ran out
    edge.script["reg.bookings"] = {"bookings": [dict(PAID, checked_in_at=CHECKED)]}
    f = make(PickupFlow)
    await f.start()
    assert f.data["bookings"][0]["slip_missing"] is True
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done" and edge.called("pay") == []
    assert edge.called("print")[0]["copy"] is True
    assert edge.called("reg.printed") == [{"booking_id": "BK1"}]


@pytest.mark.parametrize("failure", [UNAVAILABLE, UNKNOWN, err("rejected", 422,
                                                               reason="not_today")])
async def test_checkin_failure_still_prints_the_paid_slip_and_says_so(make, edge, failure):
    edge.script["reg.bookings"] = {"bookings": [PAID]}
    edge.script["reg.checkin"] = failure
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done" and len(edge.called("print")) == 1
    assert f.data["checkin_error"]["code"] == "checkin_pending"
    assert "分诊台" in f.data["checkin_error"]["message_zh"]


async def test_checkin_is_busy_no_timeout_or_leaving(make, edge):
    seen = []
    edge.script["reg.bookings"] = {"bookings": [PAID]}
    f = make(PickupFlow)
    edge.script["reg.checkin"] = lambda body: (seen.append(f.busy), dict(
        PAID, checked_in_at=CHECKED))[1]
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert seen == [True]


async def test_print_failure_after_checkin_reprints_as_copy_and_records(make, edge):
    edge.script["reg.bookings"] = {"bookings": [PAID]}
    edge.script["print"] = {"state": "failed", "job_id": "slip-BK1", "reason": "paper_out",
                            "message": "out of paper", "message_zh": "缺纸"}
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "print_failed" and edge.called("reg.printed") == []
    await f.handle("reprint", {})
    assert f.state == "done" and edge.called("reprint") == ["slip-BK1"]
    assert edge.called("reg.printed") == [{"booking_id": "BK1"}]


async def test_card_gone_before_the_slip_says_come_back_to_pick_up(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BOOKING]}
    edge.script["pay"] = APPROVED
    edge.script["print"] = err("no_card", 409)
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    f.card_gone = True
    await f.handle("method", {"method": "prepaid"})
    assert f.state == "print_failed" and f.error["code"] == "slip_later"
    assert "预约取号" in f.error["todo_zh"] and "不会重复收费" in f.error["todo_zh"]


async def test_recorded_print_failure_is_not_fatal(make, edge):
    edge.script["reg.bookings"] = {"bookings": [PAID]}
    edge.script["reg.printed"] = UNAVAILABLE
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "done"


async def test_abandoning_a_pickup_never_cancels_the_booking(make, edge):
    edge.script["reg.bookings"] = {"bookings": [BOOKING]}
    f = make(PickupFlow)
    await f.start()
    await f.handle("pick", {"booking_id": "BK1"})
    assert f.state == "pay_method"
    await f.on_abandon()  # a phone booking is the patient's: leaving does not cancel it
    assert edge.called("reg.cancel") == []


def test_cancellable_leaves_out_cancelled_and_checked_in():
    got = cancellable([
        dict(BOOKING, booking_id="A"),
        dict(BOOKING, booking_id="B", status="cancelled"),
        dict(PAID, booking_id="C", checked_in_at=CHECKED),
        dict(PAID, booking_id="D"),
    ], TODAY, "09:00")
    assert [b["booking_id"] for b in got] == ["A", "D"]


async def test_cancel_flow_with_a_cancelled_booking_in_the_list(make, edge):
    edge.script["reg.bookings"] = {"bookings": [dict(BOOKING, status="cancelled")]}
    f = make(CancelFlow, now_hhmm=lambda: "09:00")
    await f.start()
    assert f.state == "none"
