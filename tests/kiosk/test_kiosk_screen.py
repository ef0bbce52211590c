"""The kiosk server's screen model: daemon events in, views out, actions routed to flows."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from kiosk.config import KioskConfig, UiConfig
from kiosk.edge_client import EdgeError
from kiosk.session import Screen, parse_sse


class Edge:
    """Scripted edge client for the screen (identify, scans, staff, printing)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.identify_result: Any = {"patient": {"patient_id": "P1", "name": "李*英",
                                                 "balance_fen": 100, "insured": False}}
        self.gate = asyncio.Event()
        self.gate.set()
        self.staff: Any = None

    async def identify(self):
        self.calls.append("identify")
        await self.gate.wait()
        if isinstance(self.identify_result, BaseException):
            raise self.identify_result
        return self.identify_result

    async def end_session(self):
        self.calls.append("end")

    async def staff_login(self, badge, pin):
        self.calls.append(f"login {badge}")
        if pin != "2468":
            raise EdgeError(422, "rejected", "bad pin", "密码错误", reason="bad_credentials")
        self.staff = {"name": "收费员一", "role": "cashier", "staff_id": "ST1"}
        return self.staff

    async def staff_logout(self):
        self.calls.append("logout")
        self.staff = None

    async def scan(self, text):
        return {"scan_id": "s-" + text, "kind": "specimen", "value": text}

    async def request(self, type_, body, timeout_s=None, request_id=None):
        self.calls.append(type_)
        if type_ == "reg.departments":
            return {"departments": [{"code": "NK", "name": "内科", "name_en": "IM",
                                     "location": "2F"}]}
        if type_ == "report.list":
            return {"reports": []}
        raise AssertionError(type_)

    async def print_doc(self, kind, ref=None, copy=False):
        self.calls.append(f"print {kind}")
        return {"state": "printed", "job_id": "j"}

    async def reprint(self, job_id=None):
        return {"state": "printed", "job_id": "j", "copy": True}

    async def health(self):
        return {"uplink_connected": True, "platform_ok": True, "session": None, "staff": self.staff}


def screen(role="kiosk") -> tuple[Screen, Edge]:
    e = Edge()
    cfg = KioskConfig(ui=UiConfig(role=role))
    return Screen(cfg, e, now=lambda: datetime(2026, 11, 22, 9, 0,
                                               tzinfo=ZoneInfo("Asia/Shanghai"))), e


IDENT = {"state": "ready", "identity": {"name": "李*英", "id_number": "310***********0022"}}


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


QR_SESSION = {"state": "ready", "via": "ehc_qr", "session_id": "q1",
              "patient": {"patient_id": "P1", "name": "李*英", "balance_fen": 100}}


async def test_finish_with_the_card_in_asks_for_it_until_it_is_out():
    s, e = screen()
    await s.on_edge_event("card.inserted", {})
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    assert s.screen == "menu"
    await s.dispatch("end", {})
    v = s.view()
    assert v["screen"] == "take_card" and v["patient"] is None and "李*英" not in str(v)
    assert "end" not in e.calls  # the daemon keeps watching the card: its removal is the cue
    await s.on_edge_event("card.identity", IDENT)  # a late event of that session
    await s.dispatch("home", {})
    assert s.screen == "take_card" and s.identity is None
    await s.on_edge_event("card.removed", {})
    assert s.screen == "attract"


async def test_finish_without_a_card_goes_straight_to_start():
    s, e = screen()
    await s.on_edge_event("card.identity", QR_SESSION)
    assert s.screen == "menu"
    await s.dispatch("end", {})
    assert s.screen == "attract" and e.calls == ["end"]


async def test_health_poll_leaves_a_qr_patient_in_their_flow():
    s, e = screen()
    e.health = lambda: _health(QR_SESSION)  # type: ignore[method-assign]
    await s.on_edge_event("card.identity", QR_SESSION)
    await s.dispatch("start", {"flow": "reports"})
    state = (s.screen, s.flow and s.flow.name)
    await s.sync()
    assert (s.screen, s.flow and s.flow.name) == state == ("flow", "reports")


