"""The whole file map of the Resident Health Card, as data.

Every row cites docs/healthcard.md ("The card (physical card)" and "Data elements"). Record files
hold one ``tag len value`` element per record, in the order listed (record n = n-th
element), so the record size is the element length + 2. Key references: read key 04
(DDF1) / 84 (DFs); update keys 05 (DDF1), 85 (DF01), 86 (DF02), 87 (DF03).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "ADF_FIDS",
    "FILES",
    "Coding",
    "ElementSpec",
    "FileKind",
    "FileSpec",
    "file_spec",
]


class Coding(StrEnum):
    """Element coding (docs/healthcard.md "Codings")."""

    CN = "CN"
    AN = "AN"
    B = "B"


class FileKind(StrEnum):
    """File structure."""

    RECORDS = "records"  # linear fixed, one TLV element per record
    CYCLIC = "cyclic"  # cyclic, fixed-size records (newest is record 1)
    FLAGS = "flags"  # linear fixed, 1-byte records, no TLV
    BINARY = "binary"  # transparent


@dataclass(frozen=True, slots=True)
class ElementSpec:
    """One data element: tag, English/Chinese name, coding, value length in bytes."""

    tag: int
    name: str
    name_zh: str
    coding: Coding
    length: int


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One elementary file of the card."""

    df: str  # "DDF1", "DF01", "DF02", "DF03"
    fid: int
    kind: FileKind
    name: str
    name_zh: str
    read_key: int | None  # None: readable without authentication
    update_key: int
    elements: tuple[ElementSpec, ...] = ()
    record_size: int = 0  # CYCLIC / FLAGS
    record_count: int = 0  # CYCLIC / FLAGS
    size: int = 0  # BINARY
    #: ``DF/EFxx`` path used in errors, logs and caches (computed once: it is on the
    #: card-read hot path).
    path: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", f"{self.df}/{self.fid:04X}")

    @property
    def sfi(self) -> int | None:
        """Short EF identifier (5 for EF05 …), None for the DF03 record files (EExx/EDxx)."""
        return self.fid & 0x1F if self.fid >> 8 == 0xEF else None

    def element(self, tag: int) -> ElementSpec:
        """Element by tag (KeyError when the file has no such tag)."""
        for e in self.elements:
            if e.tag == tag:
                return e
        raise KeyError(tag)

    def record_of(self, tag: int) -> int:
        """1-based record number holding ``tag``."""
        for i, e in enumerate(self.elements, 1):
            if e.tag == tag:
                return i
        raise KeyError(tag)

    def record_len(self, index: int) -> int:
        """Size in bytes of record ``index`` (1-based)."""
        if self.kind is FileKind.RECORDS:
            return self.elements[index - 1].length + 2
        return self.record_size


def _e(tag: int, name: str, zh: str, coding: Coding, length: int) -> ElementSpec:
    return ElementSpec(tag, name, zh, coding, length)


CN, AN, B = Coding.CN, Coding.AN, Coding.B

#: DF file identifiers (selected by FID, no AID select — docs/healthcard.md, "The card").
ADF_FIDS: dict[str, int] = {"DDF1": 0xDDF1, "DF01": 0xDF01, "DF02": 0xDF02, "DF03": 0xDF03}

