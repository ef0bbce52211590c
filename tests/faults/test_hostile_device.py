"""A stolen kiosk, played with its real credentials, against the real stack.

Real Mosquitto with the generated config and ACL, real ``ykt central``, real reference
platform (tests/faults/conftest.py). The attacker holds one kiosk's broker password (the
file sits on a machine in a public hall) and publishes on that kiosk's own topics — the
broker lets it, so everything below must be refused by central: every request type beyond
the kiosk's role, every staff action, cashier lock-out, and taking over another client's
connection. Each refusal is audited and listed on the dashboard, while the legitimate kiosk
and cashier flows keep working. Last, a scan of every database, log and the MQTT traffic of
those flows for the patients' ID numbers and names (docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import wait_until_async

from central.broker import mosquitto_passwd_set, render_acl
from central.platform.sim.ids import id_check_digit
from edge.uplink.client import Uplink
from edge.uplink.errors import Rejected
from yikatong.protocol.messages import REQUESTS, dump_body

pytestmark = [pytest.mark.stack]

PIN = "975310"
BADGE = "S7001"


def _patient(stack: Any, i: int) -> dict[str, Any]:
    first17 = f"33010619850607{i:03d}"
    body = {"card_no": f"HOSTILE{i:05d}", "id_number": first17 + id_check_digit(first17),
            "name": f"王小{'明红刚'[i % 3]}", "sex": "F", "birth_date": "1985-06-07",
            "phone": f"1391234{i:04d}", "balance_fen": 100_000, "insured": False}
    return dict(stack.platform_api("POST", "/admin/patients", json=body))


async def _device(stack: Any, tmp: Path, dev: str, role: str) -> Uplink:
    cfg = await asyncio.to_thread(stack.register, dev, tmp, role=role)
    up = Uplink(cfg, dev, role=role, version="1.0.0", rng=random.Random(1))
    await up.start()
    assert await up.wait_connected(15)
    return up


async def ask(up: Uplink, type_: str, body: dict[str, Any], *, auth: str | None = None
              ) -> dict[str, Any] | str:
    """The result, or the error code central answered with."""
    try:
        return dump_body(await up.request(type_, body, timeout=15, auth=auth))
    except Rejected as exc:
        return exc.code


def _csr() -> str:
    """A well-formed CSR for kiosk-h01's name (from a key the attacker made)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiosk-h01")])).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _get(stack: Any, path: str) -> Any:
    r = httpx.get(f"{stack.dashboard_url}{path}", timeout=10,
                  headers={"Authorization": f"Bearer {stack.admin_token}"})
    r.raise_for_status()
    return r.json()


def _reset_badge(stack: Any, badge: str) -> Any:
    return httpx.post(f"{stack.dashboard_url}/api/staff/{badge}/reset",
                      headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=10).json()


def _borrow_client_id(password: str, user: str, client_id: str, port: int) -> None:
    """Connect with ``user``'s own password but another client's id, stay a moment, leave."""
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.username_pw_set(user, password)
    c.on_connect = lambda *_a, **_k: got.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert got.wait(10)
        time.sleep(0.3)  # behaviour under test: hold the borrowed id while a kick could land
    finally:
        c.disconnect()
        c.loop_stop()


def _scan(root: Path, secrets_: list[str]) -> list[str]:
    """Files under ``root`` (but the platform's own) that hold any of ``secrets_``."""
    found = []
    files = [f for f in root.rglob("*") if f.is_file() and "platform" not in f.name
             and f.suffix not in (".toml", ".conf")]
    assert any(f.name == "central.db" for f in files)
    assert any("outbox" in f.name for f in files)
    for f in files:
        data = f.read_bytes()
        for secret in secrets_:
            for form in (secret.encode(), secret.encode("utf-16-le")):
                if form in data:
                    found.append(f"{secret[:3]}… in {f.relative_to(root)}")
    return found


