"""Message models: every catalogue entry, strictness, secrets, replies, events, state."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from yikatong.protocol import messages as m
from yikatong.protocol.envelope import decode, encode, new_envelope
from yikatong.protocol.errors import (
    BadSignature,
    Expired,
    InvalidBody,
    MalformedEnvelope,
    UnknownMessageType,
)

NOW = datetime(2024, 5, 1, 8, 30, 0, 123000, tzinfo=UTC)
DEV = "kiosk-0001"
AUTH = "134567890123456789"

BOOKING: dict[str, Any] = {
    "booking_id": "BK1",
    "visit_no": "V1",
    "queue_no": 7,
    "dept_code": "NK01",
    "dept_name": "心血管内科",
    "doctor_name": "李明",
    "title": "主任医师",
    "date": "2024-05-01",
    "start": "09:00",
    "end": "09:30",
    "location": "门诊楼3层",
    "fee_fen": 5000,
    "status": "paid",
}
PAYMENT: dict[str, Any] = {
    "payment_id": "PAY1",
    "state": "approved",
    "amount_fen": 5000,
    "method": "wechat",
    "txn_id": "4200001234",
    "balance_fen": 0,
}

#: One valid (body, result) per request type; the test below insists every type has one.
EXAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "patient.identify": (
        {"by": "card", "value": "6217000010001234", "scene": "register"},
        {
            "patient_id": "P0001",
            "name": "张三",
            "sex": "M",
            "birth_date": "1990-03-07",
            "id_number": "110101199003071234",
            "card_no": "HC0001234567",
            "phone": "13812345678",
            "balance_fen": 12000,
            "insured": True,
        },
    ),
    "reg.departments": (
        {},
        {
            "departments": [
                {
                    "code": "NK01",
                    "name": "心血管内科",
                    "name_en": "Cardiology",
                    "location": "门诊楼3层东区",
                    "floor": "3F",
                }
            ]
        },
    ),
    "reg.slots": (
        {"dept_code": "NK01", "date": "2024-05-01"},
        {
            "slots": [
                {
                    "slot_id": "S1",
                    "doctor_id": "D1",
                    "doctor_name": "李明",
                    "title": "主任医师",
                    "specialty": "高血压",
                    "date": "2024-05-01",
                    "period": "am",
                    "start": "09:00",
                    "end": "09:30",
                    "remaining": 3,
                    "fee_fen": 5000,
                    "closes_at": "11:00",
                    "insured_fee_fen": 1500,
                }
            ]
        },
    ),
    "reg.book": (
        {"patient_id": "P0001", "slot_id": "S1", "pay_method": "later", "insured": False},
        BOOKING,
    ),
    "reg.cancel": (
        {"booking_id": "BK1"},
        {"booking_id": "BK1", "status": "cancelled", "refund_fen": 5000},
    ),
    "reg.bookings": (
        {"patient_id": "P0001", "date": "2024-05-01"},
        # a cancelled booking stays in the list (the platform returns it; issue 6)
        {"bookings": [BOOKING, {**BOOKING, "booking_id": "BK0", "status": "cancelled"}]},
    ),
    "reg.checkin": (
        {"booking_id": "BK1"},
        {**BOOKING, "insured": True, "insurance_fen": 3500, "fee_fen": 1500,
         "checked_in_at": "2024-05-01T00:40:00.000Z", "slip_printed": False},
    ),
    "reg.printed": ({"booking_id": "BK1"}, {"booking_id": "BK1", "printed": True}),
    "bill.list": (
        {"patient_id": "P0001"},
        {
            "bills": [
                {
                    "bill_id": "B1",
                    "date": "2024-05-01",
                    "dept_name": "检验科",
                    "items": [
                        {"name": "血常规", "qty": 1, "unit_price_fen": 2500, "amount_fen": 2500}
                    ],
                    "total_fen": 2500,
                    "payable_here": True,
                }
            ]
        },
    ),
    "pay.create": (
        {
            "patient_id": "P0001",
            "purpose": "registration",
            "refs": ["BK1"],
            "amount_fen": 5000,
            "method": "wechat",
            "auth_code": AUTH,
        },
        PAYMENT,
    ),
    "pay.status": ({"payment_id": "PAY1"}, {**PAYMENT, "state": "unknown"}),
    "pay.reverse": ({"payment_id": "PAY1"}, {**PAYMENT, "state": "reversed"}),
    "pay.refund": (
        {"payment_id": "PAY1", "amount_fen": 5000, "reason": "患者取消"},
        {"refund_id": "R1", "payment_id": "PAY1", "amount_fen": 5000, "state": "refunded"},
    ),
    "pay.list": (
        {"patient_id": "pr_x7Yq"},
        {"payments": [{"payment_id": "PAY1", "created_at": "2026-11-22T01:30:00.000Z",
                       "purpose": "topup", "method": "cash", "amount_fen": 10000,
                       "refunded_fen": 2000, "refundable_fen": 8000, "state": "approved"}]},
    ),
    "report.list": (
        {"specimen_barcode": "2405010001"},
        {
            "reports": [
                {
                    "report_no": "L1",
                    "title": "血常规",
                    "specimen": "全血",
                    "status": "ready",
                    "printed": False,
                    "reported_at": "2024-05-01T02:00:00.000Z",
                }
            ]
        },
    ),
    "report.fetch": (
        {"report_no": "L1"},
        {
            "report_no": "L1",
            "title": "血常规",
            "patient_name": "张三",
            "sex": "M",
            "age": "34岁",
            "dept_name": "心血管内科",
            "specimen": "全血",
            "sampled_at": "2024-05-01T00:30:00.000Z",
            "reported_at": "2024-05-01T02:00:00.000Z",
            "items": [
                {
                    "code": "WBC",
                    "name": "白细胞计数",
                    "value": "11.2",
                    "unit": "10^9/L",
                    "ref_range": "3.5-9.5",
                    "flag": "H",
                }
            ],
            "doctor": "王芳",
            "verify_url": "https://lab.example.org/v/L1",
        },
    ),
    "report.printed": ({"report_no": "L1"}, {"report_no": "L1", "printed": True}),
    "hotlist.delta": (
        {"since_version": 41},
        {"version": 42, "full": False, "added": ["HC0009999999"], "removed": []},
    ),
    "staff.login": (
        {"badge": "S1001", "pin": "123456"},
        {"staff_id": "S1001", "name": "刘洋", "role": "cashier",
         "session_token": "Zb3kLq9x_Vt2-Jd8Pw4mNc7RhY5sFe1a",
         "expires_at": "2024-05-01T20:30:00.000Z"},
    ),
    "staff.logout": ({}, {"ended": True}),
    "staff.session": ({}, {"staff_id": "S1001", "name": "刘洋",
                           "expires_at": "2024-05-01T20:30:00.000Z"}),
    "device.cert_renew": (
        {"csr": "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 64
                + "\n-----END CERTIFICATE REQUEST-----\n",
         "command_id": "0123456789abcdef0123456789abcdef"},
        {"cert": "-----BEGIN CERTIFICATE-----\n" + "B" * 64
                 + "\n-----END CERTIFICATE-----\n",
         "chain": "-----BEGIN CERTIFICATE-----\n" + "C" * 64 + "\n-----END CERTIFICATE-----\n",
         "not_after": "2027-12-31T00:00:00.000Z"},
    ),
    "device.log_bundle": (
        {"command_id": "0123456789abcdef0123456789abcdef", "lines": 200,
         "gzip_b64": "H4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA=="},
        {"size": 25, "sha256": "0" * 64},
    ),
}

EVENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "card.inserted": {"reader": "ACS ACR39U ICC Reader 00 00", "atr": "3B8F8001804F0CA0"},
    "card.removed": {"reader": "ACS ACR39U ICC Reader 00 00"},
    "card.read_failed": {"reader": "ACS ACR39U ICC Reader 00 00", "code": "card_auth_failed"},
    "print.done": {"job_id": "J1", "doc_kind": "reg_slip", "copy": False},
    "print.failed": {"job_id": "J1", "reason": "paper_out"},
    "printer.status": {
        "online": True,
        "paper": "near_end",
        "cover_open": False,
        "cutter_error": False,
    },
    "alarm": {"code": "disk_low", "severity": "warning", "message": "磁盘空间不足"},
    "audit": {
        "seq": 1,
        "prev_hash": "0" * 64,
        "hash": "a" * 64,
        "action": "pay.create",
        "detail": {"amount_fen": 5000, "note": None},
    },
}


def test_every_request_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(m.REQUESTS)


def test_every_event_type_has_an_example() -> None:
    assert set(EVENT_EXAMPLES) == set(m.EVENTS)


@pytest.mark.parametrize("type_", sorted(EXAMPLES))
def test_request_and_reply_round_trip(type_: str) -> None:
    body, result = EXAMPLES[type_]
    req = m.make_request(type_, DEV, body, now=NOW)
    req2 = decode(encode(req))
    assert req2 == req
    parsed = m.parse_request(req2)
    assert isinstance(parsed, m.REQUESTS[type_][0])
    assert m.dump_body(parsed) == body

    reply = m.make_reply_ok(req2, result, now=NOW)
    assert (reply.type, reply.dev, reply.corr) == ("resp", DEV, req.id)
    got = m.parse_reply(decode(encode(reply)))
    assert isinstance(got, m.ReplyOk)
    res = m.parse_result(type_, got)
    assert isinstance(res, m.REQUESTS[type_][1])
    assert m.dump_body(res) == result


@pytest.mark.parametrize("type_", sorted(EVENT_EXAMPLES))
def test_event_round_trip(type_: str) -> None:
    env = m.make_event(type_, DEV, EVENT_EXAMPLES[type_], now=NOW)
    parsed = m.parse_event(decode(encode(env)))
    assert isinstance(parsed, m.EVENTS[type_])
    assert m.dump_body(parsed) == EVENT_EXAMPLES[type_]


def test_print_done_keeps_copy_on_the_wire() -> None:
    model = m.PrintDone(job_id="J1", doc_kind="receipt", is_copy=True)
    env = m.make_event("print.done", DEV, model, now=NOW)
    assert env.body == {"job_id": "J1", "doc_kind": "receipt", "copy": True}


def test_model_body_and_dict_body_give_same_envelope() -> None:
    body = m.RegSlotsReq(dept_code="NK01", date="2024-05-01")
    a = m.make_request("reg.slots", DEV, body, now=NOW, id="same-id-0001")
    b = m.make_request(
        "reg.slots", DEV, {"dept_code": "NK01", "date": "2024-05-01"}, now=NOW, id="same-id-0001"
    )
    assert encode(a) == encode(b)


def test_make_request_refuses_wrong_model_and_unknown_type() -> None:
    with pytest.raises(InvalidBody):
        m.make_request("reg.slots", DEV, m.RegCancelReq(booking_id="B1"), now=NOW)
    with pytest.raises(UnknownMessageType):
        m.make_request("reg.teleport", DEV, {}, now=NOW)
    with pytest.raises(UnknownMessageType):
        m.make_event("card.eaten", DEV, {}, now=NOW)


def mutate(type_: str, path: tuple[str | int, ...], value: Any, *, result: bool = False) -> dict:
    """Return a deep copy of the example with one value replaced (``...`` deletes it)."""
    data = copy.deepcopy(EXAMPLES[type_][1 if result else 0])
    target: Any = data
    for p in path[:-1]:
        target = target[p]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD_REQUESTS = [
    ("reg.slots", ("date",), "2024-02-30"),
    ("reg.slots", ("date",), "2024/05/01"),
    ("reg.slots", ("date",), "２０２４-05-01"),
    ("reg.slots", ("dept_code",), ""),
    ("reg.slots", ("dept_code",), "has space"),
    ("reg.slots", ("dept_code",), ...),
    ("reg.slots", ("extra",), 1),
    ("reg.book", ("insured",), 1),
    ("reg.book", ("insured",), "true"),
    ("reg.book", ("pay_method",), "bitcoin"),
    ("pay.create", ("amount_fen",), "5000"),
    ("pay.create", ("amount_fen",), 50.0),
    ("pay.create", ("amount_fen",), 0),
    ("pay.create", ("amount_fen",), -1),
    ("pay.create", ("amount_fen",), True),
    ("pay.create", ("amount_fen",), 10**12),
    ("pay.create", ("auth_code",), "12345"),
    ("pay.create", ("auth_code",), "13456789012345678x"),
    ("pay.create", ("auth_code",), 1345678901234),  # a number, not a string
    ("pay.create", ("method",), "cash"),  # cash with a payment code
    ("pay.create", ("refs",), []),
    ("pay.create", ("refs",), ["x"] * 101),
    ("pay.refund", ("reason",), "a" * 257),
    ("pay.refund", ("reason",), "line\nbreak"),
    ("pay.refund", ("reason",), "\x1b@ESC/POS"),
    ("pay.list", ("patient_id",), ""),
    ("pay.list", ("extra",), 1),
    ("report.list", ("patient_id",), "P0001"),  # both given
    ("report.list", ("specimen_barcode",), ...),  # neither given
    ("hotlist.delta", ("since_version",), -1),
    ("staff.login", ("pin",), "12"),
    ("staff.login", ("pin",), 123456),
    ("patient.identify", ("by",), "face"),
    ("patient.identify", ("value",), "x" * 513),
]


@pytest.mark.parametrize(("type_", "path", "value"), BAD_REQUESTS)
def test_bad_request_bodies(type_: str, path: tuple[str, ...], value: Any) -> None:
    env = new_envelope(type_, DEV, mutate(type_, path, value), now=NOW)
    with pytest.raises(InvalidBody) as ei:
        m.parse_request(env)
    assert ei.value.code == "invalid_request"
    assert ei.value.type == type_
    assert ei.value.errors and all("input" not in e for e in ei.value.errors)


def test_topup_rules() -> None:
    ok = {"patient_id": "P1", "purpose": "topup", "refs": [], "amount_fen": 10000, "method": "cash"}
    m.PayCreateReq.model_validate(ok)
    with pytest.raises(ValidationError, match="prepaid"):
        m.PayCreateReq.model_validate({**ok, "method": "prepaid"})


BAD_RESULTS = [
    ("reg.slots", ("slots", 0, "start"), "09:30"),  # start == end
    ("reg.slots", ("slots", 0, "end"), "24:00"),
    ("reg.slots", ("slots", 0, "closes_at"), "25:00"),
    ("reg.slots", ("slots", 0, "remaining"), -1),
    ("patient.identify", ("sex",), "X"),
    ("patient.identify", ("balance_fen",), 12.5),
    ("hotlist.delta", ("full",), True),  # full with removals (set below)
    ("report.fetch", ("verify_url",), "javascript:alert(1)"),
    ("report.fetch", ("items", 0, "flag"), "HH"),
    ("report.printed", ("printed",), False),
    ("pay.create", ("state",), "paid"),
    ("reg.book", ("status",), "refunded"),
    ("reg.checkin", ("checked_in_at",), "2024-05-01 08:40"),
    ("reg.checkin", ("insurance_fen",), -1),
    ("reg.checkin", ("slip_printed",), "yes"),
    ("reg.printed", ("printed",), False),
]


@pytest.mark.parametrize(("type_", "path", "value"), BAD_RESULTS)
def test_bad_results_refused_when_replying(type_: str, path: tuple[Any, ...], value: Any) -> None:
    result = mutate(type_, path, value, result=True)
    if type_ == "hotlist.delta":
        result["removed"] = ["HC0001"]
    req = m.make_request(type_, DEV, EXAMPLES[type_][0], now=NOW)
    with pytest.raises(InvalidBody) as ei:
        m.make_reply_ok(req, result, now=NOW)
    assert ei.value.type == f"{type_}.result"


# --------------------------------------------------------------------------- secrets


def test_auth_code_never_in_repr_or_str_but_on_the_wire() -> None:
    body = m.PayCreateReq.model_validate(EXAMPLES["pay.create"][0])
    for text in (repr(body), str(body), f"{body}", f"{body!r}"):
        assert AUTH not in text
    assert AUTH in body.model_dump_json()
    assert m.dump_body(body)["auth_code"] == AUTH
    assert body.auth_code is not None and body.auth_code.get_secret_value() == AUTH
    env = m.make_request("pay.create", DEV, body, now=NOW)
    assert AUTH.encode() in encode(env)
    assert AUTH not in repr(env) and AUTH not in str(env)
    parsed = m.parse_request(decode(encode(env)))
    assert AUTH not in repr(parsed)


def test_bad_auth_code_not_echoed_in_errors() -> None:
    bad = "13456789012345678X"
    data = mutate("pay.create", ("auth_code",), bad)
    with pytest.raises(ValidationError) as ve:
        m.PayCreateReq.model_validate(data)
    assert bad not in str(ve.value)
    with pytest.raises(InvalidBody) as ei:
        m.parse_request(new_envelope("pay.create", DEV, data, now=NOW))
    assert bad not in str(ei.value) and bad not in repr(ei.value)
    assert bad not in str(ei.value.to_dict())


def test_pin_never_in_repr() -> None:
    body = m.StaffLoginReq.model_validate({"badge": "S1", "pin": "987654"})
    assert "987654" not in repr(body)
    assert m.dump_body(body)["pin"] == "987654"


def test_personal_data_masked_in_result_repr() -> None:
    info = m.PatientInfo.model_validate(EXAMPLES["patient.identify"][1])
    text = repr(info)
    assert "110101199003071234" not in text and "110***********1234" in text
    assert "张三" not in text and "张*" in text
    assert "13812345678" not in text
    assert info.name == "张三"  # the value itself is untouched


def test_models_are_frozen() -> None:
    body = m.PayStatusReq(payment_id="PAY1")
    with pytest.raises(ValidationError):
        body.payment_id = "PAY2"  # type: ignore[misc]


# --------------------------------------------------------------------------- replies


def test_error_reply_round_trip() -> None:
    req = m.make_request("reg.book", DEV, EXAMPLES["reg.book"][0], now=NOW)
    rep = m.make_reply_error(req, m.ErrorCode.REJECTED, "slot_full", "号源已满", False, now=NOW)
    got = m.parse_reply(decode(encode(rep)))
    assert isinstance(got, m.ReplyError)
    assert got.error.code is m.ErrorCode.REJECTED
    assert (got.error.message_zh, got.error.retryable) == ("号源已满", False)
    assert rep.corr == req.id
    assert encode(rep).count(b'"code":"rejected"') == 1


def test_error_reply_accepts_plain_string_codes_and_refuses_unknown() -> None:
    req = new_envelope("no.such_type", DEV, {}, now=NOW)
    rep = m.make_reply_error(req, "unknown_type", "Unknown type", "未知类型", False, now=NOW)
    assert rep.body["error"]["code"] == "unknown_type"
    with pytest.raises(InvalidBody):
        m.make_reply_error(req, "teapot", "x", "x", False, now=NOW)
    with pytest.raises(InvalidBody):
        m.make_reply_error(req, "rejected", "", "x", False, now=NOW)


@pytest.mark.parametrize(
    ("err", "code", "retryable"),
    [
        (
            InvalidBody("reg.book", [{"loc": ("x",), "type": "missing", "msg": "m"}]),
            "invalid_request",
            False,
        ),
        (UnknownMessageType("x.y"), "unknown_type", False),
        (BadSignature("mismatch"), "unauthorized", False),
        (Expired("2024-05-01T08:30:00.000Z", "2024-05-01T08:31:00.000Z"), "expired", False),
        (MalformedEnvelope("not JSON"), "invalid_request", False),
    ],
)
def test_reply_for_protocol_error(err: Any, code: str, retryable: bool) -> None:
    req = new_envelope("reg.book", DEV, {}, now=NOW)
    rep = m.make_reply_for_error(req, err, now=NOW)
    got = m.parse_reply(rep)
    assert isinstance(got, m.ReplyError)
    assert got.error.code == code and got.error.retryable is retryable
    assert got.error.message == err.message and got.error.message_zh == err.message_zh


def test_make_reply_ok_needs_known_request_type() -> None:
    req = new_envelope("no.such_type", DEV, {}, now=NOW)
    with pytest.raises(UnknownMessageType):
        m.make_reply_ok(req, {}, now=NOW)


def test_parse_reply_refusals() -> None:
    ok_body = {"status": "ok", "result": {}}
    with pytest.raises(UnknownMessageType):
        m.parse_reply(new_envelope("reg.book", DEV, ok_body, now=NOW, corr="abcdefgh"))
    with pytest.raises(MalformedEnvelope, match="corr"):
        m.parse_reply(new_envelope("resp", DEV, ok_body, now=NOW))
    for body in (
        {},
        {"status": "maybe"},
        {"status": "ok"},
        {
            "status": "ok",
            "result": [],
        },
        {"status": "error", "error": {"code": "rejected"}},
        {"status": "ok", "result": {}, "extra": 1},
    ):
        with pytest.raises(InvalidBody):
            m.parse_reply(new_envelope("resp", DEV, body, now=NOW, corr="abcdefgh"))


def test_parse_result_refuses_wrong_shape() -> None:
    with pytest.raises(InvalidBody):
        m.parse_result("reg.cancel", m.ReplyOk(result={"booking_id": "B1"}))
    with pytest.raises(UnknownMessageType):
        m.parse_result("reg.teleport", m.ReplyOk(result={}))


# --------------------------------------------------------------------------- unknown types


def test_parse_request_unknown_type() -> None:
    with pytest.raises(UnknownMessageType) as ei:
        m.parse_request(new_envelope("reg.teleport", DEV, {}, now=NOW))
    assert ei.value.code == "unknown_type" and ei.value.type == "reg.teleport"


def test_parse_event_unknown_type() -> None:
    with pytest.raises(UnknownMessageType):
        m.parse_event(new_envelope("card.eaten", DEV, {}, now=NOW))


# --------------------------------------------------------------------------- telemetry, state


TELEMETRY = {
    "uptime_s": 86400,
    "cpu_temp_c": 48.5,
    "disk_free_mb": 20480,
    "outbox_depth": 0,
    "printer": {"online": False, "paper": "unknown", "cover_open": False, "cutter_error": False},
    "reader_present": True,
}


def test_telemetry() -> None:
    t = m.parse_telemetry(new_envelope("telemetry", DEV, TELEMETRY, now=NOW))
    assert t.cpu_temp_c == 48.5 and t.printer.paper == "unknown"
    whole = m.parse_telemetry(
        new_envelope("telemetry", DEV, {**TELEMETRY, "cpu_temp_c": 48}, now=NOW)
    )
    assert whole.cpu_temp_c == 48
    for bad in (
        {**TELEMETRY, "cpu_temp_c": 400.0},
        {**TELEMETRY, "outbox_depth": -1},
        {**TELEMETRY, "printer": {}},
    ):
        with pytest.raises(InvalidBody):
            m.parse_telemetry(new_envelope("telemetry", DEV, bad, now=NOW))
    with pytest.raises(UnknownMessageType):
        m.parse_telemetry(new_envelope("alarm", DEV, TELEMETRY, now=NOW))


def test_state_birth_and_will() -> None:
    birth = m.parse_state(
        new_envelope(
            "state",
            DEV,
            {"online": True, "boot_seq": 17, "version": "0.1.0", "role": "kiosk"},
            now=NOW,
        )
    )
    assert isinstance(birth, m.StateBirth) and birth.boot_seq == 17
    will = m.parse_state(new_envelope("state", DEV, {"online": False, "boot_seq": 17}, now=NOW))
    assert isinstance(will, m.StateWill)
    for bad in (
        {"online": "yes", "boot_seq": 1},
        {"online": False, "boot_seq": 1, "role": "x"},
        {"online": True, "boot_seq": 1, "version": "0.1.0", "role": "robot"},
        {},
    ):
        with pytest.raises(InvalidBody):
            m.parse_state(new_envelope("state", DEV, bad, now=NOW))
    with pytest.raises(UnknownMessageType):
        m.parse_state(new_envelope("telemetry", DEV, {"online": True}, now=NOW))


def test_hotlist_notice() -> None:
    assert m.HotlistNotice.model_validate({"version": 42}).version == 42
    with pytest.raises(ValidationError):
        m.HotlistNotice.model_validate({"version": "42"})


def test_all_models_forbid_extra_fields() -> None:
    def walk(cls: type[BaseModel]) -> None:
        assert cls.model_config.get("extra") == "forbid", cls
        assert cls.model_config.get("strict") is True, cls

    for body, result in m.REQUESTS.values():
        walk(body)
        walk(result)
    for cls in (
        *m.EVENTS.values(),
        m.Telemetry,
        m.StateBirth,
        m.StateWill,
        m.ReplyOk,
        m.ReplyError,
        m.ErrorInfo,
        m.HotlistNotice,
    ):
        walk(cls)
