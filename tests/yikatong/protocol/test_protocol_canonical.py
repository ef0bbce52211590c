"""Canonical JSON: RFC 8785 vectors and the contract's extra restrictions."""

from __future__ import annotations

import math
from collections import OrderedDict
from datetime import UTC, datetime
from enum import IntEnum, StrEnum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yikatong.protocol.envelope import (
    MAX_DEPTH,
    MAX_SAFE_INT,
    _format_float,
    _plain,
    _write,
    canonical_json,
    new_envelope,
)
from yikatong.protocol.errors import MalformedEnvelope


def test_rfc8785_section_3_2_2_example() -> None:
    # 1E30 from the RFC example is swapped for 1E15: our rule refuses floats beyond 2**53.
    value = {
        "numbers": [333333333.33333329, 1e15, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1000000000000000,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(value) == expected.encode("utf-8")


def test_rfc8785_key_order_is_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: the emoji (a surrogate pair) sorts before U+FB33 in UTF-16.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    out = canonical_json(value).decode("utf-8")
    order = ["\\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    positions = [out.index(f'"{k}":') for k in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (5.0, "5"),
        (-1.5, "-1.5"),
        (9007199254740991.0, "9007199254740991"),
        (123456.75, "123456.75"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"),
        (48.5, "48.5"),
    ],
)
def test_float_formatting_follows_ecmascript(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_large_magnitude_formatting_rule(number: float, text: str) -> None:
    # Refused on the wire (beyond 2**53), but the ECMAScript formatter itself is exact.
    assert _format_float(number) == text
    with pytest.raises(MalformedEnvelope, match="float beyond"):
        canonical_json(number)


def test_chinese_is_raw_utf8_and_compact() -> None:
    assert canonical_json({"b": [1, 2], "a": "张三"}) == '{"a":"张三","b":[1,2]}'.encode()


def test_control_characters_escaped_in_lower_case_hex() -> None:
    assert canonical_json("\x01\x1f\x7f\t") == b'"\\u0001\\u001f\x7f\\t"'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad: float) -> None:
    with pytest.raises(MalformedEnvelope, match="NaN/Infinity"):
        canonical_json({"x": [bad]})


def test_integers_limited_to_safe_range() -> None:
    assert canonical_json(MAX_SAFE_INT) == str(MAX_SAFE_INT).encode()
    assert canonical_json(-MAX_SAFE_INT) == str(-MAX_SAFE_INT).encode()
    with pytest.raises(MalformedEnvelope, match="integer out of"):
        canonical_json({"fen": MAX_SAFE_INT + 1})


def test_bool_is_not_an_integer() -> None:
    assert canonical_json([True, 1, False, 0]) == b"[true,1,false,0]"


@pytest.mark.parametrize(
    "bad",
    [
        {"x": "\ud800"},
        {"\udc00": 1},
        {1: "non-string key"},
        {"x": b"bytes"},
        {"x": {1, 2}},
        {"x": object()},
    ],
)
def test_non_json_values_are_refused(bad: object) -> None:
    with pytest.raises(MalformedEnvelope):
        canonical_json(bad)


def test_depth_limit() -> None:
    ok: object = 1
    for _ in range(MAX_DEPTH):
        ok = [ok]
    canonical_json(ok)
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        canonical_json([ok])


def test_tuple_is_written_as_array() -> None:
    assert canonical_json({"a": (1, "x")}) == b'{"a":[1,"x"]}'


# -- the C-encoder fast path must write exactly what the reference writer (_write) writes


def _reference(value: object) -> bytes:
    out: list[str] = []
    _write(value, out, 0, ())
    return "".join(out).encode("utf-8")


_any_text = st.text(st.characters(codec="utf-8") | st.sampled_from("\x00\x1f\x7f\u2028\"\\"),
                    max_size=12)
_fast_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | _any_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_any_text | st.sampled_from(["\U0001f600", "\ufb33", "a"]), inner,
                          max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(_fast_values)
def test_fast_path_bytes_equal_reference_writer(value: object) -> None:
    assert canonical_json(value) == _reference(value)


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        ({"\U0001f600": 1, "\ufb33": 2}, False),  # astral key: UTF-16 order ≠ code points
        ({"n": IntEnum("N", "A").A}, False),  # int subclass
        ({"s": StrEnum("S", {"A": "a"}).A}, False),  # str subclass
        (OrderedDict([("b", 1), ("a", 2)]), False),  # a Mapping that is not exactly dict
        ({"f": 5.0, "g": [1e-7]}, False),  # floats never take the fast path
        ({"x": ("t", [None, True]), "\u00e9": "\u00e9"}, True),
    ],
)
def test_fast_path_taken_only_where_it_is_exact(value: object, fast: bool) -> None:
    assert _plain(value, 0) is fast
    assert canonical_json(value) == _reference(value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"a": [MAX_SAFE_INT + 1]}, r"integer out of .* at a\.0"),
        ({"a": {"b": "\udfff"}}, r"lone surrogate in string at a\.b"),
        ({"a": {"\ud800x": 1}}, r"lone surrogate in key at a"),
        ({"a": {2: 1}}, r"non-string key 2 at a"),
    ],
)
def test_errors_found_by_fast_check_keep_their_location(bad: object, message: str) -> None:
    assert not _plain(bad, 0)
    with pytest.raises(MalformedEnvelope, match=message):
        canonical_json(bad)
    with pytest.raises(MalformedEnvelope, match=message):
        new_envelope("reg.book", "kiosk-0001", bad,  # type: ignore[arg-type]
                     now=datetime(2024, 5, 1, tzinfo=UTC))


def test_fast_check_depth_limit_equals_reference() -> None:
    ok: object = {"k": "v"}
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    assert _plain(ok, 0)
    assert canonical_json(ok) == _reference(ok)
    assert not _plain([ok], 0)
    with pytest.raises(MalformedEnvelope, match="nested deeper"):
        canonical_json([ok])