async def test_a_stolen_kiosk_is_refused_and_seen_while_real_flows_work(
        stack: Any, tmp_path: Path) -> None:
    a, b = _patient(stack, 1), _patient(stack, 2)
    pa, pb = a["patient"], b["patient"]
    stack.platform_api("POST", "/admin/staff", json={"badge": BADGE, "name": "收费员甲",
                                                     "role": "cashier", "pin": PIN})
    kiosk = await _device(stack, tmp_path, "kiosk-h01", "kiosk")
    desk = await _device(stack, tmp_path, "desk-h01", "cashier")
    desk2 = await _device(stack, tmp_path, "desk-h02", "cashier")
    try:
        # -- the legitimate flows ----------------------------------------------------------
        me = await ask(kiosk, "patient.identify", {"by": "card", "value": pa["card_no"]})
        assert isinstance(me, dict), me
        ref = me["patient_id"]
        assert ref.startswith("pr_") and pa["patient_id"] not in str(me)
        assert me["name"] == "王*红" and me["id_number"].count("*") == 11
        assert "phone" not in me and "birth_date" not in me
        assert isinstance(await ask(kiosk, "bill.list", {"patient_id": ref}), dict)
        qr = await ask(kiosk, "patient.identify", {"by": "ehc_qr", "value": a["ehc_qr_static"]})
        assert isinstance(qr, dict) and qr["patient_id"] != ref  # a new reference per lookup
        paid = await ask(kiosk, "pay.create", {
            "patient_id": ref, "purpose": "topup", "refs": [], "amount_fen": 1000,
            "method": "wechat", "auth_code": "134567890123456780"})
        assert isinstance(paid, dict) and paid["state"] in ("approved", "pending"), paid

        login = await ask(desk, "staff.login", {"badge": BADGE, "pin": PIN})
        assert isinstance(login, dict), login
        token = login["session_token"]
        at_desk = await ask(desk, "patient.identify",
                            {"by": "id_number", "value": pb["id_number"]}, auth=token)
        assert isinstance(at_desk, dict), at_desk
        cash = await ask(desk, "pay.create", {
            "patient_id": at_desk["patient_id"], "purpose": "topup", "refs": [],
            "amount_fen": 5000, "method": "cash"}, auth=token)
        assert isinstance(cash, dict) and cash["state"] == "approved", cash
        refund = await ask(desk, "pay.refund", {"payment_id": cash["payment_id"],
                                                "amount_fen": 5000, "reason": "患者退费"},
                           auth=token)
        assert isinstance(refund, dict) and refund["state"] == "refunded", refund

        # -- the stolen kiosk ----------------------------------------------------------------
        attacks = {
            "cash top-up": ("pay.create", {"patient_id": ref, "purpose": "topup", "refs": [],
                                           "amount_fen": 100_000, "method": "cash"}),
            "huge wallet top-up": ("pay.create", {
                "patient_id": ref, "purpose": "topup", "refs": [], "amount_fen": 100_000_000,
                "method": "alipay", "auth_code": "2845678901234567"}),
            "refund": ("pay.refund", {"payment_id": cash["payment_id"], "amount_fen": 100,
                                      "reason": "x"}),
            "reverse a desk payment": ("pay.reverse", {"payment_id": cash["payment_id"]}),
            "status of a desk payment": ("pay.status", {"payment_id": cash["payment_id"]}),
            "staff sign-in": ("staff.login", {"badge": BADGE, "pin": PIN}),
            "staff sign-out": ("staff.logout", {}),
            "identify by typed ID number": ("patient.identify",
                                            {"by": "id_number", "value": pb["id_number"]}),
            "bills of the platform id": ("bill.list", {"patient_id": pb["patient_id"]}),
            "bills by the desk's reference": ("bill.list",
                                              {"patient_id": at_desk["patient_id"]}),
            "book for another patient": ("reg.book", {
                "patient_id": pb["patient_id"], "slot_id": "SL1", "pay_method": "later",
                "insured": False}),
            "reports of another patient": ("report.list", {"patient_id": "P000001"}),
            "fetch a report never listed": ("report.fetch", {"report_no": "LR00000001"}),
            "cancel a booking never seen": ("reg.cancel", {"booking_id": "BK00000001"}),
            "check in a booking never seen": ("reg.checkin", {"booking_id": "BK00000001"}),
            "mark a booking's slip printed": ("reg.printed", {"booking_id": "BK00000001"}),
            "bookings of another patient": ("reg.bookings", {"patient_id": pb["patient_id"]}),
            "mark a report printed": ("report.printed", {"report_no": "LR00000001"}),
            "ask for a staff session": ("staff.session", {}),
            "list a patient's payments": ("pay.list", {"patient_id": ref}),
        }
        # Every request type is tried: those a kiosk may send are tried beyond its limits,
        # or are harmless lookups of public data (departments, slots, the lost-card list).
        harmless = {"reg.departments", "reg.slots", "hotlist.delta"}
        # Any device may send these two, but central answers them only for a command it sent
        # that device (cert.rotate, logs.collect).
        unasked = {
            "a certificate renewal nobody asked for": ("device.cert_renew", {"csr": _csr()}),
            "a log upload for a command never sent": ("device.log_bundle", {
                "command_id": uuid.uuid4().hex, "lines": 1,
                "gzip_b64": base64.b64encode(gzip.compress(b"x\n")).decode()}),
        }
        assert ({t for t, _ in attacks.values()} | harmless
                | {t for t, _ in unasked.values()}) == set(REQUESTS)
        for what, (type_, body) in attacks.items():
            assert await ask(kiosk, type_, body) == "forbidden", what
        for what, (type_, body) in unasked.items():
            # This stack runs devices on passwords, without [fleet]: refused as not enabled
            # (with fleet trust on: tests/central/test_fleet_local_requests.py).
            assert await ask(kiosk, type_, body) == "not_enabled", what
        # Staff actions at a desk without the session central issued, or with another's.
        no_session = await ask(desk2, "pay.create", {
            "patient_id": at_desk["patient_id"], "purpose": "topup", "refs": [],
            "amount_fen": 100, "method": "cash"})
        assert no_session == "session_expired"
        stolen = await ask(desk2, "patient.identify", {"by": "card", "value": pb["card_no"]},
                           auth=token)
        assert stolen == "session_expired"
        forged = await ask(desk2, "patient.identify", {"by": "card", "value": pb["card_no"]},
                           auth=uuid.uuid4().hex + uuid.uuid4().hex)
        assert forged == "session_expired"

        # -- the cashier lock-out --------------------------------------------------------------
        for _ in range(6):
            assert await ask(kiosk, "staff.login", {"badge": BADGE, "pin": "000000"}) \
                == "forbidden"
        again = await ask(desk2, "staff.login", {"badge": BADGE, "pin": PIN})
        assert isinstance(again, dict), again  # the kiosk's attempts never reached the badge
        # A stolen desk guessing PINs is slowed down, not allowed to lock the badge.
        codes = [await ask(desk2, "staff.login", {"badge": BADGE, "pin": f"11111{n}"})
                 for n in range(6)]
        assert codes[:4] == ["invalid_credentials"] * 4, codes
        assert set(codes[4:]) == {"throttled"}, codes
        assert (await asyncio.to_thread(_reset_badge, stack, BADGE))["reset"] is True
        back = await ask(desk, "staff.login", {"badge": BADGE, "pin": PIN})
        assert isinstance(back, dict), back  # the platform never locked the badge either
        # The stolen desk itself stays slowed down until an administrator clears it too.
        assert await ask(desk2, "staff.login", {"badge": BADGE, "pin": PIN}) == "throttled"

        # -- every refusal is audited and on the dashboard ---------------------------------------
        events = (await asyncio.to_thread(_get, stack, "/api/security?limit=200"))["events"]
        refused = [e for e in events if e["action"] == "request.forbidden"
                   and e["detail"]["dev"] == "kiosk-h01"]
        assert len(refused) >= len(attacks) + 6
        assert {e["detail"]["type"] for e in refused} >= {t for t, _ in attacks.values()}
        assert any(e["action"] == "staff.session_rejected" for e in events)
        assert any(e["action"] == "staff.signin_throttled" for e in events)
        audit = (await asyncio.to_thread(_get, stack, "/api/audit"))["entries"]
        assert any(e["action"] == "staff.badge_reset" for e in audit)
        status = await asyncio.to_thread(_get, stack, "/api/status")
        assert status["audit_chain"]["ok"] is True
    finally:
        for up in (kiosk, desk, desk2):
            await up.stop()