_FILES: tuple[FileSpec, ...] = (
    # DDF1/EF05 issuer data, free read (docs/healthcard.md "DDF1/EF05: 1→01 … 10→39").
    FileSpec("DDF1", 0xEF05, FileKind.RECORDS, "issuer data", "发卡机构基本数据", None, 0x05, (
        _e(0x01, "card_type", "卡类别", AN, 1),
        _e(0x02, "spec_version", "规范版本", AN, 4),
        _e(0x03, "issuer_name", "发卡机构名称", AN, 30),
        _e(0x04, "issuer_code", "发卡机构代码", CN, 11),
        _e(0x05, "issuer_certificate", "发卡机构证书", B, 180),
        _e(0x06, "issue_date", "发卡时间", CN, 4),
        _e(0x08, "card_number", "卡号", AN, 18),
        _e(0x09, "security_code", "安全码", AN, 3),
        _e(0x0A, "chip_serial", "芯片序列号", AN, 10),
        _e(0x39, "city_code", "应用城市代码", CN, 3),
    )),
    # DDF1/EF06 holder ("DDF1/EF06: 0B name … 0F ID number").
    FileSpec("DDF1", 0xEF06, FileKind.RECORDS, "holder", "持卡人基本信息", 0x04, 0x05, (
        _e(0x0B, "name", "姓名", AN, 30),
        _e(0x0C, "sex", "性别", B, 1),
        _e(0x0D, "ethnicity", "民族", CN, 1),
        _e(0x0E, "birth_date", "出生日期", CN, 4),
        _e(0x0F, "id_number", "证件号码", AN, 18),
    )),
    # DDF1/EF07 photo: 2-byte length + image, ≤ 3072 bytes in total.
    FileSpec("DDF1", 0xEF07, FileKind.BINARY, "photo", "照片", 0x04, 0x05, size=3072),
    # DDF1/EF08 ("07 card expiry · 10,11 phone · 12–14 payment method").
    FileSpec("DDF1", 0xEF08, FileKind.RECORDS, "card extras", "有效期与联系方式", 0x04, 0x05, (
        _e(0x07, "expiry", "有效期", CN, 4),
        _e(0x10, "phone1", "联系电话1", AN, 20),
        _e(0x11, "phone2", "联系电话2", AN, 20),
        _e(0x12, "payment1", "医疗费用支付方式1", CN, 1),
        _e(0x13, "payment2", "医疗费用支付方式2", CN, 1),
        _e(0x14, "payment3", "医疗费用支付方式3", CN, 1),
    )),
    # DF01/EF05–EF08 ("address; contacts; education/marriage/occupation; documents").
    FileSpec("DF01", 0xEF05, FileKind.RECORDS, "address", "地址信息", 0x84, 0x85, (
        _e(0x15, "address1_type", "地址类别1", CN, 1),
        _e(0x16, "address1", "地址1", AN, 100),
        _e(0x17, "address2_type", "地址类别2", CN, 1),
        _e(0x18, "address2", "地址2", AN, 100),
    )),
    FileSpec("DF01", 0xEF06, FileKind.RECORDS, "contacts", "联系人信息", 0x84, 0x85, (
        _e(0x19, "contact1_name", "联系人1姓名", AN, 30),
        _e(0x1A, "contact1_relation", "联系人1关系", CN, 1),
        _e(0x1B, "contact1_phone", "联系人1电话", AN, 20),
        _e(0x1C, "contact2_name", "联系人2姓名", AN, 30),
        _e(0x1D, "contact2_relation", "联系人2关系", CN, 1),
        _e(0x1E, "contact2_phone", "联系人2电话", AN, 20),
        _e(0x1F, "contact3_name", "联系人3姓名", AN, 30),
        _e(0x20, "contact3_relation", "联系人3关系", CN, 1),
        _e(0x21, "contact3_phone", "联系人3电话", AN, 20),
    )),
    FileSpec("DF01", 0xEF07, FileKind.RECORDS, "social", "职业婚姻信息", 0x84, 0x85, (
        _e(0x22, "education", "文化程度", CN, 1),
        _e(0x23, "marriage", "婚姻状况", CN, 1),
        _e(0x24, "occupation", "职业", AN, 3),
    )),
    FileSpec("DF01", 0xEF08, FileKind.RECORDS, "documents", "证件记录", 0x84, 0x85, (
        _e(0x25, "document_type", "证件类别", CN, 1),
        _e(0x26, "document_number", "证件号码", AN, 18),
        _e(0x27, "health_record_number", "健康档案编号", AN, 17),
        _e(0x28, "rural_insurance_number", "新农合证号", AN, 18),
    )),
    # DF02/EF05 clinical basics ("29–37: ABO B 1, Rh CN 1, twelve flags B 1, other AN 40").
    FileSpec("DF02", 0xEF05, FileKind.RECORDS, "clinical basics", "临床基本数据", 0x84, 0x86, (
        _e(0x29, "abo", "ABO血型", B, 1),
        _e(0x2A, "rh", "RH血型", CN, 1),
        _e(0x2B, "asthma", "哮喘标志", B, 1),
        _e(0x2C, "heart_disease", "心脏病标志", B, 1),
        _e(0x2D, "cerebrovascular", "心脑血管病标志", B, 1),
        _e(0x2E, "epilepsy", "癫痫病标志", B, 1),
        _e(0x2F, "coagulation_disorder", "凝血紊乱标志", B, 1),
        _e(0x30, "diabetes", "糖尿病标志", B, 1),
        _e(0x31, "glaucoma", "青光眼标志", B, 1),
        _e(0x32, "dialysis", "透析标志", B, 1),
        _e(0x33, "organ_transplant", "器官移植标志", B, 1),
        _e(0x34, "organ_missing", "器官缺失标志", B, 1),
        _e(0x35, "removable_prosthesis", "可装卸义肢标志", B, 1),
        _e(0x36, "pacemaker", "心脏起搏器标志", B, 1),
        _e(0x37, "other_warning", "其他医学警示名称", AN, 40),
    )),
    FileSpec("DF02", 0xEF06, FileKind.RECORDS, "special flag", "特殊信息标志", 0x84, 0x86, (
        _e(0x38, "special_flag", "精神病标志", B, 1),
    )),
    # DF02/EF07 allergies, cyclic 120-byte records; EF08 immunisations, cyclic 24-byte.
    FileSpec("DF02", 0xEF07, FileKind.CYCLIC, "allergies", "过敏基本数据", 0x84, 0x86,
             record_size=120, record_count=10),
    FileSpec("DF02", 0xEF08, FileKind.CYCLIC, "immunisations", "免疫基本数据", 0x84, 0x86,
             record_size=24, record_count=10),
    # DF03/EF05, EF06 record validity flags (3 inpatient, 5 outpatient).
    FileSpec("DF03", 0xEF05, FileKind.FLAGS, "inpatient flags", "住院有效标志", 0x84, 0x87,
             record_size=1, record_count=3),
    FileSpec("DF03", 0xEF06, FileKind.FLAGS, "outpatient flags", "门诊有效标志", 0x84, 0x87,
             record_size=1, record_count=5),
    # DF03/EE01–EE03 inpatient (1893 bytes), ED01–ED05 outpatient (3267 bytes).
    *(FileSpec("DF03", 0xEE00 + i, FileKind.BINARY, f"inpatient record {i}", f"住院记录{i}",
               0x84, 0x87, size=1893) for i in range(1, 4)),
    *(FileSpec("DF03", 0xED00 + i, FileKind.BINARY, f"outpatient record {i}", f"门诊记录{i}",
               0x84, 0x87, size=3267) for i in range(1, 6)),
)

#: All files by path, e.g. ``FILES["DDF1/EF06"]``.
FILES: dict[str, FileSpec] = {f.path: f for f in _FILES}

# Allergy/immunisation record layouts (docs/healthcard.md "DF02/EF07", "DF02/EF08").
ALLERGY_SUBSTANCE_LEN, ALLERGY_REACTION_LEN = 20, 100
IMMUNISATION_NAME_LEN, IMMUNISATION_DATE_LEN = 20, 4

# Medical record layout (docs/healthcard.md "DF03"): data, then a 64-byte and a 190-byte block
# (likely signature and SAM certificate — *unsure*, so kept as opaque bytes).
INPATIENT_LAYOUT = (1639, 64, 190)
OUTPATIENT_LAYOUT = (3013, 64, 190)


def file_spec(path: str) -> FileSpec:
    """File by path (``"DDF1/EF05"``, ``"DF03/ED01"``); KeyError when unknown."""
    return FILES[path]
