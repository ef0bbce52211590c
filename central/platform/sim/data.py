"""Reference data the seed draws from: name pools, departments, fees, bill items, lab panels.

Everything here is plain data (frozen dataclasses and tuples); ``seed.py`` combines it with
a seeded ``random.Random`` so the same seed always yields the same hospital.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- people -------------------------------------------------------------------------------

#: Common surnames, roughly by frequency (single and a few compound ones).
SURNAMES = (
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡",
    "郭", "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹",
    "彭", "曾", "肖", "田", "董", "袁", "潘", "于", "蒋", "蔡", "余", "杜", "叶", "程", "苏",
    "欧阳", "司马", "诸葛",
)
GIVEN_MALE = (
    "伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "刚", "平", "辉", "鹏", "华",
    "建国", "志强", "海涛", "俊杰", "浩然", "子轩", "宇航", "文博", "建华", "国庆", "振宇",
)
GIVEN_FEMALE = (
    "芳", "娜", "敏", "静", "丽", "艳", "娟", "霞", "玲", "婷", "雪", "慧", "颖", "琳", "倩",
    "秀英", "桂英", "丽华", "淑珍", "欣怡", "梓涵", "雨桐", "思琪", "佳怡", "晓燕", "红梅",
)

#: Six-digit administrative division codes (GB/T 2260) used for ID numbers.
AREA_CODES = (
    "110101", "110105", "310104", "310115", "440106", "440305", "330106", "320102",
    "320106", "510107", "420106", "370202", "610113", "210102", "350203", "430104",
)
#: Mobile prefixes for generated phone numbers.
PHONE_PREFIXES = ("135", "136", "137", "138", "139", "150", "151", "158", "186", "189", "177")
#: Card numbers of the simulated issuer start with the city code of the demo city.
CARD_PREFIX = "320100"


# --- departments and doctors --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Department:
    """An outpatient department."""

    code: str
    name: str
    name_en: str
    location: str
    floor: str
    specialties: tuple[str, ...]


DEPARTMENTS = (
    Department("NK", "内科", "Internal Medicine", "门诊楼2层A区", "2F",
               ("发热", "高血压", "糖尿病", "慢病管理")),
    Department("XNK", "心血管内科", "Cardiology", "门诊楼3层A区", "3F",
               ("冠心病", "心律失常", "心力衰竭", "高血压")),
    Department("HXK", "呼吸内科", "Respiratory Medicine", "门诊楼3层B区", "3F",
               ("慢阻肺", "哮喘", "肺部结节", "肺炎")),
    Department("XHK", "消化内科", "Gastroenterology", "门诊楼3层C区", "3F",
               ("胃炎", "胃镜诊疗", "肝病", "炎症性肠病")),
    Department("PWK", "普外科", "General Surgery", "门诊楼4层A区", "4F",
               ("甲状腺", "乳腺", "疝", "胆道外科")),
    Department("GK", "骨科", "Orthopedics", "门诊楼4层B区", "4F",
               ("脊柱", "关节", "创伤", "运动医学")),
    Department("EK", "儿科", "Pediatrics", "门诊楼1层B区", "1F",
               ("小儿呼吸", "小儿消化", "儿童保健", "新生儿")),
    Department("FCK", "妇产科", "Obstetrics and Gynecology", "门诊楼5层A区", "5F",
               ("产科", "妇科肿瘤", "不孕不育", "围绝经期")),
    Department("YK", "眼科", "Ophthalmology", "门诊楼5层B区", "5F",
               ("白内障", "青光眼", "眼底病", "屈光")),
    Department("EBH", "耳鼻喉科", "Otorhinolaryngology (ENT)", "门诊楼5层C区", "5F",
               ("鼻炎", "咽喉", "耳聋耳鸣", "睡眠呼吸暂停")),
    Department("PFK", "皮肤科", "Dermatology", "门诊楼6层A区", "6F",
               ("湿疹", "痤疮", "银屑病", "过敏性皮肤病")),
    Department("KQK", "口腔科", "Stomatology", "门诊楼6层B区", "6F",
               ("牙体牙髓", "口腔正畸", "牙周", "口腔修复")),
    Department("ZYK", "中医科", "Traditional Chinese Medicine", "门诊楼1层C区", "1F",
               ("针灸", "中医内科", "推拿", "中医调理")),
)


@dataclass(frozen=True, slots=True)
class Title:
    """A doctor's professional title with its registration fee and session capacity."""

    name: str
    fee_fen: int
    capacity: int


TITLES = (
    Title("主任医师", 5000, 10),
    Title("副主任医师", 3000, 15),
    Title("主治医师", 1500, 20),
    Title("住院医师", 800, 30),
)
#: How many doctors of each title a department gets, before the spare ones are spread.
DOCTORS_PER_DEPT = 3


@dataclass(frozen=True, slots=True)
class Session:
    """A half-day clinic session; booking closes at ``closes`` local time."""

    period: str
    start: str
    end: str
    closes: str


SESSIONS = (
    Session("am", "08:00", "11:30", "11:00"),
    Session("pm", "13:30", "17:00", "16:30"),
)
#: Days of schedule the platform publishes, today included.
SCHEDULE_DAYS = 8


# --- bills --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BillItem:
    """A chargeable item of the price list."""

    name: str
    unit_price_fen: int
    max_qty: int = 1


