"""Decoded card contents as frozen dataclasses, with encoders used by writers and the sim.

Field names equal the element names of ``files.FILES``. Value types: CN/AN → ``str``,
one-byte B → ``int``, longer B → ``bytes``. Sex is B 1 on the card; it is exposed as the
GB/T 2261.1 digit string ("1" male, "2" female), accepting cards that store the ASCII digit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

from edge.devices.card.errors import CardDataError, CardParameterError, PhotoDataError
from edge.devices.card.protocol import codecs
from edge.devices.card.protocol.files import (
    ALLERGY_REACTION_LEN,
    ALLERGY_SUBSTANCE_LEN,
    FILES,
    IMMUNISATION_DATE_LEN,
    IMMUNISATION_NAME_LEN,
    INPATIENT_LAYOUT,
    OUTPATIENT_LAYOUT,
    Coding,
    ElementSpec,
    FileSpec,
)
from yikatong.common.privacy import mask_card_number, mask_id_number, mask_name, mask_phone

__all__ = [
    "Address",
    "Allergy",
    "CardContents",
    "CardExtras",
    "ClinicalBasics",
    "Contacts",
    "Documents",
    "Holder",
    "Identity",
    "Immunisation",
    "InpatientRecord",
    "IssuerData",
    "OutpatientRecord",
    "Photo",
    "RecordFlags",
    "Social",
    "SpecialFlag",
    "decode_allergy",
    "decode_element_record",
    "decode_immunisation",
    "encode_allergy",
    "encode_element_record",
    "encode_immunisation",
    "encode_medical_record",
    "encode_photo",
    "file_values",
    "parse_photo",
]

Value = str | int | bytes


def decode_element_record(spec: FileSpec, element: ElementSpec, record: bytes) -> Value:
    """Decode one TLV record of a record file into the element's value."""
    tag = element.tag
    if len(record) >= 2 and record[0] == tag and len(record) == 2 + record[1]:
        value = record[2:]  # parse_tlv_record's usual case, without the call (hot path)
    else:
        value = codecs.parse_tlv_record(record, tag, file=spec.path)
    if len(value) > element.length:
        raise CardDataError("Element longer than its specification", "卡片数据格式错误",
                            file=spec.path, tag=element.tag)
    # codecs.decode_element's dispatch, inlined: this runs for every record of a card read.
    coding = element.coding
    if coding is Coding.AN:
        return codecs.decode_an(value, file=spec.path, tag=element.tag)
    if coding is Coding.CN:
        return codecs.decode_cn(value, file=spec.path, tag=element.tag)
    if element.length == 1:
        if len(value) != 1:
            raise CardDataError("One-byte element is empty", "卡片数据格式错误",
                                file=spec.path, tag=element.tag)
        return value[0]
    return codecs.decode_b(value)


def encode_element_record(element: ElementSpec, value: Value) -> bytes:
    """Encode one element as its full TLV record."""
    if isinstance(value, int):
        if element.coding is not Coding.B or element.length != 1 or not 0 <= value <= 0xFF:
            raise CardParameterError(f"{element.name}: one byte 0-255 expected",
                                     f"{element.name_zh}取值错误")
        return codecs.tlv(element.tag, bytes((value,)))
    return codecs.tlv(element.tag, codecs.encode_element(element, value))


T = TypeVar("T")


