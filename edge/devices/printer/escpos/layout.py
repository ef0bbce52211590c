"""Document layouts: ``render(doc, profile) -> bytes`` for every printable document (pure).

Names, ID numbers and card numbers are printed only in their masked forms from
``yikatong.common.privacy``. Output is deterministic: the same document and profile always give
the same bytes (the golden-file tests rely on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal

from edge.devices.printer.documents import (
    CancellationSlip,
    ClosingReport,
    Document,
    LabReport,
    PairingSlip,
    PaymentReceipt,
    RefundReceipt,
    RegistrationSlip,
    ShiftReport,
    TestPage,
    TopUpReceipt,
)
from edge.devices.printer.errors import LayoutError
from edge.devices.printer.escpos.builder import EscPosBuilder
from edge.devices.printer.escpos.profiles import PrinterProfile
from edge.devices.printer.escpos.text import (
    Column,
    display_width,
    format_fen,
    kv_lines,
    pad,
    table_lines,
    two_col_lines,
    wrap,
)
from yikatong.common.privacy import mask_card_number, mask_id_number, mask_name

__all__ = ["METHOD_ZH", "render"]

METHOD_ZH = {
    "prepaid": "预交金账户",
    "cash": "现金",
    "wechat": "微信支付",
    "alipay": "支付宝",
    "insurance": "医保统筹",
}
_SEX_ZH = {"M": "男", "F": "女", "U": "未知"}
_LABEL_W = 10  # "就诊日期：" — every label is padded to this many columns
# A reprint must be told from the original at a glance (docs/architecture.md: "a second
# print of the same document is a marked copy"), hence big and at the top, and again in the
# footer where it says what it is.
_COPY_MARK = "副本 / COPY"
_COPY_NOTE = ("本凭条为副本，仅供参考", "This is a copy")  # one line each: fits 58 mm paper


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _hm(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")


class _Page:
    """Helpers shared by the layouts, on top of the byte builder."""

    def __init__(self, profile: PrinterProfile) -> None:
        self.p = profile
        self.b = EscPosBuilder(profile)
        self.cols = profile.columns
        self.b.init().chinese(True)

    def lines(
        self,
        lines: Iterable[str],
        *,
        align: Literal["left", "center", "right"] = "left",
        bold: bool = False,
        width: int = 1,
        height: int = 1,
    ) -> None:
        """Print lines with one style; styles are set and reset around them."""
        if align != "left":
            self.b.align(align)
        if bold:
            self.b.bold(True)
        if width != 1 or height != 1:
            self.b.size(width, height)
        for line in lines:
            self.b.line(line.rstrip(" "))
        if width != 1 or height != 1:
            self.b.size(1, 1)
        if bold:
            self.b.bold(False)
        if align != "left":
            self.b.align("left")

    def text(
        self,
        text: str,
        *,
        align: Literal["left", "center", "right"] = "left",
        bold: bool = False,
        width: int = 1,
        height: int = 1,
    ) -> None:
        """Wrap text to the columns left at this character width and print it."""
        self.lines(
            wrap(text, self.cols // width), align=align, bold=bold, width=width, height=height
        )

    def rule(self, ch: str = "-") -> None:
        """A separator across the whole line."""
        self.b.line(ch * (self.cols // display_width(ch)))

    def kv(self, label: str, value: str, *, bold: bool = False) -> None:
        """Label padded to the common label width, then the value with hanging wrap.

        Widths count CJK as two columns. A label wider than the label column (a caller's
        own test-page key) goes on a line of its own, so its value still starts in the
        value column instead of pushing it right; our own labels all fit (a test checks).
        """
        label = label + "："
        if display_width(label) > _LABEL_W:
            self.lines(wrap(label, self.cols), bold=bold)
            label = ""
        self.lines(kv_lines(pad(label, _LABEL_W), value, self.cols), bold=bold)

    def amount(self, label: str, value: str, *, big: bool = False) -> None:
        """Label left, amount right; ``big`` prints it bold at double width and height.

        Double height alone draws tall, narrow glyphs that read as squashed, so ``big`` is
        2x2; where label and amount do not fit one 2x2 line (58 mm paper) the label goes
        on its own bold line and the amount follows at 2x2, flush right.
        """
        if not big:
            self.lines(two_col_lines(label, value, self.cols))
            return
        half = self.cols // 2
        if display_width(label) + 1 + display_width(value) <= half:
            self.lines(two_col_lines(label, value, half), bold=True, width=2, height=2)
            return
        self.text(label, bold=True)
        self.lines([pad(value, half, "right")], bold=True, width=2, height=2)

    def header(self, hospital: str, title: str, copy: bool) -> None:
        """Hospital name, document title and the copy mark."""
        big = 2 if display_width(hospital) * 2 <= self.cols else 1
        self.text(hospital, align="center", bold=True, width=big, height=2)
        self.b.feed(1)
        tw = 2 if display_width(title) * 2 <= self.cols else 1
        self.text(title, align="center", bold=True, width=tw, height=2)
        if copy:
            self.copy_mark()
        self.rule("=")

    def copy_mark(self) -> None:
        """The copy mark: a rule of stars, then bold double width and height text."""
        self.rule("*")
        self.text(_COPY_MARK, align="center", bold=True, width=2, height=2)

    def footer(self, printed_at: datetime, notes: Iterable[str], copy: bool) -> None:
        """Closing rule, notes, print time and the cut."""
        self.rule()
        for note in notes:
            self.text(note)
        self.kv("打印时间", _ts(printed_at))
        if copy:
            for note in _COPY_NOTE:
                self.text(note, align="center", bold=True)
        self.b.cut()

    def qr(self, payload: str, caption: str) -> None:
        """A centred QR code with a caption, or the payload as text on printers without QR."""
        if self.p.qr:
            self.b.align("center").qr(payload, ec="M").lf().align("left")
        self.text(caption, align="center")
        if not self.p.qr:
            self.text(payload, align="center")


def _slip(doc: RegistrationSlip, page: _Page) -> None:
    page.header(doc.hospital_name, "门诊挂号凭条", doc.copy)
    page.kv("患者姓名", mask_name(doc.patient_name))
    page.kv("身份证号", mask_id_number(doc.id_number))
    page.kv("就诊卡号", mask_card_number(doc.card_no))
    page.rule()
    page.kv("就诊科室", doc.dept_name, bold=True)
    page.kv("就诊医生", f"{doc.doctor_name} {doc.doctor_title}".strip())
    period = "上午" if doc.start < "12:00" else "下午"
    page.kv("就诊日期", f"{doc.date} {period}")
    page.kv("就诊时段", f"{doc.start}-{doc.end}", bold=True)
    page.kv("就诊地点", doc.location)
    page.kv("费用类别", "医保" if doc.insured else "自费")
    page.kv("挂号费用", format_fen(doc.fee_fen))
    page.rule()
    page.text("就诊序号", align="center")
    page.lines([f"{doc.queue_no}号"], align="center", bold=True, width=3, height=3)
    page.b.feed(1)
    page.qr(doc.visit_no, f"就诊号：{doc.visit_no}")
    page.footer(
        doc.printed_at,
        [
            "温馨提示：请提前15分钟到达候诊区，凭本凭条和就诊卡签到候诊；过号请到分诊台重新排队。",
            "本凭条不作为报销凭证。",
        ],
        doc.copy,
    )


def _payment(doc: PaymentReceipt, page: _Page) -> None:
    page.header(doc.hospital_name, "门诊缴费凭条", doc.copy)
    page.kv("患者姓名", mask_name(doc.patient_name))
    page.kv("就诊卡号", mask_card_number(doc.card_no))
    if doc.dept_name:
        page.kv("就诊科室", doc.dept_name)
    page.rule()
    columns = [
        Column("项目", flex=True),
        Column("数量", "right"),
        Column("单价", "right"),
        Column("金额", "right"),
    ]
    rows = [
        [i.name, str(i.qty), format_fen(i.unit_price_fen), format_fen(i.amount_fen)]
        for i in doc.items
    ]
    page.lines(table_lines(columns, rows, page.cols))
    page.rule()
    page.amount(f"合计（{len(doc.items)}项）", format_fen(doc.total_fen), big=True)
    page.kv("支付方式", METHOD_ZH[doc.method])
    _cash_lines(doc.tendered_fen, doc.change_fen, page)
    page.kv("交易流水", doc.txn_id)
    if doc.payment_id:
        page.kv("支付单号", doc.payment_id)
    if doc.balance_after_fen is not None:
        page.kv("账户余额", format_fen(doc.balance_after_fen))
    if doc.operator:
        page.kv("收 费 员", doc.operator)
    page.footer(
        doc.printed_at,
        ["本凭条仅作缴费凭证，不作为报销凭证；电子票据请在医院公众号查询下载。"],
        doc.copy,
    )


def _cash_lines(tendered_fen: int | None, change_fen: int | None, page: _Page) -> None:
    """Cash at a desk: 实收 and 找零, so the patient can check the change on paper."""
    if tendered_fen is not None and change_fen is not None:
        page.kv("实    收", format_fen(tendered_fen))
        page.kv("找    零", format_fen(change_fen))


def _topup(doc: TopUpReceipt, page: _Page) -> None:
    page.header(doc.hospital_name, "预交金充值凭条", doc.copy)
    page.kv("患者姓名", mask_name(doc.patient_name))
    page.kv("就诊卡号", mask_card_number(doc.card_no))
    page.rule()
    page.amount("充值金额", format_fen(doc.amount_fen), big=True)
    page.kv("支付方式", METHOD_ZH[doc.method])
    _cash_lines(doc.tendered_fen, doc.change_fen, page)
    page.kv("交易流水", doc.txn_id)
    if doc.payment_id:
        page.kv("支付单号", doc.payment_id)
    if doc.balance_after_fen is not None:
        page.kv("账户余额", format_fen(doc.balance_after_fen), bold=True)
    if doc.operator:
        page.kv("操 作 员", doc.operator)
    page.footer(
        doc.printed_at,
        ["预交金可用于门诊挂号及缴费，未用余额可凭身份证件到人工窗口办理退费。"],
        doc.copy,
    )


def _cancellation(doc: CancellationSlip, page: _Page) -> None:
    page.header(doc.hospital_name, "退号凭条", doc.copy)
    page.kv("患者姓名", mask_name(doc.patient_name))
    page.kv("就诊卡号", mask_card_number(doc.card_no))
    page.rule()
    page.kv("挂号单号", doc.booking_id)
    page.kv("就诊科室", doc.dept_name, bold=True)
    page.kv("就诊医生", doc.doctor_name)
    page.kv("就诊时段", f"{doc.date} {doc.start}-{doc.end}")
    page.kv("就诊序号", f"{doc.queue_no}号（已作废）")
    page.kv("办理状态", "已退号", bold=True)
    page.rule()
    page.amount("退款金额", format_fen(doc.refund_fen), big=True)
    if doc.method is not None:
        page.kv("退回方式", METHOD_ZH[doc.method])
    if doc.refund_id:
        page.kv("退费单号", doc.refund_id)
    if doc.balance_after_fen is not None:
        page.kv("账户余额", format_fen(doc.balance_after_fen))
    notes = ["本号源已释放，如需就诊请重新挂号。"]
    if doc.method in ("wechat", "alipay"):
        notes.append("退回微信/支付宝的款项预计1-7个工作日原路到账。")
    page.footer(doc.printed_at, notes, doc.copy)


def _refund(doc: RefundReceipt, page: _Page) -> None:
    page.header(doc.hospital_name, "退费凭条", doc.copy)
    page.kv("患者姓名", mask_name(doc.patient_name))
    page.kv("就诊卡号", mask_card_number(doc.card_no))
    page.rule()
    page.amount("退费金额", format_fen(doc.amount_fen), big=True)
    page.kv("退回方式", METHOD_ZH[doc.method])
    page.kv("退费单号", doc.refund_id)
    page.kv("原支付单", doc.payment_id)
    if doc.reason:
        page.kv("退费原因", doc.reason)
    if doc.balance_after_fen is not None:
        page.kv("账户余额", format_fen(doc.balance_after_fen))
    if doc.operator:
        page.kv("操 作 员", doc.operator)
    notes = ["退回微信/支付宝的款项预计1-7个工作日原路到账。"]
    if doc.method == "cash":
        notes = ["现金退费请当面点清，离开窗口后概不负责。"]
    page.footer(doc.printed_at, notes, doc.copy)


def _lab(doc: LabReport, page: _Page) -> None:
    page.header(doc.hospital_name, doc.title, doc.copy)
    age = doc.age + "岁" if doc.age.isdigit() else doc.age
    who = f"姓名：{mask_name(doc.patient_name)}  性别：{_SEX_ZH[doc.sex]}  年龄：{age}"
    page.text(who)
    page.kv("科    室", doc.dept_name)
    page.kv("标本类型", doc.specimen)
    page.kv("报告单号", doc.report_no)
    page.kv("采样时间", _hm(doc.sampled_at))
    page.kv("报告时间", _hm(doc.reported_at))
    page.rule()
    columns = [
        Column("项目", flex=True),
        Column("结果", "right"),
        Column("单位"),
        Column("参考范围"),
    ]
    arrows = {"H": "↑", "L": "↓", "": ""}
    # The flag cell always has room for an arrow so values line up in one column.
    rows = [
        [i.name, i.value + (arrows[i.flag] or "  "), i.unit, i.ref_range] for i in doc.items
    ]
    # Two spaces between columns: "10^12/L" and a range next to it read as one word.
    page.lines(table_lines(columns, rows, page.cols, gap=2))
    page.rule()
    flagged = sum(1 for i in doc.items if i.flag)
    page.text(f"共{len(doc.items)}项，异常{flagged}项    ↑偏高  ↓偏低")
    page.kv("检验医师", doc.doctor)
    page.b.feed(1)
    page.qr(doc.verify_url, "扫码查验报告真伪")
    page.footer(
        doc.printed_at,
        ["本报告仅对所检标本负责，如有疑问请咨询检验科。"],
        doc.copy,
    )


def _closing(doc: ClosingReport, page: _Page) -> None:
    title = "收费员交班报表" if isinstance(doc, ShiftReport) else "收费员日结报表"
    page.header(doc.hospital_name, title, doc.copy)
    page.kv("终端编号", doc.terminal_id)
    page.kv("收 费 员", doc.cashier)
    page.kv("开始时间", _ts(doc.period_start))
    page.kv("结束时间", _ts(doc.period_end))
    page.rule("=")
    total_in = total_out = count = 0
    for line in doc.lines:
        page.text(f"【{METHOD_ZH[line.method]}】", bold=True)
        rows = [
            ("缴费", line.payment_count, line.payment_fen),
            ("充值", line.topup_count, line.topup_fen),
            ("退费", line.refund_count, -line.refund_fen),
        ]
        for label, n, fen in rows:
            page.amount(f"  {label} {n:>4}笔", format_fen(fen))
        page.amount("  小计", format_fen(line.net_fen), big=False)
        total_in += line.payment_fen + line.topup_fen
        total_out += line.refund_fen
        count += line.payment_count + line.topup_count + line.refund_count
        page.rule()
    if not doc.lines:
        page.text("本时段无交易", align="center")
        page.rule()
    page.amount("交易笔数", f"{count}笔")
    page.amount("收入合计", format_fen(total_in))
    page.amount("退费合计", format_fen(-total_out))
    page.amount("净额合计", format_fen(total_in - total_out), big=True)
    page.b.feed(1)
    page.text("收费员签字：____________")
    page.b.feed(1)
    page.text("财务复核：______________")
    page.footer(doc.printed_at, [], doc.copy)


def _test_page(doc: TestPage, page: _Page) -> None:
    page.text("打印测试页", align="center", bold=True, width=2, height=2)
    page.text("PRINTER TEST PAGE", align="center")
    if doc.copy:
        page.copy_mark()
    page.rule("=")
    page.kv("设备编号", doc.device_id)
    page.kv("软件版本", doc.version)
    page.kv("打印机型", page.p.model)
    page.kv("打印宽度", f"{page.p.dots_per_line}点 / {page.p.columns}列 / {page.p.dpi}dpi")
    for key, value in doc.extra:
        page.kv(key, value)
    page.rule()
    ruler = "".join(str(i % 10) for i in range(1, page.cols + 1))
    page.b.line(ruler)
    page.b.line("汉" * (page.cols // 2))
    page.text("中文：居民健康卡一卡通自助服务 ABC abc 0123456789")
    page.text("符号：¥12.50 ↑ ↓ ℃ ± ×（）【】《》，。")
    page.text("加粗 BOLD", bold=True)
    page.text("倍宽倍高 2x2", width=2, height=2)
    page.text("左对齐 LEFT")
    page.text("居中 CENTER", align="center")
    page.text("右对齐 RIGHT", align="right")
    if doc.note:
        page.rule()
        page.text(doc.note)
    page.rule()
    page.qr(f"YKT-TEST:{doc.device_id}", "二维码测试 QR TEST")
    page.footer(doc.printed_at, ["如以上内容清晰完整、切纸正常，打印机工作正常。"], doc.copy)


def _pairing(doc: PairingSlip, page: _Page) -> None:
    page.header(doc.hospital_name, "设备配对码", doc.copy)
    page.text("PAIRING CODE", align="center", bold=True)
    page.b.feed(1)
    page.text(doc.code, align="center", bold=True, width=2, height=2)
    page.b.feed(1)
    page.rule()
    page.kv("序列号", doc.serial)
    if doc.model:
        page.kv("型号", doc.model)
    if doc.expires_at is not None:
        page.kv("有效期至", doc.expires_at.strftime("%Y-%m-%d %H:%M"))
    page.footer(doc.printed_at, [
        "请将配对码告知管理员，在中心批准后本机自动启用。",
        "Give this code to the administrator; the terminal starts once it is approved.",
    ], doc.copy)


_LAYOUTS: dict[type, Callable[[object, _Page], None]] = {
    RegistrationSlip: _slip,  # type: ignore[dict-item]
    PaymentReceipt: _payment,  # type: ignore[dict-item]
    TopUpReceipt: _topup,  # type: ignore[dict-item]
    RefundReceipt: _refund,  # type: ignore[dict-item]
    CancellationSlip: _cancellation,  # type: ignore[dict-item]
    LabReport: _lab,  # type: ignore[dict-item]
    ClosingReport: _closing,  # type: ignore[dict-item]
    ShiftReport: _closing,  # type: ignore[dict-item]
    TestPage: _test_page,  # type: ignore[dict-item]
    PairingSlip: _pairing,  # type: ignore[dict-item]
}


def render(doc: Document, profile: PrinterProfile) -> bytes:
    """ESC/POS bytes for one document on one printer profile, ending with the cut."""
    layout = _LAYOUTS.get(type(doc))
    if layout is None:
        raise LayoutError(f"no layout for {type(doc).__name__}")
    page = _Page(profile)
    layout(doc, page)
    return page.b.build()
