"""The one error type of fleet operations, with the HTTP status the REST API answers."""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = ["FleetError"]


class FleetError(LocalizedError):
    """A fleet operation was refused; ``code`` says why and ``status`` is its HTTP status.

    404 an unknown pairing code, device or command; 409 already decided, name taken,
    device disabled; 422 invalid settings, command or name; 503 a broker is not connected.
    """

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code
        self.status = status