async def test_no_client_can_take_over_another_clients_connection(
        stack: Any, tmp_path: Path) -> None:
    desk = await _device(stack, tmp_path, "desk-h11", "cashier")
    kiosk_cfg = await asyncio.to_thread(stack.register, "kiosk-h11", tmp_path)
    password = kiosk_cfg.password_file.read_text().strip()
    try:
        for victim in ("desk-h11", "central", "central-fleet"):
            for _ in range(3):
                await asyncio.to_thread(_borrow_client_id, password, "kiosk-h11", victim,
                                        stack.broker.port)
        # The real desk and central were never kicked off: the desk still gets answers.
        assert desk.connected
        assert await ask(desk, "hotlist.delta", {"since_version": 0}) != "forbidden"
        st = await asyncio.to_thread(_get, stack, "/api/status")
        assert st["forwarder"]["connected"] is True
        assert st["forwarder"]["disconnects"] == 0, st["forwarder"]
    finally:
        await desk.stop()


async def test_no_full_id_number_rests_outside_the_documented_places(
        stack: Any, tmp_path: Path) -> None:
    """docs/privacy.md: a full ID number crosses MQTT only in a desk's identify-by-number."""
    pats = [_patient(stack, i) for i in (5, 6)]
    ids = [p["patient"]["id_number"] for p in pats]
    names = [p["patient"]["name"] for p in pats]
    phones = [p["patient"]["phone"] for p in pats]
    stack.platform_api("POST", "/admin/staff", json={"badge": BADGE, "name": "收费员甲",
                                                     "role": "cashier", "pin": PIN})
    kiosk = await _device(stack, tmp_path, "kiosk-h21", "kiosk")
    desk = await _device(stack, tmp_path, "desk-h21", "cashier")
    # A capture account beside central's (its own username: the broker binds client ids to
    # usernames, so borrowing central's would knock the forwarder off).
    capture_pw = uuid.uuid4().hex
    mosquitto_passwd_set(stack.passwd, "capture", capture_pw)
    stack.acl.write_text(render_acl("central", "central-fleet", "capture"))
    stack.broker.reload()
    capture: list[tuple[str, bytes]] = []
    sniff = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="capture")
    sniff.username_pw_set("capture", capture_pw)
    sniff.on_message = lambda _c, _u, m: capture.append((m.topic, bytes(m.payload)))
    subscribed = threading.Event()
    sniff.on_connect = lambda c, *_a, **_k: (c.subscribe("ykt/v1/#", 1), subscribed.set())
    sniff.connect("127.0.0.1", stack.broker.port)
    sniff.loop_start()
    assert subscribed.wait(10)
    try:
        for p in pats:
            me = await ask(kiosk, "patient.identify",
                           {"by": "card", "value": p["patient"]["card_no"]})
            assert isinstance(me, dict), me
            assert isinstance(await ask(kiosk, "bill.list", {"patient_id": me["patient_id"]}),
                              dict)
            assert isinstance(await ask(kiosk, "report.list",
                                        {"patient_id": me["patient_id"]}), dict)
        token = (await ask(desk, "staff.login", {"badge": BADGE, "pin": PIN}))["session_token"]
        typed = await ask(desk, "patient.identify", {"by": "id_number", "value": ids[1]},
                          auth=token)
        assert isinstance(typed, dict), typed
        await ask(desk, "pay.create", {"patient_id": typed["patient_id"], "purpose": "topup",
                                       "refs": [], "amount_fen": 800, "method": "cash"},
                  auth=token)
        await ask(desk, "staff.logout", {}, auth=token)
        # the devices' outboxes settle (central's writer is flushed by its stop below)
        await wait_until_async(
            lambda: kiosk.outbox.pending_count() == 0 and desk.outbox.pending_count() == 0,
            15, what="nothing pending in the devices' outboxes")
    finally:
        await kiosk.stop()
        await desk.stop()
        sniff.loop_stop()
        sniff.disconnect()
    # MQTT: the only full ID number is the desk's typed lookup request, inside TLS.
    carrying = [t for t, data in capture for i in ids if i.encode() in data]
    assert carrying == ["ykt/v1/dev/desk-h21/up/req"], carrying
    for t, data in capture:
        for secret in (*names, *phones):
            assert secret.encode() not in data, (t, secret)
    # Files: central's database and broker dir, every process log, the devices' outboxes.
    await asyncio.to_thread(stack.stop_central)  # checkpoints central's WAL
    assert await asyncio.to_thread(_scan, tmp_path, [*ids, *names, *phones]) == []
