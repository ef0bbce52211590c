"""Staff accounts, sessions and roles at central's dashboard (central/dashboard/auth.py).

Sign-in and sign-out, the cookie's attributes, wrong-password throttling (growing, never a
lock), every endpoint's role, the CSRF header rule, idle and maximum session lifetimes on an
injected clock, the admin token as bootstrap administrator, and the audit of every write.
On SQLite and PostgreSQL; the last tests race two instances (two stores on one PostgreSQL
database): parallel sign-ins, sign-outs and account creation.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_fleet_fake import FakeFleet
from pg_support import BOTH_ENGINES, race

from central.dashboard import auth as auth_module
from central.dashboard.app import create_dashboard
from central.dashboard.auth import ADMIN_ACTOR, FREE_FAILURES, StaffAccounts, verify_password
from central.registry import Registry
from central.store import open_store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ADMIN = "boot-token-for-tests"
PASSWORD = "correct horse battery"
CSRF = {"X-Requested-With": "ykt"}
BOOT = {"Authorization": f"Bearer {ADMIN}"}

pytestmark = BOTH_ENGINES


class Clock:
    """A settable clock for sessions and throttles."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
async def env(tmp_path: Path, central_db):
    store = open_store(central_db(tmp_path))
    clock = Clock()
    accounts = StaffAccounts(store, clock=clock)
    fleet = FakeFleet()
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试医院", accounts=accounts, fleet=fleet)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        yield client, store, clock, app
    store.close()


async def add_user(client: httpx.AsyncClient, username: str, role: str,
                   name: str = "测试") -> None:
    r = await client.post("/api/users", headers=BOOT, json={
        "username": username, "name": name, "role": role, "password": PASSWORD})
    assert r.status_code == 201, r.text


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD, *,
                want_token: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"username": username, "password": password}
    if want_token:
        body["want_token"] = True
    return await client.post("/api/login", headers=CSRF, json=body)


async def bearer(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    r = await login(client, username, want_token=True)
    assert r.status_code == 200, r.text
    client.cookies.clear()  # this caller uses the token, like ykt fw
    return {"Authorization": f"Bearer {r.json()['token']}"}


def actions(store: Any) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in store.audit_entries()]


# -- sign-in, sign-out ----------------------------------------------------------------------

async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session(env):
    client, store, _clock, _app = env
    await add_user(client, "wang.li", "technician", "王丽")
    r = await login(client, "wang.li")
    assert r.status_code == 200
    body = r.json()
    assert body["username"] == "wang.li" and body["name"] == "王丽"
    assert body["role"] == "technician"
    assert "token" not in body  # the browser has it only in the HttpOnly cookie
    assert datetime.fromisoformat(body["expires_at"]) == T0 + timedelta(hours=12)
    cookie = r.headers["set-cookie"]
    token = r.cookies["ykt_session"]
    assert len(token) >= 40 and cookie.startswith(f"ykt_session={token};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; see the https test
    me = (await client.get("/api/me")).json()
    assert (me["username"], me["role"], me["via"]) == ("wang.li", "technician", "cookie")
    assert (await client.get("/api/status")).json()["signed_in"] is True
    # Only the token's SHA-256 is kept, and the password only as a salted scrypt hash.
    db = store.connection()
    hashes = [row[0] for row in db.execute("SELECT token_hash FROM dashboard_session")]
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]
    (pw_hash,) = db.execute("SELECT pw_hash FROM dashboard_user").fetchone()
    assert pw_hash.startswith("scrypt$16384$8$1$") and PASSWORD not in pw_hash
    assert verify_password(PASSWORD, pw_hash) and not verify_password("wrong", pw_hash)

    r = await client.post("/api/logout", headers=CSRF)
    assert r.status_code == 200 and r.json() == {"signed_out": True, "username": "wang.li"}
    assert "ykt_session=" in r.headers["set-cookie"]  # cleared
    assert (await client.get("/api/me")).status_code == 401
    r = await client.get("/api/devices", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401  # the token is dead too
    assert ("wang.li", "dashboard.signin") in actions(store)
    assert ("wang.li", "dashboard.signout") in actions(store)


async def test_the_token_is_in_the_answer_only_when_asked_for(env):
    client, _store, _clock, _app = env
    await add_user(client, "wang.li", "viewer")
    r = await login(client, "wang.li")  # the page: the cookie only, no token script can read
    assert r.status_code == 200 and "token" not in r.json() and r.cookies["ykt_session"]
    client.cookies.clear()
    r = await login(client, "wang.li", want_token=True)  # ykt fw login
    assert r.status_code == 200 and r.json()["token"] == r.cookies["ykt_session"]
    client.cookies.clear()
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {r.json()['token']}"})
    assert me.status_code == 200 and me.json()["via"] == "bearer"
    r = await client.post("/api/login", headers=CSRF, json={"token": ADMIN, "want_token": True})
    assert r.status_code == 200 and r.json()["token"] == r.cookies["ykt_session"]
    r = await login(client, "wang.li", "wrong", want_token=True)
    assert r.status_code == 401 and "token" not in r.json()


async def test_the_cookie_is_secure_over_https(tmp_path: Path, central_db):
    store = open_store(central_db(tmp_path))
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN, site_name="t")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://dash") as client:
        await add_user(client, "wang.li", "viewer")
        r = await login(client, "wang.li")
        assert "Secure" in r.headers["set-cookie"]
    store.close()


