"""ID numbers (GB 11643), payment-code patterns and e-health QR parsing."""

from __future__ import annotations

from datetime import date

from hypothesis import given
from hypothesis import strategies as st

from central.platform.sim.ids import (
    id_check_digit,
    is_valid_id_number,
    parse_ehc_qr,
    wallet_of,
)


def test_known_id_numbers() -> None:
    # The specimen numbers printed in GB 11643-1999 and its common commentary.
    assert is_valid_id_number("11010519491231002X")
    assert is_valid_id_number("440524188001010014")
    assert not is_valid_id_number("110105194912310021")
    assert not is_valid_id_number("11010519491231002")
    assert not is_valid_id_number("1101051949123100AX")


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_exactly_one_check_character_fits(body: str) -> None:
    check = id_check_digit(body)
    assert is_valid_id_number(body + check)
    assert is_valid_id_number(body + check.lower())
    others = [c for c in "0123456789X" if c != check]
    assert not any(is_valid_id_number(body + c) for c in others)


@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31)),
       st.integers(0, 999))
def test_single_digit_typo_is_caught(birth: date, seq: int) -> None:
    body = f"110105{birth:%Y%m%d}{seq:03d}"
    full = body + id_check_digit(body)
    typo = full[:7] + str((int(full[7]) + 1) % 10) + full[8:]
    assert not is_valid_id_number(typo)


def test_payment_code_patterns() -> None:
    assert wallet_of("134567890123456789") == "wechat"
    assert wallet_of("104567890123456789") == "wechat"
    assert wallet_of("164567890123456789") is None  # WeChat codes start 10-15
    assert wallet_of("13456789012345678") is None  # 17 digits
    assert wallet_of("2512345678901234") == "alipay"  # 16 digits
    assert wallet_of("301234567890123456789012") == "alipay"  # 24 digits
    assert wallet_of("3112345678901234") is None
    assert wallet_of("2412345678901234") is None
    assert wallet_of("2512345678901234567890123") is None  # 25 digits


def test_ehc_qr_forms() -> None:
    hex64 = "A1" * 32
    assert parse_ehc_qr(f"{hex64}:1") == hex64.lower()
    assert parse_ehc_qr(f"{hex64}:0:{'f' * 32}") == hex64.lower()
    assert parse_ehc_qr(f"{hex64}:0") is None
    assert parse_ehc_qr(f"{hex64}:0:{'f' * 31}") is None
    assert parse_ehc_qr(f"{hex64[:-1]}:1") is None
