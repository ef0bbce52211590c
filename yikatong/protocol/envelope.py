"""The message envelope and its canonical JSON encoding (pure, no I/O).

Canonical JSON is RFC 8785 (JSON Canonicalization Scheme, "JCS") with a few extra
restrictions, so any language with a JCS library produces the same bytes:

* UTF-8, no BOM; object keys sorted by their UTF-16 code units (for the ASCII keys of
  this protocol that is plain byte order); separators ``,`` and ``:`` with no whitespace.
* Strings are escaped as ECMAScript ``JSON.stringify`` does: ``\\"``, ``\\\\``, ``\\b \\f \\n
  \\r \\t``, other characters below U+0020 as ``\\u00xx`` (lower-case hex); everything else,
  Chinese included, is written as raw UTF-8. Lone surrogates are refused.
* Integers must lie within ±(2**53 − 1) (I-JSON) and are written as plain decimals. Money is
  always an integer number of fen, so amounts never meet a float.
* Floats are allowed only where a model says so (e.g. ``cpu_temp_c``); NaN, ±Infinity and
  magnitudes above 2**53 − 1 are refused, and the rest are written in the ECMAScript
  shortest round-trip form (``4.5``, ``0.002``, ``1e-7``, and ``5.0`` → ``5``).
* ``true``/``false``/``null`` as usual; nesting at most :data:`MAX_DEPTH` levels.
* In the envelope, optional fields that are None (``corr exp seq sig auth``) are omitted.
  Inside ``body``, values are written exactly as given (an explicit null stays).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from yikatong.common.privacy import (
    mask_card_number,
    mask_id_number,
    mask_name,
    mask_phone,
    mask_text,
)
from yikatong.protocol.errors import (
    BadTopic,
    Expired,
    MalformedEnvelope,
    PayloadTooLarge,
    UnsupportedVersion,
)
from yikatong.protocol.topics import DEVICE_ID_RE, Topic

__all__ = [
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "MAX_SAFE_INT",
    "VERSION",
    "Envelope",
    "canonical_json",
    "check_not_expired",
    "check_topic",
    "decode",
    "encode",
    "format_ts",
    "is_expired",
    "new_envelope",
    "parse_ts",
    "peek_id",
    "redact",
    "signing_bytes",
]

VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 262_144
MAX_SAFE_INT: Final = 2**53 - 1
MAX_DEPTH: Final = 32

ID_PATTERN: Final = r"^[A-Za-z0-9_-]{8,64}$"
TYPE_PATTERN: Final = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,4}$"
TS_PATTERN: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
SIG_PATTERN: Final = r"^[A-Za-z0-9_-]{86}$"
AUTH_PATTERN: Final = r"^[A-Za-z0-9_-]{16,128}$"

_TS_RE: Final = re.compile(TS_PATTERN)
_ID_RE: Final = re.compile(ID_PATTERN)
_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")


# --------------------------------------------------------------------------- timestamps


def format_ts(dt: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds: ``2024-05-01T08:30:00.123Z``."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise MalformedEnvelope("naive datetime; timestamps need an aware UTC time")
    u = dt.astimezone(UTC)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
        f".{u.microsecond // 1000:03d}Z"
    )


def _ts_or_value_error(s: str) -> datetime:
    if _TS_RE.fullmatch(s) is None:
        raise ValueError("timestamp must be YYYY-MM-DDTHH:MM:SS.mmmZ (UTC)")
    # fromisoformat understands the exact form above on 3.11+ and checks the calendar.
    return datetime.fromisoformat(s[:-1] + "+00:00")


def parse_ts(s: str) -> datetime:
    """Parse an RFC 3339 UTC timestamp in the contract's exact form into an aware datetime."""
    if not isinstance(s, str):
        raise MalformedEnvelope("timestamp is not a string")
    try:
        return _ts_or_value_error(s)
    except ValueError as e:
        raise MalformedEnvelope(f"bad timestamp {s[:40]!r}: {e}") from e


# --------------------------------------------------------------------------- canonical JSON


class _NotCanonical(ValueError):
    """Internal: a value that canonical JSON cannot represent (ValueError for pydantic)."""


