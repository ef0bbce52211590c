"""Typed scanner errors: structured fields plus a message for the screen in Chinese and English.

No error message ever carries scanned text in clear: a scan may be a wallet payment code.
"""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = [
    "FrameDecodeError",
    "FrameTooLong",
    "InvalidScanText",
    "ScannerConfigError",
    "ScannerDisconnected",
    "ScannerError",
    "UnmappedKey",
]


class ScannerError(LocalizedError):
    """Base of every scanner error; ``message`` is English, ``message_zh`` Chinese."""

    code = "scanner_error"


class InvalidScanText(ScannerError):
    """Scanned text is empty, too long or holds control characters; ``reason`` says which."""

    code = "invalid_scan"

    def __init__(self, reason: str, *, length: int, position: int | None = None) -> None:
        where = f" at position {position}" if position is not None else ""
        super().__init__(
            f"Scanned text rejected ({reason}, {length} characters{where})",
            "无法识别的条码，请重新扫描",
            reason=reason,
        )
        self.length = length
        self.position = position


class FrameTooLong(ScannerError):
    """A serial or HID frame exceeded the profile's limit and was dropped."""

    code = "frame_too_long"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"Scanner frame longer than {limit} bytes dropped",
            "条码数据过长，请重新扫描",
        )
        self.limit = limit


class FrameDecodeError(ScannerError):
    """A frame's bytes are neither valid UTF-8 nor valid GB18030."""

    code = "frame_decode"

    def __init__(self, length: int, encodings: tuple[str, ...]) -> None:
        super().__init__(
            f"Scanner frame of {length} bytes is not valid {'/'.join(encodings)}",
            "条码编码无法识别，请检查扫描枪设置",
        )
        self.length = length
        self.encodings = encodings


class UnmappedKey(ScannerError):
    """A keyboard-wedge frame held a key the layout has no character for; frame dropped."""

    code = "unmapped_key"

    def __init__(self, key_code: int, layout: str) -> None:
        super().__init__(
            f"Key code {key_code} has no character in layout {layout!r}; frame dropped",
            "扫描枪键盘布局不匹配，请检查设置",
        )
        self.key_code = key_code
        self.layout = layout


class ScannerDisconnected(ScannerError):
    """The scanner's port or input device went away (unplugged); the driver retries."""

    code = "disconnected"

    def __init__(self, device: str, detail: str = "") -> None:
        en = f"Scanner {device} disconnected" + (f": {detail}" if detail else "")
        super().__init__(en, "扫描枪已断开，请检查连接")
        self.device = device
        self.detail = detail


class ScannerConfigError(ScannerError):
    """The scanner section of the config cannot be used as written."""

    code = "config"

    def __init__(self, detail: str) -> None:
        super().__init__(f"Scanner config error: {detail}", "扫描枪配置错误")
        self.detail = detail
