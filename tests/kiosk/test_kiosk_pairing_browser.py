"""The pairing screen in headless Chromium: the code big, both languages; then back to normal.

The kiosk server runs in-process (uvicorn in a thread) over a scripted edge client whose
health says "pending"; the screenshot goes to docs/screens/kiosk-pairing.png. When the
edge reports the terminal enrolled, the page returns to the attract screen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from central.broker import free_port
from kiosk.app import create_app
from kiosk.config import KioskConfig, UiConfig

pytestmark = pytest.mark.stack

PORTRAIT = {"width": 1080, "height": 1920}
PENDING = {"state": "pending", "code": "7K3M-Q9XZ", "serial": "10000000abcdef01",
           "expires_at": "2026-03-03T08:00:00.000Z", "retry_at": None, "device_id": None,
           "message": "Waiting for approval: give the pairing code to the administrator.",
           "message_zh": "等待管理员批准：请将配对码告知管理员。"}


class Edge:
    """The daemon as the kiosk server sees it while it waits for enrollment."""

    def __init__(self) -> None:
        self.enrollment: dict[str, Any] | None = dict(PENDING)

    async def health(self) -> dict[str, Any]:
        h: dict[str, Any] = {"uplink_connected": self.enrollment is None, "platform_ok": None,
                             "session": None, "staff": None, "ui": {}}
        if self.enrollment is not None:
            h["enrollment"] = self.enrollment
        return h

    async def events(self) -> AsyncIterator[bytes]:
        while True:
            yield b": keep-alive\n\n"
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def kiosk_server() -> Iterator[tuple[str, Edge, Any]]:
    edge = Edge()
    app = create_app(KioskConfig(ui=UiConfig(role="kiosk", hospital_name="示范市第一人民医院")),
                     edge)  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "kiosk server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/", edge, app
    finally:
        server.should_exit = True
        thread.join(10)


def test_pairing_screen_then_back_to_attract(browser: Any, screens_dir: Path,
                                             kiosk_server: tuple[str, Edge, Any]) -> None:
    url, edge, _app = kiosk_server
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    try:
        pg = ctx.new_page()
        pg.goto(url)
        code = pg.get_by_test_id("pairing-code")
        code.wait_for(timeout=10_000)
        assert code.inner_text() == "7K3M-Q9XZ"
        text = pg.locator("main").inner_text()
        assert "等待管理员批准" in text and "Waiting for approval" in text
        assert text.index("等待管理员批准") < text.index("Waiting for approval")  # 中文在上
        assert pg.get_by_test_id("pairing-serial").inner_text() == "10000000abcdef01"
        assert "2026" in pg.get_by_test_id("pairing-expires").inner_text()
        assert pg.get_by_test_id("pairing-message").count() == 0  # the todo line says it
        size = float(code.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
        assert size >= 100  # readable from across the room
        pg.wait_for_timeout(200)
        pg.screenshot(path=screens_dir / "kiosk-pairing.png")
        dx, dy = pg.evaluate("() => [document.documentElement.scrollWidth - innerWidth,"
                             " document.documentElement.scrollHeight - innerHeight]")
        assert dx <= 0 and dy <= 0, "the pairing screen spills off the screen"
        # Rejected: the reason is shown, no code.
        edge.enrollment = ({**PENDING, "state": "rejected", "code": None,
                              "message": "Unknown terminal", "message_zh": "未登记的设备",
                              "retry_at": "2026-03-02T08:10:00.000Z"})  # next poll ≤ 5 s
        pg.get_by_text("未登记的设备").wait_for(timeout=10_000)
        assert "Unknown terminal" in pg.get_by_test_id("pairing-message").inner_text()
        assert pg.get_by_test_id("pairing-retry").count() == 1
        assert pg.get_by_test_id("pairing-code").count() == 0
        # Enrolled: the normal attract screen.
        edge.enrollment = None
        pg.get_by_test_id("prompt").wait_for(timeout=10_000)
        assert pg.get_by_test_id("pairing").count() == 0
    finally:
        ctx.close()