def _format_float(x: float) -> str:
    """Format a finite float the way ECMAScript Number::toString does (RFC 8785 §3.2.2.3)."""
    if x == 0:
        return "0"  # also for -0.0, as in ECMAScript
    # repr() gives the shortest digits that round-trip, the same digits ECMAScript picks.
    _sign, digits_t, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    if not isinstance(exponent, int):  # 'n'/'F': unreachable for the finite values we get
        raise _NotCanonical("not a finite number")
    digits = "".join(str(d) for d in digits_t)
    k = len(digits)
    n = k + exponent  # position of the decimal point relative to the digits
    prefix = "-" if x < 0 else ""
    if k <= n <= 21:
        return prefix + digits + "0" * (n - k)
    if 0 < n <= 21:
        return prefix + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return prefix + "0." + "0" * (-n) + digits
    e = n - 1
    exp = f"e{'+' if e > 0 else '-'}{abs(e)}"
    if k == 1:
        return prefix + digits + exp
    return prefix + digits[0] + "." + digits[1:] + exp


def _loc(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def _write(value: object, out: list[str], depth: int, path: tuple[str | int, ...]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise _NotCanonical(f"integer out of ±(2**53-1) at {_loc(path)}")
        out.append(str(int(value)))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _NotCanonical(f"NaN/Infinity at {_loc(path)}")
        if abs(value) > MAX_SAFE_INT:
            # Would be written as a long integer that receivers must refuse; use an int.
            raise _NotCanonical(f"float beyond ±(2**53-1) at {_loc(path)}")
        out.append(_format_float(value))
    elif isinstance(value, str):
        if _SURROGATE_RE.search(value):
            raise _NotCanonical(f"lone surrogate in string at {_loc(path)}")
        # Python's escaping with ensure_ascii=False is exactly JSON.stringify's for these.
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            raise _NotCanonical(f"nested deeper than {MAX_DEPTH} at {_loc(path)}")
        keys = list(value.keys())
        for key in keys:
            if not isinstance(key, str):
                raise _NotCanonical(f"non-string key {key!r} at {_loc(path)}")
            if _SURROGATE_RE.search(key):
                raise _NotCanonical(f"lone surrogate in key at {_loc(path)}")
        out.append("{")
        # RFC 8785 sorts by UTF-16 code units; differs from code-point order only above U+FFFF.
        for i, key in enumerate(sorted(keys, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(value[key], out, depth + 1, (*path, key))
        out.append("}")
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise _NotCanonical(f"nested deeper than {MAX_DEPTH} at {_loc(path)}")
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1, (*path, i))
        out.append("]")
    else:
        raise _NotCanonical(f"{type(value).__name__} is not a JSON value at {_loc(path)}")


# The fast path. For the values the protocol actually carries (exact dicts with BMP keys,
# lists, strings, safe integers, booleans, null — no floats) the stdlib's C encoder with
# these options writes exactly the bytes _write does: same escaping (_write calls the same
# json.dumps per string), same key order (code-point order equals UTF-16 order for keys
# without characters above U+FFFF), same integers. _plain decides when that holds; anything
# else — floats, other Mapping/sequence types, errors of any kind — goes through _write,
# which stays the definition (and gives the located error message). Profiling the forwarder
# put two thirds of its per-request CPU in _write's per-node json.dumps calls.
_C_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"),
    check_circular=False,  # _plain bounds the depth, so a cycle never reaches the encoder
)


def _plain(value: object, depth: int) -> bool:
    """True if ``value`` is valid canonical JSON that the C encoder writes byte for byte."""
    t = type(value)
    items: Any
    if t is dict:
        if depth >= MAX_DEPTH:
            return False
        items = cast("dict[Any, Any]", value)
        for key in items:
            if type(key) is not str or not (key.isascii() or (
                max(key) <= "\uffff" and _SURROGATE_RE.search(key) is None
            )):
                return False
        items = items.values()
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            return False
        items = value
    elif t is str:
        text = cast(str, value)
        return text.isascii() or _SURROGATE_RE.search(text) is None
    elif t is int:
        return -MAX_SAFE_INT <= cast(int, value) <= MAX_SAFE_INT
    else:
        return value is None or t is bool
    for item in items:
        # Leaves inline: a call per string or integer would cost more than the check.
        ti = type(item)
        if ti is str:
            if not (item.isascii() or _SURROGATE_RE.search(item) is None):
                return False
        elif ti is int:
            if not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
                return False
        elif not (item is None or ti is bool or _plain(item, depth + 1)):
            return False
    return True


def _check_json_value(value: object, depth: int) -> None:
    """Raise _NotCanonical unless ``value`` can be written as canonical JSON."""
    if not _plain(value, depth):
        _write(value, [], depth, ())


def canonical_json(obj: object) -> bytes:
    """Return the canonical JSON bytes of a JSON value, an Envelope or a pydantic model."""
    if isinstance(obj, Envelope):
        obj = _envelope_dict(obj)
    elif isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    if _plain(obj, 0):
        return _C_ENCODER.encode(obj).encode("utf-8")
    out: list[str] = []
    try:
        _write(obj, out, 0, ())
    except _NotCanonical as e:
        raise MalformedEnvelope(str(e)) from e
    except RecursionError as e:  # a self-referencing container
        raise MalformedEnvelope("value nests too deeply") from e
    return "".join(out).encode("utf-8")


# --------------------------------------------------------------------------- the envelope

# Keys whose values are secrets: never shown in repr/str, whatever the message type.
_SECRET_KEYS: Final = frozenset({"auth_code", "pin", "password", "private_key", "secret"})
# Keys whose values are personal data, with the mask that fits them.
_PERSONAL_KEYS: Final[dict[str, Callable[[str], str]]] = {
    "name": mask_name,
    "patient_name": mask_name,
    "holder_name": mask_name,
    "doctor_name": lambda s: s,  # staff names on a public schedule are not patient data
    "id_number": mask_id_number,
    "phone": mask_phone,
    "card_no": mask_card_number,
    "value": mask_id_number,  # patient.identify: an ID number, card number or QR content
}


def redact(value: object, key: str | None = None) -> object:
    """Return a copy of a JSON value fit for logs: secrets hidden, personal data masked."""
    if key in _SECRET_KEYS and value is not None:
        return "***"
    if isinstance(value, str):
        if key is not None and key in _PERSONAL_KEYS:
            return _PERSONAL_KEYS[key](value)
        return mask_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, key) for v in value]
    return value


