"""Property tests: decoders only ever raise ProtocolError; canonical JSON is stable."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yikatong.protocol import messages, topics
from yikatong.protocol.envelope import (
    MAX_SAFE_INT,
    canonical_json,
    decode,
    encode,
    format_ts,
    new_envelope,
    parse_ts,
)
from yikatong.protocol.errors import BadTopic, ProtocolError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@FAST
@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data)


envelope_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1", None, True]),
        "id": st.sampled_from(["abcdef0123456789", "x", 5]) | st.text(max_size=70),
        "type": st.sampled_from(["reg.book", "resp", "Bad", ""]) | st.text(max_size=10),
        "ts": st.sampled_from(["2024-05-01T08:30:00.123Z", "2024-02-30T00:00:00.000Z", "x"]),
        "dev": st.sampled_from(["kiosk-0001", "K", ""]) | st.text(max_size=70),
        "corr": st.none() | st.text(max_size=70),
        "exp": st.none() | st.text(max_size=30),
        "seq": st.none() | json_scalars,
        "body": json_values,
        "sig": st.none() | st.text(max_size=90),
        "extra": json_values,
    },
)


@FAST
@given(envelope_like)
def test_decode_envelope_like_objects_raises_only_protocol_errors(obj: dict[str, object]) -> None:
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")
    try:
        env = decode(data)
    except ProtocolError:
        return
    # Whatever decodes must encode and decode to the same envelope, and parse typed-ly.
    assert decode(encode(env)) == env
    for parse in (
        messages.parse_request,
        messages.parse_event,
        messages.parse_reply,
        messages.parse_state,
        messages.parse_telemetry,
    ):
        with contextlib.suppress(ProtocolError):
            parse(env)


@FAST
@given(st.sampled_from(sorted(messages.REQUESTS)), json_values)
def test_parse_request_on_arbitrary_bodies_raises_only_protocol_errors(
    type_: str, body: object
) -> None:
    body_dict = body if isinstance(body, dict) else {"x": body}
    try:
        env = new_envelope(type_, "kiosk-0001", body_dict, now=datetime(2024, 5, 1, tzinfo=UTC))
        messages.parse_request(env)
    except ProtocolError:
        pass


@FAST
@given(json_values)
def test_canonical_json_round_trips_and_is_idempotent(value: object) -> None:
    try:
        out = canonical_json(value)
    except ProtocolError:
        return  # e.g. a lone surrogate in generated text
    back = json.loads(out)
    assert back == value or (isinstance(value, float) and back == value)
    assert canonical_json(back) == out


@FAST
@given(st.text(max_size=300))
def test_topic_parse_raises_only_bad_topic(text: str) -> None:
    try:
        parsed = topics.parse(text)
    except BadTopic:
        return
    assert str(parsed) == text


@FAST
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    )
)
def test_timestamps_round_trip_at_ms_precision(dt: datetime) -> None:
    text = format_ts(dt)
    back = parse_ts(text)
    assert timedelta(0) <= dt - back < timedelta(milliseconds=1)
    assert format_ts(back) == text