async def test_take_card_screen_ends_when_the_poll_finds_the_card_gone():
    s, _ = screen()
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.dispatch("end", {})
    assert s.screen == "take_card"
    await s.sync()  # the daemon has no session any more (removal missed while reconnecting)
    assert s.screen == "attract"


async def test_card_events_and_scans_count_as_activity():
    s, _ = screen()
    seen = s.view()["activity"]
    await s.on_edge_event("scan", {"scan_id": "x", "kind": "unknown", "length": 3})
    assert s.view()["activity"] == seen + 1 and s.view()["v"] > 0  # pushed to the page
    await s.on_edge_event("card.inserted", {})
    assert s.view()["activity"] == seen + 2
    await s.on_edge_event("platform.status", {"ok": True})
    assert s.view()["activity"] == seen + 2


async def _health(session):
    return {"uplink_connected": True, "platform_ok": True, "session": session, "staff": None}


def test_parse_sse_frames():
    events, rest = parse_sse('event: a\ndata: {"kind":"a","data":{}}\n\n: keep\n\nevent: b\nda')
    assert events == [("a", {"kind": "a", "data": {}})] and rest == "event: b\nda"


async def test_card_to_menu_and_removal_wipes():
    s, _ = screen()
    await s.on_edge_event("card.inserted", {})
    assert s.screen == "reading"
    await s.on_edge_event("card.identity", IDENT)
    assert s.screen == "identifying" and s.identity["name"] == "李*英"
    await settle()
    assert s.screen == "menu" and s.patient["patient_id"] == "P1"
    await s.dispatch("start", {"flow": "register"})
    assert s.flow is not None and s.flow.state == "depts"
    await s.on_edge_event("card.removed", {})
    v = s.view()
    assert v["screen"] == "attract" and v["patient"] is None and v["flow"] is None
    assert "李*英" not in str(v)


async def test_card_removed_while_identifying_drops_the_answer():
    s, e = screen()
    e.gate.clear()
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.on_edge_event("card.removed", {})
    e.gate.set()
    await settle()
    assert s.screen == "attract" and s.patient is None


async def test_platform_down_at_identify_is_out_of_service():
    s, e = screen()
    e.identify_result = EdgeError(503, "platform_unavailable", "down", "连接不上")
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    assert s.screen == "out_of_service" and s.platform_ok is False
    e.identify_result = EdgeError(409, "card_blocked", "blocked", "挂失")
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    assert s.screen == "error" and s.error["todo_zh"]


async def test_card_error_says_what_to_do():
    s, _ = screen()
    await s.on_edge_event("card.error", {"error": {"code": "not_a_health_card",
                                                   "message": "x", "message_zh": "y"}})
    assert s.screen == "error" and "重试" in s.error["todo_zh"]
    await s.dispatch("dismiss", {})
    assert s.screen == "take_card"  # the card is still in the slot
    await s.on_edge_event("card.removed", {})
    assert s.screen == "attract"


async def test_lost_card_sends_the_patient_to_the_desk_not_to_retry():
    s, _ = screen()
    await s.on_edge_event("card.error", {"error": {
        "code": "card_blocked", "message": "This card has been reported lost.",
        "message_zh": "此卡已挂失，不能使用，请到人工窗口办理。"}})
    assert s.screen == "error"
    assert s.error["todo_zh"] == "请取出卡片，到人工窗口办理。"
    assert "try again" not in s.error["todo"]


async def test_specimen_scan_on_attract_opens_reports_without_card():
    s, e = screen()
    await s.dispatch("scan", {"text": "81234567890"})
    await settle()
    assert s.flow is not None and s.flow.name == "reports" and s.flow.state == "none"
    assert "report.list" in e.calls


async def test_views_are_pushed_to_subscribers():
    s, _ = screen()
    async with s.subscribe() as q:
        first = q.get_nowait()
        await s.on_edge_event("card.inserted", {})
        second = q.get_nowait()
    assert first["screen"] == "attract" and second["screen"] == "reading"
    assert second["v"] > first["v"]


