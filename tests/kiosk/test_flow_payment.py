"""Money rules, through the top-up flow (the simplest paying flow): every payment branch."""

from __future__ import annotations

import pytest

from kiosk.edge_client import EdgeError
from kiosk.flows import IllegalTransition
from kiosk.flows.payment import change_due, decide, method_choices
from kiosk.flows.topup import TopupFlow, check_amount


def err(code, status=503, **extra):
    return EdgeError(status, code, f"{code} (en)", f"{code}（中）", **extra)


def pay_result(state, **kw):
    return {"payment_id": "PAY1", "state": state, "amount_fen": 20000, "method": "wechat",
            "txn_id": "T1" if state == "approved" else None, "balance_fen": 25000, **kw}


SCAN = {"scan_id": "s1", "kind": "payment_code", "wallet": "wechat", "masked": "13**********0000"}


async def to_scan(make):
    f = make(TopupFlow)
    await f.start()
    await f.handle("amount", {"amount_fen": 20000})
    assert f.state == "pay_method"
    await f.handle("method", {"method": "code"})
    assert f.state == "scan_code"
    return f


def test_decide_never_calls_pending_paid():
    assert decide({"state": "approved"}) == "approved"
    for s in ("pending", "unknown", "something_new", None):
        assert decide({"state": s}) == "pending"
    assert decide({"state": "declined"}) == "declined"
    assert decide({"state": "reversed"}) == "reversed"


def test_method_choices_and_change():
    m = method_choices("kiosk", 1000, 5000, "bills")
    assert m[0] == {"method": "prepaid", "ok": False, "balance_fen": 1000, "why": "Balance too low",
                    "why_zh": "余额不足"}
    assert [x["method"] for x in m] == ["prepaid", "code"]
    assert [x["method"] for x in method_choices("cashier", 0, 1, "topup")] == ["code", "cash"]
    assert change_due(3550, 5000) == 1450
    with pytest.raises(ValueError):
        change_due(3550, 3000)
    assert check_amount(50) and check_amount(600_000) and check_amount(10_000) is None


async def test_code_approved_prints_topup_receipt(make, edge):
    edge.script["pay"] = pay_result("approved")
    f = await to_scan(make)
    assert await f.on_scan(SCAN)
    assert f.state == "done"
    pay = edge.called("pay")[0]
    assert pay["scan_id"] == "s1" and pay["method"] == "code" and "auth_code" not in pay
    doc = edge.called("print")[0]
    assert doc == {"kind": "topup_receipt", "ref": "PAY1", "copy": False}
    assert f.ctx.patient["balance_fen"] == 25000


async def test_pending_polls_then_approved(make, edge, ftime):
    edge.script["pay"] = pay_result("pending")
    edge.script["pay_status"] = [pay_result("pending"), pay_result("approved")]
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert "confirming" in f.history and f.state == "done"
    assert f.history.index("confirming") < f.history.index("printing")
    assert len(edge.called("pay")) == 1  # never paid twice
    assert ftime.slept == [2, 2]


async def test_confirming_says_do_not_pay_again(make, edge):
    seen = []
    edge.script["pay"] = pay_result("unknown")
    edge.script["pay_status"] = pay_result("approved")
    f = await to_scan(make)
    f.on_change = lambda fl: seen.append((fl.state, (fl.error or {}).get("message_zh")))
    await f.on_scan(SCAN)
    assert ("confirming", "正在确认支付结果，请勿重复支付") in seen


async def test_never_confirmed_is_reversed_not_charged(make, edge, ftime):
    edge.script["pay"] = pay_result("pending")
    edge.script["pay_status"] = pay_result("pending")
    edge.script["pay_reverse"] = pay_result("reversed")
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "declined" and f.error["code"] == "not_confirmed"
    assert edge.called("pay_reverse") == ["PAY1"]
    assert ftime.now >= 30 and "done" not in f.history
    assert edge.called("print") == []


async def test_reverse_finds_it_approved_meanwhile(make, edge):
    edge.script["pay"] = pay_result("pending")
    edge.script["pay_status"] = pay_result("pending")
    edge.script["pay_reverse"] = pay_result("approved")
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "done"


async def test_reverse_fails_leaves_unresolved(make, edge):
    edge.script["pay"] = pay_result("pending")
    edge.script["pay_status"] = err("platform_unavailable")
    edge.script["pay_reverse"] = err("outcome_unknown", 504)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "unresolved"
    assert "请勿重复支付" in f.error["message_zh"] and f.error["payment_id"] == "PAY1"
    with pytest.raises(IllegalTransition):
        await f.handle("method", {"method": "code"})  # no way to pay again from here


async def test_create_outcome_unknown_is_resolved_by_id_not_resent(make, edge):
    edge.script["pay"] = err("outcome_unknown", 504, request_id="x")
    edge.script["request_result"] = [err("outcome_unknown", 504), pay_result("approved")]
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "done" and len(edge.called("pay")) == 1
    rid = edge.called("request_result")
    assert len(rid) == 2 and rid[0] == rid[1] == edge.called("pay")[0]["request_id"]


async def test_create_unknown_then_expired_means_not_charged(make, edge):
    edge.script["pay"] = err("outcome_unknown", 504)
    edge.script["request_result"] = err("request_expired", 410)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "declined" and f.error["code"] == "not_sent"


