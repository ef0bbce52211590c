"""Classifier: e-health QR, wallet codes, site patterns, rejection, masking, never crashing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.devices.scanner.classify import (
    ClassifierRules,
    EhcQr,
    PaymentCode,
    SpecimenBarcode,
    StaffBadge,
    UnknownScan,
    classify,
    mask_scan_text,
)
from edge.devices.scanner.errors import InvalidScanText, ScannerError

EMPI = "A1B2C3D4E5F60718293A4B5C6D7E8F90" * 2
NONCE = "0123456789abcdef0123456789ABCDEF"
RULES = ClassifierRules.from_strings(r"^S\d{10}$", r"^YG\d{6}$")


def test_static_ehc_qr() -> None:
    scan = classify(f"{EMPI}:1", RULES)
    assert scan == EhcQr(empi_hex=EMPI, kind="static", nonce=None, raw=f"{EMPI}:1")


def test_dynamic_ehc_qr_with_scanner_terminator() -> None:
    scan = classify(f" {EMPI}:0:{NONCE}\r\n", RULES)
    assert isinstance(scan, EhcQr)
    assert (scan.kind, scan.nonce, scan.raw) == ("dynamic", NONCE, f"{EMPI}:0:{NONCE}")
    assert EMPI not in repr(scan)


@pytest.mark.parametrize("text", [
    f"{EMPI}:2", f"{EMPI[:-1]}:1", f"{EMPI}:0:{NONCE[:-1]}", f"{EMPI}:0", f"{EMPI[:-1]}G:1",
    f"{EMPI}:1:{NONCE}",
])
def test_near_miss_ehc_is_unknown(text: str) -> None:
    assert isinstance(classify(text, RULES), UnknownScan)


@pytest.mark.parametrize(("text", "wallet"), [
    ("134567890123456789", "wechat"), ("100000000000000000", "wechat"),
    ("151234567890123456", "wechat"), ("2512345678901234", "alipay"),
    ("281234567890123456", "alipay"), ("301234567890123456789012", "alipay"),
])
def test_payment_codes(text: str, wallet: str) -> None:
    scan = classify(text, RULES)
    assert scan == PaymentCode(wallet=wallet, code=text)  # type: ignore[arg-type]
    assert text not in repr(scan) and text not in str(scan)
    assert text[-4:] in repr(scan)


@pytest.mark.parametrize("text", [
    "161234567890123456",  # WeChat prefix out of range
    "13456789012345678",  # 17 digits
    "2412345678901234",  # Alipay prefix out of range
    "311234567890123456",
    "251234567890123",  # 15 digits
    "3012345678901234567890123",  # 25 digits
    "１３４５６７８９０１２３４５６７８９",  # fullwidth digits are not a wallet code
])
def test_not_payment_codes(text: str) -> None:
    assert not isinstance(classify(text, RULES), PaymentCode)


def test_site_patterns() -> None:
    assert classify("S2024000001", RULES) == SpecimenBarcode("S2024000001")
    assert classify("YG123456", RULES) == StaffBadge("YG123456")
    assert isinstance(classify("YG12345", RULES), UnknownScan)
    # fullmatch: a pattern without anchors still has to cover the whole text
    loose = ClassifierRules.from_strings(r"S\d+", None)
    assert isinstance(classify("xS123", loose), UnknownScan)


def test_payment_code_wins_over_a_greedy_site_regex() -> None:
    greedy = ClassifierRules.from_strings(r"\d+", r"\d+")
    assert isinstance(classify("134567890123456789", greedy), PaymentCode)


def test_unknown_scan_is_masked() -> None:
    scan = classify("ORDER 6222021234567890123 for 110101199003071234", RULES)
    assert isinstance(scan, UnknownScan)
    assert "6222021234567890123" not in scan.raw_masked
    assert "110101199003071234" not in scan.raw_masked
    assert scan.raw_masked.startswith("ORDER ")


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"), (" \r\n\t", "empty"), ("AB\x1dCD", "control_character"),
    ("AB\x00", "control_character"), ("A\u200bB", "control_character"),
    ("A" * 513, "too_long"), ("AB\udcff", "control_character"),
])
def test_rejections_are_typed(text: str, reason: str) -> None:
    with pytest.raises(InvalidScanText) as info:
        classify(text, RULES)
    assert info.value.reason == reason
    assert info.value.message_zh


def test_rejection_message_never_holds_the_text() -> None:
    code = "134567890123456789"
    with pytest.raises(InvalidScanText) as info:
        classify(code + "\x07", RULES)
    assert code not in str(info.value)


def test_max_length_is_configurable() -> None:
    rules = ClassifierRules.from_strings(max_length=20)
    assert isinstance(classify("A" * 20, rules), UnknownScan)
    with pytest.raises(InvalidScanText):
        classify("A" * 21, rules)


def test_mask_scan_text_masks_long_digit_runs() -> None:
    assert mask_scan_text("6222021234567890123") == "62*************0123"
    assert mask_scan_text("12345") == "12345"


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=700))
def test_classify_never_crashes(text: str) -> None:
    try:
        scan = classify(text, RULES)
    except InvalidScanText as exc:
        assert isinstance(exc, ScannerError)
        return
    assert isinstance(scan, EhcQr | PaymentCode | SpecimenBarcode | StaffBadge | UnknownScan)
    repr(scan)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(re.compile(r"1[0-5][0-9]{16}|(2[5-9]|30)[0-9]{14,22}"), fullmatch=True))
def test_every_wallet_code_is_a_payment_code_and_masked(code: str) -> None:
    scan = classify(code, RULES)
    assert isinstance(scan, PaymentCode)
    assert code not in repr(scan)
