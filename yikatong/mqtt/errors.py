"""Errors of the MQTT session, shared by the device uplink (which adds its own) and central."""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = ["UplinkClosed", "UplinkError"]


class UplinkError(LocalizedError):
    """Base of every uplink error: ``message`` (English, for logs) and ``message_zh`` (UI)."""

    code = "uplink_error"


class UplinkClosed(UplinkError):
    """The uplink is stopped (or not started)."""

    code = "uplink_closed"

    def __init__(self) -> None:
        super().__init__("uplink closed", "通信模块已关闭")