async def test_cashier_locked_until_login_and_lock_wipes():
    s, e = screen("cashier")
    assert s.screen == "locked"
    await s.on_edge_event("card.identity", IDENT)  # a card while locked: nothing shown
    assert s.identity is None
    await s.dispatch("login", {"badge": "S1001", "pin": "0000"})
    assert s.screen == "locked" and s.error["todo_zh"] == "请核对工号和密码后重试。"
    await s.dispatch("login", {"badge": "S1001", "pin": "2468"})
    assert s.staff["name"] == "收费员一" and s.screen == "attract"
    await s.dispatch("closing", {})
    assert "print closing_report" in e.calls and s.notice["what"] == "closing_report"
    await s.dispatch("lock", {})
    assert s.screen == "locked" and s.staff is None and "logout" in e.calls


async def test_busy_flow_cannot_be_left():
    s, _ = screen()
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.dispatch("start", {"flow": "topup"})
    s.flow.state = "confirming"  # money in motion
    await s.dispatch("home", {})
    await s.dispatch("end", {})
    assert s.flow is not None and s.screen == "flow"


async def test_refund_only_at_a_desk():
    s, _ = screen()
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.dispatch("start", {"flow": "refund"})
    assert s.flow is None


async def test_server_side_idle_backstop_ends_session_and_locks_desk():
    s, _ = screen()
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.dispatch("start", {"flow": "register"})
    s._last_action -= 69  # 60 s + grace not yet over
    await s.idle_check()
    assert s.screen == "flow"
    s._last_action -= 2
    await s.idle_check()
    assert s.screen == "take_card" and s.patient is None  # the card is still in
    s._last_action -= 71
    await s.idle_check()
    assert s.screen == "take_card"  # nothing to time out while the card is asked back
    await s.on_edge_event("card.removed", {})
    assert s.screen == "attract"
    c, _ = screen("cashier")
    await c.dispatch("login", {"badge": "S1001", "pin": "2468"})
    c._last_action -= 311
    await c.idle_check()
    assert c.screen == "locked" and c.staff is None


# -- issue 6: the card leaves while money or paper moves ------------------------------------

SLOT = {"slot_id": "SL1", "doctor_id": "D1", "doctor_name": "李明", "title": "主任医师",
        "specialty": "", "date": "2026-11-22", "period": "pm", "start": "14:00",
        "end": "14:30", "remaining": 3, "fee_fen": 5000, "closes_at": "16:30"}
BOOKING = {"booking_id": "BK1", "visit_no": "V1", "queue_no": 7, "dept_code": "NK",
           "dept_name": "内科", "doctor_name": "李明", "title": "主任医师",
           "date": "2026-11-22", "start": "14:00", "end": "14:30", "location": "2F",
           "fee_fen": 5000, "status": "booked"}
APPROVED = {"payment_id": "PAY1", "state": "approved", "amount_fen": 5000,
            "method": "prepaid", "balance_fen": 5000}


class MoneyEdge(Edge):
    """The screen's edge double, plus registration, payment and slips behind gates.

    Like the daemon, it cannot print a personal slip once the card has left.
    """

    def __init__(self) -> None:
        super().__init__()
        self.identify_result = {"patient": {"patient_id": "P1", "name": "李*英",
                                            "balance_fen": 10_000, "insured": False}}
        self.pay_gate, self.status_gate, self.print_gate = (asyncio.Event(), asyncio.Event(),
                                                            asyncio.Event())
        for g in (self.pay_gate, self.status_gate, self.print_gate):
            g.set()
        self.pay_result: Any = APPROVED
        self.status_result: Any = APPROVED
        self.card_in = True
        self.session: Any = None

    async def request(self, type_, body, timeout_s=None, request_id=None):
        self.calls.append(type_)
        answers = {"reg.slots": {"slots": [SLOT]}, "reg.book": BOOKING,
                   "reg.cancel": {"booking_id": "BK1", "status": "cancelled", "refund_fen": 0},
                   "reg.printed": {"booking_id": "BK1", "printed": True}}
        if type_ in answers:
            return answers[type_]
        return await super().request(type_, body, timeout_s, request_id)

    async def pay(self, **kw):
        self.calls.append("pay")
        await self.pay_gate.wait()
        if isinstance(self.pay_result, BaseException):
            raise self.pay_result
        return self.pay_result

    async def pay_status(self, payment_id):
        self.calls.append("pay_status")
        await self.status_gate.wait()
        return self.status_result

    async def pay_reverse(self, payment_id):
        self.calls.append("pay_reverse")
        raise EdgeError(503, "platform_unavailable", "down", "连接不上")

    async def printer_status(self):
        return {"ready": True, "problem": None, "paper": "ok"}

    async def print_doc(self, kind, ref=None, copy=False):
        self.calls.append(f"print {kind}")
        await self.print_gate.wait()
        if not self.card_in:
            raise EdgeError(409, "no_card", "Please insert your health card.", "请插入健康卡。")
        return {"state": "printed", "job_id": "slip-BK1"}

    async def health(self):
        return {"uplink_connected": True, "platform_ok": True, "session": self.session,
                "staff": None}


