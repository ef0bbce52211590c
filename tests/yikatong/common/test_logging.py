"""The log filter masks personal data in messages, arguments, extra fields and tracebacks."""

import io
import json
import logging

import pytest

from yikatong.common.logging import known_names, setup_logging


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    setup_logging("test", "debug", stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def lines(stream):
    return [json.loads(x) for x in stream.getvalue().splitlines()]


def test_lines_are_json_with_component_and_level(log_stream):
    logging.getLogger("edge.x").info("started", extra={"port": 8701})
    (rec,) = lines(log_stream)
    assert rec["component"] == "test" and rec["level"] == "info"
    assert rec["msg"] == "started" and rec["port"] == 8701


def test_id_phone_and_payment_code_masked_in_message_and_args(log_stream):
    logging.getLogger("x").warning("read card id %s phone %s code %s",
                                   "11010119800101003X", "13812345678", "134567890123456789")
    text = log_stream.getvalue()
    for secret in ("11010119800101003X", "13812345678", "134567890123456789"):
        assert secret not in text
    assert "110***********003X" in text


def test_extra_fields_are_masked_too(log_stream):
    logging.getLogger("x").info("identify", extra={"body": {"name": "李秀英",
                                                             "id_number": "310104196503120026"}})
    text = log_stream.getvalue()
    assert "310104196503120026" not in text


def test_known_names_masked_anywhere(log_stream):
    known_names.add("欧阳娜娜")
    try:
        logging.getLogger("x").info("greeting 欧阳娜娜 at the kiosk")
    finally:
        known_names.discard("欧阳娜娜")
    text = log_stream.getvalue()
    assert "欧阳娜娜" not in text and "欧**娜" in text


def test_tracebacks_are_masked(log_stream):
    try:
        raise ValueError("bad card 11010119800101003X")
    except ValueError:
        logging.getLogger("x").exception("failed")
    (rec,) = lines(log_stream)
    assert "11010119800101003X" not in json.dumps(rec, ensure_ascii=False)
    assert "ValueError" in rec["exc"]
