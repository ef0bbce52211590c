"""Exact ESC/POS bytes for every layout (golden files) and what the layouts must contain.

Regenerate the golden files after an intended layout change with
``YKT_REGEN_GOLDEN=1 .venv/bin/pytest tests/edge/devices/printer`` and review the PNGs.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.devices.printer.documents import Document
from edge.devices.printer.errors import InvalidDocument, LayoutError
from edge.devices.printer.escpos import get_profile, render
from edge.devices.printer.escpos.builder import EscPosBuilder
from edge.devices.printer.escpos.text import display_width
from edge.devices.printer.sim.decoder import decode

FIXTURES = Path(__file__).parent / "fixtures"
KINDS = ["cancellation", "cash_payment", "cash_topup", "closing_report", "lab_report",
         "pairing_slip", "payment", "refund", "shift_report", "slip", "test_page", "topup"]
NAME = "张三丰"
ID_NUMBER = "110105199001011234"
Samples = dict[str, Callable[[], Document]]
PROFILES = ["xprinter_xp80", "epson_tm_t88", "xprinter_xp58"]


def test_every_document_type_has_a_golden_sample(samples: Samples) -> None:
    assert sorted(samples) == sorted(KINDS)
    assert {type(samples[k]()) for k in KINDS} == set(typing.get_args(Document))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", KINDS)
def test_printer_layout_matches_golden_bytes(kind: str, profile: str, samples: Samples) -> None:
    data = render(samples[kind](), get_profile(profile))
    golden = FIXTURES / f"{kind}.{profile}.bin"
    if os.environ.get("YKT_REGEN_GOLDEN") == "1":
        golden.write_bytes(data)
    assert golden.exists(), f"missing {golden.name}; run with YKT_REGEN_GOLDEN=1"
    assert data == golden.read_bytes()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", KINDS)
def test_printer_copy_layout_matches_golden_bytes(
    kind: str, profile: str, samples: Samples
) -> None:
    data = render(dataclasses.replace(samples[kind](), copy=True), get_profile(profile))
    golden = FIXTURES / f"{kind}.{profile}.copy.bin"
    if os.environ.get("YKT_REGEN_GOLDEN") == "1":
        golden.write_bytes(data)
    assert golden.exists(), f"missing {golden.name}; run with YKT_REGEN_GOLDEN=1"
    assert data == golden.read_bytes()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("copy", [False, True])
def test_printer_layout_lines_fit_the_paper(
    kind: str, profile: str, copy: bool, samples: Samples
) -> None:
    prof = get_profile(profile)
    (job,) = decode(render(dataclasses.replace(samples[kind](), copy=copy), prof))
    assert job.cut == (prof.cutter != "none")
    for element in job.elements:
        runs = getattr(element, "runs", ())
        used = sum(display_width(r.text) * r.width for r in runs)
        assert used <= prof.columns, (kind, [r.text for r in runs])


def test_printer_layout_is_deterministic(samples: Samples) -> None:
    prof = get_profile("xprinter_xp80")
    assert render(samples["slip"](), prof) == render(samples["slip"](), prof)


def test_printer_slip_prints_masked_identity_only(samples: Samples) -> None:
    (job,) = decode(render(samples["slip"](), get_profile("xprinter_xp80")))
    text = job.text
    assert "张*丰" in text
    assert "110***********1234" in text
    assert NAME not in text and ID_NUMBER not in text
    assert "1101********5678" in text
    assert job.qr_payloads == ["MZ20240520000123"]
    assert "12号" in text and "心血管内科门诊" in text


def test_printer_slip_starts_with_init_and_chinese_mode_and_ends_with_cut(samples: Samples) -> None:
    data = render(samples["slip"](), get_profile("xprinter_xp80"))
    assert data.startswith(b"\x1b@\x1c&")
    assert data.endswith(b"\x1bd\x04\x1dV\x01")
    assert "心血管内科门诊".encode("gb18030") in data


@pytest.mark.parametrize("kind", KINDS)
def test_printer_copy_is_marked_clearly_and_only_on_copies(kind: str, samples: Samples) -> None:
    from edge.devices.printer.sim.decoder import PrintedLine

    (original,) = decode(render(samples[kind](), get_profile("xprinter_xp58")))
    assert "副本" not in original.text and "COPY" not in original.text
    copy = dataclasses.replace(samples[kind](), copy=True)
    (job,) = decode(render(copy, get_profile("xprinter_xp58")))
    marks = [e for e in job.elements
             if isinstance(e, PrintedLine) and "副本 / COPY" in "".join(r.text for r in e.runs)]
    assert len(marks) == 1
    (run,) = marks[0].runs
    assert run.bold and (run.width, run.height) == (2, 2)
    assert job.lines[-2:] == ["本凭条为副本，仅供参考", "This is a copy"]
    assert "原件作废" not in job.text  # the old, self-contradictory footer
    # The mark sits above the body: before the first line that is not header or rule.
    assert job.lines.index("副本 / COPY") < 6


def test_printer_money_prints_as_yuan_with_two_decimals(samples: Samples) -> None:
    (job,) = decode(render(samples["payment"](), get_profile("epson_tm_t20")))
    assert "¥85.50" in job.text  # GB18030 printer: the real ¥ sign
    (job,) = decode(render(samples["payment"](), get_profile("xprinter_xp80")))
    assert "￥85.50" in job.text  # GBK-only printer: the full-width sign, same width


def test_printer_lab_flags_print_as_arrows(samples: Samples) -> None:
    (job,) = decode(render(samples["lab_report"](), get_profile("xprinter_xp80")))
    assert any("11.2↑" in line for line in job.lines)
    assert any("15.1↓" in line for line in job.lines)
    assert job.qr_payloads == ["https://his.example.cn/r/LIS20240520-0456?v=8f3a"]


def test_printer_qr_bytes_follow_gs_k_model_2() -> None:
    b = EscPosBuilder(get_profile("xprinter_xp80"))
    data = b.qr("AB", module_size=6, ec="H").build()
    assert data == (
        b"\x1d(k\x04\x001A2\x00" b"\x1d(k\x03\x001C\x06" b"\x1d(k\x03\x001E3"
        b"\x1d(k\x05\x001P0AB" b"\x1d(k\x03\x001Q0"
    )


def test_printer_builder_rejects_bad_text() -> None:
    b = EscPosBuilder(get_profile("xprinter_xp80"))
    with pytest.raises(LayoutError):
        b.text("中文")  # not in Chinese mode yet
    b.chinese(True)
    with pytest.raises(LayoutError):
        b.text("a\x1bb")
    with pytest.raises(LayoutError):
        b.size(9, 1)


def test_printer_documents_validate_fields(samples: Samples) -> None:
    with pytest.raises(InvalidDocument) as err:
        dataclasses.replace(samples["slip"](), fee_fen=-1)
    assert err.value.field == "fee_fen"
    with pytest.raises(InvalidDocument):
        dataclasses.replace(samples["slip"](), start="25:00")
    with pytest.raises(InvalidDocument):
        dataclasses.replace(samples["payment"](), total_fen=1)  # items do not add up
    with pytest.raises(InvalidDocument):
        dataclasses.replace(samples["slip"](), fee_fen=12.5)  # type: ignore[arg-type]


def _value_column(line: str) -> int:
    """Display column where the value starts after the first full-width colon."""
    head, _, tail = line.partition("：")
    rest = tail.lstrip(" ")
    return display_width(head + "：") + (len(tail) - len(rest))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", KINDS)
def test_printer_every_label_fits_the_label_column(
    kind: str, profile: str, samples: Samples
) -> None:
    (job,) = decode(render(samples[kind](), get_profile(profile)))
    # A label too wide for the column is printed on a line of its own: none of ours may be.
    assert not [line for line in job.lines if line.endswith("：")], kind


def test_printer_values_start_in_one_column(samples: Samples) -> None:
    prof = get_profile("xprinter_xp80")
    (topup,) = decode(render(samples["topup"](), prof))
    (page,) = decode(render(samples["test_page"](), prof))
    rows = [line for line in topup.lines + page.lines
            if line.split("：")[0] in ("患者姓名", "账户余额", "支付方式", "设备编号", "打印宽度",
                                       "打印时间", "操 作 员")]
    assert len(rows) == 8
    assert {_value_column(line) for line in rows} == {10}


def test_printer_long_caller_label_keeps_the_value_column(samples: Samples) -> None:
    doc = dataclasses.replace(samples["test_page"](), extra=(("读卡器固件版本号", "V2.3.1"),))
    (job,) = decode(render(doc, get_profile("xprinter_xp80")))
    i = job.lines.index("读卡器固件版本号：")
    assert job.lines[i + 1] == " " * 10 + "V2.3.1"


@pytest.mark.parametrize("profile", PROFILES)
def test_printer_big_amounts_are_double_width_and_height(profile: str, samples: Samples) -> None:
    from edge.devices.printer.sim.decoder import PrintedLine

    (job,) = decode(render(samples["payment"](), get_profile(profile)))
    big = [r for e in job.elements if isinstance(e, PrintedLine) for r in e.runs
           if r.height == 2 and "85.50" in r.text]
    assert big and all(r.width == 2 and r.bold for r in big)


def test_printer_lab_table_keeps_two_spaces_between_columns(samples: Samples) -> None:
    (job,) = decode(render(samples["lab_report"](), get_profile("xprinter_xp80")))
    (rbc,) = [line for line in job.lines if line.startswith("红细胞计数")]
    assert "10^12/L  4.3-5.8" in rbc