def money_screen() -> tuple[Screen, MoneyEdge]:
    from kiosk.flows import Timing

    e = MoneyEdge()
    s = Screen(KioskConfig(ui=UiConfig(role="kiosk")), e,
               timing=Timing(poll_interval_s=0.01, confirm_window_s=0.2, linger_s=0.05),
               now=lambda: datetime(2026, 11, 22, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai")))
    return s, e


async def at_pay_method(s: Screen) -> None:
    await s.on_edge_event("card.identity", IDENT)
    await settle()
    await s.dispatch("start", {"flow": "register"})
    await settle()
    for do, args in (("dept", {"code": "NK"}), ("slot", {"slot_id": "SL1"}),
                     ("confirm", {})):
        await s.dispatch("flow", {"do": do, "args": args}, wait_s=1)
    assert s.flow is not None and s.flow.state == "pay_method"


async def pull_card(s: Screen, e: MoneyEdge) -> None:
    e.card_in = False
    await s.on_edge_event("card.removed", {})


async def until(cond, limit: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def test_card_pulled_while_paying_keeps_the_flow_and_shows_the_outcome():
    s, e = money_screen()
    await at_pay_method(s)
    e.pay_gate.clear()
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.01)
    assert s.flow.state == "paying"
    flow = s.flow
    await pull_card(s, e)
    v = s.view()
    assert v["screen"] == "flow" and v["flow"]["state"] == "paying" and v["flow"]["card_gone"]
    assert v["identity"] is None
    e.pay_gate.set()
    await until(lambda: flow.state == "print_failed")
    # paid: the truth is on screen (the slip cannot print without the card) …
    assert s.flow is flow and s.view()["flow"]["error"]["code"] == "slip_later"
    assert "reg.cancel" not in e.calls
    # … and only then is the personal data wiped
    await until(lambda: s.flow is None)
    assert s.screen == "attract" and s.patient is None and "李*英" not in str(s.view())
    assert "reg.cancel" not in e.calls  # paid: never cancelled


async def test_card_pulled_while_confirming_resolves_then_wipes():
    s, e = money_screen()
    await at_pay_method(s)
    e.pay_result = dict(APPROVED, state="pending")
    e.status_gate.clear()
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.05)
    await until(lambda: s.flow.state == "confirming")
    flow = s.flow
    await pull_card(s, e)
    await s.sync()  # the health poll sees no session: still kept
    assert s.flow is flow and s.screen == "flow"
    await s.dispatch("end", {})  # the page's countdown: refused while money moves
    assert s.flow is flow
    e.status_gate.set()
    await until(lambda: flow.state == "print_failed")
    assert flow.data["payment"]["state"] == "approved"
    await until(lambda: s.flow is None)
    assert s.patient is None


async def test_card_pulled_while_confirming_unknown_shows_do_not_pay_again():
    s, e = money_screen()
    await at_pay_method(s)
    e.pay_result = dict(APPROVED, state="unknown")
    e.status_result = dict(APPROVED, state="unknown")
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.01)
    await until(lambda: s.flow is not None and s.flow.state == "confirming")
    flow = s.flow
    await pull_card(s, e)
    await until(lambda: flow.state == "unresolved")
    assert s.flow is flow and "请勿重复支付" in s.view()["flow"]["error"]["message_zh"]
    await until(lambda: s.flow is None)
    assert "reg.cancel" not in e.calls  # money may have moved: the booking stays


