"""MQTT topic names and filters of the Yikatong contract (pure, no I/O).

Layout (``{dev}`` is the device id = MQTT client id = certificate CN)::

    ykt/v1/dev/{dev}/state                 device → all        QoS 1, retained
    ykt/v1/dev/{dev}/up/{req|event|telemetry|result}
    ykt/v1/dev/{dev}/down/{resp|cmd|config}
    ykt/v1/fleet/hotlist                   central → devices   QoS 1, retained
    ykt/v1/enroll/{serial}/{csr|cert}      enrollment only     QoS 1

Device ids match :data:`DEVICE_ID_RE`: 3 to 63 characters, lower-case ASCII letters,
digits and ``-``, not starting with ``-``. That keeps them safe as an MQTT topic level
(no ``/ + # $``), as a certificate CN, as a file name and as a DNS label, and makes them
case-insensitive by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from yikatong.protocol.errors import BadTopic

__all__ = [
    "DEVICE_ID_RE",
    "DOWN_KINDS",
    "ENROLL_LEAVES",
    "PUBLISH_OPTIONS",
    "RESERVED_DEVICE_IDS",
    "ROOT",
    "SERIAL_RE",
    "UP_KINDS",
    "Direction",
    "Topic",
    "central_filters",
    "check_device_id",
    "device_filters",
    "down",
    "enroll",
    "hotlist",
    "is_valid_device_id",
    "parse",
    "publish_options",
    "state",
    "state_snapshot_filter",
    "up",
]

ROOT: Final = "ykt/v1"

#: Device id rule; see the module docstring for why.
DEVICE_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
#: Hardware serial numbers in enrollment topics (e.g. a Pi's ``10000000abcdef01``).
SERIAL_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
#: Ids used as ``dev`` of fleet-wide/central messages; the registry must refuse them.
RESERVED_DEVICE_IDS: Final = frozenset({"fleet", "central", "all", "broadcast", "enroll", "claim"})

UP_KINDS: Final = frozenset({"req", "event", "telemetry", "result"})
DOWN_KINDS: Final = frozenset({"resp", "cmd", "config"})
ENROLL_LEAVES: Final = frozenset({"csr", "cert"})

# MQTT 3.1.1 §4.7.3: a topic is at most 65535 bytes of UTF-8; ours are far shorter.
_MAX_TOPIC_BYTES: Final = 256
_SHARE_GROUP_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Direction = Literal["up", "down", "state", "fleet", "enroll"]


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed Yikatong topic; ``dev`` is the serial for enroll and None for fleet."""

    dev: str | None
    direction: Direction
    kind: str

    def __str__(self) -> str:
        """Return the topic string this value was parsed from."""
        if self.direction == "state":
            return state(self.dev or "")
        if self.direction == "up":
            return up(self.dev or "", self.kind)
        if self.direction == "down":
            return down(self.dev or "", self.kind)
        if self.direction == "enroll":
            return enroll(self.dev or "", self.kind)
        return hotlist()


def is_valid_device_id(dev: object) -> bool:
    """Tell whether ``dev`` is a well-formed device id (reserved ids included)."""
    return isinstance(dev, str) and DEVICE_ID_RE.fullmatch(dev) is not None


def check_device_id(dev: object) -> str:
    """Return ``dev`` if it is a well-formed device id, else raise BadTopic."""
    if isinstance(dev, str) and DEVICE_ID_RE.fullmatch(dev) is not None:
        return dev
    shown = dev if isinstance(dev, str) else repr(dev)
    raise BadTopic(shown[:80], "device id must match ^[a-z0-9][a-z0-9-]{2,62}$")


def state(dev: str) -> str:
    """Return the retained birth/will topic of a device."""
    return f"{ROOT}/dev/{check_device_id(dev)}/state"


def up(dev: str, kind: str) -> str:
    """Return a device → central topic; kind is req, event, telemetry or result."""
    if kind not in UP_KINDS:
        raise BadTopic(f"{ROOT}/dev/{dev}/up/{kind}", f"up kind must be one of {sorted(UP_KINDS)}")
    return f"{ROOT}/dev/{check_device_id(dev)}/up/{kind}"


def down(dev: str, kind: str) -> str:
    """Return a central → device topic; kind is resp, cmd or config."""
    if kind not in DOWN_KINDS:
        raise BadTopic(
            f"{ROOT}/dev/{dev}/down/{kind}", f"down kind must be one of {sorted(DOWN_KINDS)}"
        )
    return f"{ROOT}/dev/{check_device_id(dev)}/down/{kind}"


def hotlist() -> str:
    """Return the retained fleet-wide lost-card list notice topic."""
    return f"{ROOT}/fleet/hotlist"


def enroll(serial: str, leaf: str) -> str:
    """Return an enrollment topic; leaf ``csr`` goes up, ``cert`` comes down."""
    if not isinstance(serial, str) or SERIAL_RE.fullmatch(serial) is None:
        raise BadTopic(f"{ROOT}/enroll/{serial}/{leaf}", "serial must match " + SERIAL_RE.pattern)
    if leaf not in ENROLL_LEAVES:
        raise BadTopic(
            f"{ROOT}/enroll/{serial}/{leaf}", f"enroll leaf must be one of {sorted(ENROLL_LEAVES)}"
        )
    return f"{ROOT}/enroll/{serial}/{leaf}"


