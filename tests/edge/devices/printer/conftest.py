"""Printer test rig: sample documents with fixed data and times, as fixtures."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from edge.devices.printer.documents import (
    CancellationSlip,
    ClosingLine,
    ClosingReport,
    Document,
    LabItem,
    LabReport,
    PairingSlip,
    PaymentReceipt,
    ReceiptItem,
    RefundReceipt,
    RegistrationSlip,
    ShiftReport,
    TestPage,
    TopUpReceipt,
)

HOSPITAL = "北京市第一人民医院"
NAME = "张三丰"
ID_NUMBER = "110105199001011234"
CARD = "1101234567895678"
AT = datetime(2024, 5, 20, 9, 41, 7)


def slip() -> RegistrationSlip:
    """A registration slip."""
    return RegistrationSlip(
        hospital_name=HOSPITAL, patient_name=NAME, id_number=ID_NUMBER, card_no=CARD,
        dept_name="心血管内科门诊", doctor_name="李明", doctor_title="主任医师",
        date="2024-05-20", start="10:00", end="10:30", queue_no=12,
        location="门诊楼3层B区 心内科候诊区", fee_fen=5000, visit_no="MZ20240520000123",
        insured=True, printed_at=AT,
    )


def payment() -> PaymentReceipt:
    """A payment receipt with a long item name."""
    items = (
        ReceiptItem("血常规（五分类）", 1, 2500, 2500),
        ReceiptItem("C反应蛋白测定（CRP）", 1, 3000, 3000),
        ReceiptItem("阿莫西林胶囊 0.25g*24粒/盒", 2, 1275, 2550),
        ReceiptItem("静脉采血", 1, 500, 500),
    )
    return PaymentReceipt(
        hospital_name=HOSPITAL, patient_name=NAME, card_no=CARD, items=items, total_fen=8550,
        method="prepaid", txn_id="T202405200941070001", printed_at=AT,
        balance_after_fen=41450, payment_id="P20240520000045", dept_name="呼吸内科门诊",
    )


def topup() -> TopUpReceipt:
    """A top-up receipt."""
    return TopUpReceipt(
        hospital_name=HOSPITAL, patient_name=NAME, card_no=CARD, amount_fen=50000,
        method="wechat", txn_id="4200002145202405201234567890", balance_after_fen=91450,
        printed_at=AT, operator="自助机 KIOSK-03",
    )


def cash_payment() -> PaymentReceipt:
    """A bill paid in cash at a desk: tendered (实收) and change (找零) on paper."""
    return dataclasses.replace(payment(), method="cash", balance_after_fen=None,
                               operator="收费员 王芳", tendered_fen=10000, change_fen=1450)


def cash_topup() -> TopUpReceipt:
    """A top-up in cash at a desk."""
    return dataclasses.replace(topup(), method="cash", operator="收费员 王芳",
                               txn_id="P20240520000046", payment_id="P20240520000046",
                               tendered_fen=50000, change_fen=0)


def refund() -> RefundReceipt:
    """A refund receipt."""
    return RefundReceipt(
        hospital_name=HOSPITAL, patient_name=NAME, card_no=CARD, refund_id="R20240520000007",
        payment_id="P20240520000045", amount_fen=3000, method="alipay",
        reason="检查项目取消", printed_at=AT, operator="收费员 王芳",
    )


def cancellation() -> CancellationSlip:
    """A cancellation (退号) slip: the fee went back to the prepaid balance."""
    return CancellationSlip(
        hospital_name=HOSPITAL, patient_name=NAME, card_no=CARD, booking_id="B20240520000031",
        dept_name="心血管内科", doctor_name="李建国", date="2024-05-21", start="09:00",
        end="09:30", queue_no=12, refund_fen=5000, method="prepaid",
        refund_id="RF2024052000003", balance_after_fen=96450, printed_at=AT,
    )


def lab() -> LabReport:
    """A blood count report with high and low flags."""
    items = (
        LabItem("WBC", "白细胞计数", "11.2", "10^9/L", "3.5-9.5", "H"),
        LabItem("NEUT%", "中性粒细胞百分比", "78.5", "%", "40.0-75.0", "H"),
        LabItem("LYM%", "淋巴细胞百分比", "15.1", "%", "20.0-50.0", "L"),
        LabItem("RBC", "红细胞计数", "4.62", "10^12/L", "4.3-5.8"),
        LabItem("HGB", "血红蛋白", "142", "g/L", "130-175"),
        LabItem("PLT", "血小板计数", "236", "10^9/L", "125-350"),
        LabItem("CRP", "C反应蛋白", "12.6", "mg/L", "0-10", "H"),
    )
    return LabReport(
        hospital_name=HOSPITAL, report_no="LIS20240520-0456", title="血常规检验报告单",
        patient_name=NAME, sex="M", age="34", dept_name="呼吸内科门诊", specimen="静脉全血",
        sampled_at=datetime(2024, 5, 20, 8, 12), reported_at=datetime(2024, 5, 20, 9, 30),
        items=items, doctor="赵敏", verify_url="https://his.example.cn/r/LIS20240520-0456?v=8f3a",
        printed_at=AT,
    )


def closing() -> ClosingReport:
    """A cashier's end-of-day report."""
    return ClosingReport(
        hospital_name=HOSPITAL, terminal_id="CASH-01", cashier="王芳 (S0231)",
        period_start=datetime(2024, 5, 20, 7, 30), period_end=datetime(2024, 5, 20, 17, 30),
        lines=(
            ClosingLine("cash", 23, 184500, 5, 250000, 2, 6000),
            ClosingLine("wechat", 41, 512350, 12, 420000, 1, 3000),
            ClosingLine("alipay", 17, 98700, 3, 80000, 0, 0),
            ClosingLine("prepaid", 36, 302150, 0, 0, 4, 11200),
        ),
        printed_at=datetime(2024, 5, 20, 17, 31, 2),
    )


def shift() -> ShiftReport:
    """A cashier's shift handover (交班) report: one cashier, since sign-in."""
    return ShiftReport(
        hospital_name=HOSPITAL, terminal_id="CASH-01", cashier="王芳 (S0231)",
        period_start=datetime(2024, 5, 20, 7, 30), period_end=datetime(2024, 5, 20, 12, 0),
        lines=(
            ClosingLine("cash", 9, 61200, 2, 100000, 1, 3000),
            ClosingLine("wechat", 14, 170450, 4, 120000, 0, 0),
        ),
        printed_at=datetime(2024, 5, 20, 12, 0, 40),
    )


def test_page() -> TestPage:
    """A test page."""
    return TestPage(device_id="KIOSK-BJ01-003", version="0.1.0", printed_at=AT)


def pairing_slip() -> PairingSlip:
    """The slip of a device waiting for enrollment."""
    return PairingSlip(hospital_name="北京市示范医院", code="7K3M-Q9XZ", serial="10000000abcdef01",
                       printed_at=AT, expires_at=AT + timedelta(hours=24),
                       model="Raspberry Pi 4 Model B Rev 1.5")


ALL = {
    "slip": slip,
    "payment": payment,
    "topup": topup,
    "refund": refund,
    "cancellation": cancellation,
    "lab_report": lab,
    "closing_report": closing,
    "cash_payment": cash_payment,
    "cash_topup": cash_topup,
    "shift_report": shift,
    "test_page": test_page,
    "pairing_slip": pairing_slip,
}


@pytest.fixture
def samples() -> dict[str, Callable[[], Document]]:
    """Sample document builders by kind (slip, payment, topup, refund, lab_report, …)."""
    return dict(ALL)