async def test_salts_differ_and_passwords_have_a_minimum_length(env):
    client, store, _clock, _app = env
    await add_user(client, "wang.li", "viewer")
    await add_user(client, "li.na", "viewer")
    rows = store.connection().execute("SELECT pw_hash FROM dashboard_user").fetchall()
    assert rows[0][0] != rows[1][0]  # same password, own salt
    for bad in ({"username": "Wang", "name": "x", "role": "viewer", "password": PASSWORD},
                {"username": "w", "name": "x", "role": "viewer", "password": PASSWORD},
                {"username": "zhao.min", "name": "x", "role": "viewer", "password": "short"},
                {"username": "zhao.min", "name": "x", "role": "root", "password": PASSWORD}):
        assert (await client.post("/api/users", headers=BOOT, json=bad)).status_code == 422
    r = await client.post("/api/users", headers=BOOT, json={
        "username": ADMIN_ACTOR, "name": "x", "role": "viewer", "password": PASSWORD})
    assert r.status_code == 400 and r.json()["error"] == "bad_username"
    r = await client.post("/api/users", headers=BOOT, json={
        "username": "wang.li", "name": "x", "role": "viewer", "password": PASSWORD})
    assert r.status_code == 409 and r.json()["message_zh"] == "用户 wang.li 已存在"


async def test_status_without_sign_in_shows_no_device_data(env):
    client, store, _clock, _app = env
    store.add_device("kiosk-001", "kiosk", T0)
    r = await client.get("/api/status")
    assert r.status_code == 200
    assert r.json() == {"site_name": "测试医院", "timezone": "Asia/Shanghai",
                        "signed_in": False}
    full = (await client.get("/api/status", headers=BOOT)).json()
    assert full["audit_chain"] == {"ok": True, "broken_at": None} and full["fleet"] is True
    for path in ("/api/devices", "/api/alarms", "/api/events", "/api/security",
                 "/api/payments/unresolved", "/api/devices/kiosk-001/events"):
        r = await client.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"] == "unauthorized" and r.json()["message_zh"] == "请先登录"


# -- throttling ------------------------------------------------------------------------------

