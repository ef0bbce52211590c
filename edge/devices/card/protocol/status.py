"""Status words (ISO 7816-4 and the health card's use of them) as a lookup table.

Each row gives the meaning in English and Chinese and the error class to raise; ``63Cx``
(retries left) and ``61xx``/``6Cxx`` are handled by rule, not by row.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.devices.card import errors as E

__all__ = ["SFI_NOT_SUPPORTED", "SW_TABLE", "StatusInfo", "describe", "error_for",
           "is_success"]


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """Meaning of one status word."""

    sw: int
    en: str
    zh: str
    error: type[E.CardError] | None  # None: success


SW_TABLE: dict[int, StatusInfo] = {
    s.sw: s for s in (
        StatusInfo(0x9000, "success", "成功", None),
        StatusInfo(0x6281, "part of returned data may be corrupted", "返回数据可能有误",
                   E.CardDataError),
        StatusInfo(0x6282, "end of file reached before Le bytes", "文件结束", E.CardDataError),
        StatusInfo(0x6283, "selected file invalidated", "文件已失效", E.CardCommandError),
        StatusInfo(0x6400, "state of non-volatile memory unchanged", "卡片执行错误",
                   E.CardCommandError),
        StatusInfo(0x6581, "memory failure", "卡片存储器故障", E.CardCommandError),
        StatusInfo(0x6700, "wrong length", "长度错误", E.CardCommandError),
        StatusInfo(0x6882, "secure messaging not supported", "不支持安全报文",
                   E.CardCommandError),
        StatusInfo(0x6883, "last command of chain expected", "命令链错误", E.CardCommandError),
        StatusInfo(0x6981, "command incompatible with file structure", "文件结构不符",
                   E.CardCommandError),
        StatusInfo(0x6982, "security status not satisfied", "安全状态不满足",
                   E.CardAuthFailed),
        StatusInfo(0x6983, "authentication method blocked", "认证方法已锁定",
                   E.CardAuthBlocked),
        StatusInfo(0x6984, "referenced data invalidated", "引用数据无效", E.CardAuthFailed),
        StatusInfo(0x6985, "conditions of use not satisfied", "使用条件不满足",
                   E.CardCommandError),
        StatusInfo(0x6986, "command not allowed (no current EF)", "不允许的命令",
                   E.CardCommandError),
        StatusInfo(0x6987, "expected secure messaging objects missing", "安全报文数据缺失",
                   E.CardCommandError),
        StatusInfo(0x6988, "secure messaging data objects incorrect (MAC)", "MAC 错误",
                   E.CardAuthFailed),
        StatusInfo(0x6A80, "incorrect data field", "数据域参数错误", E.CardCommandError),
        StatusInfo(0x6A81, "function not supported", "功能不支持", E.CardCommandError),
        StatusInfo(0x6A82, "file not found", "文件未找到", E.CardFileNotFound),
        StatusInfo(0x6A83, "record not found", "记录未找到", E.CardFileNotFound),
        StatusInfo(0x6A84, "not enough memory space in the file", "文件空间不足",
                   E.CardCommandError),
        StatusInfo(0x6A86, "incorrect P1-P2", "参数 P1 P2 错误", E.CardCommandError),
        StatusInfo(0x6A88, "referenced data (key) not found", "密钥未找到",
                   E.CardAuthFailed),
        StatusInfo(0x6B00, "wrong parameters P1-P2 (offset outside the file)",
                   "参数错误（偏移超出文件）", E.CardCommandError),
        StatusInfo(0x6D00, "instruction not supported", "不支持的指令", E.CardCommandError),
        StatusInfo(0x6E00, "class not supported", "不支持的类别", E.CardCommandError),
        StatusInfo(0x6F00, "no precise diagnosis", "卡片内部错误", E.CardCommandError),
        StatusInfo(0x9302, "MAC invalid", "MAC 无效", E.CardAuthFailed),
        StatusInfo(0x9303, "application permanently locked", "应用已永久锁定",
                   E.CardAuthBlocked),
        StatusInfo(0x9403, "key not found", "密钥未找到", E.CardAuthFailed),
    )
}


#: Answers to an SFI-form READ RECORD (``00 B2 <rec> <SFI<<3|4>``) that mean "this COS does
#: not take the SFI form (or numbers its SFIs differently)": the session then selects the EF
#: by FID and reads the current EF instead. Meanings per ISO 7816-4 (5.6.1, table 6):
SFI_NOT_SUPPORTED: frozenset[int] = frozenset({
    0x6981,  # command incompatible with file structure: the SFI names a non-record EF here
    0x6986,  # command not allowed (no current EF): the COS ignored the SFI in P2
    0x6A80,  # incorrect data field: some COSes use it for a P2 they do not parse
    0x6A81,  # function not supported: no SFI addressing at all
    0x6A82,  # file not found: no EF with that SFI (SELECT by FID settles whether it exists)
    0x6A86,  # incorrect P1-P2: the SFI bits of P2 rejected
    0x6B00,  # wrong parameters P1-P2: as 6A86, on older COSes
})
# Not in the table, so raised as they are: 6D00 (INS not supported) and 6E00 (CLA not
# supported) — the plain READ RECORD has the same CLA and INS, so a SELECT cannot help and
# the card is not a health card; 6982/6983 (security status, auth blocked) and 6A83 (record
# not found) say the SFI was understood and the read itself failed.


def is_success(sw1: int, sw2: int) -> bool:
    """9000, or 61xx (more data waiting; also success for a directory select)."""
    return (sw1, sw2) == (0x90, 0x00) or sw1 == 0x61


def describe(sw1: int, sw2: int) -> StatusInfo:
    """Meaning of a status word, including the rule-based ones (61xx, 63Cx, 6Cxx)."""
    sw = (sw1 << 8) | sw2
    if sw in SW_TABLE:
        return SW_TABLE[sw]
    if sw1 == 0x61:
        return StatusInfo(sw, f"{sw2} more bytes available", f"还有 {sw2} 字节数据", None)
    if sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        n = sw2 & 0x0F
        return StatusInfo(sw, f"verification failed, {n} tries left",
                          f"校验失败，还可尝试 {n} 次", E.CardAuthFailed)
    if sw1 == 0x6C:
        return StatusInfo(sw, f"wrong Le, exact length is {sw2}", f"长度错误，应为 {sw2}",
                          E.CardCommandError)
    return StatusInfo(sw, "unknown status", "未知状态", E.CardCommandError)


def retries_left(sw1: int, sw2: int) -> int | None:
    """Tries left from 63Cx, 0 for 6983, else None."""
    if sw1 == 0x63 and sw2 & 0xF0 == 0xC0:
        return sw2 & 0x0F
    if (sw1, sw2) == (0x69, 0x83):
        return 0
    return None


def error_for(sw1: int, sw2: int, *, action: str, file: str | None = None,
              reader: str | None = None) -> E.CardError:
    """Build the typed error for a failed status word (``action`` names the command)."""
    info = describe(sw1, sw2)
    cls = info.error or E.CardCommandError
    en = f"{action}: {info.en} (SW {sw1:02X}{sw2:02X})"
    zh = f"{cls.default_zh}（{info.zh}，{sw1:02X}{sw2:02X}）"
    kw: dict[str, object] = {"reader": reader, "sw1": sw1, "sw2": sw2}
    if cls is E.CardAuthFailed:
        kw["retries_left"] = retries_left(sw1, sw2)
    elif cls in (E.CardDataError, E.CardFileNotFound):
        kw["file"] = file
    return cls(en, zh, **kw)  # type: ignore[arg-type]
