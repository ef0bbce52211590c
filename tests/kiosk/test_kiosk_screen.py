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

    async def print_doc(self, kind, data, copy=False):
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
    assert s.screen == "attract"


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
    assert s.screen == "attract" and s.patient is None
    c, _ = screen("cashier")
    await c.dispatch("login", {"badge": "S1001", "pin": "2468"})
    c._last_action -= 311
    await c.idle_check()
    assert c.screen == "locked" and c.staff is None