async def test_wrong_passwords_slow_the_next_try_more_and_more_but_never_lock(env):
    client, store, clock, _app = env
    await add_user(client, "wang.li", "technician")
    for _ in range(3):  # typing mistakes cost nothing
        r = await login(client, "wang.li", "wrong password")
        assert r.status_code == 401 and r.json()["retry_after_s"] == 0
        assert r.json()["message"] == "wrong user name or password"
    r = await login(client, "wang.li", "wrong password")
    assert r.status_code == 401 and r.json()["retry_after_s"] == 5
    r = await login(client, "wang.li")  # the right one, too soon: refused, not checked
    assert r.status_code == 429 and r.json()["error"] == "throttled"
    assert r.json()["retry_after_s"] == 5 and "5 秒后" in r.json()["message_zh"]
    clock.advance(seconds=5)
    r = await login(client, "wang.li", "wrong again")
    assert r.json()["retry_after_s"] == 10  # doubles
    clock.advance(seconds=10)
    assert (await login(client, "wang.li")).status_code == 200  # the wait is over: works
    # A success clears the count.
    assert (await login(client, "wang.li", "wrong")).json()["retry_after_s"] == 0

    # An unknown name is answered exactly like a wrong password (no name probing).
    r = await login(client, "nobody", "whatever")
    assert r.status_code == 401 and r.json()["message"] == "wrong user name or password"

    sec = (await client.get("/api/security", headers=BOOT)).json()
    kinds = [e["action"] for e in sec["events"]]
    assert "dashboard.signin_failed" in kinds and "dashboard.signin_throttled" in kinds
    failed = next(e for e in sec["events"] if e["action"] == "dashboard.signin_failed")
    assert failed["actor"] == "dashboard" and failed["detail"]["username"] == "nobody"
    throttle = {t["id"]: t for t in sec["throttles"] if t["kind"] == "user"}
    assert throttle["wang.li"]["failures"] == 1 and throttle["nobody"]["failures"] == 1

    # An administrator setting a password clears the throttle at once.
    for _ in range(5):
        await login(client, "wang.li", "wrong")
    assert (await login(client, "wang.li")).status_code == 429
    r = await client.post("/api/users/wang.li/password", headers=BOOT,
                          json={"password": "another good password"})
    assert r.status_code == 200
    assert (await login(client, "wang.li", "another good password")).status_code == 200
    assert store.verify_chain() == (True, None)


async def test_parallel_wrong_passwords_get_no_more_tries_than_serial_ones(env):
    client, store, clock, _app = env
    await add_user(client, "wang.li", "technician")
    rs = await asyncio.gather(*(login(client, "wang.li", f"wrong {i}") for i in range(20)))
    codes = [r.status_code for r in rs]
    # Exactly what one try after another gets: the free failures, then the failure that
    # starts the first wait (401 with retry_after_s 5), then refusals without a check.
    assert codes.count(401) == FREE_FAILURES + 1 and codes.count(429) == 19 - FREE_FAILURES
    assert sorted(r.json()["retry_after_s"] for r in rs if r.status_code == 401) == [
        0] * FREE_FAILURES + [5]
    assert (await login(client, "wang.li")).status_code == 429  # still waiting
    failed = [e for e in store.audit_entries() if e.action == "dashboard.signin_failed"]
    assert sorted(e.detail["failures"] for e in failed) == list(range(1, FREE_FAILURES + 2))
    clock.advance(seconds=5)
    assert (await login(client, "wang.li")).status_code == 200  # never a lock
    # The right password in parallel: one try per free failure, the rest wait.
    rs = await asyncio.gather(*(login(client, "wang.li") for _ in range(10)))
    assert all(r.status_code in (200, 429) for r in rs)


async def test_made_up_names_share_one_throttle_and_refusals_do_not_flood_the_audit(env):
    client, store, clock, _app = env
    await add_user(client, "wang.li", "viewer")
    before = len(store.audit_entries())
    codes = [(await login(client, f"Not A Name {i}!", "x")).status_code for i in range(50)]
    assert codes == [401] * (FREE_FAILURES + 1) + [429] * (49 - FREE_FAILURES)
    new = [e for e in store.audit_entries()[before:]]
    # Each failure (with the address), and one entry for the refusals of this wait.
    assert [e.action for e in new] == ["dashboard.signin_failed"] * (FREE_FAILURES + 1) + [
        "dashboard.signin_throttled"]
    assert {e.detail["username"] for e in new} == {"(invalid)"}
    rows = store.connection().execute("SELECT username, failures FROM dashboard_throttle"
                                      ).fetchall()
    assert [tuple(r) for r in rows] == [("(invalid)", FREE_FAILURES + 1)]  # one row
    assert (await login(client, "wang.li")).status_code == 200  # real names unaffected

    # A real name: refusals are audited once per wait, not once per refusal.
    for _ in range(FREE_FAILURES + 1):
        await login(client, "wang.li", "wrong")
    before = len(store.audit_entries())
    for _ in range(10):
        assert (await login(client, "wang.li")).status_code == 429
    clock.advance(seconds=5)
    assert (await login(client, "wang.li", "wrong")).status_code == 401  # a new wait: 10 s
    for _ in range(10):
        assert (await login(client, "wang.li")).status_code == 429
    assert [e.action for e in store.audit_entries()[before:]] == [
        "dashboard.signin_throttled", "dashboard.signin_failed", "dashboard.signin_throttled"]
    assert store.verify_chain() == (True, None)


