"""Topic builders, parser and subscription filters."""

from __future__ import annotations

import pytest

from yikatong.protocol import topics
from yikatong.protocol.errors import BadTopic
from yikatong.protocol.topics import Topic


def test_builders() -> None:
    assert topics.ROOT == "ykt/v1"
    assert topics.state("kiosk-0001") == "ykt/v1/dev/kiosk-0001/state"
    assert topics.up("kiosk-0001", "req") == "ykt/v1/dev/kiosk-0001/up/req"
    assert topics.down("kiosk-0001", "config") == "ykt/v1/dev/kiosk-0001/down/config"
    assert topics.hotlist() == "ykt/v1/fleet/hotlist"
    assert topics.enroll("10000000abcdef01", "csr") == "ykt/v1/enroll/10000000abcdef01/csr"


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (topics.up, ("kiosk-0001", "resp")),
        (topics.up, ("kiosk-0001", "#")),
        (topics.down, ("kiosk-0001", "req")),
        (topics.up, ("Kiosk-0001", "req")),
        (topics.state, ("+",)),
        (topics.state, ("a/b",)),
        (topics.enroll, ("ab", "csr")),
        (topics.enroll, ("serial-0001", "key")),
        (topics.enroll, ("ser/ial", "csr")),
    ],
)
def test_builders_refuse_bad_parts(call: object, args: tuple[str, ...]) -> None:
    with pytest.raises(BadTopic):
        call(*args)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("dev", "ok"),
    [
        ("abc", True),
        ("kiosk-0001", True),
        ("0a-", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("ab", False),
        ("-abc", False),
        ("Kiosk", False),
        ("kiosk_01", False),
        ("kiosk.01", False),
        ("kiosk 01", False),
        ("ｋｉｏｓｋ", False),
        ("abc\n", False),
        ("", False),
    ],
)
def test_device_id_rule(dev: str, ok: bool) -> None:
    assert topics.is_valid_device_id(dev) is ok
    if ok:
        assert topics.check_device_id(dev) == dev
    else:
        with pytest.raises(BadTopic):
            topics.check_device_id(dev)


def test_non_string_device_id() -> None:
    assert not topics.is_valid_device_id(123)
    with pytest.raises(BadTopic):
        topics.check_device_id(None)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("ykt/v1/dev/kiosk-0001/state", Topic("kiosk-0001", "state", "state")),
        ("ykt/v1/dev/kiosk-0001/up/req", Topic("kiosk-0001", "up", "req")),
        ("ykt/v1/dev/kiosk-0001/up/event", Topic("kiosk-0001", "up", "event")),
        ("ykt/v1/dev/kiosk-0001/up/telemetry", Topic("kiosk-0001", "up", "telemetry")),
        ("ykt/v1/dev/kiosk-0001/up/result", Topic("kiosk-0001", "up", "result")),
        ("ykt/v1/dev/kiosk-0001/down/resp", Topic("kiosk-0001", "down", "resp")),
        ("ykt/v1/dev/kiosk-0001/down/cmd", Topic("kiosk-0001", "down", "cmd")),
        ("ykt/v1/dev/kiosk-0001/down/config", Topic("kiosk-0001", "down", "config")),
        ("ykt/v1/fleet/hotlist", Topic(None, "fleet", "hotlist")),
        ("ykt/v1/enroll/SN-0001/csr", Topic("SN-0001", "enroll", "csr")),
        ("ykt/v1/enroll/SN-0001/cert", Topic("SN-0001", "enroll", "cert")),
    ],
)
def test_parse_round_trip(topic: str, expected: Topic) -> None:
    parsed = topics.parse(topic)
    assert parsed == expected
    assert str(parsed) == topic


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "empty topic"),
        ("ykt/v1/dev/+/up/req", "wildcards"),
        ("ykt/v1/dev/kiosk-0001/#", "wildcards"),
        ("ykt/v1/dev/kiosk-0001/up/req/", "empty topic level"),
        ("ykt/v1//dev/kiosk-0001/state", "empty topic level"),
        ("/ykt/v1/dev/kiosk-0001/state", "empty topic level"),
        ("ykt/v2/dev/kiosk-0001/state", "not under"),
        ("other/v1/dev/kiosk-0001/state", "not under"),
        ("$SYS/broker/uptime", "not under"),
        ("ykt/v1", "not under"),
        ("ykt/v1/dev", "missing device id"),
        ("ykt/v1/dev/" + "a" * 64 + "/state", "device id"),
        ("ykt/v1/dev/KIOSK-1/state", "device id"),
        ("ykt/v1/dev/kiosk-0001", "unknown device topic"),
        ("ykt/v1/dev/kiosk-0001/up/resp", "unknown device topic"),
        ("ykt/v1/dev/kiosk-0001/down/req", "unknown device topic"),
        ("ykt/v1/dev/kiosk-0001/up/req/extra", "unknown device topic"),
        ("ykt/v1/dev/kiosk-0001/state\x00", "NUL"),
        ("ykt/v1/fleet/other", "unknown topic"),
        ("ykt/v1/enroll/SN-0001/key", "unknown enroll leaf"),
        ("ykt/v1/enroll/S/csr", "bad serial"),
        ("ykt/v1/" + "x" * 300, "longer than"),
    ],
)
def test_parse_refuses_bad_topics(topic: str, reason: str) -> None:
    with pytest.raises(BadTopic, match=reason) as ei:
        topics.parse(topic)
    assert ei.value.code == "bad_topic"
    assert ei.value.message_zh


