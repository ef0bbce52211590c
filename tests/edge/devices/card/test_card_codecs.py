"""Codecs both directions against byte fixtures."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.devices.card.errors import CardDataError, CardParameterError
from edge.devices.card.protocol import codecs
from edge.devices.card.protocol.files import FILES
from edge.devices.card.protocol.records import parse_date


def test_cn_is_left_aligned_bcd_padded_with_f() -> None:
    assert codecs.encode_cn("19800101", 4) == bytes.fromhex("19800101")
    assert codecs.encode_cn("01", 1) == b"\x01"
    assert codecs.encode_cn("110", 3) == bytes.fromhex("110FFF")
    assert codecs.encode_cn("", 2) == b"\xff\xff"
    assert codecs.decode_cn(bytes.fromhex("110FFF")) == "110"
    assert codecs.decode_cn(bytes.fromhex("1F23")) == "1"  # strip from the first F
    assert codecs.decode_cn(bytes.fromhex("FFFF")) == ""


def test_cn_rejects_bad_input_both_ways() -> None:
    with pytest.raises(CardParameterError):
        codecs.encode_cn("12a", 2)
    with pytest.raises(CardParameterError):
        codecs.encode_cn("１２", 2)  # full-width digits are not BCD
    with pytest.raises(CardParameterError):
        codecs.encode_cn("12345", 2)
    with pytest.raises(CardDataError) as e:
        codecs.decode_cn(bytes.fromhex("12AB"), file="DDF1/EF06", tag=0x0E)
    assert e.value.file == "DDF1/EF06" and e.value.tag == "0E"
    assert "DDF1/EF06" in e.value.message and "0E" in e.value.message


def test_an_gb18030_with_four_byte_characters() -> None:
    raw = codecs.encode_an("𠀀张三", 30)
    assert raw[:4] == bytes.fromhex("95328236")  # U+20000 is a four-byte GB18030 sequence
    assert raw[4:8] == "张三".encode("gb2312")
    assert raw[8:] == b"\x00" * 22
    assert codecs.decode_an(raw) == "𠀀张三"


def test_an_max_length_exact_and_one_over() -> None:
    name = "张" * 15  # 30 bytes exactly
    assert len(codecs.encode_an(name, 30)) == 30
    assert codecs.decode_an(codecs.encode_an(name, 30)) == name
    with pytest.raises(CardParameterError):
        codecs.encode_an(name + "a", 30)
    with pytest.raises(CardParameterError):
        codecs.encode_an("𠀀" * 8, 30)  # 32 bytes


def test_an_decoding_tolerates_ff_padding_and_rejects_garbage() -> None:
    assert codecs.decode_an("张三".encode("gbk") + b"\xff\xff") == "张三"
    with pytest.raises(CardDataError) as e:
        codecs.decode_an(b"\x81\x20", file="DDF1/EF06", tag=0x0B)
    assert e.value.tag == "0B"


def test_b_is_exact_length() -> None:
    assert codecs.encode_b(b"\x01", 1) == b"\x01"
    with pytest.raises(CardParameterError):
        codecs.encode_b(b"", 1)


def test_tlv_build_and_parse() -> None:
    assert codecs.tlv(0x0B, b"AB") == bytes.fromhex("0B024142")
    assert codecs.parse_tlv(bytes.fromhex("0B0241420C0101")) == [(0x0B, b"AB"), (0x0C, b"\x01")]
    assert codecs.parse_tlv(bytes.fromhex("0C0101FFFF")) == [(0x0C, b"\x01")]
    assert codecs.parse_tlv_record(bytes.fromhex("0C0101"), 0x0C) == b"\x01"


@pytest.mark.parametrize("raw", ["0B05414243", "0B", "0BFE00"])
def test_tlv_length_errors_name_file_and_tag(raw: str) -> None:
    with pytest.raises(CardDataError) as e:
        codecs.parse_tlv(bytes.fromhex(raw), file="DDF1/EF06")
    assert e.value.file == "DDF1/EF06" and e.value.tag == "0B"


def test_missing_tag_is_a_data_error() -> None:
    with pytest.raises(CardDataError) as e:
        codecs.parse_tlv_record(bytes.fromhex("0C0101"), 0x0B, file="DDF1/EF06")
    assert e.value.tag == "0B"


@given(st.text(alphabet=st.characters(codec="gb18030", exclude_characters="\x00 "),
               max_size=10))
def test_an_round_trip_property(text: str) -> None:
    raw = text.encode("gb18030")
    if len(raw) > 40:
        return
    assert codecs.decode_an(codecs.encode_an(text, 40)) == text


@given(st.text(alphabet="0123456789", max_size=8))
def test_cn_round_trip_property(digits: str) -> None:
    assert codecs.decode_cn(codecs.encode_cn(digits, 4)) == digits


def test_every_element_round_trips_at_max_length() -> None:
    for spec in FILES.values():
        for el in spec.elements:
            value: str | bytes
            if el.coding.value == "B":
                value = bytes(range(el.length))
            elif el.coding.value == "CN":
                value = "9" * (2 * el.length)
            else:
                value = "健" * (el.length // 2) + "a" * (el.length % 2)
            raw = codecs.encode_element(el, value)
            assert len(raw) == el.length
            assert codecs.decode_element(el, raw) == value


def test_an_ascii_and_chinese_decode_as_gb18030_does() -> None:
    for text in ("H11010119800101001", "11010519491231002X", "张三", "A张", "  "):
        raw = text.encode("gb18030").ljust(30, b"\x00")
        assert codecs.decode_an(raw) == raw.rstrip(b"\x00").decode("gb18030").rstrip(" ")


@pytest.mark.parametrize(("value", "ok"), [
    ("20300101", True), ("20240229", True), ("20230229", False), ("20301301", False),
    ("2030-01-01", False), ("2030W011", False), ("2030011", False), ("２０３００１０１", False),
    ("", False),
])
def test_card_dates_are_yyyymmdd_or_a_data_error(value: str, ok: bool) -> None:
    if ok:
        assert parse_date(value, file="DDF1/EF08", tag=7).strftime("%Y%m%d") == value
    else:
        with pytest.raises(CardDataError) as e:
            parse_date(value, file="DDF1/EF08", tag=7)
        assert (e.value.file, e.value.tag) == ("DDF1/EF08", "07")
