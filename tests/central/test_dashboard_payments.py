"""Staff resolve unresolved payments from the dashboard: token required, every action audited.

On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pg_support import BOTH_ENGINES

from central.dashboard.app import create_dashboard
from central.payments import Payments
from central.registry import Registry
from central.store import open_store
from yikatong.protocol.envelope import new_envelope

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PAY = {"patient_id": "P001", "purpose": "registration", "refs": ["B1"], "amount_fen": 1200,
       "method": "prepaid"}
TOKEN = "staff-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


pytestmark = BOTH_ENGINES


@pytest.fixture
async def env(tmp_path: Path, fake_platform, central_db):
    store = open_store(central_db(tmp_path))
    payments = Payments(store, fake_platform, clock=lambda: T0)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), TOKEN,
                           site_name="测试", payments=payments)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        yield client, store, payments, fake_platform
    store.close()


async def open_payment(payments: Payments, platform, rid: str, *action: str) -> None:
    e = new_envelope("pay.create", "kiosk-001", PAY, now=T0, id=rid,
                     exp=T0 + timedelta(seconds=60))
    await payments.before_call(e)
    platform.script("pay.create", *action)
    result = await platform.call("pay.create", dict(e.body), idempotency_key=rid)
    await payments.observe(e, result, None)


async def test_staff_actions_need_the_admin_token(env) -> None:
    client, store, payments, platform = env
    await open_payment(payments, platform, "paystaff01", "pending")
    before = len(store.audit_entries())
    for act, body in (("status", {}), ("reverse", {}),
                      ("resolve", {"state": "declined", "reason": "checked"})):
        r = await client.post(f"/api/payments/paystaff01/{act}", json=body)
        assert r.status_code == 401
        r = await client.post(f"/api/payments/paystaff01/{act}", json=body,
                              headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    assert payments.get("paystaff01").state == "pending"
    assert len(store.audit_entries()) == before
    assert platform.calls["paystaff01"] == 1


async def test_staff_query_status_now_resolves_and_is_audited(env) -> None:
    client, store, payments, platform = env
    await open_payment(payments, platform, "paystaff02", "pending")
    pid = payments.get("paystaff02").payment_id
    platform.payments[pid]["state"] = "approved"  # the payer confirmed on the phone
    r = await client.post("/api/payments/paystaff02/status", json={"operator": "wang.li"},
                          headers=AUTH)
    assert r.status_code == 200 and r.json()["payment"]["state"] == "approved"
    # Charged, but the kiosk was last told "pending": still listed until it learns it.
    (still,) = (await client.get("/api/payments/unresolved", headers=AUTH)
                ).json()["payments"]
    assert still["state"] == "approved" and still["device_told"] is False
    ask = new_envelope("pay.status", "kiosk-001", {"payment_id": pid}, now=T0)
    await payments.observe(ask, dict(platform.payments[pid]), None)
    assert (await client.get("/api/payments/unresolved", headers=AUTH)
            ).json()["payments"] == []
    entries = [(e.actor, e.action) for e in store.audit_entries()]
    assert ("staff:wang.li", "payment.staff_status") in entries
    assert ("staff:wang.li", "payment.state") in entries
    r = await client.post("/api/payments/paystaff02/status", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_final"


async def test_staff_reverse_now_reverses_once(env) -> None:
    client, store, payments, platform = env
    await open_payment(payments, platform, "paystaff03", "pending")
    r = await client.post("/api/payments/paystaff03/reverse", headers=AUTH)
    assert r.status_code == 200 and r.json()["payment"]["state"] == "reversed"
    pid = payments.get("paystaff03").payment_id
    assert platform.payments[pid]["state"] == "reversed"
    assert sum(v for k, v in platform.effects.items() if k != "paystaff03") == 1
    # The admin token with no operator named: recorded as the bootstrap administrator.
    assert ("staff:admin-token", "payment.staff_reverse") in [
        (e.actor, e.action) for e in store.audit_entries()]
    r = await client.post("/api/payments/paystaff03/reverse", headers=AUTH)
    assert r.status_code == 409  # final now: nothing more to reverse


async def test_staff_mark_resolved_needs_a_reason_and_a_final_state(env) -> None:
    client, store, payments, platform = env
    e = new_envelope("pay.create", "kiosk-001", PAY, now=T0, id="paystaff04")
    await payments.before_call(e)  # central died during the call: no payment id
    r = await client.post("/api/payments/paystaff04/status", headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_payment_id"
    r = await client.post("/api/payments/paystaff04/resolve", headers=AUTH,
                          json={"state": "approved"})
    assert r.status_code == 422
    r = await client.post("/api/payments/paystaff04/resolve", headers=AUTH,
                          json={"state": "pending", "reason": "looked"})
    assert r.status_code == 422
    assert payments.get("paystaff04").state == "created"
    r = await client.post("/api/payments/paystaff04/resolve", headers=AUTH,
                          json={"state": "declined", "operator": "zhao",
                                "reason": "no such charge on the platform"})
    assert r.status_code == 200 and r.json()["payment"]["state"] == "declined"
    info = payments.get("paystaff04")
    assert info.reason == "staff: no such charge on the platform"
    audit = [e for e in store.audit_entries() if e.action == "payment.staff_resolve"]
    assert len(audit) == 1 and audit[0].actor == "staff:zhao"
    assert audit[0].detail["reason"] == "no such charge on the platform"
    assert platform.calls.get("paystaff04", 0) == 0
    r = await client.post("/api/payments/nosuchpay/resolve", headers=AUTH,
                          json={"state": "declined", "reason": "x" * 5})
    assert r.status_code == 404
    assert store.verify_chain() == (True, None)


async def test_a_signed_in_administrator_acts_under_their_own_name(env) -> None:
    client, store, payments, platform = env
    await open_payment(payments, platform, "paystaff05", "pending")
    for user, role in (("chen.jie", "administrator"), ("wang.li", "technician")):
        r = await client.post("/api/users", headers=AUTH, json={
            "username": user, "name": user, "role": role, "password": "correct horse battery"})
        assert r.status_code == 201
    tokens = {}
    for user in ("chen.jie", "wang.li"):
        r = await client.post("/api/login", headers={"X-Requested-With": "ykt"},
                              json={"username": user, "password": "correct horse battery",
                                    "want_token": True})
        tokens[user] = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await client.post("/api/payments/paystaff05/reverse", headers=tokens["wang.li"])
    assert r.status_code == 403  # payment actions are for administrators
    r = await client.post("/api/payments/paystaff05/reverse", headers=tokens["chen.jie"],
                          json={"operator": "someone.else"})
    assert r.status_code == 200 and r.json()["payment"]["state"] == "reversed"
    actors = {e.actor for e in store.audit_entries() if e.action == "payment.staff_reverse"}
    assert actors == {"staff:chen.jie"}  # the name given in the body does not count