def test_parse_refuses_non_string() -> None:
    with pytest.raises(BadTopic):
        topics.parse(b"ykt/v1/fleet/hotlist")  # type: ignore[arg-type]


def test_central_filters_plain_and_shared() -> None:
    plain = topics.central_filters(None)
    assert plain == [
        "ykt/v1/dev/+/up/req",
        "ykt/v1/dev/+/up/event",
        "ykt/v1/dev/+/up/telemetry",
        "ykt/v1/dev/+/up/result",
        "ykt/v1/dev/+/state",
        "ykt/v1/enroll/+/csr",
    ]
    shared = topics.central_filters("ykt-central")
    assert shared == [f"$share/ykt-central/{f}" for f in plain]
    assert topics.state_snapshot_filter() == "ykt/v1/dev/+/state"


@pytest.mark.parametrize("group", ["", "a/b", "a+", "#", "x" * 65])
def test_bad_share_group(group: str) -> None:
    with pytest.raises(BadTopic):
        topics.central_filters(group)


def test_device_filters_are_its_own_down_topics_and_hotlist() -> None:
    assert topics.device_filters("kiosk-0001") == [
        "ykt/v1/dev/kiosk-0001/down/resp",
        "ykt/v1/dev/kiosk-0001/down/cmd",
        "ykt/v1/dev/kiosk-0001/down/config",
        "ykt/v1/fleet/hotlist",
    ]
    with pytest.raises(BadTopic):
        topics.device_filters("+")


@pytest.mark.parametrize(
    ("topic", "options"),
    [
        ("ykt/v1/dev/kiosk-0001/state", (1, True)),
        ("ykt/v1/dev/kiosk-0001/up/req", (1, False)),
        ("ykt/v1/dev/kiosk-0001/up/telemetry", (0, False)),
        ("ykt/v1/dev/kiosk-0001/down/config", (1, True)),
        ("ykt/v1/dev/kiosk-0001/down/cmd", (1, False)),
        ("ykt/v1/fleet/hotlist", (1, True)),
    ],
)
def test_publish_options(topic: str, options: tuple[int, bool]) -> None:
    assert topics.publish_options(topic) == options
    assert topics.publish_options(topics.parse(topic)) == options


def test_every_parsable_kind_has_publish_options() -> None:
    for kind in topics.UP_KINDS:
        topics.publish_options(topics.up("abc", kind))
    for kind in topics.DOWN_KINDS:
        topics.publish_options(topics.down("abc", kind))
    for leaf in topics.ENROLL_LEAVES:
        topics.publish_options(topics.enroll("abc", leaf))