async def test_the_dummy_hash_is_never_computed_on_the_event_loop(env, monkeypatch, tmp_path,
                                                                  central_db):
    client, _store, _clock, _app = env
    loop_thread = threading.get_ident()
    real = auth_module.hash_password
    threads: list[int] = []

    def spy(password: str, **kw: Any) -> str:
        threads.append(threading.get_ident())
        return real(password, **kw)

    monkeypatch.setattr(auth_module, "hash_password", spy)
    monkeypatch.setattr(auth_module, "_DUMMY", [])  # as if central had just started
    assert (await login(client, "nobody", "whatever")).status_code == 401
    assert (await login(client, "Not A Name!", "whatever")).status_code == 401
    assert len(threads) == 1 and threads[0] != loop_thread  # once, in a worker thread
    # At start-up it is made when the accounts are set up.
    monkeypatch.setattr(auth_module, "_DUMMY", [])
    store = open_store(central_db(tmp_path / "other"))
    StaffAccounts(store)
    assert auth_module._DUMMY
    store.close()


# -- roles -----------------------------------------------------------------------------------

C = "7KQ2-M9XD"
CMD_ID = "0" * 32
#: Every API endpoint: (method, path template, a request, the least role that may).
ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None, str]] = [
    ("GET", "/api/devices", "/api/devices", None, "viewer"),
    ("GET", "/api/alarms", "/api/alarms", None, "viewer"),
    ("GET", "/api/events", "/api/events", None, "viewer"),
    ("GET", "/api/devices/{dev}/events", "/api/devices/kiosk-001/events", None, "viewer"),
    ("GET", "/api/devices/{dev}/audit", "/api/devices/kiosk-001/audit", None, "viewer"),
    ("GET", "/api/devices/{dev}/telemetry", "/api/devices/kiosk-001/telemetry", None,
     "viewer"),
    ("GET", "/api/payments/unresolved", "/api/payments/unresolved", None, "viewer"),
    ("GET", "/api/security", "/api/security", None, "viewer"),
    ("GET", "/api/enrollments", "/api/enrollments", None, "viewer"),
    ("GET", "/api/fleet/devices", "/api/fleet/devices", None, "viewer"),
    ("GET", "/api/fleet/sites", "/api/fleet/sites", None, "viewer"),
    ("GET", "/api/fleet/devices/{dev}", "/api/fleet/devices/kiosk-001", None, "viewer"),
    ("GET", "/api/config/{kind}/{target}", "/api/config/site/门诊楼", None, "viewer"),
    ("GET", "/api/fleet/devices/{dev}/commands", "/api/fleet/devices/kiosk-001/commands",
     None, "viewer"),
    ("GET", "/api/commands/{command_id}", f"/api/commands/{CMD_ID}", None, "viewer"),
    ("POST", "/api/devices", "/api/devices", {"id": "kiosk-050", "role": "kiosk"},
     "technician"),
    ("POST", "/api/devices/{dev}/disable", "/api/devices/kiosk-050/disable", {},
     "technician"),
    ("POST", "/api/enrollments/{code}/approve", f"/api/enrollments/{C}/approve",
     {"device_id": "kiosk-051", "role": "kiosk", "site": "门诊楼"}, "technician"),
    ("POST", "/api/enrollments/{code}/reject", "/api/enrollments/3HVN-8R2T/reject",
     {"reason": "a bench unit"}, "technician"),
    ("POST", "/api/fleet/devices/{dev}/disable", "/api/fleet/devices/cashier-002/disable",
     {}, "technician"),
    ("PUT", "/api/config/{kind}/{target}", "/api/config/site/门诊楼",
     {"settings": {"ui": {"language": "en"}}}, "technician"),
    ("POST", "/api/config/{kind}/{target}/push", "/api/config/site/门诊楼/push", {},
     "technician"),
    ("POST", "/api/fleet/devices/{dev}/commands", "/api/fleet/devices/kiosk-001/commands",
     {"name": "reboot"}, "technician"),
    ("POST", "/api/fleet/devices/{dev}/revoke", "/api/fleet/devices/kiosk-002/revoke", {},
     "administrator"),
    ("GET", "/api/fleet/claim-bundle", "/api/fleet/claim-bundle", None, "administrator"),
    ("GET", "/api/fleet/ca", "/api/fleet/ca", None, "viewer"),
    ("GET", "/api/fleet/bundles", "/api/fleet/bundles", None, "technician"),
    ("GET", "/api/fleet/bundles/{version}", "/api/fleet/bundles/1.5.0", None, "technician"),
    ("PUT", "/api/fleet/bundles/{version}", "/api/fleet/bundles/1.5.0", None,
     "administrator"),
    ("DELETE", "/api/fleet/bundles/{version}", "/api/fleet/bundles/1.5.0", None,
     "administrator"),
    ("POST", "/api/fleet/ca/rotate", "/api/fleet/ca/rotate", {}, "administrator"),
    ("POST", "/api/payments/{request_id}/status", "/api/payments/pay1/status", {},
     "administrator"),
    ("POST", "/api/payments/{request_id}/reverse", "/api/payments/pay1/reverse", {},
     "administrator"),
    ("POST", "/api/payments/{request_id}/resolve", "/api/payments/pay1/resolve",
     {"state": "declined", "reason": "checked"}, "administrator"),
    ("POST", "/api/staff/{badge}/reset", "/api/staff/S1001/reset", {}, "administrator"),
    ("POST", "/api/devices/{dev}/signin-reset", "/api/devices/kiosk-001/signin-reset", {},
     "administrator"),
    ("GET", "/api/audit", "/api/audit", None, "administrator"),
    ("GET", "/api/users", "/api/users", None, "administrator"),
    ("POST", "/api/users", "/api/users", {"username": "temp.user", "name": "临时",
                                          "role": "viewer", "password": PASSWORD},
     "administrator"),
    ("POST", "/api/users/{username}/disable", "/api/users/temp.user/disable", {},
     "administrator"),
    ("POST", "/api/users/{username}/enable", "/api/users/temp.user/enable", {},
     "administrator"),
    ("POST", "/api/users/{username}/password", "/api/users/temp.user/password",
     {"password": "a new long password"}, "administrator"),
]
#: Open to everyone (they decide themselves what to answer).
OPEN = {("GET", "/api/status"), ("POST", "/api/login"), ("POST", "/api/logout"),
        ("GET", "/api/me")}
