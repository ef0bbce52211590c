"""Typed printer errors: structured fields plus a message for the screen in Chinese and English."""

from __future__ import annotations

from yikatong.common.errors import LocalizedError

__all__ = [
    "InvalidDocument",
    "LayoutError",
    "PrinterConfigError",
    "PrinterCoverOpen",
    "PrinterError",
    "PrinterJobFailed",
    "PrinterOffline",
    "PrinterOutOfPaper",
    "StatusParseError",
]


class PrinterError(LocalizedError):
    """Base of every printer error; ``message`` is English, ``message_zh`` Chinese."""

    code = "printer_error"


class PrinterOffline(PrinterError):
    """The printer cannot be reached or does not answer status queries."""

    code = "offline"

    def __init__(self, detail: str = "", *, reason: str = "offline") -> None:
        en = "Printer is offline" + (f": {detail}" if detail else "")
        super().__init__(en, "打印机离线，请联系工作人员", reason=reason)
        self.detail = detail


class PrinterOutOfPaper(PrinterError):
    """The roll paper has run out."""

    code = "paper_out"

    def __init__(self) -> None:
        super().__init__(
            "Printer is out of paper", "打印机缺纸，请联系工作人员", reason="paper_out"
        )


class PrinterCoverOpen(PrinterError):
    """The printer cover is open."""

    code = "cover_open"

    def __init__(self) -> None:
        super().__init__("Printer cover is open", "打印机上盖未关闭", reason="cover_open")


class PrinterJobFailed(PrinterError):
    """A job could not be printed or reprinted; ``job_id`` and ``reason`` say which and why."""

    code = "job_failed"

    def __init__(self, job_id: str, reason: str, detail: str = "") -> None:
        en = f"Print job {job_id} failed ({reason})" + (f": {detail}" if detail else "")
        super().__init__(en, "打印失败，请到人工窗口补打", reason=reason)
        self.job_id = job_id
        self.detail = detail


class StatusParseError(PrinterError):
    """A DLE EOT reply byte does not have the fixed bits of a status byte."""

    code = "bad_status"

    def __init__(self, n: int, value: int) -> None:
        super().__init__(
            f"Unexpected reply 0x{value:02X} to DLE EOT {n}",
            "打印机状态读取异常",
            reason="bad_status",
        )
        self.n = n
        self.value = value


class InvalidDocument(PrinterError):
    """A document has a field that cannot be printed (wrong type, negative money, bad date)."""

    code = "invalid_document"

    def __init__(self, doc_kind: str, field: str, detail: str) -> None:
        super().__init__(
            f"Invalid {doc_kind}: {field} {detail}", "打印内容有误，请联系工作人员",
            reason="invalid_document",
        )
        self.doc_kind = doc_kind
        self.field = field
        self.detail = detail


class LayoutError(PrinterError):
    """Text cannot be laid out or encoded for the printer profile."""

    code = "layout_error"

    def __init__(self, detail: str) -> None:
        super().__init__(f"Cannot lay out receipt: {detail}", "票据排版失败", reason="layout_error")
        self.detail = detail


class PrinterConfigError(PrinterError):
    """The printer section of the configuration is unusable."""

    code = "config_error"

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(
            f"Printer config {key}: {detail}", "打印机配置错误", reason="config_error"
        )
        self.key = key
        self.detail = detail
