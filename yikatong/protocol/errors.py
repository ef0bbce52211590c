"""Typed errors of the MQTT wire contract (pure, no I/O).

Every error has a stable machine ``code`` (what logs, metrics and tests match on), a
``message`` in English and a ``message_zh`` in Chinese that are fit for a screen, and
structured fields that say what went wrong. ``reply_code`` is the catalogue error code
(``docs/protocol.md``, "Reply envelope") that a receiver puts in an error reply when the
error is caused by a request it received.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from yikatong.common.errors import LocalizedError

__all__ = [
    "BadKey",
    "BadSignature",
    "BadTopic",
    "Expired",
    "InvalidBody",
    "MalformedEnvelope",
    "PayloadTooLarge",
    "ProtocolError",
    "SequenceReplay",
    "UnknownMessageType",
    "UnsupportedVersion",
    "clean_validation_errors",
]


class ProtocolError(LocalizedError):
    """Base of every wire-contract error; catch this at the uplink/forwarder boundary."""

    code = "protocol_error"
    # The catalogue error code to reply with when a received request caused this error.
    reply_code: ClassVar[str] = "invalid_request"
    # Whether sending the same message again can succeed (never, for a malformed one).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, message_zh: str, *, reason: str | None = None) -> None:
        super().__init__(message, message_zh, reason=reason)

    def details(self) -> dict[str, Any]:
        """Return the structured fields of this error (for logs and error events)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """Return code, messages and structured fields as a JSON-ready dict."""
        return {
            "code": self.code,
            "message": self.message,
            "message_zh": self.message_zh,
            **self.details(),
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.details().items())
        return f"{type(self).__name__}({self.message!r}{', ' if fields else ''}{fields})"


def clean_validation_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Reduce pydantic error dicts to loc/type/msg.

    The offending ``input`` is dropped on purpose: it can hold a payment code, a PIN or an
    ID number, and these details end up in logs and error replies.
    """
    out: list[dict[str, Any]] = []
    for e in errors:
        loc = tuple(str(p) if not isinstance(p, int) else p for p in e.get("loc", ()))
        out.append({"loc": loc, "type": str(e.get("type", "")), "msg": str(e.get("msg", ""))})
    return out


def _loc_text(errors: Sequence[Mapping[str, Any]], limit: int = 3) -> str:
    parts = [".".join(str(p) for p in e["loc"]) or "(root)" for e in errors[:limit]]
    more = f" (+{len(errors) - limit})" if len(errors) > limit else ""
    return ", ".join(parts) + more


class MalformedEnvelope(ProtocolError):
    """The bytes are not a well-formed envelope (UTF-8, JSON object, envelope schema)."""

    code = "malformed_envelope"

    def __init__(self, reason: str, *, errors: Iterable[Mapping[str, Any]] = ()) -> None:
        self.errors = clean_validation_errors(errors)
        where = f" at {_loc_text(self.errors)}" if self.errors else ""
        if self.errors and self.errors[0]["msg"]:
            where += f" ({self.errors[0]['msg'][:100]})"
        super().__init__(
            f"Malformed message: {reason}{where}.",
            f"报文格式错误：{reason}{where}。",
            reason=reason,
        )

    def details(self) -> dict[str, Any]:
        """Return reason and validation errors."""
        return {"reason": self.reason, "errors": self.errors}


class UnsupportedVersion(ProtocolError):
    """The envelope's ``v`` is a protocol version this code does not speak."""

    code = "unsupported_version"

    def __init__(self, version: object, supported: int = 1) -> None:
        self.version = version
        self.supported = supported
        super().__init__(
            f"Unsupported protocol version {version!r}; this device speaks v{supported}.",
            f"不支持的协议版本 {version!r}，本设备使用 v{supported}。",
        )

    def details(self) -> dict[str, Any]:
        """Return the received and supported versions."""
        return {"version": self.version, "supported": self.supported}


class PayloadTooLarge(ProtocolError):
    """The payload exceeds the size limit (checked before any parsing)."""

    code = "payload_too_large"

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"Message too large: {size} bytes, limit {limit}.",
            f"报文过大：{size} 字节，上限 {limit} 字节。",
        )

    def details(self) -> dict[str, Any]:
        """Return the payload size and the limit."""
        return {"size": self.size, "limit": self.limit}