class Envelope(BaseModel):
    """One MQTT message: ``{v, id, type, ts, dev, corr?, exp?, seq?, body, sig?, auth?}``.

    ``repr``/``str`` mask personal data and hide secrets in ``body`` so an envelope can be
    logged; the wire form (``encode``) carries the real values.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: int = VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=ID_PATTERN)
    type: str = Field(max_length=64, pattern=TYPE_PATTERN)
    ts: str = Field(pattern=TS_PATTERN)
    dev: str = Field(pattern=DEVICE_ID_RE.pattern)
    corr: str | None = Field(default=None, pattern=ID_PATTERN)
    exp: str | None = Field(default=None, pattern=TS_PATTERN)
    seq: int | None = Field(default=None, ge=0, le=MAX_SAFE_INT)
    body: dict[str, Any]
    sig: str | None = Field(default=None, pattern=SIG_PATTERN)
    #: A staff session token central issued at ``staff.login`` (desk requests only): like
    #: an Authorization header, apart from the business body; a secret (hidden in repr).
    auth: str | None = Field(default=None, pattern=AUTH_PATTERN)

    @field_validator("v")
    @classmethod
    def _v_is_supported(cls, v: int) -> int:
        if v != VERSION:
            raise ValueError(f"unsupported protocol version {v}")
        return v

    @field_validator("ts", "exp")
    @classmethod
    def _real_time(cls, s: str | None) -> str | None:
        if s is not None:
            _ts_or_value_error(s)
        return s

    @field_validator("body")
    @classmethod
    def _json_body(cls, body: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(body, 1)  # depth 1: the envelope itself is the first level
        return body

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "auth" and value is not None:
                yield name, "***"
                continue
            yield name, (redact(value) if name == "body" else value)


def _envelope_dict(env: Envelope, *, with_sig: bool = True) -> dict[str, Any]:
    d: dict[str, Any] = {
        "v": env.v,
        "id": env.id,
        "type": env.type,
        "ts": env.ts,
        "dev": env.dev,
        "body": env.body,
    }
    for key in ("corr", "exp", "seq", "auth"):
        value = getattr(env, key)
        if value is not None:
            d[key] = value
    if with_sig and env.sig is not None:
        d["sig"] = env.sig
    return d


def signing_bytes(env: Envelope) -> bytes:
    """Return the bytes a signature covers: the canonical JSON of the envelope minus ``sig``."""
    return canonical_json(_envelope_dict(env, with_sig=False))


def encode(env: Envelope, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Return the canonical wire bytes of ``env``; raise PayloadTooLarge above ``max_bytes``."""
    data = canonical_json(env)
    if len(data) > max_bytes:
        raise PayloadTooLarge(len(data), max_bytes)
    return data