#: Device downloads: a download token central put in a signed update.install, no session.
DOWNLOADS = {("GET", "/api/fleet/bundles/{version}/manifest.json"),
             ("GET", "/api/fleet/bundles/{version}/manifest.sig"),
             ("GET", "/api/fleet/bundles/{version}/files/{path:path}")}
RANK = {"viewer": 0, "technician": 1, "administrator": 2}


def _routes(routes: Any) -> Any:
    for r in routes:  # an included router is one entry here (FastAPI ≥ 0.16x)
        if hasattr(r, "original_router"):
            yield from _routes(r.original_router.routes)
        else:
            yield r


async def test_the_table_names_every_endpoint(env):
    _client, _store, _clock, app = env
    routes = {(m, r.path) for r in _routes(app.routes) if r.path.startswith("/api/")
              for m in getattr(r, "methods", ()) if m != "HEAD"}
    assert routes == {(m, p) for m, p, *_ in ENDPOINTS} | OPEN | DOWNLOADS


async def test_downloads_need_a_download_token_not_a_staff_session(env):
    client, _store, _clock, _app = env
    await add_user(client, "chen.jie", "administrator")
    staff = await bearer(client, "chen.jie")
    for _m, tpl in sorted(DOWNLOADS):
        path = tpl.replace("{version}", "1.5.0").replace("{path:path}", "wheels/x.whl")
        r = await client.get(path)
        assert r.status_code in (401, 404), (path, r.text)
        # A staff token is not a download token: never a file for it.
        r = await client.get(path, headers=staff)
        assert r.status_code in (403, 404), (path, r.text)


