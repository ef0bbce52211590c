"""Typed errors of the card stack, each with an English message and a screen text in Chinese.

One base class, ``CardError``; subclasses say what the caller can do (ask the patient to
re-insert, to see the counter, to call staff). Structured fields (``reader``, ``sw1``,
``sw2``, ``file``, ``tag``, ``retries_left``) let flows decide without parsing text.
"""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = [
    "CardAuthBlocked",
    "CardAuthFailed",
    "CardBlocked",
    "CardCommandError",
    "CardDataError",
    "CardError",
    "CardExpired",
    "CardFileNotFound",
    "CardParameterError",
    "CardRemoved",
    "CardServiceUnavailable",
    "CardTimeout",
    "NotAHealthCard",
    "PcscDaemonError",
    "PhotoDataError",
    "ReaderUnavailable",
    "RecordErased",
    "SamError",
    "SamPinBlocked",
    "SamPinError",
    "SamPinTriesLow",
    "SamUnavailable",
    "VpcdConnectError",
]


class CardError(LocalizedError):
    """Base of every card-stack error; ``message`` is English, ``message_zh`` is screen text."""

    code = "card_error"
    default_en = "The card could not be read."
    default_zh = "读卡失败，请重新插卡。"

    def __init__(
        self,
        message: str | None = None,
        message_zh: str | None = None,
        *,
        reader: str | None = None,
        sw1: int | None = None,
        sw2: int | None = None,
    ) -> None:
        super().__init__(message or self.default_en, message_zh or self.default_zh)
        self.reader = reader
        self.sw1 = sw1
        self.sw2 = sw2

    @property
    def sw(self) -> str | None:
        """Status word as four hex digits, or None when no card answer is involved."""
        if self.sw1 is None or self.sw2 is None:
            return None
        return f"{self.sw1:02X}{self.sw2:02X}"

    def to_dict(self) -> dict[str, object]:
        """Structured form for events and logs (contains no personal data)."""
        out: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "message_zh": self.message_zh,
        }
        if self.reader is not None:
            out["reader"] = self.reader
        if self.sw is not None:
            out["sw"] = self.sw
        for name in ("file", "tag", "retries_left", "atr"):
            value = getattr(self, name, None)
            if value is not None:
                out[name] = value.hex().upper() if isinstance(value, bytes) else value
        return out


class CardRemoved(CardError):
    """The card left the reader (or was reset) before the operation finished."""

    code = "card_removed"
    default_en = "The card was removed before reading finished."
    default_zh = "读卡未完成时卡片被拔出，请重新插卡。"


class CardTimeout(CardError):
    """The card or the reader did not answer in time."""

    code = "card_timeout"
    default_en = "The card did not answer in time."
    default_zh = "卡片响应超时，请重新插卡。"


class ReaderUnavailable(CardError):
    """The reader (or the PC/SC service) is not available."""

    code = "reader_unavailable"
    default_en = "The card reader is not available."
    default_zh = "读卡器不可用，请联系工作人员。"


class NotAHealthCard(CardError):
    """The inserted card is not a Resident Health Card (bank card, blank card…)."""

    code = "not_a_health_card"
    default_en = "This is not a Resident Health Card."
    default_zh = "此卡不是居民健康卡，请插入居民健康卡。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 atr: bytes = b"", **kw: object) -> None:
        self.atr = atr
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardAuthFailed(CardError):
    """The card rejected the terminal's authentication; ``retries_left`` if it said so."""

    code = "card_auth_failed"
    default_en = "The card rejected the terminal's authentication."
    default_zh = "卡片认证失败，请到人工窗口办理。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 retries_left: int | None = None, **kw: object) -> None:
        self.retries_left = retries_left
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardAuthBlocked(CardError):
    """The card's authentication key is blocked (6983)."""

    code = "card_auth_blocked"
    default_en = "The card is locked (authentication blocked)."
    default_zh = "卡片已锁定，请到发卡机构处理。"


