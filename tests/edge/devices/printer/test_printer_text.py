"""CJK display width, wrapping that never loses characters, rows and tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.devices.printer.errors import LayoutError
from edge.devices.printer.escpos.text import (
    Column,
    display_width,
    format_fen,
    kv_lines,
    table_lines,
    two_col_lines,
    wrap,
)


def test_printer_width_counts_wide_as_two() -> None:
    assert display_width("abc") == 3
    assert display_width("中文") == 4
    assert display_width("ＡＢ") == 4  # fullwidth
    assert display_width("↑") == 2  # ambiguous: wide on a Chinese printer
    assert display_width("张*丰 12") == 8


def test_printer_format_fen() -> None:
    assert format_fen(1250) == "¥12.50"
    assert format_fen(5) == "¥0.05"
    assert format_fen(-300) == "-¥3.00"


def test_printer_wrap_breaks_cjk_and_keeps_punctuation_off_line_start() -> None:
    lines = wrap("请提前十五分钟到达候诊区，谢谢", 12)
    assert all(display_width(x) <= 12 for x in lines)
    assert not any(x.startswith("，") for x in lines)
    assert "".join(lines) == "请提前十五分钟到达候诊区，谢谢"


def test_printer_wrap_breaks_latin_at_spaces() -> None:
    assert wrap("hello wonderful world", 10) == ["hello", "wonderful", "world"]
    assert wrap("abcdefghijkl", 5) == ["abcde", "fghij", "kl"]


@given(st.text(alphabet=st.sampled_from("中文ab 1，。¥↑XYZ"), max_size=80), st.integers(2, 48))
def test_printer_wrap_never_truncates(text: str, width: int) -> None:
    lines = wrap(text, width)
    assert all(display_width(x) <= width for x in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_printer_wrap_rejects_impossible_width() -> None:
    with pytest.raises(LayoutError):
        wrap("中", 1)


def test_printer_two_col_right_aligns_value() -> None:
    (line,) = two_col_lines("合计", "¥12.50", 20)
    assert display_width(line) == 20 and line.endswith("¥12.50")
    lines = two_col_lines("很长很长很长很长的项目名称", "¥12.50", 16)
    assert lines[-1].endswith("¥12.50") and all(display_width(x) <= 16 for x in lines)


def test_printer_kv_hangs_continuation_under_value() -> None:
    lines = kv_lines("地点：", "门诊楼三层B区心内科候诊区", 16)
    assert lines[0].startswith("地点：")
    assert all(x.startswith("      ") for x in lines[1:])
    assert all(display_width(x) <= 16 for x in lines)


def test_printer_table_fits_and_wraps_flex_column() -> None:
    cols = [Column("项目", flex=True), Column("数量", "right"), Column("金额", "right")]
    rows = [["阿莫西林胶囊 0.25g*24粒/盒", "2", "¥25.50"], ["静脉采血", "1", "¥5.00"]]
    lines = table_lines(cols, rows, 32)
    assert all(display_width(x) <= 32 for x in lines)
    assert lines[0].startswith("项目")
    assert "".join(lines).count("¥25.50") == 1
    narrow = table_lines(cols, rows, 16)  # stacked form
    assert all(display_width(x) <= 16 for x in narrow)
    assert any("阿莫西林" in x for x in narrow)


def test_printer_table_rejects_ragged_rows() -> None:
    with pytest.raises(LayoutError):
        table_lines([Column("a", flex=True)], [["x", "y"]], 10)