async def test_every_endpoint_needs_its_role(env):
    client, store, _clock, _app = env
    store.add_device("kiosk-001", "kiosk", T0)
    for user, role in (("zhao.min", "viewer"), ("wang.li", "technician"),
                       ("chen.jie", "administrator")):
        await add_user(client, user, role)
    auth = {role: await bearer(client, user) for user, role in
            (("zhao.min", "viewer"), ("wang.li", "technician"), ("chen.jie", "administrator"))}
    for method, _tpl, path, body, need in ENDPOINTS:
        r = await client.request(method, path, json=body)
        assert r.status_code == 401, (method, path, "nobody")
        for role in ("viewer", "technician", "administrator"):
            r = await client.request(method, path, json=body, headers=auth[role])
            if RANK[role] < RANK[need]:
                assert r.status_code == 403, (method, path, role, r.text)
                assert r.json()["need"] == need
            else:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
    # The wording ykt fw shows.
    r = await client.post("/api/fleet/devices/kiosk-001/commands", headers=auth["viewer"],
                          json={"name": "reboot"})
    assert (r.json()["message"], r.json()["message_zh"]) == ("technician role needed",
                                                             "需要技术员权限")
    # Refused writes are security events; refused reads are not.
    refused = [e for e in store.audit_entries() if e.action == "dashboard.forbidden"]
    assert {(e.actor, e.detail["need"]) for e in refused} == {
        ("zhao.min", "technician"), ("zhao.min", "administrator"),
        ("wang.li", "administrator")}
    assert all(e.detail["method"] != "GET" for e in refused)


# -- CSRF ------------------------------------------------------------------------------------

async def test_cookie_writes_need_the_ykt_header(env):
    client, store, _clock, _app = env
    await add_user(client, "wang.li", "technician")
    r = await client.post("/api/login", json={"username": "wang.li", "password": PASSWORD})
    assert r.status_code == 403 and r.json()["error"] == "csrf"  # sign-in needs it too
    assert (await login(client, "wang.li")).status_code == 200
    assert (await client.get("/api/devices")).status_code == 200  # reads do not
    r = await client.post("/api/devices", json={"id": "kiosk-007", "role": "kiosk"})
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = await client.post("/api/devices", json={"id": "kiosk-007", "role": "kiosk"},
                          headers={"X-Requested-With": "XMLHttpRequest"})
    assert r.status_code == 403
    assert store.device("kiosk-007") is None
    r = await client.post("/api/devices", json={"id": "kiosk-007", "role": "kiosk"},
                          headers=CSRF)
    assert r.status_code == 200 and store.device("kiosk-007") is not None
    assert (await client.post("/api/logout")).status_code == 403  # cookie, no header
    assert ("wang.li", "dashboard.csrf_refused") in actions(store)
    # A Bearer token is never sent by a browser on its own: no header needed.
    token = await bearer(client, "wang.li")
    r = await client.post("/api/devices", json={"id": "kiosk-008", "role": "kiosk"},
                          headers=token)
    assert r.status_code == 200


# -- lifetimes -------------------------------------------------------------------------------

async def test_a_session_ends_after_30_idle_minutes_and_12_hours_at_most(env):
    client, _store, clock, _app = env
    await add_user(client, "wang.li", "viewer")
    token = await bearer(client, "wang.li")
    for _ in range(3):  # used every 29 minutes: stays
        clock.advance(minutes=29)
        assert (await client.get("/api/devices", headers=token)).status_code == 200
    clock.advance(minutes=30)
    r = await client.get("/api/devices", headers=token)
    assert r.status_code == 401 and "expired" in r.json()["message"]
    clock.advance(minutes=1)
    assert (await client.get("/api/devices", headers=token)).status_code == 401  # stays ended

    token = await bearer(client, "wang.li")
    start = clock.now
    while clock.now - start < timedelta(hours=12) - timedelta(minutes=20):
        clock.advance(minutes=20)
        assert (await client.get("/api/me", headers=token)).status_code == 200
    clock.advance(minutes=20)  # busy all shift, but 12 h are over
    assert (await client.get("/api/me", headers=token)).status_code == 401


