"""The technician's path on the whole site-in-a-box (real Mosquitto brokers with TLS, real
daemons, `ykt fw` as a subprocess, the dashboard in Chromium).

The site enrolled kiosk-001 and cashier-001 through the claim flow when it started (from no
identity at all); kiosk-002 waits with its pairing code on screen and on paper. Here a
technician approves it with `ykt fw`, pushes a setting that the kiosk applies and reports,
and runs commands whose results `ykt fw` and the dashboard show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from support import REPO, wait_until

pytestmark = pytest.mark.stack

DEV = "kiosk-002"
PORTRAIT = {"width": 1080, "height": 1920}


def fw(site: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ykt fw ARGS`` against the site's central, as the admin token's holder."""
    token = site.workdir / "secrets" / "central-admin.token"
    run = subprocess.run(
        [sys.executable, "-m", "yikatong.cli", "fw", *args, "--central",
         site.dashboard_url.rstrip("/"), "--token-file", str(token)],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    if check:
        assert run.returncode == 0, f"ykt fw {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    return run


def api(site: Any, path: str) -> Any:
    r = httpx.get(f"{site.dashboard_url}api/{path}", timeout=10,
                  headers={"Authorization": f"Bearer {site.admin_token}"})
    r.raise_for_status()
    return r.json()


def device(site: Any, dev: str) -> dict[str, Any] | None:
    for d in api(site, "devices")["devices"]:
        if d["id"] == dev:
            return dict(d)
    return None


def test_a_technician_enrolls_configures_and_commands_a_waiting_kiosk(
        browser: Any, site: Any, screens_dir: Any) -> None:
    # -- the two terminals the site started with enrolled themselves (claim flow) ----------
    for dev, serial in (("kiosk-001", site.terminal("kiosk-001").serial),
                        ("cashier-001", site.terminal("cashier-001").serial)):
        shown = json.loads(fw(site, "device", "show", dev, "--json").stdout)
        detail = shown.get("device", shown)
        assert detail["serial"] == serial and detail["cert"]["revoked"] is False
    term = site.terminal(DEV)
    assert device(site, DEV) is None  # not a device yet: only a request

    # -- kiosk-002 shows its pairing code, and printed it --------------------------------------
    pending = json.loads(fw(site, "enroll", "list", "--json").stdout)
    pending = pending.get("enrollments", pending) if isinstance(pending, dict) else pending
    [req] = [r for r in pending if r["serial"] == term.serial and r["status"] == "pending"]
    code = req["code"]
    ctx = browser.new_context(viewport=PORTRAIT, locale="zh-CN")
    try:
        pg = ctx.new_page()
        pg.goto(term.ui_url)
        pg.get_by_test_id("pairing-code").wait_for(timeout=20_000)
        assert pg.get_by_test_id("pairing-code").inner_text() == code
        assert pg.get_by_test_id("pairing-serial").inner_text() == term.serial
        pg.screenshot(path=screens_dir / "fleet-kiosk-waiting.png")
        wait_until(lambda: any(code in j.text for j in term.printer.jobs), 20,
                   what="the pairing slip on kiosk-002's printer")
        slip = next(j.text for j in term.printer.jobs if code in j.text)
        assert term.serial in slip

        # -- approved with `ykt fw`: the kiosk takes its certificate and comes online ----------
        out = fw(site, "enroll", "approve", code, "--name", DEV, "--role", "kiosk",
                 "--site", "门诊楼").stdout
        assert f"is now {DEV}" in out
        wait_until(lambda: (d := device(site, DEV)) is not None and d["online"], 60,
                   what=f"{DEV} online with its certificate", interval=0.3)
        pg.get_by_test_id("prompt").wait_for(timeout=30_000)  # the start screen
        assert pg.get_by_test_id("pairing-code").count() == 0
        enrolled = json.loads(fw(site, "device", "show", DEV, "--json").stdout)
        enrolled = enrolled.get("device", enrolled)
        assert enrolled["serial"] == term.serial and enrolled["role"] == "kiosk"
        assert enrolled["site"] == "门诊楼"

        # -- a setting pushed, applied by the kiosk and reported -------------------------------
        assert pg.evaluate("document.documentElement.lang") == "zh-CN"
        fw(site, "config", "set", "device", DEV, "ui.language=en")

        def applied() -> bool:
            d = api(site, f"fleet/devices/{DEV}")
            d = d.get("device", d)
            des, rep = d["desired"], d["reported"] or {}
            return bool(d["in_sync"] and rep.get("status") == "applied"
                        and rep.get("version") == des["version"] and des["version"] >= 2
                        and des["settings"] == {"ui": {"language": "en"}})

        wait_until(applied, 30, what="the pushed config applied and reported", interval=0.3)
        # the screen switched language without a reload
        pg.wait_for_function("document.documentElement.lang === 'en'", timeout=15_000)
        assert "Please insert" in pg.get_by_test_id("prompt").inner_text()
        shown = fw(site, "device", "show", DEV).stdout
        assert "in sync" in shown and 'ui.language = "en"' in shown
    finally:
        ctx.close()

    # -- commands: `ykt fw cmd --wait` prints the result ----------------------------------------
    before = len(term.printer.jobs)
    out = fw(site, "cmd", DEV, "printer.test", "--wait").stdout
    assert "succeeded" in out and "state=printed" in out, out
    assert "None" not in out
    assert len(term.printer.jobs) == before + 1
    selftest = json.loads(fw(site, "cmd", DEV, "reader.selftest", "--wait", "--json").stdout)
    selftest = selftest.get("command", selftest)
    assert selftest["state"] == "succeeded", selftest
    # The self-test opened the SAM (no card was read yet) to read its terminal number.
    assert selftest["output"]["sam_state"] == "ok"
    assert selftest["output"]["sam_terminal"] == term.terminal_number.hex()

    # -- the dashboard's device page: desired vs reported, a command run live -------------------
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000}, locale="zh-CN")
    try:
        page = ctx.new_page()
        page.goto(site.dashboard_url)
        page.locator("#login-view summary").click()
        page.fill("#login-token", site.admin_token)
        page.click("#login-token-btn")
        page.locator("#me-name").wait_for(timeout=15_000)
        page.goto(f"{site.dashboard_url}#/device/{DEV}")
        page.locator("#dev-config tr").first.wait_for(timeout=15_000)
        compare = page.locator("[data-testid='config-compare']").inner_text()
        assert "已应用 Applied" in compare
        assert "ui.language" in page.locator("[data-testid='settings']").inner_text()
        assert term.serial in page.locator("#dev-ident").inner_text()
        page.click("button[data-cmd='printer.test']")
        page.wait_for_function(
            "document.querySelectorAll(\"tr[data-cmd-name='printer.test']\").length === 2",
            timeout=15_000)
        row = page.locator("tr[data-cmd-name='printer.test']").first
        row.locator("[data-state='succeeded']").wait_for(timeout=30_000)
        assert "成功 Succeeded" in row.inner_text()
        sam = page.locator("tr[data-cmd-name='reader.selftest']").first.inner_text()
        assert term.terminal_number.hex() in sam
        time.sleep(0.3)
        page.screenshot(path=screens_dir / "fleet-device-live.png", full_page=True)
    finally:
        ctx.close()