class _Reject(Exception):
    """Internal: raised from json.loads hooks to refuse a value."""


def _reject_constant(name: str) -> Any:
    raise _Reject(f"{name} is not allowed")


def _parse_float(s: str) -> float:
    value = float(s)
    if not math.isfinite(value):  # e.g. 1e400 would silently become inf
        raise _Reject(f"number {s[:20]} out of range")
    return value


def _parse_int(s: str) -> int:
    # Check length first: huge digit strings are slow to convert and not safe integers anyway.
    if len(s.lstrip("-")) > 16:
        raise _Reject("integer out of ±(2**53-1)")
    value = int(s)
    if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise _Reject("integer out of ±(2**53-1)")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        # Two parsers could pick different duplicates; refuse, so a signature means one thing.
        raise _Reject("duplicate key in object")
    return d


def _load_json(data: bytes, max_bytes: int) -> object:
    if len(data) > max_bytes:
        raise PayloadTooLarge(len(data), max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedEnvelope(f"not UTF-8 (byte {e.start})") from e
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_no_duplicates,
        )
    except _Reject as e:
        raise MalformedEnvelope(str(e)) from e
    except RecursionError as e:
        raise MalformedEnvelope(f"nested deeper than {MAX_DEPTH}") from e
    except ValueError as e:  # json.JSONDecodeError and friends
        raise MalformedEnvelope(f"not JSON: {str(e)[:80]}") from e


