"""The common root of Yikatong's typed errors: a stable code and screen text in two languages.

Each package keeps its own base (``PrinterError``, ``ScannerError`` …) so callers can catch
by package; they all share this shape so the UI can show any of them the same way.
"""

from __future__ import annotations

__all__ = ["LocalizedError"]


class LocalizedError(Exception):
    """An error with ``code``, ``message`` (English) and ``message_zh`` (Chinese screen text)."""

    code = "error"

    def __init__(self, message: str, message_zh: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.message_zh = message_zh
        self.reason = reason or self.code

    def __str__(self) -> str:
        return f"{self.message} / {self.message_zh}"

    def as_dict(self) -> dict[str, str]:
        """JSON form for APIs and screens."""
        return {"code": self.code, "reason": self.reason, "message": self.message,
                "message_zh": self.message_zh}
