"""Error taxonomy: stable codes, catalogue reply codes, bilingual messages."""

from __future__ import annotations

import pytest

from yikatong.protocol import errors as e
from yikatong.protocol.messages import ErrorCode

ALL = [
    e.MalformedEnvelope("not JSON"),
    e.UnsupportedVersion(2),
    e.PayloadTooLarge(300_000, 262_144),
    e.BadSignature("mismatch"),
    e.BadKey("not hex"),
    e.UnknownMessageType("reg.teleport"),
    e.InvalidBody(
        "reg.book",
        [{"loc": ("slot_id",), "type": "missing", "msg": "Field required", "input": "SECRET"}],
    ),
    e.BadTopic("ykt/v1/#", "wildcards are not allowed in a topic name"),
    e.Expired("2024-05-01T08:30:00.000Z", "2024-05-01T08:31:00.000Z"),
    e.SequenceReplay(5, 7),
]


def test_codes_are_stable_and_unique() -> None:
    codes = [err.code for err in ALL]
    assert codes == [
        "malformed_envelope",
        "unsupported_version",
        "payload_too_large",
        "bad_signature",
        "bad_key",
        "unknown_type",
        "invalid_request",
        "bad_topic",
        "expired",
        "sequence_replay",
    ]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("err", ALL, ids=lambda x: type(x).__name__)
def test_every_error_is_a_protocol_error_with_both_languages(err: e.ProtocolError) -> None:
    assert isinstance(err, e.ProtocolError)
    assert err.message and err.message_zh and err.message != err.message_zh
    assert str(err) == f"{err.message} / {err.message_zh}"  # as every LocalizedError
    assert ErrorCode(err.reply_code)  # a catalogue code
    d = err.to_dict()
    assert d["code"] == err.code and d["message_zh"] == err.message_zh
    assert type(err).__name__ in repr(err)


def test_catalogue_codes_where_they_overlap() -> None:
    assert e.InvalidBody.code == ErrorCode.INVALID_REQUEST
    assert e.UnknownMessageType.code == ErrorCode.UNKNOWN_TYPE
    assert e.Expired.code == ErrorCode.EXPIRED


def test_validation_input_is_dropped() -> None:
    err = ALL[6]
    assert isinstance(err, e.InvalidBody)
    assert err.errors == [{"loc": ("slot_id",), "type": "missing", "msg": "Field required"}]
    assert "SECRET" not in repr(err) and "SECRET" not in str(err.to_dict())


def test_structured_fields() -> None:
    too_big = e.PayloadTooLarge(300_000, 262_144)
    assert (too_big.size, too_big.limit) == (300_000, 262_144)
    assert "300000" in too_big.message and "字节" in too_big.message_zh
    replay = e.SequenceReplay(5, 7)
    assert replay.details() == {"seq": 5, "last_seq": 7}
    assert e.BadTopic("t", "r").details() == {"topic": "t", "reason": "r"}