def file_values(cls: type[T], values: dict[str, Value]) -> T:
    """Build a record dataclass from decoded element values (by field name)."""
    return cls(**{f.name: values[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def sex_code(value: Value) -> str:
    """The sex element (B 1, or text from older issuers) as its GB/T 2261.1 digit string."""
    if isinstance(value, int):
        return chr(value) if 0x30 <= value <= 0x39 else str(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class IssuerData:
    """DDF1/EF05 发卡机构基本数据."""

    card_type: str
    spec_version: str
    issuer_name: str
    issuer_code: str
    issuer_certificate: bytes
    issue_date: str
    card_number: str
    security_code: str
    chip_serial: str
    city_code: str


@dataclass(frozen=True, slots=True)
class Holder:
    """DDF1/EF06 持卡人基本信息."""

    name: str
    sex: str
    ethnicity: str
    birth_date: str
    id_number: str

    @classmethod
    def from_values(cls, v: dict[str, Value]) -> Holder:
        """From decoded values (sex normalised to its digit)."""
        return cls(str(v["name"]), sex_code(v["sex"]), str(v["ethnicity"]),
                   str(v["birth_date"]), str(v["id_number"]))

    def to_values(self) -> dict[str, Value]:
        """Element values for the writer."""
        if not (self.sex.isdigit() and len(self.sex) == 1):
            raise CardParameterError("sex must be one digit (GB/T 2261.1)", "性别代码错误")
        return {"name": self.name, "sex": int(self.sex), "ethnicity": self.ethnicity,
                "birth_date": self.birth_date, "id_number": self.id_number}


@dataclass(frozen=True, slots=True)
class CardExtras:
    """DDF1/EF08: expiry, phones, payment methods."""

    expiry: str
    phone1: str
    phone2: str
    payment1: str
    payment2: str
    payment3: str


@dataclass(frozen=True, slots=True)
class Address:
    """DF01/EF05 地址信息."""

    address1_type: str
    address1: str
    address2_type: str
    address2: str


@dataclass(frozen=True, slots=True)
class Contacts:
    """DF01/EF06 联系人信息 (three contacts)."""

    contact1_name: str
    contact1_relation: str
    contact1_phone: str
    contact2_name: str
    contact2_relation: str
    contact2_phone: str
    contact3_name: str
    contact3_relation: str
    contact3_phone: str


@dataclass(frozen=True, slots=True)
class Social:
    """DF01/EF07 education, marriage, occupation."""

    education: str
    marriage: str
    occupation: str


@dataclass(frozen=True, slots=True)
class Documents:
    """DF01/EF08 证件记录."""

    document_type: str
    document_number: str
    health_record_number: str
    rural_insurance_number: str


@dataclass(frozen=True, slots=True)
class ClinicalBasics:
    """DF02/EF05 临床基本数据: blood groups, twelve condition flags, other warning."""

    abo: int
    rh: str
    asthma: int
    heart_disease: int
    cerebrovascular: int
    epilepsy: int
    coagulation_disorder: int
    diabetes: int
    glaucoma: int
    dialysis: int
    organ_transplant: int
    organ_missing: int
    removable_prosthesis: int
    pacemaker: int
    other_warning: str


@dataclass(frozen=True, slots=True)
class SpecialFlag:
    """DF02/EF06 特殊信息标志."""

    special_flag: int


@dataclass(frozen=True, slots=True)
class Allergy:
    """One DF02/EF07 record: substance (AN 20) + reaction (AN 100)."""

    substance: str
    reaction: str


@dataclass(frozen=True, slots=True)
class Immunisation:
    """One DF02/EF08 record: vaccine name (AN 20) + date (CN 4, YYYYMMDD)."""

    name: str
    date: str


@dataclass(frozen=True, slots=True)
class RecordFlags:
    """DF03/EF05–EF06 validity flags (True = valid 00, False = erased FF/other)."""

    inpatient: tuple[bool, ...]
    outpatient: tuple[bool, ...]


@dataclass(frozen=True, slots=True)
class _MedicalRecord:
    index: int
    valid: bool
    data: bytes  # the data area, trailing 00/FF padding removed
    signature: bytes  # 64-byte block (*unsure*: likely a signature)
    certificate: bytes  # 190-byte block (*unsure*: likely the SAM certificate)
    raw: bytes


@dataclass(frozen=True, slots=True)
class InpatientRecord(_MedicalRecord):
    """DF03/EE0n inpatient record (data 0–1638, 64 at 1639, 190 at 1703)."""


@dataclass(frozen=True, slots=True)
class OutpatientRecord(_MedicalRecord):
    """DF03/ED0n outpatient record (data 0–3012, 64 at 3013, 190 at 3077)."""


def parse_medical_record(kind: str, index: int, valid: bool, raw: bytes) -> _MedicalRecord:
    """Split a DF03 binary record into its three blocks."""
    layout = INPATIENT_LAYOUT if kind == "inpatient" else OUTPATIENT_LAYOUT
    path = f"DF03/{'EE' if kind == 'inpatient' else 'ED'}{index:02d}"
    if len(raw) != sum(layout):
        raise CardDataError("Medical record has the wrong size", "病历数据格式错误", file=path)
    d, s, _c = layout
    cls = InpatientRecord if kind == "inpatient" else OutpatientRecord
    return cls(index, valid, raw[:d].rstrip(b"\x00").rstrip(b"\xff"), raw[d:d + s],
               raw[d + s:], raw)


def encode_medical_record(kind: str, data: bytes, signature: bytes = b"",
                          certificate: bytes = b"") -> bytes:
    """Build the full binary image of a DF03 record (blocks padded with 00)."""
    d, s, c = INPATIENT_LAYOUT if kind == "inpatient" else OUTPATIENT_LAYOUT
    if len(data) > d or len(signature) > s or len(certificate) > c:
        raise CardParameterError("Medical record block too long", "病历数据过长")
    if data.endswith((b"\x00", b"\xff")):
        # The reader strips trailing 00 (our padding) and FF (unwritten EEPROM): data
        # ending in either would not read back as written.
        raise CardParameterError("Record data must not end with 00 or FF (padding)",
                                 "病历数据格式错误")
    return data.ljust(d, b"\x00") + signature.ljust(s, b"\x00") + certificate.ljust(c, b"\x00")


_PHOTO_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"BM", "bmp"),
                (b"GIF8", "gif"))


@dataclass(frozen=True, slots=True)
class Photo:
    """DDF1/EF07 photo, raw bytes as read; ``edge.devices.card.photo`` decodes it (Pillow)."""

    image: bytes

    @property
    def format(self) -> str:
        """Image format guessed from the magic bytes ("unknown" otherwise)."""
        for magic, name in _PHOTO_MAGIC:
            if self.image.startswith(magic):
                return name
        return "unknown"


PHOTO_MAX = 3072


def parse_photo(length_prefix: bytes) -> int:
    """Image length from the photo's 2-byte prefix (CardDataError when out of range)."""
    if len(length_prefix) < 2:
        raise PhotoDataError("Photo length missing", "照片数据错误")
    n = int.from_bytes(length_prefix[:2], "big")
    if n > PHOTO_MAX - 2:
        raise PhotoDataError("Photo length beyond the file", "照片数据错误")
    return n


def encode_photo(image: bytes) -> bytes:
    """2-byte big-endian length + image (≤ 3070 bytes of image)."""
    if len(image) > PHOTO_MAX - 2:
        raise CardParameterError("Photo larger than 3070 bytes", "照片过大")
    return len(image).to_bytes(2, "big") + image


def encode_allergy(a: Allergy) -> bytes:
    """120-byte allergy record."""
    return (codecs.encode_an(a.substance, ALLERGY_SUBSTANCE_LEN, field="allergy substance")
            + codecs.encode_an(a.reaction, ALLERGY_REACTION_LEN, field="allergy reaction"))


def decode_allergy(record: bytes) -> Allergy | None:
    """Allergy from a 120-byte record; None for an empty (never written) record."""
    if set(record) <= {0x00, 0xFF}:
        return None
    if len(record) != ALLERGY_SUBSTANCE_LEN + ALLERGY_REACTION_LEN:
        raise CardDataError("Allergy record has the wrong size", "过敏数据错误",
                            file="DF02/EF07")
    return Allergy(codecs.decode_an(record[:20], file="DF02/EF07"),
                   codecs.decode_an(record[20:], file="DF02/EF07"))


def encode_immunisation(i: Immunisation) -> bytes:
    """24-byte immunisation record."""
    _check_date(i.date, "immunisation date", "免疫日期")
    return (codecs.encode_an(i.name, IMMUNISATION_NAME_LEN, field="vaccine name")
            + codecs.encode_cn(i.date, IMMUNISATION_DATE_LEN, field="immunisation date"))


def decode_immunisation(record: bytes) -> Immunisation | None:
    """Immunisation from a 24-byte record; None for an empty record."""
    if set(record) <= {0x00, 0xFF}:
        return None
    if len(record) != IMMUNISATION_NAME_LEN + IMMUNISATION_DATE_LEN:
        raise CardDataError("Immunisation record has the wrong size", "免疫数据错误",
                            file="DF02/EF08")
    return Immunisation(codecs.decode_an(record[:20], file="DF02/EF08"),
                        codecs.decode_cn(record[20:], file="DF02/EF08"))


def _check_date(value: str, what: str, zh: str) -> dt.date:
    try:
        if len(value) != 8:
            raise ValueError(value)
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError as exc:
        raise CardParameterError(f"{what} must be YYYYMMDD", f"{zh}格式应为 YYYYMMDD") from exc


def parse_date(value: str, *, file: str, tag: int) -> dt.date:
    """A CN 4 YYYYMMDD value as a date (CardDataError when not a date)."""
    # fromisoformat reads YYYYMMDD since 3.11, in C (5x faster than slicing + int(); once
    # per card read); the ASCII-digit check keeps out its other forms (2030W011, …).
    if len(value) == 8 and value.isascii() and value.isdigit():
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass  # 20301301, 20300230: digits, but no such day
    raise CardDataError("Invalid date", "卡片日期数据错误", file=file, tag=tag)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a kiosk needs to identify the patient; ``expired`` as of the reading date."""

    card_number: str
    card_type: str
    expiry: str
    city_code: str
    name: str
    sex: str
    ethnicity: str
    birth_date: str
    id_number: str
    expired: bool

    def masked(self) -> dict[str, Any]:
        """Screen/log-safe view: name, ID and card numbers masked, birth date to the year."""
        return {
            "card_number": mask_card_number(self.card_number),
            "card_type": self.card_type,
            "expiry": self.expiry,
            "city_code": self.city_code,
            "name": mask_name(self.name),
            "sex": self.sex,
            "ethnicity": self.ethnicity,
            "birth_date": self.birth_date[:4] + "****" if self.birth_date else "",
            "id_number": mask_id_number(self.id_number),
            "expired": self.expired,
        }

    def to_dict(self) -> dict[str, Any]:
        """Full view (personal data!) for the local API to the kiosk only."""
        return asdict(self)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


_HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class CardContents:
    """Everything ``read_all`` decodes (the photo is read separately)."""

    issuer: IssuerData
    holder: Holder
    extras: CardExtras
    address: Address
    contacts: Contacts
    social: Social
    documents: Documents
    clinical: ClinicalBasics
    special: SpecialFlag
    allergies: tuple[Allergy, ...]
    immunisations: tuple[Immunisation, ...]
    flags: RecordFlags
    inpatient: tuple[InpatientRecord, ...]
    outpatient: tuple[OutpatientRecord, ...]

    def to_dict(self, *, masked: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``masked`` hides personal and clinical details."""
        d: dict[str, Any] = _jsonable(asdict(self))
        if not masked:
            return d
        d["issuer"]["card_number"] = mask_card_number(self.issuer.card_number)
        d["issuer"]["issuer_certificate"] = f"<{len(self.issuer.issuer_certificate)} bytes>"
        d["issuer"]["security_code"] = _HIDDEN  # the card's CVN: never shown
        h = d["holder"]
        h["name"] = mask_name(self.holder.name)
        h["id_number"] = mask_id_number(self.holder.id_number)
        h["birth_date"] = self.holder.birth_date[:4] + "****"
        for k in ("phone1", "phone2"):
            d["extras"][k] = mask_phone(d["extras"][k])
        for k in ("address1", "address2"):
            v = d["address"][k]
            d["address"][k] = v[:6] + _HIDDEN if v else v
        for n in (1, 2, 3):
            c = d["contacts"]
            c[f"contact{n}_name"] = mask_name(c[f"contact{n}_name"])
            c[f"contact{n}_phone"] = mask_phone(c[f"contact{n}_phone"])
        for k in ("document_number", "health_record_number", "rural_insurance_number"):
            d["documents"][k] = mask_id_number(d["documents"][k])
        d["clinical"] = _HIDDEN
        d["special"] = _HIDDEN
        d["allergies"] = f"<{len(self.allergies)} records>"
        d["immunisations"] = f"<{len(self.immunisations)} records>"
        for kind in ("inpatient", "outpatient"):
            d[kind] = [{"index": r.index, "valid": r.valid, "data": f"<{len(r.data)} bytes>"}
                       for r in getattr(self, kind)]
        return d


def values_of(obj: Any) -> dict[str, Value]:
    """Element values of a record dataclass (Holder converts sex to its byte)."""
    if isinstance(obj, Holder):
        return obj.to_values()
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def spec_for(cls: type) -> FileSpec:
    """The file a record dataclass lives in."""
    return FILES[_CLASS_FILE[cls]]


_CLASS_FILE: dict[type, str] = {
    IssuerData: "DDF1/EF05", Holder: "DDF1/EF06", CardExtras: "DDF1/EF08",
    Address: "DF01/EF05", Contacts: "DF01/EF06", Social: "DF01/EF07",
    Documents: "DF01/EF08", ClinicalBasics: "DF02/EF05", SpecialFlag: "DF02/EF06",
}