class BadSignature(ProtocolError):
    """The signature is missing, malformed, or does not verify with the trusted key(s)."""

    code = "bad_signature"
    reply_code = "unauthorized"

    _TEXT: ClassVar[dict[str, tuple[str, str]]] = {
        "missing": ("signature missing", "缺少签名"),
        "malformed": ("signature is not 64 bytes of base64url", "签名编码错误"),
        "mismatch": ("signature does not verify", "签名校验失败"),
        "no_keys": ("no trusted key configured", "未配置可信公钥"),
    }

    def __init__(self, reason: str) -> None:
        en, zh = self._TEXT.get(reason, (reason, reason))
        super().__init__(f"Bad signature: {en}.", f"签名无效：{zh}。", reason=reason)

    def details(self) -> dict[str, Any]:
        """Return why the signature was refused."""
        return {"reason": self.reason}


class BadKey(ProtocolError):
    """Key material (hex or PEM) could not be loaded as an Ed25519 key."""

    code = "bad_key"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Bad Ed25519 key: {reason}.", f"Ed25519 密钥无效：{reason}。",
                         reason=reason)

    def details(self) -> dict[str, Any]:
        """Return why the key was refused."""
        return {"reason": self.reason}


class UnknownMessageType(ProtocolError):
    """The envelope ``type`` is not in the vocabulary for where it arrived."""

    code = "unknown_type"
    reply_code = "unknown_type"

    def __init__(self, type_: str, *, expected: str = "request") -> None:
        self.type = type_
        self.expected = expected
        super().__init__(
            f"Unknown {expected} type {type_!r}.",
            f"未知的消息类型 {type_!r}（{expected}）。",
        )

    def details(self) -> dict[str, Any]:
        """Return the unknown type and what kind of message was expected."""
        return {"type": self.type, "expected": self.expected}


class InvalidBody(ProtocolError):
    """The body does not match the model of its message type."""

    code = "invalid_request"
    reply_code = "invalid_request"

    def __init__(self, type_: str, errors: Iterable[Mapping[str, Any]]) -> None:
        self.type = type_
        self.errors = clean_validation_errors(errors)
        super().__init__(
            f"Invalid {type_!r} body at {_loc_text(self.errors)}.",
            f"{type_!r} 消息内容无效：{_loc_text(self.errors)}。",
        )

    def details(self) -> dict[str, Any]:
        """Return the message type and the validation errors (without input values)."""
        return {"type": self.type, "errors": self.errors}


class BadTopic(ProtocolError):
    """A topic, topic filter, device id or share group breaks the topic rules."""

    code = "bad_topic"
    reply_code = "unauthorized"

    def __init__(self, topic: str, reason: str) -> None:
        self.topic = topic
        super().__init__(f"Bad topic {topic!r}: {reason}.", f"主题无效 {topic!r}：{reason}。",
                         reason=reason)

    def details(self) -> dict[str, Any]:
        """Return the topic and why it was refused."""
        return {"topic": self.topic, "reason": self.reason}


class Expired(ProtocolError):
    """The message is past its ``exp`` and must not be acted on."""

    code = "expired"
    reply_code = "expired"

    def __init__(self, exp: str, now: str) -> None:
        self.exp = exp
        self.now = now
        super().__init__(
            f"Message expired at {exp} (now {now}).",
            f"消息已过期：有效期至 {exp}（当前 {now}）。",
        )

    def details(self) -> dict[str, Any]:
        """Return the expiry and the time of the check."""
        return {"exp": self.exp, "now": self.now}


class SequenceReplay(ProtocolError):
    """A signed command/config whose ``seq`` is not above the last accepted one."""

    code = "sequence_replay"
    reply_code = "expired"

    def __init__(self, seq: int | None, last_seq: int | None) -> None:
        self.seq = seq
        self.last_seq = last_seq
        if seq is None:
            en, zh = "sequence number missing", "缺少序号"
        else:
            en = f"sequence {seq} is not above the last accepted {last_seq}"
            zh = f"序号 {seq} 不大于已接受的 {last_seq}"
        super().__init__(f"Replayed or stale message: {en}.", f"重放或过时的消息：{zh}。")

    def details(self) -> dict[str, Any]:
        """Return the received and last accepted sequence numbers."""
        return {"seq": self.seq, "last_seq": self.last_seq}
