"""The fleet REST API (central/dashboard/fleet_api.py) over a fake FleetService, and the
dashboard's fleet pages in headless Chromium (sign-in, enrollments, device detail).

The API tests come first: the browser fixture (module scope) holds an event loop in this
thread from the first browser test to the end of the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_fleet_fake import FakeFleet, FakeFleetError, serve

from central.dashboard.app import create_dashboard
from central.dashboard.auth import StaffAccounts
from central.registry import Registry
from central.store import Store, open_store
from yikatong.common.errors import LocalizedError

ADMIN = "boot-token-for-tests"
BOOT = {"Authorization": f"Bearer {ADMIN}"}
CSRF = {"X-Requested-With": "ykt"}
PASSWORD = "correct horse battery"
STAFF = (("zhao.min", "赵敏", "viewer"), ("wang.li", "王丽", "technician"),
         ("chen.jie", "陈杰", "administrator"))


def make_app(tmp_path: Path, fleet: Any = None) -> tuple[Any, Store]:
    store = open_store(tmp_path / "c.db")
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="示范市第一人民医院", fleet=fleet,
                           accounts=StaffAccounts(store))
    return app, store


@pytest.fixture
async def env(tmp_path: Path):
    fleet = FakeFleet(step_s=0.05)
    app, store = make_app(tmp_path, fleet)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        auth = {}
        for user, name, role in STAFF:
            r = await client.post("/api/users", headers=BOOT, json={
                "username": user, "name": name, "role": role, "password": PASSWORD})
            assert r.status_code == 201
            r = await client.post("/api/login", headers=CSRF, json={
                "username": user, "password": PASSWORD, "want_token": True})
            auth[role] = {"Authorization": f"Bearer {r.json()['token']}"}
        client.cookies.clear()
        yield client, fleet, auth, store
    store.close()


def err(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) >= {"error", "message", "message_zh"}, body
    return r.status_code, body["error"]


# -- enrollments -----------------------------------------------------------------------------

async def test_enrollments_list_and_filter(env):
    client, _fleet, auth, _store = env
    everything = (await client.get("/api/enrollments", headers=auth["viewer"])).json()
    assert len(everything["enrollments"]) == 6
    r = await client.get("/api/enrollments?status=pending", headers=auth["viewer"])
    pending = r.json()["enrollments"]
    assert {e["code"] for e in pending} == {"7KQ2-M9XD", "3HVN-8R2T", "W4PJ-6C0E"}
    first = pending[0]
    assert set(first) >= {"request_id", "serial", "code", "status", "duplicate", "reenroll_of",
                          "facts", "created_at", "expires_at", "decided_by", "decided_at",
                          "device_id", "reason"}
    assert sum(e["duplicate"] for e in pending) == 2
    r = await client.get("/api/enrollments?status=bogus", headers=auth["viewer"])
    assert err(r) == (400, "bad_status")


async def test_approve_passes_who_and_normalises_the_code(env):
    client, fleet, auth, _store = env
    body = {"device_id": "kiosk-004", "role": "kiosk", "site": "门诊楼"}
    r = await client.post("/api/enrollments/7KQ2-M9XD/approve", headers=auth["viewer"],
                          json=body)
    assert r.status_code == 403
    # Typed off the screen in lower case, without the dash, O for 0: still the code.
    r = await client.post("/api/enrollments/7kq2m9xd/approve", headers=auth["technician"],
                          json=body)
    assert r.status_code == 200, r.text
    res = r.json()["enrollment"]
    assert (res["status"], res["device_id"], res["decided_by"]) == ("approved", "kiosk-004",
                                                                    "wang.li")
    assert fleet.calls[-1] == ("approve", {"code": "7KQ2-M9XD", **body, "actor": "wang.li"})
    devs = (await client.get("/api/fleet/devices", headers=auth["viewer"])).json()["devices"]
    assert "kiosk-004" in {d["id"] for d in devs}
    # The service's refusals keep their status and both languages.
    r = await client.post("/api/enrollments/7KQ2-M9XD/approve", headers=auth["technician"],
                          json=body)
    assert err(r) == (404, "unknown_code")
    assert r.json()["message_zh"] == "没有配对码为 7KQ2-M9XD 的待批准申请"
    r = await client.post("/api/enrollments/W4PJ-6C0E/approve", headers=auth["technician"],
                          json={**body, "device_id": "kiosk-001"})
    assert err(r) == (409, "device_exists")
    r = await client.post("/api/enrollments/not-a-code/approve", headers=auth["technician"],
                          json=body)
    assert err(r) == (404, "unknown_code")
    r = await client.post("/api/enrollments/W4PJ-6C0E/approve", headers=auth["technician"],
                          json={**body, "device_id": "Kiosk 5"})
    assert r.status_code == 422
    r = await client.post("/api/enrollments/W4PJ-6C0E/approve", headers=auth["technician"],
                          json={**body, "role": "printer"})
    assert r.status_code == 422


async def test_reject_with_a_reason(env):
    client, fleet, auth, _store = env
    r = await client.post("/api/enrollments/W4PJ-6C0E/reject", headers=auth["technician"],
                          json={"reason": "clone: the other one is on the wall"})
    assert r.status_code == 200
    assert r.json()["enrollment"]["status"] == "rejected"
    assert fleet.calls[-1][1]["actor"] == "wang.li"
    r = await client.post("/api/enrollments/3HVN-8R2T/reject", headers=auth["technician"],
                          json={"reason": ""})
    assert r.status_code == 422


# -- devices and sites -----------------------------------------------------------------------

async def test_devices_sites_and_detail(env):
    client, _fleet, auth, _store = env
    v = auth["viewer"]
    devs = (await client.get("/api/fleet/devices", headers=v)).json()["devices"]
    assert {d["id"]: d["config_state"] for d in devs} == {
        "kiosk-001": "in_sync", "kiosk-002": "pending", "cashier-001": "in_sync",
        "kiosk-003": "failed", "cashier-002": "unknown"}
    assert set(devs[0]) == {"id", "role", "site", "cert_not_after", "desired_version",
                            "reported_version", "config_state"}
    sites = (await client.get("/api/fleet/sites", headers=v)).json()["sites"]
    assert sites == [{"site": "门诊楼", "devices": 3, "in_sync": 2, "pending": 1, "failed": 0},
                     {"site": "住院部", "devices": 2, "in_sync": 0, "pending": 0, "failed": 1}]
    d = (await client.get("/api/fleet/devices/kiosk-003", headers=v)).json()["device"]
    assert d["in_sync"] is False and d["reported"]["status"] == "failed"
    assert d["desired"]["version"] == 8 and d["cert"]["revoked"] is False
    r = await client.get("/api/fleet/devices/kiosk-999", headers=v)
    assert err(r) == (404, "unknown_device")


async def test_revoke_is_for_administrators_and_disable_for_technicians(env):
    client, fleet, auth, _store = env
    r = await client.post("/api/fleet/devices/kiosk-002/revoke", headers=auth["technician"])
    assert r.status_code == 403 and r.json()["need"] == "administrator"
    r = await client.post("/api/fleet/devices/kiosk-002/revoke", headers=auth["administrator"])
    assert r.status_code == 200 and r.json()["revoked"]["cert"]["revoked"] is True
    assert fleet.calls[-1] == ("revoke", {"dev": "kiosk-002", "actor": "chen.jie"})
    r = await client.post("/api/fleet/devices/kiosk-002/disable", headers=auth["viewer"])
    assert r.status_code == 403
    r = await client.post("/api/fleet/devices/kiosk-002/disable", headers=auth["technician"])
    assert r.json() == {"id": "kiosk-002", "enabled": False}
    assert fleet.calls[-1] == ("disable", {"dev": "kiosk-002", "actor": "wang.li"})


# -- config ----------------------------------------------------------------------------------

async def test_config_get_set_push(env):
    client, fleet, auth, _store = env
    r = await client.get("/api/config/device/kiosk-001", headers=auth["viewer"])
    cfg = r.json()["config"]
    assert cfg == {"kind": "device", "target": "kiosk-001",
                   "settings": {"printer": {"status_poll_s": 5}}}
    new = {"printer": {"status_poll_s": 2}, "ui": {"language": "en"}}
    r = await client.put("/api/config/device/kiosk-001", headers=auth["viewer"],
                         json={"settings": new})
    assert r.status_code == 403
    r = await client.put("/api/config/device/kiosk-001", headers=auth["technician"],
                         json={"settings": new})
    assert r.status_code == 200
    assert r.json()["config"]["settings"] == new
    assert [(d["id"], d["version"]) for d in r.json()["config"]["devices"]] == [("kiosk-001", 8)]
    assert fleet.calls[-1][1] == {"kind": "device", "target": "kiosk-001", "settings": new,
                                  "replace": False, "actor": "wang.li"}
    r = await client.put("/api/config/role/kiosk", headers=auth["technician"],
                         json={"settings": {"ui": {"voice": False}}, "replace": True})
    assert r.json()["config"]["settings"] == {"ui": {"voice": False}}
    assert fleet.calls[-1][1]["replace"] is True
    r = await client.post("/api/config/site/门诊楼/push", headers=auth["technician"])
    assert [d["id"] for d in r.json()["pushed"]["devices"]] == ["kiosk-001", "kiosk-002",
                                                               "cashier-001"]
    # Only what central may set, within bounds; nothing reaches the service otherwise.
    n = len(fleet.calls)
    for bad in ({"broker": {"host": "evil.example"}}, {"printer": {"status_poll_s": -1}},
                {"ui": {"language": "fr"}}):
        r = await client.put("/api/config/site/门诊楼", headers=auth["technician"],
                             json={"settings": bad})
        assert err(r) == (400, "invalid"), bad
    assert len(fleet.calls) == n
    r = await client.get("/api/config/building/门诊楼", headers=auth["viewer"])
    assert r.status_code == 422
    r = await client.get("/api/config/role/printer", headers=auth["viewer"])
    assert err(r) == (404, "unknown_role")


# -- commands --------------------------------------------------------------------------------

async def test_commands_are_sent_followed_and_listed(env):
    client, fleet, auth, _store = env
    r = await client.post("/api/fleet/devices/kiosk-001/commands", headers=auth["viewer"],
                          json={"name": "printer.test"})
    assert r.status_code == 403
    r = await client.post("/api/fleet/devices/kiosk-001/commands", headers=auth["technician"],
                          json={"name": "printer.test", "exp_s": 300})
    assert r.status_code == 200
    cmd = r.json()["command"]
    assert set(cmd) == {"command_id", "dev", "name", "args", "state", "created_by",
                        "created_at", "updated_at", "exp", "code", "message", "output"}
    assert (cmd["state"], cmd["created_by"]) == ("queued", "wang.li")
    assert fleet.calls[-1][1]["exp_s"] == 300
    final = None
    for _ in range(20):
        r = await client.get(f"/api/commands/{cmd['command_id']}?wait=5", headers=auth["viewer"])
        final = r.json()["command"]
        if final["state"] == "succeeded":
            break
    assert final is not None and final["state"] == "succeeded"
    assert final["output"] == {"printed": True, "paper": "ok"}
    listed = (await client.get("/api/fleet/devices/kiosk-001/commands",
                               headers=auth["viewer"])).json()["commands"]
    assert listed[0]["command_id"] == cmd["command_id"] and len(listed) == 3
    # Reboot and a service restart are technician commands too.
    for body in ({"name": "reboot"}, {"name": "service.restart", "args": {"service": "edge"}},
                 {"name": "log.level", "args": {"level": "debug"}},
                 {"name": "logs.collect", "args": {"lines": 200}}):
        r = await client.post("/api/fleet/devices/kiosk-001/commands",
                              headers=auth["technician"], json=body)
        assert r.status_code == 200, (body, r.text)
    n = len(fleet.calls)
    for body, code in (({"name": "format.disk"}, "unknown_command"),
                       ({"name": "service.restart"}, "invalid"),
                       ({"name": "service.restart", "args": {"service": "sshd"}}, "invalid"),
                       ({"name": "logs.collect", "args": {"lines": 10**6}}, "invalid")):
        r = await client.post("/api/fleet/devices/kiosk-001/commands",
                              headers=auth["technician"], json=body)
        assert err(r) == (400, code), body
    assert len(fleet.calls) == n
    r = await client.post("/api/fleet/devices/kiosk-001/commands", headers=auth["technician"],
                          json={"name": "reboot", "exp_s": 5})
    assert r.status_code == 422
    r = await client.get("/api/commands/" + "f" * 32, headers=auth["viewer"])
    assert err(r) == (404, "unknown_command_id")
    r = await client.get("/api/commands/../../audit", headers=auth["viewer"])
    assert r.status_code == 404


async def test_claim_bundle_is_for_administrators_and_audited(env):
    client, _fleet, auth, store = env
    r = await client.get("/api/fleet/claim-bundle", headers=auth["technician"])
    assert r.status_code == 403
    r = await client.get("/api/fleet/claim-bundle", headers=auth["administrator"])
    assert set(r.json()) == {"ca_pem", "signing_pub_pem", "claim_password",
                                       "enroll_host", "enroll_port"}
    assert ("chen.jie", "fleet.claim_bundle") in [(e.actor, e.action)
                                                  for e in store.audit_entries()]


# -- errors and absence ----------------------------------------------------------------------

class _Plain(LocalizedError):
    code = "broken"


async def test_service_errors_keep_their_status_others_are_500(env):
    client, fleet, auth, _store = env

    def teapot(dev: str) -> dict[str, Any]:
        raise FakeFleetError(418, "teapot", "I am a teapot", "我是茶壶")

    def plain(dev: str) -> dict[str, Any]:
        raise _Plain("no status here", "没有状态")

    fleet.device_detail = teapot
    r = await client.get("/api/fleet/devices/kiosk-001", headers=auth["viewer"])
    assert r.status_code == 418
    assert r.json() == {"error": "teapot", "message": "I am a teapot", "message_zh": "我是茶壶"}
    fleet.device_detail = plain
    r = await client.get("/api/fleet/devices/kiosk-001", headers=auth["viewer"])
    assert r.status_code == 500 and r.json()["error"] == "broken"


async def test_without_a_fleet_service_there_are_no_fleet_endpoints(tmp_path: Path):
    app, store = make_app(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        for path in ("/api/enrollments", "/api/fleet/devices", "/api/config/site/x"):
            assert (await client.get(path, headers=BOOT)).status_code == 404
        assert (await client.get("/api/status", headers=BOOT)).json()["fleet"] is False
    store.close()


# -- the pages in Chromium (last: the browser fixture holds this thread's event loop) -------

W, H = 1366, 768


@pytest.fixture
def site_url(tmp_path: Path):
    fleet = FakeFleet(step_s=0.4)
    app, store = make_app(tmp_path, fleet)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for dev, role in (("kiosk-001", "kiosk"), ("kiosk-002", "kiosk"),
                      ("cashier-001", "cashier")):
        store.add_device(dev, role, now)
        store.apply_state(dev, online=True, boot_seq=1, version="1.4.0", now=now)
    with serve(app) as url:
        for user, name, role in STAFF:
            httpx.post(f"{url}/api/users", headers=BOOT, timeout=10, json={
                "username": user, "name": name, "role": role,
                "password": PASSWORD}).raise_for_status()
        yield url, fleet
    store.close()


def _page(browser: Any) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(viewport={"width": W, "height": H}, locale="zh-CN",
                              timezone_id="UTC")
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    page.on("dialog", lambda d: d.accept())
    return ctx, page, problems


def _sign_in(page: Any, url: str, user: str) -> None:
    page.goto(url + "/")
    page.locator("#login-user").wait_for()
    page.fill("#login-user", user)
    page.fill("#login-pass", PASSWORD)
    page.click("#login-btn")
    page.locator("#me-name").wait_for()


def _fits(page: Any) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= W  # no sideways scroll


def test_sign_in_page_and_roles_in_the_header(browser, site_url, screens_dir):
    url, _fleet = site_url
    ctx, page, problems = _page(browser)
    try:
        page.goto(url + "/")
        page.locator("#login-user").wait_for()
        text = page.locator("#login-view").inner_text()
        for label in ("员工登录", "Staff sign-in", "用户名", "User name", "密码", "Password",
                      "示范市第一人民医院"):
            assert label in text, label
        assert page.locator("#rows").is_hidden()  # nothing of the fleet before sign-in
        page.screenshot(path=screens_dir / "dashboard-login.png")
        page.fill("#login-user", "wang.li")
        page.fill("#login-pass", "not the password")
        page.click("#login-btn")
        page.get_by_text("用户名或密码错误").wait_for()
        problems.clear()  # the refused sign-in is a 401 in the console, on purpose
        page.fill("#login-pass", PASSWORD)
        page.click("#login-btn")
        page.locator("#me-name").wait_for()
        assert "王丽 (wang.li)" in page.locator("#me").inner_text()
        assert "技术员 Technician" in page.locator("#me-role").inner_text()
        page.locator("tr[data-device='kiosk-001']").wait_for()
        assert page.locator("a[data-view='users']").is_hidden()  # administrators only
        page.click("#signout")
        page.locator("#login-user").wait_for()
        assert page.locator("#nav").is_hidden()
        _fits(page)
        assert problems == []
    finally:
        ctx.close()


def test_enrollments_page_approve_and_reject(browser, site_url, screens_dir):
    url, fleet = site_url
    ctx, page, problems = _page(browser)
    try:
        _sign_in(page, url, "wang.li")
        page.click("a[data-view='enrollments']")
        card = page.locator(".req[data-code='7KQ2-M9XD']")
        card.wait_for()
        assert "YKT-K2-00231" in card.inner_text() and "110100000003" in card.inner_text()
        assert page.locator(".req.dup").count() == 2
        assert "重复申请 Duplicate" in page.locator(".req[data-code='W4PJ-6C0E']").inner_text()
        assert "剩 23 小时" in card.inner_text()  # time left before it expires
        hist = page.locator("[data-testid='enroll-history']")
        assert "bench unit, not for this site" in hist.inner_text()
        _fits(page)
        page.screenshot(path=screens_dir / "dashboard-enrollments.png", full_page=True)

        card.locator("input[name=device_id]").fill("kiosk-004")
        card.locator("input[name=site]").fill("门诊楼")
        card.locator("button.primary").click()
        page.locator("#enroll-msg").get_by_text("approved as kiosk-004").wait_for()
        page.locator("tr[data-enrollment='7KQ2-M9XD']").wait_for()
        assert fleet.calls[-1][0] == "approve" and fleet.calls[-1][1]["actor"] == "wang.li"
        dup = page.locator(".req[data-code='W4PJ-6C0E']")
        dup.locator("input[name=reason]").fill("clone of YKT-C1-00087")
        dup.locator("button.danger").click()
        page.locator("tr[data-enrollment='W4PJ-6C0E']").wait_for()
        assert fleet.calls[-1][1]["reason"] == "clone of YKT-C1-00087"
        assert problems == []
    finally:
        ctx.close()
    # A viewer sees the requests but no approve or reject form.
    ctx, page, problems = _page(browser)
    try:
        _sign_in(page, url, "zhao.min")
        page.goto(url + "/#/enrollments")
        page.locator(".req[data-code='3HVN-8R2T']").wait_for()
        assert page.locator(".req form.approve").first.is_hidden()
        assert page.locator(".req form.reject").first.is_hidden()
        assert problems == []
    finally:
        ctx.close()


def test_device_page_commands_run_live_to_a_final_state(browser, site_url, screens_dir):
    url, fleet = site_url
    ctx, page, problems = _page(browser)
    try:
        _sign_in(page, url, "wang.li")
        page.click("a[data-view='fleet']")
        page.locator("tr[data-site='住院部']").wait_for()
        assert "失败 Failed" in page.locator("tr[data-fleet-device='kiosk-003']").inner_text()
        page.click("tr[data-fleet-device='kiosk-001'] a")
        page.locator("#dev-config tr").first.wait_for()
        compare = page.locator("[data-testid='config-compare']").inner_text()
        assert "期望 Desired" in compare and "实际 Reported" in compare
        assert "已应用 Applied" in compare
        assert "printer.status_poll_s" in page.locator("[data-testid='settings']").inner_text()
        ident = page.locator("#dev-ident").inner_text()
        assert "YKT-K2-00102" in ident and "证书到期 Expires" in ident
        assert page.locator("#dev-revoke").is_hidden()  # administrators only
        page.click("button[data-cmd='printer.test']")
        row = page.locator("tr[data-cmd-name='printer.test']").first
        row.get_by_text("成功 Succeeded").wait_for(timeout=15_000)
        assert "printed" in row.inner_text()
        page.select_option("#cmd-level", "debug")
        page.click("button[data-cmd='log.level']")  # one such command ran this morning
        page.wait_for_function(
            "document.querySelectorAll(\"tr[data-cmd-name='log.level']\").length === 2")
        page.locator("tr[data-cmd-name='log.level']").first.locator(
            "[data-state='succeeded']").wait_for(timeout=15_000)
        page.click("button[data-cmd='reboot']")  # asks first; the dialog is accepted
        names = [c[1]["name"] for c in fleet.calls if c[0] == "send_command"]
        assert names == ["printer.test", "log.level", "reboot"]
        assert fleet.calls[-2][1]["args"] == {"level": "debug"}
        page.locator("tr[data-cmd-name='reboot'] [data-state='succeeded']").first.wait_for(
            timeout=15_000)
        _fits(page)
        page.screenshot(path=screens_dir / "dashboard-device.png", full_page=True)
        assert problems == []
    finally:
        ctx.close()
