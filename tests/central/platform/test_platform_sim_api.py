"""The reference platform's operations over HTTP (TestClient on a temporary database)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.ids import id_check_digit, is_valid_id_number
from central.platform.sim.models import open_database

API = "/api/v1"
_keys = itertools.count(1)


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{next(_keys)}"}


def new_patient(client: TestClient, *, balance: int = 0, insured: bool = True,
                card: str = "320100999900000001") -> dict[str, Any]:
    body17 = "11010519900307123"
    r = client.post("/admin/patients", json={
        "card_no": card, "id_number": body17 + id_check_digit(body17), "name": "张三",
        "sex": "M", "birth_date": "1990-03-07", "phone": "13800001234",
        "balance_fen": balance, "insured": insured})
    assert r.status_code == 200, r.text
    return r.json()


def open_slot(client: TestClient, *, period: str = "am", date: str = "2025-03-10",
              min_remaining: int = 1) -> dict[str, Any]:
    for dept in client.get(f"{API}/departments").json()["departments"]:
        slots = client.get(f"{API}/slots", params={"dept_code": dept["code"], "date": date})
        for slot in slots.json()["slots"]:
            if slot["period"] == period and slot["remaining"] >= min_remaining:
                return slot
    raise AssertionError("no open slot in the seeded data")


def book(client: TestClient, patient_id: str, slot_id: str, method: str = "later",
         **extra: Any) -> Any:
    return client.post(f"{API}/bookings", headers=extra.pop("headers", None) or key(),
                       json={"patient_id": patient_id, "slot_id": slot_id,
                             "pay_method": method, **extra})


def stats(client: TestClient) -> dict[str, int]:
    return client.get("/admin/stats").json()["effects"]


# --- identification ---------------------------------------------------------------------

def test_identify_by_card_id_number_and_both_qr_forms(client: TestClient) -> None:
    p = new_patient(client, balance=1234)
    pid = p["patient"]["patient_id"]
    cases = [("card", p["patient"]["card_no"]), ("id_number", p["patient"]["id_number"]),
             ("ehc_qr", p["ehc_qr_static"]), ("ehc_qr", f"{p['ehc_id'].upper()}:0:{'ab' * 16}")]
    for by, value in cases:
        r = client.post(f"{API}/patients/identify", json={"by": by, "value": value})
        assert r.status_code == 200, (by, r.text)
        assert r.json() == {**p["patient"], "patient_id": pid}
        assert r.json()["balance_fen"] == 1234


@pytest.mark.parametrize(("by", "value", "status", "code"), [
    ("card", "320100000000000000", 404, "not_found"),
    ("id_number", "110105199003071230", 422, "invalid_id_number"),
    ("ehc_qr", "ab" * 32 + ":2", 422, "invalid_qr"),
    ("ehc_qr", "ab" * 32 + ":1", 404, "not_found"),
    ("passport", "E12345678", 400, "invalid_request"),
])
def test_identify_errors_are_typed(client: TestClient, by: str, value: str, status: int,
                                   code: str) -> None:
    r = client.post(f"{API}/patients/identify", json={"by": by, "value": value})
    assert r.status_code == status
    body = r.json()
    assert body["code"] == code and body["message"] and body["message_zh"]


def test_seeded_patients_are_realistic(client: TestClient) -> None:
    patients = client.get("/admin/patients").json()
    assert len(patients) == 50
    for entry in patients:
        p = entry["patient"]
        assert is_valid_id_number(p["id_number"])
        # GB 11643: the 17th digit is odd for men, even for women; birth date inside.
        assert int(p["id_number"][16]) % 2 == (1 if p["sex"] == "M" else 0)
        assert p["id_number"][6:14] == p["birth_date"].replace("-", "")
        assert len(p["card_no"]) == 18
        assert len(entry["ehc_id"]) == 64
    assert any(p["patient"]["balance_fen"] > 0 for p in patients)
    assert any(not p["patient"]["insured"] for p in patients)


def test_lost_card_is_refused_and_hotlist_delta_follows_admin_changes(
    client: TestClient,
) -> None:
    p = new_patient(client)
    card = p["patient"]["card_no"]
    full = client.get(f"{API}/hotlist", params={"since_version": 0}).json()
    assert full["full"] is True and card not in full["added"]
    version = full["version"]

    r = client.post("/admin/hotlist", json={"card_no": card, "action": "add"})
    assert r.json() == {"version": version + 1, "card_no": card, "listed": True}
    r = client.post(f"{API}/patients/identify", json={"by": "card", "value": card})
    assert r.status_code == 422 and r.json()["code"] == "card_blocked"
    delta = client.get(f"{API}/hotlist", params={"since_version": version}).json()
    assert delta == {"version": version + 1, "full": False, "added": [card], "removed": []}

    client.post("/admin/hotlist", json={"card_no": card, "action": "remove", "reason": "found"})
    delta = client.get(f"{API}/hotlist", params={"since_version": version + 1}).json()
    assert delta == {"version": version + 2, "full": False, "added": [], "removed": [card]}
    # Removing twice changes nothing; a client from the future gets the full list.
    assert client.post("/admin/hotlist", json={"card_no": card, "action": "remove"}
                       ).json()["version"] == version + 2
    assert client.get(f"{API}/hotlist", params={"since_version": 999}).json()["full"] is True
    assert client.post(f"{API}/patients/identify",
                       json={"by": "card", "value": card}).status_code == 200


# --- departments, slots, bookings --------------------------------------------------------

def test_departments_have_names_locations_and_english(client: TestClient) -> None:
    depts = client.get(f"{API}/departments").json()["departments"]
    names = {d["name"] for d in depts}
    assert {"内科", "心血管内科", "儿科", "口腔科", "中医科"} <= names
    assert len(depts) >= 12
    assert all(d["name_en"] and d["location"].startswith("门诊楼") for d in depts)


def test_slots_cover_today_to_a_week_and_fees_follow_titles(client: TestClient) -> None:
    fees = {"主任医师": 5000, "副主任医师": 3000, "主治医师": 1500, "住院医师": 800}
    r = client.get(f"{API}/slots", params={"dept_code": "NK", "date": "2025-03-17"})
    assert r.status_code == 200
    slots = r.json()["slots"]
    assert slots
    for s in slots:
        assert s["fee_fen"] == fees[s["title"]]
        assert s["closes_at"] == {"am": "11:00", "pm": "16:30"}[s["period"]]
    for date in ("2025-03-09", "2025-03-18"):
        r = client.get(f"{API}/slots", params={"dept_code": "NK", "date": date})
        assert r.status_code == 422 and r.json()["code"] == "date_out_of_range"
    r = client.get(f"{API}/slots", params={"dept_code": "NOPE", "date": "2025-03-10"})
    assert r.status_code == 404
    r = client.get(f"{API}/slots", params={"dept_code": "NK", "date": "10/03/2025"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_request"


def test_booking_takes_a_number_and_queue_numbers_increase(client: TestClient) -> None:
    slot = open_slot(client, min_remaining=2)
    a = new_patient(client)["patient"]["patient_id"]
    seeded = client.get("/admin/patients").json()[0]["patient"]["patient_id"]
    r1, r2 = book(client, a, slot["slot_id"]), book(client, seeded, slot["slot_id"])
    assert r1.status_code == r2.status_code == 200
    assert r2.json()["queue_no"] == r1.json()["queue_no"] + 1
    assert r1.json()["status"] == "booked" and r1.json()["fee_fen"] == slot["fee_fen"]
    after = next(s for s in client.get(f"{API}/slots", params={
        "dept_code": r1.json()["dept_code"], "date": slot["date"]}).json()["slots"]
        if s["slot_id"] == slot["slot_id"])
    assert after["remaining"] == slot["remaining"] - 2
    listed = client.get(f"{API}/bookings", params={"patient_id": a}).json()["bookings"]
    assert listed == [r1.json()]
    assert client.get(f"{API}/bookings", params={"patient_id": a, "date": "2025-03-11"}
                      ).json() == {"bookings": []}
    again = book(client, a, slot["slot_id"])
    assert again.status_code == 422 and again.json()["code"] == "already_booked"


def test_slot_exhaustion_is_slot_full(client: TestClient) -> None:
    slot = open_slot(client)
    patients = [p["patient"]["patient_id"] for p in client.get("/admin/patients").json()[:-2]]
    results = [book(client, pid, slot["slot_id"]) for pid in patients[: slot["remaining"] + 2]]
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code != 200]
    assert len(ok) == slot["remaining"]
    assert [r.json()["code"] for r in refused] == ["slot_full", "slot_full"]
    assert len({r.json()["queue_no"] for r in ok}) == len(ok)
    assert stats(client)["reg.book"] == slot["remaining"]


def test_cutoff_follows_the_injected_clock(client: TestClient, clock: Any) -> None:
    slot = open_slot(client, period="am")
    pid = new_patient(client)["patient"]["patient_id"]
    clock.set_local("11:00")
    r = client.get(f"{API}/slots", params={"dept_code": _dept(client, slot),
                                           "date": slot["date"]})
    closed = next(s for s in r.json()["slots"] if s["slot_id"] == slot["slot_id"])
    assert closed["remaining"] == 0
    r = book(client, pid, slot["slot_id"])
    assert r.status_code == 422 and r.json()["code"] == "slot_closed"
    clock.set_local("10:59")
    assert book(client, pid, slot["slot_id"]).status_code == 200


def _dept(client: TestClient, slot: dict[str, Any]) -> str:
    for dept in client.get(f"{API}/departments").json()["departments"]:
        ids = {s["slot_id"] for s in client.get(f"{API}/slots", params={
            "dept_code": dept["code"], "date": slot["date"]}).json()["slots"]}
        if slot["slot_id"] in ids:
            return str(dept["code"])
    raise AssertionError("slot not found")


def test_prepaid_booking_pays_and_cancel_refunds(client: TestClient) -> None:
    slot = open_slot(client, period="pm")
    pid = new_patient(client, balance=slot["fee_fen"] + 100)["patient"]["patient_id"]
    r = book(client, pid, slot["slot_id"], "prepaid")
    assert r.status_code == 200 and r.json()["status"] == "paid"
    ident = client.post(f"{API}/patients/identify", json={"by": "card",
                                                          "value": "320100999900000001"})
    assert ident.json()["balance_fen"] == 100
    c = client.post(f"{API}/bookings/{r.json()['booking_id']}/cancel", headers=key())
    assert c.json() == {"booking_id": r.json()["booking_id"], "status": "cancelled",
                        "refund_fen": slot["fee_fen"], "refund_id": c.json()["refund_id"],
                        "refund_method": "prepaid", "balance_fen": slot["fee_fen"] + 100}
    ident = client.post(f"{API}/patients/identify", json={"by": "card",
                                                          "value": "320100999900000001"})
    assert ident.json()["balance_fen"] == slot["fee_fen"] + 100
    again = client.post(f"{API}/bookings/{r.json()['booking_id']}/cancel", headers=key())
    assert again.status_code == 422 and again.json()["code"] == "already_cancelled"
    assert stats(client)["reg.cancel"] == 1


def test_prepaid_booking_with_low_balance_is_refused_without_effect(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client, balance=slot["fee_fen"] - 1)["patient"]["patient_id"]
    r = book(client, pid, slot["slot_id"], "prepaid")
    assert r.status_code == 422 and r.json()["code"] == "insufficient_balance"
    assert "reg.book" not in stats(client)
    assert client.get(f"{API}/bookings", params={"patient_id": pid}).json()["bookings"] == []


def test_insured_booking_needs_insurance(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client, insured=False)["patient"]["patient_id"]
    r = book(client, pid, slot["slot_id"], insured=True)
    assert r.status_code == 422 and r.json()["code"] == "not_insured"


# --- idempotency ---------------------------------------------------------------------------

def test_same_key_same_body_replays_without_a_second_effect(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client)["patient"]["patient_id"]
    headers = {"Idempotency-Key": "kiosk-7:req-1"}
    first = book(client, pid, slot["slot_id"], headers=headers)
    second = book(client, pid, slot["slot_id"], headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert stats(client)["reg.book"] == 1
    mismatch = book(client, pid, slot["slot_id"], "cash", headers=headers)
    assert mismatch.status_code == 409 and mismatch.json()["code"] == "duplicate_mismatch"
    assert stats(client)["reg.book"] == 1


def test_a_stored_refusal_is_replayed_too(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client, balance=0)["patient"]["patient_id"]
    headers = {"Idempotency-Key": "refused-once"}
    r1 = book(client, pid, slot["slot_id"], "prepaid", headers=headers)
    client.post("/admin/patients", json={})  # unrelated traffic in between
    r2 = book(client, pid, slot["slot_id"], "prepaid", headers=headers)
    assert r1.status_code == r2.status_code == 422 and r1.json() == r2.json()


def test_mutations_need_an_idempotency_key(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client)["patient"]["patient_id"]
    r = client.post(f"{API}/bookings", json={"patient_id": pid, "slot_id": slot["slot_id"],
                                             "pay_method": "later"})
    assert r.status_code == 400 and r.json()["code"] == "missing_idempotency_key"


# --- bills and payments --------------------------------------------------------------------

def _patient_with_bill(client: TestClient) -> tuple[str, dict[str, Any]]:
    for entry in client.get("/admin/patients").json()[:-2]:
        pid = entry["patient"]["patient_id"]
        bills = client.get(f"{API}/bills", params={"patient_id": pid}).json()["bills"]
        if bills:
            return pid, bills[0]
    raise AssertionError("no seeded bills")


def test_bills_have_items_that_add_up(client: TestClient) -> None:
    _, bill = _patient_with_bill(client)
    assert sum(i["amount_fen"] for i in bill["items"]) == bill["total_fen"]
    assert all(i["qty"] * i["unit_price_fen"] == i["amount_fen"] for i in bill["items"])
    assert client.get(f"{API}/bills", params={"patient_id": "P999999"}).status_code == 404


def pay(client: TestClient, **body: Any) -> Any:
    headers = body.pop("headers", None) or key()
    return client.post(f"{API}/payments", json=body, headers=headers)


def test_cash_payment_settles_a_bill(client: TestClient) -> None:
    pid, bill = _patient_with_bill(client)
    wrong = pay(client, patient_id=pid, purpose="bills", refs=[bill["bill_id"]],
                amount_fen=bill["total_fen"] + 1, method="cash")
    assert wrong.status_code == 422 and wrong.json()["code"] == "amount_mismatch"
    r = pay(client, patient_id=pid, purpose="bills", refs=[bill["bill_id"]],
            amount_fen=bill["total_fen"], method="cash")
    assert r.status_code == 200 and r.json()["state"] == "approved" and r.json()["txn_id"]
    left = client.get(f"{API}/bills", params={"patient_id": pid}).json()["bills"]
    assert bill["bill_id"] not in {b["bill_id"] for b in left}
    again = pay(client, patient_id=pid, purpose="bills", refs=[bill["bill_id"]],
                amount_fen=bill["total_fen"], method="cash")
    assert again.json()["code"] == "already_paid"


def test_prepaid_payment_with_insufficient_balance_is_refused(client: TestClient) -> None:
    slot = open_slot(client)
    pid = new_patient(client, balance=100)["patient"]["patient_id"]
    b = book(client, pid, slot["slot_id"]).json()
    r = pay(client, patient_id=pid, purpose="registration", refs=[b["booking_id"]],
            amount_fen=b["fee_fen"], method="prepaid")
    assert r.status_code == 422 and r.json()["code"] == "insufficient_balance"
    assert "pay.create" not in stats(client)


def test_wechat_pending_resolves_to_approved_by_the_clock(client: TestClient,
                                                          clock: Any) -> None:
    slot = open_slot(client)
    pid = new_patient(client)["patient"]["patient_id"]
    b = book(client, pid, slot["slot_id"], "wechat").json()
    body = {"patient_id": pid, "purpose": "registration", "refs": [b["booking_id"]],
            "amount_fen": b["fee_fen"], "method": "wechat"}
    bad = pay(client, **body, auth_code="281234567890123455")  # an Alipay code
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_auth_code"
    r = pay(client, **body, auth_code="134567890123456785")
    assert r.json()["state"] == "pending" and r.json()["txn_id"] is None
    payment_id = r.json()["payment_id"]
    # While the patient is confirming, the booking cannot be paid a second time.
    dup = pay(client, **body, auth_code="134567890123456780")
    assert dup.json()["code"] == "payment_in_progress"
    clock.advance(9)
    assert client.get(f"{API}/payments/{payment_id}").json()["state"] == "pending"
    clock.advance(1)
    done = client.get(f"{API}/payments/{payment_id}").json()
    assert done["state"] == "approved" and done["txn_id"].startswith("42000")
    listed = client.get(f"{API}/bookings", params={"patient_id": pid}).json()["bookings"]
    assert listed[0]["status"] == "paid"


@pytest.mark.parametrize(("code", "state", "reason"), [
    ("134567890123456780", "approved", None),
    ("2812345678901233", "approved", None),
    ("134567890123456784", "unknown", None),
    ("134567890123456788", "declined", "wallet_insufficient_funds"),
    ("281234567890123456789", "declined", "auth_code_expired"),
])
def test_wallet_outcome_is_chosen_by_the_last_digit(client: TestClient, code: str, state: str,
                                                    reason: str | None) -> None:
    pid = new_patient(client)["patient"]["patient_id"]
    method = "wechat" if code.startswith("1") else "alipay"
    r = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=5000, method=method,
            auth_code=code)
    assert r.status_code == 200
    assert (r.json()["state"], r.json()["reason"]) == (state, reason)
    assert r.json()["balance_fen"] == (5000 if state == "approved" else 0)


def test_reverse_pending_payment_is_idempotent_and_frees_the_booking(
    client: TestClient, clock: Any,
) -> None:
    slot = open_slot(client)
    pid = new_patient(client)["patient"]["patient_id"]
    b = book(client, pid, slot["slot_id"], "alipay").json()
    body = {"patient_id": pid, "purpose": "registration", "refs": [b["booking_id"]],
            "amount_fen": b["fee_fen"], "method": "alipay"}
    p = pay(client, **body, auth_code="2812345678901237").json()  # never confirmed
    assert p["state"] == "pending"
    clock.advance(60)
    assert client.get(f"{API}/payments/{p['payment_id']}").json()["state"] == "pending"
    r1 = client.post(f"{API}/payments/{p['payment_id']}/reverse", headers=key())
    r2 = client.post(f"{API}/payments/{p['payment_id']}/reverse", headers=key())
    assert r1.json()["state"] == r2.json()["state"] == "reversed"
    assert stats(client)["pay.reverse"] == 1
    assert pay(client, **body, auth_code="2812345678901230").json()["state"] == "approved"


def test_reverse_rules_for_approved_declined_and_settled(client: TestClient,
                                                         clock: Any) -> None:
    pid = new_patient(client, balance=0)["patient"]["patient_id"]
    top = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=8000, method="cash")
    assert top.json()["balance_fen"] == 8000
    rev = client.post(f"{API}/payments/{top.json()['payment_id']}/reverse", headers=key())
    assert rev.json() == {**top.json(), "state": "reversed", "balance_fen": 0}
    declined = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=100,
                   method="wechat", auth_code="134567890123456789").json()
    r = client.post(f"{API}/payments/{declined['payment_id']}/reverse", headers=key())
    assert r.status_code == 422 and r.json()["code"] == "not_reversible"
    kept = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=3000,
               method="cash").json()
    clock.advance(24 * 3600)  # the daily settlement has run
    r = client.post(f"{API}/payments/{kept['payment_id']}/reverse", headers=key())
    assert r.status_code == 422 and r.json()["code"] == "already_settled"
    assert client.get(f"{API}/payments/NOPE").status_code == 404


def test_refund_of_a_topup_and_its_limits(client: TestClient) -> None:
    pid = new_patient(client)["patient"]["patient_id"]
    top = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=10000,
              method="wechat", auth_code="104567890123456781").json()
    url = f"{API}/payments/{top['payment_id']}/refunds"
    r = client.post(url, json={"amount_fen": 4000, "reason": "patient request"}, headers=key())
    assert r.status_code == 200
    assert r.json()["state"] == "refunded" and r.json()["amount_fen"] == 4000
    too_much = client.post(url, json={"amount_fen": 6001, "reason": "x"}, headers=key())
    assert too_much.status_code == 422 and too_much.json()["code"] == "refund_exceeds"
    bal = client.get(f"{API}/payments/{top['payment_id']}").json()["balance_fen"]
    assert bal == 6000
    assert stats(client)["pay.refund"] == 1


def test_a_patients_payments_are_listed_with_what_may_still_be_refunded(
        client: TestClient) -> None:
    pid = new_patient(client)["patient"]["patient_id"]
    other = client.get("/admin/patients").json()[0]["patient"]["patient_id"]
    first = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=10000,
                method="cash").json()
    second = pay(client, patient_id=pid, purpose="topup", refs=[], amount_fen=2000,
                 method="wechat", auth_code="104567890123456781").json()
    pay(client, patient_id=other, purpose="topup", refs=[], amount_fen=500, method="cash")
    client.post(f"{API}/payments/{first['payment_id']}/refunds",
                json={"amount_fen": 2500, "reason": "x"}, headers=key())
    listed = client.get(f"{API}/payments", params={"patient_id": pid}).json()["payments"]
    assert [p["payment_id"] for p in listed] == [second["payment_id"], first["payment_id"]]
    assert listed[1] | {"created_at": "-"} == {
        "payment_id": first["payment_id"], "created_at": "-", "purpose": "topup",
        "method": "cash", "amount_fen": 10000, "refunded_fen": 2500, "refundable_fen": 7500,
        "state": "approved", "txn_id": listed[1]["txn_id"]}
    assert listed[1]["created_at"].endswith("Z")
    assert client.get(f"{API}/payments", params={"patient_id": "NOPE"}).status_code == 404


def test_payment_validation_errors(client: TestClient) -> None:
    pid = new_patient(client)["patient"]["patient_id"]
    cases = [
        ({"method": "prepaid", "purpose": "topup", "amount_fen": 100}, 422, "invalid_method"),
        ({"method": "cash", "purpose": "topup", "amount_fen": -5}, 400, "invalid_request"),
        ({"method": "cash", "purpose": "topup", "amount_fen": 100, "auth_code": "1"},
         400, "invalid_request"),
        ({"method": "wechat", "purpose": "topup", "amount_fen": 100}, 422, "invalid_auth_code"),
        ({"method": "cash", "purpose": "bills", "amount_fen": 100, "refs": ["B0"]},
         404, "not_found"),
    ]
    for body, status, code in cases:
        r = pay(client, patient_id=pid, **{"refs": [], **body})
        assert (r.status_code, r.json()["code"]) == (status, code), body


# --- reports --------------------------------------------------------------------------------

def _reports(client: TestClient) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for entry in client.get("/admin/patients").json():
        pid = entry["patient"]["patient_id"]
        for r in client.get(f"{API}/reports", params={"patient_id": pid}).json()["reports"]:
            out.append((pid, r))
    return out


def test_report_list_fetch_and_printed(client: TestClient) -> None:
    reports = _reports(client)
    ready = [r for _, r in reports if r["status"] == "ready" and not r["printed"]]
    pending = [r for _, r in reports if r["status"] == "pending"]
    assert ready and pending
    report = client.get(f"{API}/reports/{ready[0]['report_no']}").json()
    assert report["items"] and report["verify_url"].endswith(report["report_no"] + "?t="
                                                             + report["verify_url"][-16:])
    for item in report["items"]:
        low, high = map(float, item["ref_range"].split("-"))
        expected = "L" if float(item["value"]) < low else "H" if float(item["value"]) > high else ""
        assert item["flag"] == expected
    flagged = [i for _, r in reports if r["status"] == "ready"
               for i in client.get(f"{API}/reports/{r['report_no']}").json()["items"]]
    assert {"H", "L", ""} <= {i["flag"] for i in flagged}
    assert {i["unit"] for i in flagged} >= {"10^9/L", "g/L", "mmol/L"}

    no = ready[0]["report_no"]
    assert client.post(f"{API}/reports/{no}/printed", headers=key()).json() == {
        "report_no": no, "printed": True}
    assert client.post(f"{API}/reports/{no}/printed", headers=key()).status_code == 200
    assert stats(client)["report.printed"] == 1
    r = client.get(f"{API}/reports/{pending[0]['report_no']}")
    assert r.status_code == 422 and r.json()["code"] == "report_not_ready"


def test_reports_by_specimen_barcode(client: TestClient,
                                     settings: PlatformSimSettings) -> None:
    schema = open_database(settings.db_path)  # the same file the app serves
    with schema.db.connection_context():
        row = schema.ReportRow.select().order_by(schema.ReportRow.report_no).first()
    r = client.get(f"{API}/reports", params={"specimen_barcode": row.specimen_barcode})
    assert [x["report_no"] for x in r.json()["reports"]] == [row.report_no]
    assert client.get(f"{API}/reports", params={"specimen_barcode": "800000000000"}
                      ).status_code == 404
    assert client.get(f"{API}/reports").status_code == 400


# --- staff ----------------------------------------------------------------------------------

def test_staff_login_and_lockout(client: TestClient, demo_pin: str, clock: Any) -> None:
    ok = client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": demo_pin})
    assert ok.json() == {"staff_id": "ST1001", "name": "收费员一", "role": "cashier"}
    for _ in range(5):
        bad = client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": "000000"})
        assert bad.json()["code"] == "invalid_credentials"
    locked = client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": demo_pin})
    assert locked.json()["code"] == "staff_locked"
    # The lock is timed, never for good: the right PIN works once it ran out.
    clock.advance(899)
    assert client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": demo_pin}
                       ).json()["code"] == "staff_locked"
    clock.advance(2)
    assert client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": demo_pin}
                       ).status_code == 200
    for _ in range(5):
        client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": "000000"})
    unknown = client.post(f"{API}/staff/login", json={"badge": "S0000", "pin": demo_pin})
    assert unknown.json()["code"] == "invalid_credentials"
    client.post("/admin/staff", json={"badge": "S1001", "name": "收费员一", "role": "cashier",
                                      "pin": "1357"})
    assert client.post(f"{API}/staff/login", json={"badge": "S1001", "pin": "1357"}
                       ).status_code == 200


# --- app shape ------------------------------------------------------------------------------

def test_admin_is_off_unless_enabled(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(admin_enabled=False)) as c:
        assert c.get("/admin/stats").status_code == 404
        assert c.get("/admin/stats").json()["code"] == "not_found"
        assert c.get(f"{API}/departments").status_code == 200


def test_openapi_lists_every_operation_with_tags(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op_ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"patient_identify", "reg_slots", "reg_book", "reg_cancel", "reg_bookings",
            "reg_departments", "bill_list", "pay_create", "pay_status", "pay_reverse",
            "pay_refund", "pay_list", "report_list", "report_fetch", "report_printed",
            "hotlist_delta",
            "staff_login"} <= op_ids
    assert {t["name"] for t in spec["tags"]} >= {"patients", "payments", "admin"}