async def test_card_pulled_while_printing_finishes_the_slip():
    s, e = money_screen()
    await at_pay_method(s)
    e.print_gate.clear()
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.01)
    await until(lambda: s.flow.state == "printing")
    flow = s.flow
    await s.on_edge_event("card.removed", {})  # the job was already built: it prints
    e.print_gate.set()
    await until(lambda: flow.state == "done")
    assert s.flow is flow and "reg.printed" in e.calls
    await until(lambda: s.flow is None)


async def test_card_back_while_money_moves_is_served_afterwards():
    s, e = money_screen()
    await at_pay_method(s)
    e.pay_gate.clear()
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.01)
    flow = s.flow
    await pull_card(s, e)
    await s.on_edge_event("card.inserted", {})
    await s.on_edge_event("card.identity", IDENT)
    assert s.flow is flow and s.screen == "flow"  # not wiped by the new card
    e.session = IDENT
    e.pay_gate.set()
    await until(lambda: s.flow is None and s.screen == "menu")
    assert s.patient["patient_id"] == "P1"


async def test_card_pulled_at_the_methods_wipes_and_frees_the_slot():
    s, e = money_screen()
    await at_pay_method(s)
    await pull_card(s, e)
    assert s.flow is None and s.patient is None and s.screen == "attract"
    await until(lambda: "reg.cancel" in e.calls)


async def test_timeout_at_the_methods_frees_the_slot():
    s, e = money_screen()
    await at_pay_method(s)
    s._last_action -= 71
    await s.idle_check()
    assert s.flow is None and s.screen == "take_card"
    await until(lambda: "reg.cancel" in e.calls)


async def test_detached_flow_takes_no_page_actions_and_a_dead_busy_flow_is_released():
    s, e = money_screen()
    await at_pay_method(s)
    s.flow.state = "paying"  # as if stuck there by a crashed task
    flow = s.flow
    await pull_card(s, e)
    await until(lambda: s.flow is None)  # no task runs it: released, not held forever
    assert flow.card_gone and s.screen == "attract"


async def test_outcome_screen_after_card_left_refuses_reprint():
    s, e = money_screen()
    await at_pay_method(s)
    s.timing = type(s.timing)(poll_interval_s=0.01, confirm_window_s=0.2, linger_s=0.5)
    e.pay_gate.clear()
    await s.dispatch("flow", {"do": "method", "args": {"method": "prepaid"}}, wait_s=0.01)
    flow = s.flow
    await pull_card(s, e)
    e.pay_gate.set()
    await until(lambda: flow.state == "print_failed")
    await s.dispatch("flow", {"do": "reprint", "args": {}}, wait_s=0.05)
    assert flow.state == "print_failed" and flow.history.count("printing") == 1
    await until(lambda: s.flow is None)


async def test_card_pulled_while_booking_is_unknown_cancels_the_booking_once_known():
    s, e = money_screen()
    await at_pay_method(s)
    await s.dispatch("flow", {"do": "abandon", "args": {}}, wait_s=0.5)  # start over
    await s.dispatch("home", {})
    e.calls.clear()
    await s.dispatch("start", {"flow": "register"})
    await settle()
    gate = asyncio.Event()
    booked = {"n": 0}

    async def request(type_, body, timeout_s=None, request_id=None):
        if type_ == "reg.book":
            booked["n"] += 1
            raise EdgeError(504, "outcome_unknown", "unknown", "结果确认中")
        return await MoneyEdge.request(e, type_, body, timeout_s, request_id)

    async def request_result(request_id, wait_s=0.0):
        await gate.wait()
        return BOOKING

    e.request, e.request_result = request, request_result
    for do, args in (("dept", {"code": "NK"}), ("slot", {"slot_id": "SL1"})):
        await s.dispatch("flow", {"do": do, "args": args}, wait_s=1)
    await s.dispatch("flow", {"do": "confirm", "args": {}}, wait_s=0.05)
    await until(lambda: s.flow.state == "booking_unknown")
    flow = s.flow
    assert flow.busy
    await pull_card(s, e)
    assert s.flow is flow  # kept: the booking may exist
    gate.set()
    await until(lambda: s.flow is None)
    await until(lambda: "reg.cancel" in e.calls)
    assert booked["n"] == 1 and flow.state == "pay_method"
