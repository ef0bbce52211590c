"""The kiosk screen while the terminal waits for enrollment, and central's screen settings."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from kiosk.config import KioskConfig, UiConfig
from kiosk.session import Screen

PENDING = {"state": "pending", "code": "7K3M-Q9XZ", "serial": "10000000abcdef01",
           "expires_at": "2026-03-03T08:00:00.000Z", "retry_at": None, "device_id": None,
           "message": "Waiting for approval: give the pairing code to the administrator.",
           "message_zh": "等待管理员批准：请将配对码告知管理员。"}


class Edge:
    """The daemon's health as the screen polls it."""

    def __init__(self) -> None:
        self.enrollment: dict[str, Any] | None = dict(PENDING)
        self.ui: dict[str, Any] = {}
        self.calls: list[str] = []

    async def health(self) -> dict[str, Any]:
        h: dict[str, Any] = {"uplink_connected": self.enrollment is None,
                             "platform_ok": None, "session": None, "staff": None, "ui": self.ui}
        if self.enrollment is not None:
            h["enrollment"] = self.enrollment
        return h

    async def end_session(self) -> None:
        self.calls.append("end")

    async def staff_logout(self) -> None:
        self.calls.append("logout")


def screen(role: str = "kiosk", **ui: Any) -> tuple[Screen, Edge]:
    e = Edge()
    cfg = KioskConfig(ui=UiConfig(role=role, **ui))  # type: ignore[arg-type]
    return Screen(cfg, e, now=lambda: datetime(2026, 3, 2, 9, 0,
                                               tzinfo=ZoneInfo("Asia/Shanghai"))), e


async def test_pending_shows_the_pairing_screen_and_enrolled_returns_to_attract() -> None:
    s, e = screen()
    await s.sync()
    v = s.view()
    assert v["screen"] == "pairing" and v["pairing"]["code"] == "7K3M-Q9XZ"
    assert v["pairing"]["serial"] == "10000000abcdef01"
    # nothing a person does on the screen has an effect meanwhile
    assert (await s.dispatch("start", {"flow": "register"}))["screen"] == "pairing"
    assert e.calls == []
    e.enrollment = {**PENDING, "state": "rejected", "code": None,
                    "message": "Unknown terminal", "message_zh": "未登记的设备",
                    "retry_at": "2026-03-02T08:10:00.000Z"}
    await s.sync()
    assert s.view()["pairing"]["state"] == "rejected"
    assert s.view()["pairing"]["message_zh"] == "未登记的设备"
    e.enrollment = None  # the full API: no enrollment in its health
    await s.sync()
    assert s.view()["screen"] == "attract" and s.view()["pairing"] is None


async def test_a_cashier_desk_goes_to_its_lock_screen_once_enrolled() -> None:
    s, _ = screen("cashier")
    await s.sync()
    assert s.view()["screen"] == "pairing"
    await s.on_edge_event("enrollment", {**PENDING, "state": "enrolled", "code": None})
    assert s.view()["screen"] == "locked" and s.pairing is None
    assert s._reconnect_now  # the pairing API's stream ends: reconnect without "down"


async def test_enrollment_events_update_the_screen_at_once() -> None:
    s, _ = screen()
    v0 = s.version
    await s.on_edge_event("enrollment", {**PENDING, "state": "enrolling", "code": None})
    assert s.view()["screen"] == "pairing" and s.version > v0
    await s.on_edge_event("enrollment", PENDING)
    assert s.view()["pairing"]["code"] == "7K3M-Q9XZ"


async def test_central_screen_settings_override_the_toml_and_go_back() -> None:
    s, e = screen(language="zh", idle_timeout_s=60, countdown_s=10)
    e.enrollment = None
    e.ui = {"language": "en", "idle_timeout_s": 120, "countdown_s": 20, "voice": True}
    await s.sync()
    ui = s.cfg.ui
    assert (ui.language, ui.idle_timeout_s, ui.countdown_s, ui.voice) == ("en", 120, 20, True)
    # the page learns of the change by the view's ui_rev and fetches /api/config again
    assert s.view()["ui_rev"] == 1
    assert s.base_cfg.ui.language == "zh"  # the kiosk's own file is untouched
    # a pushed change arrives as an event
    await s.on_edge_event("ui.settings", {"idle_timeout_s": 90})
    assert (s.cfg.ui.language, s.cfg.ui.idle_timeout_s) == ("zh", 90)
    assert s.view()["ui_rev"] == 2
    # a combination the screen cannot run is ignored (countdown longer than the timeout)
    await s.on_edge_event("ui.settings", {"idle_timeout_s": 15, "countdown_s": 30})
    assert s.cfg.ui.idle_timeout_s == 90 and s.view()["ui_rev"] == 2
    # nothing set at central: the TOML again
    await s.on_edge_event("ui.settings", {})
    assert (s.cfg.ui.language, s.cfg.ui.idle_timeout_s, s.cfg.ui.voice) == ("zh", 60, False)


async def test_the_config_endpoint_serves_the_effective_settings() -> None:
    import httpx

    from kiosk.app import create_app

    s_cfg = KioskConfig(ui=UiConfig(language="zh"))

    class App(Edge):
        async def events(self) -> Any:
            if False:
                yield b""

        async def aclose(self) -> None:
            pass

    edge = App()
    edge.enrollment, edge.ui = None, {"language": "en"}
    app = create_app(s_cfg, edge)  # type: ignore[arg-type]
    await app.state.screen.sync()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kiosk") as c:
        r = await c.get("/api/config")
    assert r.json()["ui"]["language"] == "en" and r.json()["ui_rev"] == 1