def parse(topic: str) -> Topic:
    """Parse a concrete topic name (no wildcards) into a :class:`Topic`, or raise BadTopic."""
    if not isinstance(topic, str):
        raise BadTopic(repr(topic)[:80], "topic must be a string")
    shown = topic[:200]
    if not topic:
        raise BadTopic(shown, "empty topic")
    if len(topic.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        raise BadTopic(shown, f"longer than {_MAX_TOPIC_BYTES} bytes")
    if "+" in topic or "#" in topic:
        raise BadTopic(shown, "wildcards are not allowed in a topic name")
    if "\x00" in topic:
        raise BadTopic(shown, "NUL character in topic")
    levels = topic.split("/")
    if any(level == "" for level in levels):
        raise BadTopic(shown, "empty topic level")
    root = ROOT.split("/")
    if levels[: len(root)] != root or len(levels) == len(root):
        raise BadTopic(shown, f"not under {ROOT}/")
    rest = levels[len(root) :]
    if rest[0] == "dev":
        return _parse_dev(shown, rest[1:])
    if rest == ["fleet", "hotlist"]:
        return Topic(dev=None, direction="fleet", kind="hotlist")
    if rest[0] == "enroll" and len(rest) == 3:
        serial, leaf = rest[1], rest[2]
        if SERIAL_RE.fullmatch(serial) is None:
            raise BadTopic(shown, "bad serial number")
        if leaf not in ENROLL_LEAVES:
            raise BadTopic(shown, f"unknown enroll leaf {leaf!r}")
        return Topic(dev=serial, direction="enroll", kind=leaf)
    raise BadTopic(shown, "unknown topic")


def _parse_dev(shown: str, rest: list[str]) -> Topic:
    if not rest:
        raise BadTopic(shown, "missing device id")
    dev = rest[0]
    if DEVICE_ID_RE.fullmatch(dev) is None:
        raise BadTopic(shown, "device id must match ^[a-z0-9][a-z0-9-]{2,62}$")
    tail = rest[1:]
    if tail == ["state"]:
        return Topic(dev=dev, direction="state", kind="state")
    if len(tail) == 2 and tail[0] == "up" and tail[1] in UP_KINDS:
        return Topic(dev=dev, direction="up", kind=tail[1])
    if len(tail) == 2 and tail[0] == "down" and tail[1] in DOWN_KINDS:
        return Topic(dev=dev, direction="down", kind=tail[1])
    raise BadTopic(shown, "unknown device topic")


def _share(group: str | None, topic_filter: str) -> str:
    if group is None:
        return topic_filter
    if _SHARE_GROUP_RE.fullmatch(group) is None:
        raise BadTopic(
            f"$share/{group}/{topic_filter}", "share group must match [A-Za-z0-9_-]{1,64}"
        )
    return f"$share/{group}/{topic_filter}"


def central_filters(share_group: str | None) -> list[str]:
    """Return central's subscriptions: all up/* kinds, state and enrollment CSRs.

    With a share group (several central instances) each filter becomes an MQTT shared
    subscription ``$share/{group}/…`` so each message is handled by one instance. Shared
    subscriptions get no retained messages, so an instance that needs the current state of
    every device also subscribes once to :func:`state_snapshot_filter` (unshared).
    """
    filters = [f"{ROOT}/dev/+/up/{kind}" for kind in ("req", "event", "telemetry", "result")]
    filters.append(f"{ROOT}/dev/+/state")
    filters.append(f"{ROOT}/enroll/+/csr")
    return [_share(share_group, f) for f in filters]


def state_snapshot_filter() -> str:
    """Return the unshared state filter that delivers every device's retained birth/will."""
    return f"{ROOT}/dev/+/state"


def device_filters(dev: str) -> list[str]:
    """Return a device's subscriptions: its own down/* topics and the fleet hot list."""
    check_device_id(dev)
    return [down(dev, "resp"), down(dev, "cmd"), down(dev, "config"), hotlist()]


#: (QoS, retain) for publishing on each (direction, kind); see docs/protocol.md.
PUBLISH_OPTIONS: Final[dict[tuple[str, str], tuple[int, bool]]] = {
    ("state", "state"): (1, True),
    ("up", "req"): (1, False),
    ("up", "event"): (1, False),
    # Telemetry is periodic and superseded by the next sample; losing one is fine.
    ("up", "telemetry"): (0, False),
    ("up", "result"): (1, False),
    ("down", "resp"): (1, False),
    ("down", "cmd"): (1, False),
    # The desired config is state, not an event: a device that connects later gets it.
    ("down", "config"): (1, True),
    ("fleet", "hotlist"): (1, True),
    ("enroll", "csr"): (1, False),
    ("enroll", "cert"): (1, False),
}


def publish_options(topic: Topic | str) -> tuple[int, bool]:
    """Return (qos, retain) to publish on ``topic``."""
    t = parse(topic) if isinstance(topic, str) else topic
    return PUBLISH_OPTIONS[(t.direction, t.kind)]
