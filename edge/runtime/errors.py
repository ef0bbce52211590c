"""Errors of the runtime's actions, each with a code and English and Chinese screen text."""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = ["DocumentNotFound", "SessionError"]


class SessionError(LocalizedError):
    """An API action that needs a card session (or a patient, a cashier…) found none.

    ``status`` is the HTTP status the local API answers with (edge/api.py).
    """

    status = 409

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        self.code = code  # before the root's __init__, which derives ``reason`` from it
        super().__init__(message, message_zh)


class DocumentNotFound(SessionError):
    """A print by reference named something this card session never received."""

    status = 404

    def __init__(self, kind: str, ref: str) -> None:
        super().__init__("unknown_reference",
                         f"Nothing to print as {kind} {ref!r} in this session.",
                         "本次就诊中没有该凭条的记录，无法打印，请到人工窗口办理。")
        self.kind = kind
        self.ref = ref