class CardExpired(CardError):
    """The card is past its expiry date."""

    code = "card_expired"
    default_en = "The card has expired."
    default_zh = "居民健康卡已过有效期，请到发卡机构换卡。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 expiry: str | None = None, **kw: object) -> None:
        self.expiry = expiry
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardBlocked(CardError):
    """The card is on the lost/stolen hot list; it must not be used."""

    code = "card_blocked"
    default_en = "This card has been reported lost and cannot be used."
    default_zh = "此卡已挂失，不能使用，请到人工窗口办理。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 card_number_masked: str | None = None, **kw: object) -> None:
        self.card_number_masked = card_number_masked
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardDataError(CardError):
    """A file's content is malformed; names the file and, when known, the tag."""

    code = "card_data_error"
    default_en = "The card data is damaged."
    default_zh = "卡片数据错误，请到人工窗口办理。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 file: str | None = None, tag: int | None = None, **kw: object) -> None:
        self.file = file
        self.tag = f"{tag:02X}" if isinstance(tag, int) else tag
        detail = message or self.default_en
        where = ", ".join(p for p in (f"file {file}" if file else "",
                                      f"tag {self.tag}" if self.tag else "") if p)
        super().__init__(f"{detail} ({where})" if where else detail, message_zh, **kw)  # type: ignore[arg-type]


class PhotoDataError(CardDataError):
    """DDF1/EF07 does not hold a decodable image (the vendor SDKs' "photo data error")."""

    code = "photo_data_error"
    default_en = "Photo data error."
    default_zh = "照片数据错误。"

    def __init__(self, message: str | None = None, message_zh: str | None = None,
                 **kw: object) -> None:
        kw.setdefault("file", "DDF1/EF07")
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardFileNotFound(CardError):
    """A file the terminal selected or read does not exist on this card (6A82)."""

    code = "card_file_not_found"
    default_en = "A file is missing on the card."
    default_zh = "卡片文件不存在，请到人工窗口办理。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 file: str | None = None, **kw: object) -> None:
        self.file = file
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class RecordErased(CardError):
    """The requested medical record is flagged erased (FF) in DF03."""

    code = "record_erased"
    default_en = "The record has been erased."
    default_zh = "该记录已被删除。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 file: str | None = None, **kw: object) -> None:
        self.file = file
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class CardCommandError(CardError):
    """The card answered a command with an error status word not covered by a subclass."""

    code = "card_command_error"


class CardParameterError(CardError):
    """The caller passed a value the card cannot hold (too long, wrong digits…)."""

    code = "card_parameter_error"
    default_en = "Invalid data for the card."
    default_zh = "写卡数据无效。"


class SamError(CardError):
    """Base of errors of the terminal's security module (PSAM)."""

    code = "sam_error"
    default_en = "The terminal security module failed."
    default_zh = "终端安全模块故障，请联系工作人员。"


class SamUnavailable(SamError):
    """No SAM in the SAM slot, no SAM reader, or no SAM PIN configured."""

    code = "sam_unavailable"
    default_en = "The terminal security module (SAM) is not available."
    default_zh = "终端安全模块（PSAM）不可用，请联系工作人员。"


class SamPinError(SamError):
    """The SAM rejected the configured PIN; never retried automatically."""

    code = "sam_pin_error"
    default_en = "The SAM PIN was rejected."
    default_zh = "PSAM 卡密码错误，请联系工作人员。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 retries_left: int | None = None, **kw: object) -> None:
        self.retries_left = retries_left
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class SamPinBlocked(SamPinError):
    """The SAM PIN is blocked (6983): the SAM must be unblocked by the issuer."""

    code = "sam_pin_blocked"
    default_en = "The SAM PIN is blocked."
    default_zh = "PSAM 卡已锁定，请联系工作人员。"


class SamPinTriesLow(SamPinError):
    """One PIN try (or none known to be spare) is left: the terminal refuses to risk it."""

    code = "sam_pin_tries_low"
    default_en = "Only one SAM PIN try is left; the terminal will not present the PIN."
    default_zh = "PSAM 卡密码仅剩一次尝试机会，终端不再自动校验，请联系工作人员。"


class CardServiceUnavailable(CardError):
    """What patients see for a terminal-side fault (SAM, PIN): no detail on their screen.

    The specific error stays in ``cause`` for the device's health report and the logs.
    """

    code = "card_service_unavailable"
    default_en = "Card service unavailable."
    default_zh = "读卡服务暂不可用。"

    def __init__(self, message: str | None = None, message_zh: str | None = None, *,
                 cause: CardError | None = None, **kw: object) -> None:
        self.cause = cause
        super().__init__(message, message_zh, **kw)  # type: ignore[arg-type]


class PcscDaemonError(CardError):
    """A private pcscd could not be started or stopped."""

    code = "pcscd_error"
    default_en = "The PC/SC daemon could not be started."
    default_zh = "读卡服务启动失败，请联系工作人员。"


class VpcdConnectError(CardError):
    """A virtual card could not connect to the vpcd driver."""

    code = "vpcd_connect_error"
    default_en = "The virtual card could not connect to the reader driver."
    default_zh = "虚拟卡无法连接读卡器驱动。"