def decode(data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> Envelope:
    """Parse wire bytes into an Envelope; every failure is a ProtocolError subclass.

    Order: size (before parsing), UTF-8, JSON, top-level object, version, schema.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope("payload is not bytes")
    obj = _load_json(bytes(data), max_bytes)
    if not isinstance(obj, dict):
        raise MalformedEnvelope(f"top level is a JSON {type(obj).__name__}, not an object")
    if "v" not in obj:
        raise MalformedEnvelope("missing field 'v'", errors=[{"loc": ("v",), "type": "missing"}])
    v = obj["v"]
    if type(v) is not int:
        raise MalformedEnvelope("field 'v' is not an integer", errors=[{"loc": ("v",)}])
    if v != VERSION:
        raise UnsupportedVersion(v, VERSION)
    # Checked here because the model gives ``id`` a default for senders; a received
    # message without its own id has no idempotency key and must be refused.
    if "id" not in obj:
        raise MalformedEnvelope("missing field 'id'", errors=[{"loc": ("id",), "type": "missing"}])
    try:
        return Envelope.model_validate(obj)
    except ValidationError as e:
        raise MalformedEnvelope("envelope schema", errors=e.errors()) from e


def peek_id(data: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> str | None:
    """Return the ``id`` of a payload that failed :func:`decode`, if one can be read.

    Lets a receiver correlate an error reply to a request whose envelope is broken. When the
    payload parses, only its top-level ``id`` counts. When it does not (broken JSON, too large,
    duplicate keys), a bounded scan of the first 4 KiB looks for exactly one ``"id"`` key at the
    top level of the outer object — never one inside ``body`` or any other nested value — with a
    valid id as a plain string. No id, or more than one ``id`` key: ``None``.
    """
    raw = bytes(data)
    try:
        obj = _load_json(raw, max_bytes)
    except Exception:
        obj = None
    else:
        if isinstance(obj, dict):
            value = obj.get("id")
            if isinstance(value, str) and _ID_RE.fullmatch(value):
                return value
        return None  # it parsed: what the JSON says is final, no guessing from the text

    # The scan works on bytes: in UTF-8 no byte of a multi-byte character is ASCII, so the
    # structural characters and quotes found here are the real ones.
    head = raw[:4096]
    value_re = re.compile(rb'[ \t\r\n]*:[ \t\r\n]*"([A-Za-z0-9_-]{8,64})"')
    stack: list[int] = []  # open containers, b"{" or b"["
    found: list[str | None] = []  # one entry per top-level "id" key; None = unusable value
    expect_key = False
    i, n = 0, len(head)
    while i < n:
        c = head[i]
        if not stack and c != 0x7B and c not in b" \t\r\n":
            break  # only an object's top level is looked at; nothing before or after it
        if c == 0x22:  # a string: skip to its closing quote, honouring escapes
            j = i + 1
            while j < n and head[j] != 0x22:
                j += 2 if head[j] == 0x5C else 1
            if j >= n:
                break  # cut off inside a string: nothing further is trustworthy
            key = head[i + 1 : j]
            if expect_key and stack == [0x7B]:
                if b"\\" in key:  # "i\u0064" is "id" too: decode before comparing
                    try:
                        key = json.loads(b'"' + key + b'"').encode()
                    except ValueError:
                        key = b""
                if key == b"id":
                    m = value_re.match(head, j + 1)
                    found.append(m.group(1).decode("ascii") if m else None)
            expect_key = False
            i = j + 1
            continue
        if c in b"{[":
            stack.append(c)
            expect_key = c == 0x7B
        elif c in b"}]":
            if not stack or (c == 0x7D) != (stack[-1] == 0x7B):
                break  # unbalanced: the structure can no longer be followed
            stack.pop()
            expect_key = False
            if not stack:
                break  # the outer object ended; anything after it is not part of it
        elif c == 0x2C:  # ","
            expect_key = bool(stack) and stack[-1] == 0x7B
        elif c not in b" \t\r\n":
            expect_key = False
        i += 1
    if len(found) == 1 and found[0] is not None:
        return found[0]
    return None


def _to_ts(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return format_ts(value)


def new_envelope(
    type: str,
    dev: str,
    body: Mapping[str, Any] | BaseModel,
    *,
    now: datetime,
    id: str | None = None,
    corr: str | None = None,
    exp: datetime | str | None = None,
    seq: int | None = None,
    auth: str | None = None,
) -> Envelope:
    """Build an envelope stamped with ``now``; a model body is dumped without None fields."""
    if isinstance(body, BaseModel):
        body_dict: Any = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        body_dict = dict(body) if isinstance(body, Mapping) else body
    fields: dict[str, Any] = {
        "v": VERSION,
        "id": id if id is not None else uuid.uuid4().hex,
        "type": type,
        "ts": format_ts(now),
        "dev": dev,
        "body": body_dict,
    }
    if corr is not None:
        fields["corr"] = corr
    if (exp_s := _to_ts(exp)) is not None:
        fields["exp"] = exp_s
    if seq is not None:
        fields["seq"] = seq
    if auth is not None:
        fields["auth"] = auth
    try:
        return Envelope.model_validate(fields)
    except ValidationError as e:
        raise MalformedEnvelope("cannot build envelope", errors=e.errors()) from e


def is_expired(env: Envelope, now: datetime) -> bool:
    """Tell whether ``now`` is past the envelope's ``exp`` (never, without ``exp``)."""
    if env.exp is None:
        return False
    if now.tzinfo is None:
        raise MalformedEnvelope("naive datetime; timestamps need an aware UTC time")
    return now > parse_ts(env.exp)


def check_not_expired(env: Envelope, now: datetime) -> None:
    """Raise Expired if the envelope is past its ``exp``."""
    if is_expired(env, now):
        raise Expired(env.exp or "", format_ts(now))


# Envelope types bound to one topic kind; other kinds carry a vocabulary of types.
_TYPE_FOR_KIND: Final = {
    ("down", "resp"): "resp",
    ("state", "state"): "state",
    ("up", "telemetry"): "telemetry",
}


def check_topic(env: Envelope, topic: Topic) -> None:
    """Raise BadTopic unless the envelope may arrive on ``topic`` (device id and type)."""
    if topic.direction in ("up", "down", "state") and env.dev != topic.dev:
        raise BadTopic(str(topic), f"envelope dev {env.dev!r} does not match the topic")
    want = _TYPE_FOR_KIND.get((topic.direction, topic.kind))
    if want is not None and env.type != want:
        raise BadTopic(str(topic), f"type {env.type!r} not allowed here (want {want!r})")
    if want is None and env.type in _TYPE_FOR_KIND.values():
        raise BadTopic(str(topic), f"type {env.type!r} not allowed on this topic")
