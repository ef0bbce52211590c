"""The daemon's local API as the kiosk uses it: scans, payments, printing, staff, ledger.

Real ``EdgeRuntime`` and ``create_api`` over ASGI, with a scripted uplink and a recording
printer (fakes over mocks).
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from edge.api import create_api
from edge.devices.printer.driver import PrintOutcome
from edge.devices.printer.errors import PrinterOffline
from edge.runtime import EdgeRuntime, Ledger
from edge.uplink.errors import OutcomeUnknown, Rejected
from yikatong.protocol.messages import REQUESTS, PaymentResult

TOKEN = "t" * 24
CODE = "134567890123456780"


class Uplink:
    """Scripted answers, validated into their result models as the real uplink does."""

    connected = True

    def __init__(self) -> None:
        self.script: dict[str, Any] = {}
        self.sent: list[tuple[str, dict[str, Any], str | None]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def request(self, type_: str, body: dict[str, Any], *, timeout=None, id=None):  # noqa: ASYNC109
        self.sent.append((type_, body, id))
        a = self.script[type_]
        if isinstance(a, list):
            a = a.pop(0) if len(a) > 1 else a[0]
        if isinstance(a, BaseException):
            raise a
        return REQUESTS[type_][1].model_validate(a)

    async def result_of(self, request_id: str, *, wait_s: float = 0.0):
        return PaymentResult.model_validate(self.script["result_of"])

    async def publish_event(self, type_: str, body: dict[str, Any]) -> str:
        self.events.append((type_, body))
        return "e"

    def unresolved_payments(self) -> list[str]:
        return []  # nothing in an outbox here


class Printer:
    def __init__(self) -> None:
        self.docs: list[tuple[Any, str, bool]] = []
        self.fail: str | None = None
        self.offline = False
        self.jobs: dict[str, Any] = {}
        self.reprints: list[str] = []

    async def print(self, doc, *, job_id, copy=False):
        self.docs.append((doc, job_id, copy))
        state = "failed" if self.fail else "printed"
        self.jobs[job_id] = SimpleNamespace(state=state)
        return PrintOutcome(job_id, state, self.fail, copy, doc.kind)

    def job(self, job_id):
        return self.jobs.get(job_id)

    async def reprint(self, job_id):
        self.reprints.append(job_id)
        return PrintOutcome(job_id, "printed", None, True, "registration_slip")

    async def status(self):
        if self.offline:
            raise PrinterOffline("no answer")
        return SimpleNamespace(ready=True, problem=None, paper="ok", online=True,
                               cover_open=False)


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


IDENTITY = SimpleNamespace(name="李秀英", id_number="310104196503120022",
                           card_number="310100000000000002",
                           masked=lambda: {"name": "李*英", "id_number": "310***********0022"})
PATIENT = {"patient_id": "P1", "name": "李秀英", "sex": "F", "birth_date": "1965-03-12",
           "id_number": "310104196503120022", "card_no": "310100000000000002",
           "balance_fen": 50000, "insured": True}
APPROVED = {"payment_id": "PAY1", "state": "approved", "amount_fen": 5000, "method": "wechat",
            "txn_id": "T1"}


@pytest.fixture
def rig():
    up, pr, mono = Uplink(), Printer(), [0.0]
    rt = EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="示范医院", uplink=up,
                     printer=pr, clock=Clock(), ledger=Ledger(), monotonic=lambda: mono[0])
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(rt, TOKEN)),
                               base_url="http://edge", headers={"Authorization": f"Bearer {TOKEN}"})
    return SimpleNamespace(rt=rt, up=up, pr=pr, mono=mono, http=client)


async def identified(rig):
    rig.rt.card_inserted("r")
    rig.rt.identity_read("r", IDENTITY)
    rig.up.script["patient.identify"] = PATIENT
    r = await rig.http.post("/v1/patient/identify")
    assert r.json()["session"]["patient"]["name"] == "李*英"


async def test_payment_code_is_a_handle_and_reaches_only_the_uplink(rig):
    await identified(rig)
    async with rig.rt.bus.subscribe() as q:
        scan = (await rig.http.post("/v1/scan", json={"text": CODE})).json()["scan"]
        ev = q.get_nowait()
    assert scan["kind"] == "payment_code" and scan["wallet"] == "wechat"
    assert CODE not in str(scan) and CODE not in str(ev) and scan["masked"] == "13************6780"
    rig.up.script["pay.create"] = APPROVED
    r = await rig.http.post("/v1/pay", json={"id": "req00000001", "purpose": "bills",
                                             "refs": ["B1"], "amount_fen": 5000,
                                             "method": "code", "scan_id": scan["scan_id"]})
    assert r.json()["result"]["state"] == "approved"
    _, body, rid = rig.up.sent[-1]
    assert body["auth_code"] == CODE and body["method"] == "wechat" and rid == "req00000001"
    assert body["patient_id"] == "P1"
    # single use: the same handle cannot pay twice
    r = await rig.http.post("/v1/pay", json={"id": "req00000002", "purpose": "bills",
                                             "refs": ["B1"], "amount_fen": 5000,
                                             "method": "code", "scan_id": scan["scan_id"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "scan_code_again"


async def test_stale_or_wiped_code_is_refused(rig):
    await identified(rig)
    scan = (await rig.http.post("/v1/scan", json={"text": CODE})).json()["scan"]
    rig.mono[0] += 61
    r = await rig.http.post("/v1/pay", json={"id": "req00000003", "purpose": "topup",
                                             "amount_fen": 100, "method": "code",
                                             "scan_id": scan["scan_id"]})
    assert r.json()["error"]["code"] == "scan_code_again"
    scan = (await rig.http.post("/v1/scan", json={"text": CODE})).json()["scan"]
    rig.rt.card_removed("r")
    assert rig.rt.codes == {}


async def test_specimen_badge_and_bad_scans(rig):
    s = (await rig.http.post("/v1/scan", json={"text": "81234567890"})).json()["scan"]
    assert s["kind"] == "specimen" and s["value"] == "81234567890"
    s = (await rig.http.post("/v1/scan", json={"text": "S1001"})).json()["scan"]
    assert s["kind"] == "staff_badge"
    r = await rig.http.post("/v1/scan", json={"text": "bad\u0000code"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "bad_scan"


async def test_outcome_unknown_carries_request_id_and_is_resolved_later(rig):
    await identified(rig)
    rig.up.script["pay.create"] = OutcomeUnknown("req00000009")
    r = await rig.http.post("/v1/pay", json={"id": "req00000009", "purpose": "bills",
                                             "refs": ["B1"], "amount_fen": 5000,
                                             "method": "prepaid"})
    assert r.status_code == 504 and r.json()["error"]["request_id"] == "req00000009"
    rig.up.script["result_of"] = dict(APPROVED, method="prepaid")
    r = await rig.http.get("/v1/request/req00000009", params={"wait_s": 1})
    assert r.json()["result"]["state"] == "approved"
    assert rig.rt.ledger.totals(datetime(2026, 11, 22, tzinfo=UTC),
                                datetime(2026, 11, 23, tzinfo=UTC))[0]["payment_count"] == 1


async def test_rejection_keeps_its_reason(rig):
    await identified(rig)
    rig.up.script["pay.create"] = Rejected("insufficient_balance", "prepaid balance is too low",
                                           "预交金余额不足")
    r = await rig.http.post("/v1/pay", json={"id": "req00000010", "purpose": "bills",
                                             "refs": ["B1"], "amount_fen": 5000,
                                             "method": "prepaid"})
    assert r.status_code == 422 and r.json()["error"]["reason"] == "insufficient_balance"
    assert r.json()["error"]["code"] == "rejected"


async def test_personal_requests_need_their_own_endpoint(rig):
    for t in ("patient.identify", "report.fetch", "staff.login", "pay.create", "pay.refund"):
        r = await rig.http.post("/v1/request", json={"type": t, "body": {}})
        assert r.status_code == 400, t


BOOKING = {"booking_id": "BK1", "visit_no": "V1", "queue_no": 7, "dept_code": "NK",
           "dept_name": "内科", "doctor_name": "李明", "title": "主任医师", "date": "2026-11-22",
           "start": "09:00", "end": "09:30", "location": "3F", "fee_fen": 500,
           "status": "booked"}


async def test_print_by_reference_builds_from_the_platforms_booking(rig):
    await identified(rig)
    rig.up.script["reg.book"] = BOOKING
    r = await rig.http.post("/v1/request", json={"type": "reg.book", "body": {
        "patient_id": "P1", "slot_id": "S1", "pay_method": "later", "insured": True}})
    assert r.json()["result"]["queue_no"] == 7
    r = await rig.http.post("/v1/print", json={"kind": "registration_slip", "ref": "BK1"})
    assert r.json()["state"] == "printed"
    doc, job_id, copy = rig.pr.docs[-1]
    assert doc.patient_name == "李秀英" and doc.id_number == "310104196503120022"
    assert (doc.queue_no, doc.fee_fen, doc.insured) == (7, 500, True)  # the platform's
    assert job_id == "slip-BK1" and not copy
    # printed once already: a second print is a marked copy with its own job
    await rig.http.post("/v1/print", json={"kind": "registration_slip", "ref": "BK1"})
    doc2, job2, copy2 = rig.pr.docs[-1]
    assert copy2 and doc2.copy and job2.startswith("slip-BK1-copy-")


async def test_the_kiosk_cannot_send_document_figures(rig):
    await identified(rig)
    r = await rig.http.post("/v1/print", json={"kind": "registration_slip", "ref": "BK1",
                                               "data": {"fee_fen": 1, "queue_no": 1}})
    assert r.status_code == 422 and rig.pr.docs == []


async def test_print_needs_a_session_and_a_known_reference(rig):
    r = await rig.http.post("/v1/print", json={"kind": "topup_receipt", "ref": "PAY1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_card"
    await identified(rig)
    r = await rig.http.post("/v1/print", json={"kind": "topup_receipt", "ref": "PAY1"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "unknown_reference" and err["message"] and err["message_zh"]
    r = await rig.http.post("/v1/print", json={"kind": "registration_slip"})
    assert r.status_code == 422  # a slip names its booking
    assert rig.pr.docs == []


async def test_a_declined_payment_prints_no_receipt(rig):
    await identified(rig)
    rig.up.script["pay.create"] = dict(APPROVED, state="declined", method="prepaid")
    await rig.http.post("/v1/pay", json={"id": "req00000020", "purpose": "topup",
                                         "amount_fen": 5000, "method": "prepaid"})
    r = await rig.http.post("/v1/print", json={"kind": "topup_receipt", "ref": "PAY1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_paid"
    assert rig.pr.docs == []


async def test_receipts_print_from_the_payment_and_the_bills_it_paid(rig):
    await identified(rig)
    rig.up.script["bill.list"] = {"bills": [
        {"bill_id": "B1", "date": "2026-11-22", "dept_name": "内科", "payable_here": True,
         "total_fen": 3000, "items": [{"name": "血常规", "qty": 1, "unit_price_fen": 3000,
                                       "amount_fen": 3000}]},
        {"bill_id": "B2", "date": "2026-11-22", "dept_name": "放射科", "payable_here": True,
         "total_fen": 2000, "items": [{"name": "胸片", "qty": 1, "unit_price_fen": 2000,
                                       "amount_fen": 2000}]}]}
    await rig.http.post("/v1/request", json={"type": "bill.list", "body": {"patient_id": "P1"}})
    rig.up.script["pay.create"] = dict(APPROVED, balance_fen=45000)
    scan = (await rig.http.post("/v1/scan", json={"text": CODE})).json()["scan"]
    await rig.http.post("/v1/pay", json={"id": "req00000021", "purpose": "bills",
                                         "refs": ["B2", "B1"], "amount_fen": 5000,
                                         "method": "code", "scan_id": scan["scan_id"]})
    r = await rig.http.post("/v1/print", json={"kind": "payment_receipt", "ref": "PAY1"})
    assert r.json()["state"] == "printed"
    doc, job_id, _ = rig.pr.docs[-1]
    assert job_id == "receipt-PAY1" and doc.total_fen == 5000 and doc.txn_id == "T1"
    assert [i.name for i in doc.items] == ["血常规", "胸片"]  # in the platform's order
    assert doc.dept_name == "内科、放射科" and doc.balance_after_fen == 45000
    # the card session ends: what it was told goes with it
    rig.rt.card_removed("r")
    await identified(rig)
    r = await rig.http.post("/v1/print", json={"kind": "payment_receipt", "ref": "PAY1"})
    assert r.status_code == 404


async def test_lab_report_by_barcode_needs_no_card_and_is_marked_printed(rig):
    rig.up.script["report.fetch"] = {
        "report_no": "R1", "title": "血常规", "patient_name": "王小明", "sex": "M",
        "age": "35岁", "dept_name": "内科", "specimen": "血", "sampled_at":
        "2026-11-22T01:00:00.000Z", "reported_at": "2026-11-22T03:00:00.000Z",
        "items": [{"code": "WBC", "name": "白细胞", "value": "5.0", "unit": "10^9/L",
                   "ref_range": "3.5-9.5", "flag": ""}], "doctor": "赵", "verify_url":
        "https://example.org/R1"}
    rig.up.script["report.printed"] = {"report_no": "R1", "printed": True}
    r = await rig.http.post("/v1/print", json={"kind": "lab_report", "ref": "R1"})
    assert r.json()["state"] == "printed"
    assert rig.pr.docs[-1][0].patient_name == "王小明"
    assert rig.up.sent[-1][:2] == ("report.printed", {"report_no": "R1"})


async def test_printer_status_before_payment(rig):
    st = (await rig.http.get("/v1/printer/status")).json()["status"]
    assert st["ready"] is True
    rig.pr.offline = True
    st = (await rig.http.get("/v1/printer/status")).json()["status"]
    assert st == {"ready": False, "problem": "offline", "paper": "unknown",
                  "message": "The printer is not responding.", "message_zh": "打印机无响应。"}


async def test_reprint_failed_job(rig):
    r = await rig.http.post("/v1/reprint", json={"job_id": "slip-BK1"})
    assert r.json()["state"] == "printed" and r.json()["copy"] is True


async def test_reprint_is_not_spent_on_a_printer_that_cannot_print(rig):
    rig.pr.offline = True
    r = await rig.http.post("/v1/reprint", json={"job_id": "slip-BK1"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "printer_not_ready"
    assert r.json()["error"]["message_zh"] == "打印机无响应。"
    assert rig.pr.reprints == []  # the job's one reprint is still there
    rig.pr.offline = False
    r = await rig.http.post("/v1/reprint", json={"job_id": "slip-BK1"})
    assert r.json()["state"] == "printed" and rig.pr.reprints == ["slip-BK1"]


async def test_cashier_staff_cash_refund_ledger_and_closing(rig):
    rig.rt.role = "cashier"
    await identified(rig)
    r = await rig.http.post("/v1/pay", json={"id": "req00000011", "purpose": "topup",
                                             "amount_fen": 100, "method": "cash"})
    assert r.json()["error"]["code"] == "staff_only"
    rig.up.script["staff.login"] = {"staff_id": "ST1001", "name": "收费员一", "role": "cashier"}
    r = await rig.http.post("/v1/staff/login", json={"badge": "S1001", "pin": "2468"})
    assert r.json()["staff"]["name"] == "收费员一"
    rig.up.script["pay.create"] = {"payment_id": "PAY2", "state": "approved", "amount_fen": 100,
                                   "method": "cash", "balance_fen": 50100}
    await rig.http.post("/v1/pay", json={"id": "req00000012", "purpose": "topup",
                                         "amount_fen": 100, "method": "cash",
                                         "tendered_fen": 200})
    r = await rig.http.post("/v1/print", json={"kind": "topup_receipt", "ref": "PAY2"})
    doc = rig.pr.docs[-1][0]
    assert (doc.tendered_fen, doc.change_fen, doc.payment_id) == (200, 100, "PAY2")
    assert doc.balance_after_fen == 50100 and doc.operator == "收费员一"
    rig.up.script["pay.status"] = {"payment_id": "PAY2", "state": "approved", "amount_fen": 100,
                                   "method": "cash"}
    await rig.http.get("/v1/pay/PAY2")  # seen approved again: still one ledger row
    rig.up.script["pay.refund"] = {"refund_id": "RF1", "payment_id": "PAY2", "amount_fen": 40,
                                   "state": "refunded"}
    rig.up.script["pay.list"] = {"payments": [{
        "payment_id": "PAY2", "created_at": "2030-01-01T00:00:00.000Z", "purpose": "topup",
        "method": "cash", "amount_fen": 100, "refunded_fen": 0, "refundable_fen": 100,
        "state": "approved"}]}
    r = await rig.http.post("/v1/refund", json={"payment_id": "PAY2", "amount_fen": 40,
                                                "reason": "多充"})
    assert r.json()["result"]["method"] == "cash"
    rig.up.script["staff.session"] = {"staff_id": "ST1001", "name": "收费员一",
                                      "expires_at": "2030-01-01T00:00:00.000Z"}
    r = await rig.http.post("/v1/print", json={"kind": "closing_report"})
    doc = rig.pr.docs[-1][0]
    assert doc.cashier == "收费员一"
    (line,) = doc.lines
    assert (line.method, line.topup_count, line.topup_fen, line.refund_fen) == ("cash", 1, 100, 40)
    # reprint last: a marked copy of the closing report
    r = await rig.http.post("/v1/reprint", json={})
    assert r.json()["copy"] is True and rig.pr.docs[-1][0].copy
    await rig.http.post("/v1/staff/logout")
    assert rig.rt.staff is None and rig.rt.session is None
    r = await rig.http.post("/v1/reprint", json={})
    assert r.status_code == 409


async def test_staff_login_only_on_a_desk(rig):
    r = await rig.http.post("/v1/staff/login", json={"badge": "S1001", "pin": "2468"})
    assert r.json()["error"]["code"] == "not_a_desk"
    r = await rig.http.post("/v1/staff/login", json={"badge": "S1001", "pin": "12"})
    assert r.status_code == 422


async def test_ehc_qr_opens_a_session_without_a_card(rig):
    qr = "a" * 64 + ":1"
    s = (await rig.http.post("/v1/scan", json={"text": qr})).json()["scan"]
    assert s["kind"] == "ehc_qr" and qr not in str(s)
    rig.up.script["patient.identify"] = PATIENT
    r = await rig.http.post("/v1/patient/identify-qr")
    sess = r.json()["session"]
    assert sess["via"] == "ehc_qr" and sess["patient"]["name"] == "李*英"
    assert rig.up.sent[-1][1]["by"] == "ehc_qr"
    r = await rig.http.post("/v1/patient/identify-qr")
    assert r.json()["error"]["code"] == "no_qr"


async def test_platform_status_is_published(rig):
    from edge.uplink.errors import PlatformUnavailable

    rig.up.script["reg.departments"] = [PlatformUnavailable(), {"departments": []}]
    async with rig.rt.bus.subscribe() as q:
        r = await rig.http.post("/v1/request", json={"type": "reg.departments", "body": {}})
        assert r.status_code == 503
        await rig.http.post("/v1/request", json={"type": "reg.departments", "body": {}})
        kinds = [q.get_nowait() for _ in range(2)]
    assert [k["data"]["ok"] for k in kinds] == [False, True]
    assert rig.rt.health()["platform_ok"] is True
