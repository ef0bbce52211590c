"""Typed errors of the reference platform, rendered as ``{code, message, message_zh}``."""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = ["SimError", "business", "not_found"]


class SimError(LocalizedError):
    """An error the platform answers with an HTTP status and a JSON error body."""

    code = "platform_error"

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.status = status
        self.code = code

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"code": self.code, "message": self.message, "message_zh": self.message_zh}


def business(code: str, message: str, message_zh: str) -> SimError:
    """A business refusal (HTTP 422): the request was understood, nothing happened."""
    return SimError(422, code, message, message_zh)


def not_found(what: str, what_zh: str, ident: str) -> SimError:
    """A 404 for an unknown patient, slot, payment …"""
    return SimError(404, "not_found", f"{what} {ident!r} not found", f"未找到{what_zh}：{ident}")