async def test_create_unknown_forever_is_unresolved(make, edge):
    edge.script["pay"] = err("outcome_unknown", 504)
    edge.script["request_result"] = err("outcome_unknown", 504)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "unresolved" and len(edge.called("pay")) == 1
    # "show this page's payment number": there is one, the order number central knows it by
    request_id = edge.called("pay")[0]["request_id"]
    assert f.data["order_no"].replace(" ", "").lower() == request_id
    assert all(len(g) == 4 for g in f.data["order_no"].split())


@pytest.mark.parametrize("reason,zh", [("wallet_insufficient_funds", "钱包余额不足"),
                                       ("auth_code_expired", "付款码已过期")])
async def test_declined_says_why_and_allows_another_method(make, edge, reason, zh):
    edge.script["pay"] = pay_result("declined", reason=reason)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "declined" and zh in f.error["message_zh"]
    assert "未扣款" in f.error["message_zh"]
    await f.handle("back", {})
    assert f.state == "pay_method"


async def test_rejected_by_platform_is_declined(make, edge):
    edge.script["pay"] = err("rejected", 422, reason="insufficient_balance")
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "declined" and "余额不足" in f.error["message_zh"]


async def test_stale_code_asks_to_scan_again(make, edge):
    edge.script["pay"] = err("scan_code_again", 409)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "scan_code" and f.error["code"] == "scan_code_again"


async def test_platform_down_at_pay_is_an_error_not_a_charge(make, edge):
    edge.script["pay"] = err("platform_unavailable")
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "error" and f.error["todo_zh"]


async def test_printer_problem_is_said_before_payment(make, edge):
    edge.script["printer"] = {"ready": False, "problem": "paper_out", "message": "out of paper",
                              "message_zh": "打印机缺纸。"}
    f = make(TopupFlow)
    await f.start()
    await f.handle("amount", {"amount_fen": 20000})
    assert f.state == "pay_method"
    assert f.data["printer_warning"]["message_zh"] == "打印机缺纸。"
    assert edge.called("pay") == []


async def test_paid_but_no_slip_reprints_copy_without_charging(make, edge):
    edge.script["pay"] = pay_result("approved")
    edge.script["print"] = {"state": "failed", "reason": "paper_out", "job_id": "topup-PAY1",
                            "message": "out", "message_zh": "缺纸"}
    f = await to_scan(make)
    await f.on_scan(SCAN)
    assert f.state == "print_failed" and "不会重复收费" in f.error["todo_zh"]
    await f.handle("reprint", {})
    assert f.state == "done" and edge.called("reprint") == ["topup-PAY1"]
    assert len(edge.called("pay")) == 1


async def test_reprint_refused_goes_to_counter(make, edge):
    edge.script["pay"] = pay_result("approved")
    edge.script["print"] = {"state": "failed", "reason": "paper_out", "job_id": "j"}
    edge.script["reprint"] = err("not_reprintable", 409)
    f = await to_scan(make)
    await f.on_scan(SCAN)
    await f.handle("reprint", {})
    assert f.state == "print_failed"


async def test_cash_at_desk_computes_change(make, edge):
    edge.script["pay"] = pay_result("approved", method="cash")
    f = make(TopupFlow, role="cashier")
    await f.start()
    await f.handle("amount", {"amount_fen": 20000})
    await f.handle("method", {"method": "cash"})
    await f.handle("tendered", {"tendered_fen": 15000})
    assert f.state == "cash_tendered" and f.error["code"] == "not_enough_cash"
    await f.handle("tendered", {"tendered_fen": 30000})
    assert f.state == "done" and f.data["change_fen"] == 10000
    (pay,) = edge.called("pay")
    # The counted cash goes with the payment: the daemon prints 实收/找零 from it.
    assert pay["method"] == "cash" and pay["tendered_fen"] == 30000


async def test_kiosk_offers_no_cash(make, edge):
    f = make(TopupFlow)
    await f.start()
    await f.handle("amount", {"amount_fen": 20000})
    await f.handle("method", {"method": "cash"})
    assert f.state == "pay_method" and f.error["code"] == "method_refused"


async def test_other_scans_are_ignored_while_waiting_for_a_code(make):
    f = await to_scan(make)
    assert not await f.on_scan({"scan_id": "x", "kind": "specimen", "value": "8123"})
    assert f.state == "scan_code"


def test_decline_text_says_why_in_both_languages_and_that_nothing_was_charged():
    from kiosk.flows.payment import decline_text

    t = decline_text({"state": "reversed", "reason": "reversed_past_deadline"})
    assert t["message_zh"] == "支付未能及时确认，已撤销。未扣款。"
    assert t["message"].endswith("You were not charged.") and "reversed" in t["message"]
    unknown = decline_text({"state": "declined", "reason": "something_new"})
    assert unknown["message_zh"] == "支付未成功。未扣款。" and unknown["reason"] == "something_new"


async def test_a_desk_is_told_what_to_do_at_the_desk_not_sent_to_a_counter(make, edge):
    """The same decline, at a kiosk and at a desk: the patient is sent to a staffed
    counter; the cashier *is* the counter, and is told what to do there."""
    for role, expect, never in (("kiosk", "人工窗口", "请改用其他支付方式"),
                                ("cashier", "请改用其他支付方式", "人工窗口")):
        edge.script["pay"] = pay_result("declined", method="wechat",
                                        reason="wallet_insufficient_funds")
        f = make(TopupFlow, role=role)
        await f.start()
        await f.handle("amount", {"amount_fen": 20000})
        await f.handle("method", {"method": "code"})
        await f.on_scan(SCAN)
        assert f.state == "declined", (role, f.state)
        assert expect in f.error["todo_zh"] and never not in f.error["todo_zh"], role
        assert "staffed counter" not in f.error["todo"] or role == "kiosk"
