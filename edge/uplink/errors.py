"""Typed errors of the uplink; each says what the caller can do, in English and Chinese."""

from __future__ import annotations

from yikatong.mqtt.errors import UplinkClosed, UplinkError

__all__ = [
    "OutboxFull",
    "OutcomeUnknown",
    "PlatformUnavailable",
    "Rejected",
    "RequestExpired",
    "UnknownRequest",
    "UplinkClosed",
    "UplinkError",
]


class PlatformUnavailable(UplinkError):
    """Nothing happened (platform down, link down before sending): safe to try again later."""

    code = "platform_unavailable"

    def __init__(
        self,
        message: str = "hospital platform unavailable",
        message_zh: str = "医院系统暂时无法连接，请稍后再试",
    ) -> None:
        super().__init__(message, message_zh)


class Rejected(UplinkError):
    """Central or the platform said no (``code``, ``reason``); retrying the same will not help."""

    def __init__(self, code: str, reason: str, message_zh: str | None = None) -> None:
        super().__init__(f"rejected: {code}: {reason}", message_zh or f"请求被拒绝：{reason}")
        self.code = code
        self.reason = reason


class OutcomeUnknown(UplinkError):
    """The request may have taken effect; must be resolved (``pay.status``), never retried blind."""

    code = "outcome_unknown"

    def __init__(
        self,
        request_id: str,
        message: str = "outcome unknown; being confirmed",
        message_zh: str = "结果确认中，请勿重复操作",
    ) -> None:
        super().__init__(f"{message} (request {request_id})", message_zh)
        self.request_id = request_id


class RequestExpired(UplinkError):
    """The request passed its ``exp`` before it was acted on; it was not (and will not be) sent."""

    code = "expired"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} expired", "请求已过期，未被处理")
        self.request_id = request_id


class OutboxFull(UplinkError):
    """The durable outbox is full of requests; nothing was queued."""

    code = "outbox_full"

    def __init__(self, limit: int) -> None:
        super().__init__(f"outbox full ({limit} entries)", "设备待发送队列已满，请联系工作人员")
        self.limit = limit


class UnknownRequest(UplinkError):
    """``result_of`` was asked about a request id the outbox does not hold (any more)."""

    code = "unknown_request"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"unknown request {request_id}", "找不到该请求记录")
        self.request_id = request_id