BILL_ITEMS = (
    BillItem("挂号费", 1500),
    BillItem("诊查费", 1000),
    BillItem("血常规", 2000),
    BillItem("尿常规", 1000),
    BillItem("肝功能", 4500),
    BillItem("肾功能", 3500),
    BillItem("空腹血糖", 600),
    BillItem("血脂四项", 3000),
    BillItem("心电图", 2500),
    BillItem("胸部正位片", 8000),
    BillItem("腹部彩超", 12000),
    BillItem("头颅CT平扫", 30000),
    BillItem("阿莫西林胶囊(0.25g×24粒)", 1850, 3),
    BillItem("头孢克肟分散片(0.1g×6片)", 3260, 2),
    BillItem("布洛芬缓释胶囊(0.3g×20粒)", 1580, 2),
    BillItem("奥美拉唑肠溶胶囊(20mg×14粒)", 2240, 2),
    BillItem("二甲双胍片(0.5g×60片)", 1260, 3),
    BillItem("苯磺酸氨氯地平片(5mg×7片)", 2810, 4),
    BillItem("复方甘草口服溶液(100ml)", 850, 2),
    BillItem("静脉输液(首组)", 1500),
)
#: Kiosks settle bills up to this total; larger ones go to the cashier desk.
KIOSK_BILL_LIMIT_FEN = 300_000


# --- lab reports --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LabItem:
    """One analyte with its unit and reference interval."""

    code: str
    name: str
    unit: str
    low: float
    high: float
    decimals: int


@dataclass(frozen=True, slots=True)
class LabPanel:
    """A requested test panel (one report)."""

    title: str
    specimen: str
    dept_code: str
    items: tuple[LabItem, ...]


LAB_PANELS = (
    LabPanel("血常规", "全血", "NK", (
        LabItem("WBC", "白细胞计数", "10^9/L", 3.5, 9.5, 2),
        LabItem("RBC", "红细胞计数", "10^12/L", 4.3, 5.8, 2),
        LabItem("HGB", "血红蛋白", "g/L", 115, 175, 0),
        LabItem("PLT", "血小板计数", "10^9/L", 125, 350, 0),
        LabItem("NEUT%", "中性粒细胞百分比", "%", 40, 75, 1),
        LabItem("LYMPH%", "淋巴细胞百分比", "%", 20, 50, 1),
    )),
    LabPanel("肝功能", "血清", "XHK", (
        LabItem("ALT", "丙氨酸氨基转移酶", "U/L", 9, 50, 0),
        LabItem("AST", "天门冬氨酸氨基转移酶", "U/L", 15, 40, 0),
        LabItem("TBIL", "总胆红素", "μmol/L", 0, 21, 1),
        LabItem("ALB", "白蛋白", "g/L", 40, 55, 1),
    )),
    LabPanel("空腹血糖", "血清", "NK", (
        LabItem("GLU", "葡萄糖", "mmol/L", 3.9, 6.1, 2),
    )),
    LabPanel("肾功能", "血清", "NK", (
        LabItem("UREA", "尿素", "mmol/L", 3.1, 8.0, 2),
        LabItem("CREA", "肌酐", "μmol/L", 57, 111, 0),
        LabItem("UA", "尿酸", "μmol/L", 208, 428, 0),
    )),
    LabPanel("血脂四项", "血清", "XNK", (
        LabItem("TC", "总胆固醇", "mmol/L", 2.8, 5.2, 2),
        LabItem("TG", "甘油三酯", "mmol/L", 0.45, 1.7, 2),
        LabItem("HDL-C", "高密度脂蛋白胆固醇", "mmol/L", 1.04, 1.55, 2),
        LabItem("LDL-C", "低密度脂蛋白胆固醇", "mmol/L", 1.5, 3.4, 2),
    )),
)


# --- staff --------------------------------------------------------------------------------

#: (badge, name, role) of the seeded staff accounts.
STAFF = (
    ("S1001", "收费员一", "cashier"),
    ("S1002", "收费员二", "cashier"),
    ("S1003", "导医台", "guide"),
    ("S2001", "财务主管", "supervisor"),
    ("S9001", "信息科运维", "technician"),
)
#: Failed PIN attempts after which a badge is locked.
STAFF_MAX_FAILURES = 5
#: How long a badge stays locked after STAFF_MAX_FAILURES wrong PINs in a row.
STAFF_LOCK_S = 900


# --- wallet (WeChat Pay / Alipay micropay) behaviour ----------------------------------------

@dataclass(frozen=True, slots=True)
class WalletRule:
    """What the simulated wallet does with a payment code, chosen by its last digit."""

    state: str  # initial state: approved | pending | unknown | declined
    resolves_to: str | None  # state after wallet_pending_s (None: stays until reversed)
    reason: str | None = None


#: Deterministic by the last digit of the auth code so tests and demos can pick a path:
#: 0–3 pay at once; 4 the wallet answers "unknown" then settles as paid; 5–6 the user is
#: asked to confirm ("pending") and does; 7 the user never confirms; 8–9 declined.
WALLET_RULES: dict[str, WalletRule] = {
    **{d: WalletRule("approved", None) for d in "0123"},
    "4": WalletRule("unknown", "approved"),
    "5": WalletRule("pending", "approved"),
    "6": WalletRule("pending", "approved"),
    "7": WalletRule("pending", None),
    "8": WalletRule("declined", None, "wallet_insufficient_funds"),
    "9": WalletRule("declined", None, "auth_code_expired"),
}
