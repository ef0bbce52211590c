"""Masking rules for names, ID numbers, phones and payment codes."""

from yikatong.common.privacy import (
    mask_card_number,
    mask_id_number,
    mask_name,
    mask_payment_code,
    mask_phone,
    mask_text,
)


def test_id_number_keeps_first_three_and_last_four():
    assert mask_id_number("11010119800101003X") == "110***********003X"
    assert mask_id_number("110101800101003") == "110********1003"


def test_names_keep_first_and_last_character_only():
    assert mask_name("张三") == "张*"
    assert mask_name("李秀英") == "李*英"
    assert mask_name("欧阳娜娜") == "欧**娜"
    assert mask_name("Li Lei") == "L*****"
    assert mask_name("王") == "*"


def test_phone_card_and_payment_code():
    assert mask_phone("13812345678") == "138****5678"
    assert mask_card_number("110100000000000001") == "1101**********0001"
    assert mask_payment_code("134567890123456789") == "13************6789"


def test_free_text_masks_everything_personal():
    line = ("patient 张三 id=11010119800101003X phone 13812345678 paid with "
            "134567890123456789 and alipay 2812345678901234567")
    out = mask_text(line, names=("张三",))
    assert "11010119800101003X" not in out and "110***********003X" in out
    assert "13812345678" not in out and "138****5678" in out
    assert "134567890123456789" not in out
    assert "2812345678901234567" not in out
    assert "张三" not in out and "张*" in out


def test_free_text_leaves_ordinary_numbers_alone():
    line = "outbox depth 1234, queue 17, booking 20261122-0042, port 18830"
    assert mask_text(line) == line


def test_name_fields_are_masked_without_knowing_the_name():
    assert mask_text('{"name": "欧阳娜娜", "dept": "内科"}') == '{"name": "欧**娜", "dept": "内科"}'
    assert mask_text("holder=李秀英 ok") == "holder=李*英 ok"
