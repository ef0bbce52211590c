"""Envelope codec: golden bytes, round trips and every kind of malformed input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from yikatong.protocol import topics
from yikatong.protocol.envelope import (
    MAX_PAYLOAD_BYTES,
    Envelope,
    canonical_json,
    check_not_expired,
    check_topic,
    decode,
    encode,
    format_ts,
    is_expired,
    new_envelope,
    parse_ts,
    peek_id,
    signing_bytes,
)
from yikatong.protocol.errors import (
    BadTopic,
    Expired,
    MalformedEnvelope,
    PayloadTooLarge,
    ProtocolError,
    UnsupportedVersion,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2024, 5, 1, 8, 30, 0, 123000, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def valid_dict(**changes: object) -> dict[str, object]:
    d: dict[str, object] = {
        "v": 1,
        "id": "abcdef0123456789",
        "type": "reg.slots",
        "ts": "2024-05-01T08:30:00.123Z",
        "dev": "kiosk-0001",
        "body": {"dept_code": "NK01", "date": "2024-05-01"},
    }
    d.update(changes)
    return {k: v for k, v in d.items() if v is not ...}


def raw(d: object) -> bytes:
    return json.dumps(d, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- golden bytes


def test_hand_written_canonical_form() -> None:
    env = new_envelope(
        "card.removed", "kiosk-0001", {"reader": "读卡器 0"}, now=NOW, id="evt-00000001"
    )
    assert (
        encode(env)
        == (
            '{"body":{"reader":"读卡器 0"},"dev":"kiosk-0001","id":"evt-00000001",'
            '"ts":"2024-05-01T08:30:00.123Z","type":"card.removed","v":1}'
        ).encode()
    )


def test_golden_request_with_expiry() -> None:
    env = new_envelope(
        "reg.book",
        "kiosk-0001",
        {
            "patient_id": "P0001",
            "slot_id": "S-20240501-AM-07",
            "pay_method": "prepaid",
            "insured": True,
        },
        now=NOW,
        id="9f1c2d3e4a5b4c6d8e7f001122334455",
        exp=NOW + timedelta(minutes=2),
    )
    assert encode(env) == fixture("envelope_reg_book_request.json")


@pytest.mark.parametrize(
    "name",
    [
        "envelope_reg_book_request.json",
        "envelope_reg_book_reply.json",
        "envelope_reply_error.json",
        "envelope_telemetry.json",
        "envelope_cmd_signed.json",
    ],
)
def test_golden_fixtures_round_trip_byte_for_byte(name: str) -> None:
    data = fixture(name)
    env = decode(data)
    assert encode(env) == data
    assert decode(encode(env)) == env


def test_reply_fixture_carries_chinese_text_as_utf8() -> None:
    data = fixture("envelope_reg_book_reply.json")
    assert "心血管内科".encode() in data
    env = decode(data)
    assert env.body["result"]["dept_name"] == "心血管内科"
    assert env.corr == "9f1c2d3e4a5b4c6d8e7f001122334455"


def test_signing_bytes_fixture_is_envelope_without_sig() -> None:
    env = decode(fixture("envelope_cmd_signed.json"))
    assert env.sig is not None
    assert signing_bytes(env) == fixture("envelope_cmd_unsigned_signing_bytes.json")
    assert b'"sig"' not in signing_bytes(env)


def test_non_canonical_input_is_accepted_and_re_encoded_canonically() -> None:
    data = fixture("envelope_reg_book_request.json")
    pretty = json.dumps(json.loads(data), indent=2, ensure_ascii=True).encode()
    assert pretty != data
    assert encode(decode(pretty)) == data


def test_optional_none_fields_omitted_but_body_nulls_kept() -> None:
    env = new_envelope("alarm", "kiosk-0001", {"x": None}, now=NOW, id="abcdefgh")
    out = json.loads(encode(env))
    assert set(out) == {"v", "id", "type", "ts", "dev", "body"}
    assert out["body"] == {"x": None}


def test_new_envelope_defaults_to_uuid4_hex_id() -> None:
    a = new_envelope("alarm", "kiosk-0001", {}, now=NOW)
    b = new_envelope("alarm", "kiosk-0001", {}, now=NOW)
    assert len(a.id) == 32 and a.id != b.id
    int(a.id, 16)


def test_new_envelope_refuses_bad_fields() -> None:
    with pytest.raises(MalformedEnvelope) as ei:
        new_envelope("Bad Type", "KIOSK", {}, now=NOW, id="short")
    locs = {e["loc"] for e in ei.value.errors}
    assert {("type",), ("dev",), ("id",)} <= locs


def test_envelope_model_is_frozen_and_strict() -> None:
    env = decode(fixture("envelope_reg_book_request.json"))
    with pytest.raises(ValueError, match="frozen"):
        env.dev = "other-dev"  # type: ignore[misc]
    with pytest.raises(ValueError, match="integer"):
        Envelope.model_validate(valid_dict(seq="5"))


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"v":1,"id":"\xe4\xb8"}', "not UTF-8"),
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"v":1,', "not JSON"),
        (b"\xef\xbb\xbf{}", "not JSON"),  # a UTF-8 BOM is not allowed
        (b"[1,2,3]", "JSON list"),
        (b'"text"', "JSON str"),
        (b"null", "JSON NoneType"),
        (b"{}", "missing field 'v'"),
        (b'{"v":"1"}', "not an integer"),
        (b'{"v":true}', "not an integer"),
        (b'{"v":1.0}', "not an integer"),
        (b'{"v":1,"v":1}', "duplicate key"),
        (b'{"v":1,"x":NaN}', "NaN is not allowed"),
        (b'{"v":1,"x":-Infinity}', "Infinity is not allowed"),
        (b'{"v":1,"x":1e400}', "out of range"),
        (b'{"v":1,"x":9007199254740992}', "integer out of"),
        (b'{"v":1,"x":' + b"9" * 5000 + b"}", "integer out of"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    ],
)
def test_malformed_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedEnvelope, match=reason):
        decode(data)


@pytest.mark.parametrize("field", ["v", "id", "type", "ts", "dev", "body"])
def test_missing_required_field(field: str) -> None:
    with pytest.raises(MalformedEnvelope) as ei:
        decode(raw(valid_dict(**{field: ...})))
    assert ei.value.errors[0]["loc"] == (field,)


def test_extra_field_refused() -> None:
    with pytest.raises(MalformedEnvelope) as ei:
        decode(raw(valid_dict(extra="x")))
    assert ei.value.errors[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "short"),
        ("id", "a" * 65),
        ("id", "has space 123"),
        ("type", "Reg.Slots"),
        ("type", ""),
        ("ts", "2024-05-01T08:30:00Z"),
        ("ts", "2024-05-01T08:30:00.123+08:00"),
        ("ts", "2024-02-30T08:30:00.123Z"),
        ("ts", "２０２４-05-01T08:30:00.123Z"),
        ("dev", "Kiosk-1"),
        ("dev", "ab"),
        ("dev", "k" * 64),
        ("corr", "x"),
        ("exp", "tomorrow"),
        ("seq", -1),
        ("seq", True),
        ("seq", 1.0),
        ("body", [1]),
        ("body", "x"),
        ("sig", "abc"),
        ("sig", "A" * 86 + "="),
    ],
)
def test_bad_field_values(field: str, value: object) -> None:
    with pytest.raises(MalformedEnvelope) as ei:
        decode(raw(valid_dict(**{field: value})))
    assert ei.value.errors[0]["loc"][0] == field
    # The offending input never travels with the error (it may be a secret).
    assert "input" not in ei.value.errors[0]


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_wrong_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as ei:
        decode(raw(valid_dict(v=version)))
    assert ei.value.version == version
    assert ei.value.code == "unsupported_version"


def test_oversized_payload_refused_before_parsing() -> None:
    # 256 KiB + 1 of garbage: if it were parsed we would get MalformedEnvelope instead.
    data = b"\xff" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(PayloadTooLarge) as ei:
        decode(data)
    assert (ei.value.size, ei.value.limit) == (262_145, 262_144)


def test_payload_exactly_at_limit_is_parsed() -> None:
    base = raw(valid_dict(body={"pad": ""}))
    pad = MAX_PAYLOAD_BYTES - len(base)
    data = raw(valid_dict(body={"pad": "x" * pad}))
    assert len(data) == MAX_PAYLOAD_BYTES
    assert decode(data).body["pad"] == "x" * pad


def test_encode_refuses_oversized_envelope() -> None:
    env = new_envelope("alarm", "kiosk-0001", {"pad": "x" * MAX_PAYLOAD_BYTES}, now=NOW)
    with pytest.raises(PayloadTooLarge):
        encode(env)


def test_body_with_lone_surrogate_escape_refused() -> None:
    with pytest.raises(MalformedEnvelope, match="surrogate"):
        decode(raw(valid_dict(body={"x": "\\ud800"})).replace(b"\\\\", b"\\"))


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(MalformedEnvelope):
        decode("{}")  # type: ignore[arg-type]


def test_all_decode_errors_are_protocol_errors_with_bilingual_messages() -> None:
    for data in (b"\xff", b"[]", b'{"v":2}', b"x" * (MAX_PAYLOAD_BYTES + 1)):
        with pytest.raises(ProtocolError) as ei:
            decode(data)
        assert ei.value.message and ei.value.message_zh
        assert ei.value.to_dict()["code"] == ei.value.code


# --------------------------------------------------------------------------- timestamps, expiry


def test_format_ts_truncates_to_ms_and_converts_to_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    assert format_ts(datetime(2024, 5, 1, 16, 30, 0, 999999, tzinfo=beijing)) == (
        "2024-05-01T08:30:00.999Z"
    )
    assert format_ts(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00.000Z"


def test_format_ts_refuses_naive_datetime() -> None:
    with pytest.raises(MalformedEnvelope, match="naive"):
        format_ts(datetime(2024, 5, 1))


def test_parse_ts_round_trip_and_refusals() -> None:
    assert parse_ts("2024-05-01T08:30:00.123Z") == NOW
    assert format_ts(parse_ts("2024-12-31T23:59:59.999Z")) == "2024-12-31T23:59:59.999Z"
    for bad in ("2024-05-01 08:30:00.123Z", "2024-13-01T00:00:00.000Z", "", "2024-05-01"):
        with pytest.raises(MalformedEnvelope):
            parse_ts(bad)


def test_expiry_boundaries() -> None:
    env = new_envelope("reg.slots", "kiosk-0001", {}, now=NOW, exp=NOW + timedelta(seconds=30))
    assert not is_expired(env, NOW)
    assert not is_expired(env, NOW + timedelta(seconds=30))
    assert is_expired(env, NOW + timedelta(seconds=30, milliseconds=1))
    with pytest.raises(Expired) as ei:
        check_not_expired(env, NOW + timedelta(minutes=1))
    assert ei.value.exp == "2024-05-01T08:30:30.123Z"
    assert ei.value.code == "expired" and ei.value.reply_code == "expired"


def test_no_exp_never_expires() -> None:
    env = new_envelope("reg.slots", "kiosk-0001", {}, now=NOW)
    assert not is_expired(env, NOW + timedelta(days=10_000))
    check_not_expired(env, NOW + timedelta(days=10_000))


# --------------------------------------------------------------------------- privacy in repr


def test_repr_masks_personal_data_and_hides_secrets() -> None:
    env = new_envelope(
        "pay.create",
        "kiosk-0001",
        {
            "auth_code": "134567890123456789",
            "nested": {"name": "张三丰", "id_number": "110101199003071234"},
            "note": "call 13812345678",
        },
        now=NOW,
    )
    text = repr(env) + str(env)
    for secret in ("134567890123456789", "张三丰", "110101199003071234", "13812345678"):
        assert secret not in text
    assert "张*丰" in text and "110***********1234" in text
    # The wire form is untouched.
    assert b"134567890123456789" in encode(env)


# --------------------------------------------------------------------------- peek_id, check_topic


def test_peek_id_salvages_id_of_broken_envelope() -> None:
    assert peek_id(raw({"v": 1, "id": "abcdef0123", "type": 5})) == "abcdef0123"
    assert peek_id(raw({"id": "x"})) is None
    assert peek_id(b"\xff") is None
    assert peek_id(b"[]") is None
    assert peek_id(b"x" * (MAX_PAYLOAD_BYTES + 1)) is None


def test_check_topic_enforces_dev_and_reserved_types() -> None:
    env = decode(fixture("envelope_reg_book_request.json"))
    check_topic(env, topics.parse("ykt/v1/dev/kiosk-0001/up/req"))
    with pytest.raises(BadTopic, match="does not match"):
        check_topic(env, topics.parse("ykt/v1/dev/kiosk-0002/up/req"))
    with pytest.raises(BadTopic, match="want 'resp'"):
        check_topic(env, topics.parse("ykt/v1/dev/kiosk-0001/down/resp"))
    reply = decode(fixture("envelope_reg_book_reply.json"))
    check_topic(reply, topics.parse("ykt/v1/dev/kiosk-0001/down/resp"))
    with pytest.raises(BadTopic, match="not allowed on this topic"):
        check_topic(reply, topics.parse("ykt/v1/dev/kiosk-0001/up/event"))


def test_canonical_json_of_envelope_equals_encode() -> None:
    env = decode(fixture("envelope_reply_error.json"))
    assert canonical_json(env) == encode(env)


# --------------------------------------------------------------------------- peek_id on broken JSON

_BROKEN_REQ = b'{"v":1,"id":"abcdef0123456789","type":"reg.book","body":{"slot_id":"S1"'


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (_BROKEN_REQ, "abcdef0123456789"),  # cut off mid-body
        (b'{"v":1,"id":"abcdef0123456789","type":"reg.book",broken', "abcdef0123456789"),
        (b' \n{ "id" :\t"abc_DEF-0123" , "body": {x}}', "abc_DEF-0123"),
        (b'{"body":{"note":"\xe5\xbc\xa0\\"}","id":"ignored-1"},"id":"abcdef0123"', "abcdef0123"),
        (b'{"i\\u0064":"abcdef0123", "v": tru', "abcdef0123"),  # an escaped key is "id" too
        (b'{"id":"abcdef0123","v":1,"id":"abcdef0123"}', None),  # duplicate keys: ambiguous
        (b'{"id":"abcdef0123","i\\u0064":"zzzzzzzzzz",', None),
        (b'{"id":"abcdef0123","v":1,"id":7,', None),  # a second id, even unusable: ambiguous
        (b'{"v":1,"body":{"id":"abcdef0123"},"type":', None),  # only inside body
        (b'{"v":1,"body":{"id":"abcdef0123"', None),
        (b'{"v":1,"refs":[{"id":"abcdef0123"}],', None),  # only inside a nested value
        (b'{"type":"id","note":"x\\"id\\":\\"abcdef0123\\"",', None),  # "id" as a value/in text
        (b'{"id":"short","type":', None),  # not a valid id
        (b'{"id":"abcdef0123\\u0041","type":', None),  # escaped id value: not a plain id
        (b'{"id":abcdef0123,"type":', None),
        (b'{"id":"' + b"a" * 65 + b'",', None),
        (b'[{"id":"abcdef0123"', None),  # the top level is not an object
        (b'garbage{"id":"abcdef0123"', None),
        (b'{"v":1}{"id":"abcdef0123"', None),  # after the outer object ended
        (b'{"v":1]"id":"abcdef0123"', None),  # unbalanced
        (b'{"v":"unterminated, "id":"abcdef0123', None),
        (b"", None),
        (b"\xff\xfe", None),
    ],
)
def test_peek_id_reads_only_an_unambiguous_top_level_id_from_broken_json(
    payload: bytes, want: str | None
) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)
    assert peek_id(payload) == want


def test_peek_id_prefers_the_parsed_json_and_scans_a_bounded_prefix() -> None:
    # Parsed JSON is final: a body id is never taken, even though the text has one.
    assert peek_id(raw({"v": 1, "body": {"id": "abcdef0123"}})) is None
    assert peek_id(raw({"v": 1, "id": 5, "body": {"id": "abcdef0123"}})) is None
    # The scan stops after 4 KiB: an id past it is not found, however large the payload.
    pad = b'{"v":1,"pad":"' + b"x" * 5000 + b'","id":"abcdef0123",'
    assert peek_id(pad) is None
    big = b'{"v":1,"id":"abcdef0123","body":{"pad":"' + b"x" * (MAX_PAYLOAD_BYTES + 10)
    assert peek_id(big) == "abcdef0123"
    deep = b'{"id":"abcdef0123","body":' + b"[" * 100_000
    assert peek_id(deep) == "abcdef0123"
