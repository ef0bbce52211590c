"""Typed errors raised by platform adapters.

Each class tells the caller (the central forwarder) what it may do next:
``PlatformRejected`` — nothing happened, do not retry the same thing;
``PlatformUnavailable`` — nothing happened, safe to retry later;
``PlatformOutcomeUnknown`` — the call may have taken effect, resolve before retrying
(payments via ``pay.status`` / ``pay.reverse``, others by repeating with the same key);
``PlatformProtocolError`` — the platform answered something we cannot read.
``PaymentNotFound`` (a ``PlatformRejected``) — a by-key payment lookup or reversal found no
payment under that idempotency key: the platform never took it;
``PlatformUnsupported`` (a ``PlatformRejected``) — this adapter's platform lacks the
operation (e.g. no lookup by the merchant's order number).
"""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = [
    "PaymentNotFound",
    "PlatformError",
    "PlatformOutcomeUnknown",
    "PlatformProtocolError",
    "PlatformRejected",
    "PlatformUnavailable",
    "PlatformUnsupported",
]


class PlatformError(LocalizedError):
    """Base of every platform adapter error; carries English and Chinese messages."""

    #: our stable machine code; a ``PlatformRejected`` carries the platform's reason code
    code = "platform_error"
    #: the error code of the message catalogue's reply envelope
    error_code: str = "platform_error"
    #: whether the forwarder may retry the same request (with the same key)
    retryable: bool = False

    def to_error_body(self) -> dict[str, object]:
        """Return the catalogue's reply-envelope error object for this error."""
        return {
            "code": self.error_code,
            "message": self.message,
            "message_zh": self.message_zh,
            "retryable": self.retryable,
        }


class PlatformRejected(PlatformError):
    """The platform refused the request for a business reason; nothing happened.

    ``code`` is the platform's machine-readable reason (``slot_full``,
    ``insufficient_balance``, ``not_found``, ``card_blocked``, ``duplicate_mismatch`` …);
    ``reason`` is the platform's human-readable explanation.
    """

    error_code = "rejected"
    retryable = False

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        message_zh: str | None = None,
        http_status: int | None = None,
    ) -> None:
        # The catalogue puts the reason code in `message`, so it leads the text.
        super().__init__(f"{code}: {reason}", message_zh or f"平台拒绝：{reason}")
        self.code = code
        self.reason = reason  # the platform's text as given, even when empty
        self.http_status = http_status


class PlatformUnavailable(PlatformError):
    """The platform could not be reached or refused before acting; safe to retry."""

    code = error_code = "platform_unavailable"
    retryable = True

    def __init__(
        self,
        message: str,
        message_zh: str = "医院平台暂时不可用，请稍后再试",
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, message_zh)
        self.retry_after = retry_after


class PlatformOutcomeUnknown(PlatformError):
    """The request was sent but no answer came back; it may have taken effect."""

    code = error_code = "outcome_unknown"
    # Retrying with the *same* idempotency key is safe against our reference platform,
    # but a blind retry of a payment is not, so the forwarder must decide per operation.
    retryable = False

    def __init__(
        self,
        message: str,
        message_zh: str = "医院平台未响应，结果待确认，请勿重复操作",
    ) -> None:
        super().__init__(message, message_zh)


class PlatformProtocolError(PlatformError):
    """The platform's response could not be understood (bad JSON, missing fields)."""

    code = "platform_protocol_error"
    error_code = "platform_unavailable"
    retryable = False

    def __init__(self, message: str, message_zh: str = "医院平台返回了无法识别的数据") -> None:
        super().__init__(message, message_zh)


class PaymentNotFound(PlatformRejected):
    """No payment exists under the idempotency key asked about: the platform never took it.

    Only a by-key lookup or reversal raises this, and only on the platform's own typed
    ``not_found`` answer (never on a bare 404 from something in between).
    """

    def __init__(self, key: str, reason: str = "no payment under this key") -> None:
        super().__init__("not_found", reason, message_zh="平台没有该订单号的支付记录（未扣款）",
                         http_status=404)
        self.key = key


class PlatformUnsupported(PlatformRejected):
    """The platform behind this adapter does not offer the operation; nothing happened."""

    def __init__(self, operation: str) -> None:
        super().__init__("unsupported", f"the platform does not support {operation}",
                         message_zh="医院平台不支持该操作")
        self.operation = operation