async def test_automatic_refreshes_do_not_keep_an_unattended_page_signed_in(env):
    client, _store, clock, _app = env
    await add_user(client, "wang.li", "viewer")
    assert (await login(client, "wang.li")).status_code == 200  # the cookie, like the page
    poll = {"X-Ykt-Poll": "1"}
    for _ in range(29):  # the page refreshing itself, nobody at the desk
        clock.advance(minutes=1)
        assert (await client.get("/api/devices", headers=poll)).status_code == 200
        assert (await client.get("/api/status", headers=poll)).json()["signed_in"] is True
    me = (await client.get("/api/me", headers=poll)).json()
    assert datetime.fromisoformat(me["session"]["idle_expires_at"]) == T0 + timedelta(
        minutes=30)
    clock.advance(minutes=1)
    r = await client.get("/api/devices", headers=poll)  # still checked, and refused now
    assert r.status_code == 401
    assert (await client.get("/api/me")).status_code == 401  # ended for good

    # What the staff member does (navigation, a click, a write) restarts the clock; with the
    # cookie (the page) and with a Bearer token (ykt fw) alike.
    for via in ("cookie", "bearer"):
        headers: dict[str, str] = {}
        if via == "cookie":
            assert (await login(client, "wang.li")).status_code == 200
        else:
            headers = await bearer(client, "wang.li")
        clock.advance(minutes=20)
        assert (await client.get("/api/devices", headers=headers)).status_code == 200
        clock.advance(minutes=20)  # 40 min after sign-in, 20 after the last use
        r = await client.get("/api/devices", headers={**headers, **poll})
        assert r.status_code == 200, via
        clock.advance(minutes=10)  # 30 min after the last use
        r = await client.get("/api/devices", headers={**headers, **poll})
        assert r.status_code == 401, via


# -- the admin token -------------------------------------------------------------------------

async def test_the_admin_token_is_the_bootstrap_administrator(env, tmp_path: Path):
    client, store, _clock, _app = env
    me = (await client.get("/api/me", headers=BOOT)).json()
    assert (me["username"], me["role"], me["via"]) == (ADMIN_ACTOR, "administrator",
                                                       "admin-token")
    await add_user(client, "chen.jie", "administrator")
    assert (ADMIN_ACTOR, "dashboard.user_add") in actions(store)
    # The browser may exchange it for a session (the sign-in form's second way).
    r = await client.post("/api/login", headers=CSRF, json={"token": ADMIN})
    assert r.status_code == 200 and r.json()["username"] == ADMIN_ACTOR
    assert "token" not in r.json()
    assert (await client.get("/api/audit")).status_code == 200
    session = r.cookies["ykt_session"]
    client.cookies.clear()
    r = await client.post("/api/login", headers=CSRF, json={"token": "not-the-token"})
    assert r.status_code == 401
    assert (await client.get("/api/me", headers={"Authorization": "Bearer wrong"})
            ).status_code == 401
    assert (await client.get("/api/me", headers={"Authorization": "Basic eDp5"})
            ).status_code == 401
    # A new admin token (central restarted with another file) ends such sessions.
    other = create_dashboard(store, Registry(store, tmp_path / "broker"), "a-new-token",
                             site_name="t")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=other),
                                 base_url="http://dash") as c2:
        r = await c2.get("/api/me", headers={"Authorization": f"Bearer {session}"})
        assert r.status_code == 401


# -- audit -----------------------------------------------------------------------------------

async def test_every_write_is_audited_with_the_user_name(env):
    client, store, _clock, _app = env
    store.add_device("kiosk-001", "kiosk", T0)
    await add_user(client, "wang.li", "technician")
    await add_user(client, "chen.jie", "administrator")
    await add_user(client, "zhao.min", "viewer")
    tech, admin = await bearer(client, "wang.li"), await bearer(client, "chen.jie")
    viewer = await bearer(client, "zhao.min")
    assert (await client.post("/api/devices", headers=tech,
                              json={"id": "kiosk-009", "role": "kiosk"})).status_code == 200
    assert (await client.post("/api/devices/kiosk-009/disable", headers=tech)
            ).status_code == 200
    assert (await client.post("/api/users/zhao.min/disable", headers=admin)).status_code == 200
    assert (await client.get("/api/devices", headers=viewer)).status_code == 401  # ended
    assert (await login(client, "zhao.min")).status_code == 401  # and cannot sign in
    assert (await client.post("/api/users/zhao.min/enable", headers=admin)).status_code == 200
    assert (await client.post("/api/users/zhao.min/password", headers=admin,
                              json={"password": "zhao's new password"})).status_code == 200
    r = await client.post("/api/users/chen.jie/disable", headers=admin)
    assert r.status_code == 409  # not yourself
    assert (await client.post("/api/users/nobody/disable", headers=admin)).status_code == 404
    assert (await client.post("/api/staff/S1001/reset", headers=admin)).status_code == 503
    assert (await client.get("/api/fleet/claim-bundle", headers=admin)).status_code == 200
    got = actions(store)
    for entry in (("wang.li", "staff.device_register"), ("wang.li", "staff.device_disable"),
                  ("chen.jie", "dashboard.user_disable"), ("chen.jie", "dashboard.user_enable"),
                  ("chen.jie", "dashboard.user_password"), ("chen.jie", "fleet.claim_bundle"),
                  ("wang.li", "dashboard.signin"), ("chen.jie", "dashboard.signin")):
        assert entry in got, entry
    disabled = next(e for e in store.audit_entries() if e.action == "dashboard.user_disable")
    assert disabled.detail == {"username": "zhao.min", "sessions_ended": 1}
    assert disabled.ts == T0  # the time of the write
    users = {u["username"]: u for u in (await client.get("/api/users", headers=admin)
                                        ).json()["users"]}
    assert users["zhao.min"]["disabled"] is False and users["wang.li"]["created_by"] == \
        ADMIN_ACTOR
    assert "pw_hash" not in users["wang.li"]
    assert store.verify_chain() == (True, None)


# -- two instances on one database -----------------------------------------------------------
# Two stores on one database are two connections, as two central instances have; race()
# starts each round's operations together (a barrier), 50 rounds.

ROUNDS = 50


def test_sign_in_tries_on_two_instances_are_counted_like_tries_on_one(tmp_path, central_db):
    stores = [open_store(central_db(tmp_path)) for _ in range(2)]
    try:
        clock = Clock()
        accounts = [StaffAccounts(s, clock=clock) for s in stores]
        allowed = race(stores, lambda k, _s, _r: accounts[k].reserve("wang.li", {})[0], ROUNDS)
        # The clock stands still: the free tries and the one that starts the wait, then
        # every try waits — however the 100 tries interleave.
        assert sum(a for pair in allowed for a in pair) == FREE_FAILURES + 1
        assert accounts[0].throttles()[0]["failures"] == FREE_FAILURES + 1
        assert [a for _, a in actions(stores[0])].count("dashboard.signin_throttled") == 1
    finally:
        for s in stores:
            s.close()


def test_a_session_signed_out_on_two_instances_at_once_ends_once(tmp_path, central_db):
    stores = [open_store(central_db(tmp_path)) for _ in range(2)]
    try:
        clock = Clock()
        accounts = [StaffAccounts(s, clock=clock) for s in stores]
        tokens = [accounts[0].open_session("wang.li")[0] for _ in range(ROUNDS)]
        ended = race(stores, lambda k, _s, r: accounts[k].end_session(tokens[r]), ROUNDS)
        assert all(sorted(pair, key=str) == [None, "wang.li"] for pair in ended), ended
        assert [a for _, a in actions(stores[0])].count("dashboard.signout") == ROUNDS
    finally:
        for s in stores:
            s.close()
