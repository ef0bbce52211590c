"""Every file round-trips: writer (CardSession + SAM) → card simulator → reader."""

from __future__ import annotations

from dataclasses import fields

import pytest

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardSession
from edge.devices.card.protocol import records as R
from edge.devices.card.protocol.files import FILES, Coding, FileKind
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

PIN = "246810"


@pytest.fixture
def card() -> HealthCardSim:
    return HealthCardSim.from_holder(name="欧阳娜娜", sex="2", ethnicity="03",
                                     birth_date="19991231", id_number="44030619991231002X",
                                     card_number="H44030000000000009", city_code="440300")


@pytest.fixture
def session(card: HealthCardSim) -> CardSession:
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    return CardSession(InProcessTransport(card), sam)


def _value_for(coding: Coding, length: int, seed: int) -> R.Value:
    if coding is Coding.B:
        return (seed % 250) + 1 if length == 1 else bytes((seed + i) % 256 for i in range(length))
    if coding is Coding.CN:
        return "".join(str((seed + i) % 10) for i in range(2 * length))
    if length < 6:
        return "A1B2C3"[:length]
    # a four-byte GB18030 char, two-byte ones, and one ASCII char when the length is odd:
    # always exactly the maximum
    return "𠀀" + "测" * ((length - 4) // 2) + "Z" * ((length - 4) % 2)


RECORD_FILES = [p for p, f in FILES.items() if f.kind is FileKind.RECORDS]


@pytest.mark.parametrize("path", RECORD_FILES)
def test_record_file_round_trip(session: CardSession, card: HealthCardSim, path: str) -> None:
    spec = FILES[path]
    expected: dict[str, R.Value] = {}
    for i, el in enumerate(spec.elements):
        if path == "DDF1/EF05" and el.name in ("card_number", "city_code"):
            continue  # test_card_ids_round_trip: they change the key diversification
        value = _value_for(el.coding, el.length, i + 3)
        if path == "DDF1/EF06" and el.name == "sex":
            value = 2
        if el.coding is Coding.AN:  # every text element at its exact maximum
            assert len(str(value).encode("gb18030")) == el.length, el.name
        session.update_element(path, el.name, value)
        expected[el.name] = value
    contents = session.read_all()
    attr = {"DDF1/EF05": "issuer", "DDF1/EF06": "holder", "DDF1/EF08": "extras",
            "DF01/EF05": "address", "DF01/EF06": "contacts", "DF01/EF07": "social",
            "DF01/EF08": "documents", "DF02/EF05": "clinical", "DF02/EF06": "special"}[path]
    obj = getattr(contents, attr)
    got = R.values_of(obj)
    for name, value in expected.items():
        assert got[name] == value, name
    # and the raw records on the card are exactly the encoded TLVs
    for el in spec.elements:
        if el.name in expected:
            assert card.records(path)[spec.record_of(el.tag) - 1] == \
                R.encode_element_record(el, expected[el.name])
    assert {f.name for f in fields(obj)} == {e.name for e in spec.elements}


@pytest.mark.parametrize(("card_number", "city_code"), [
    ("H44030000000000009", "440300"),  # AN 18 and CN 3 at their maximum
    ("𠀀测测测测测测测", "999999"),  # 18 bytes of GB18030, odd digits
    ("12345", "4403"),  # short: 00 and F padding
])
def test_card_ids_round_trip(card_number: str, city_code: str) -> None:
    # Issued with these ids (the card's keys derive from them): identity and free data.
    card = HealthCardSim.from_holder(card_number=card_number, city_code=city_code)
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    ident = CardSession(InProcessTransport(card), sam).read_identity()
    assert (ident.card_number, ident.city_code) == (card_number, city_code)
    issuer = CardSession(InProcessTransport(card), None).read_issuer()
    assert (issuer.card_number, issuer.city_code) == (card_number, city_code)


@pytest.mark.parametrize(("name", "value", "raw"), [
    ("card_number", "Z" * 18, "0812" + "5A" * 18),
    ("city_code", "12345", "3903" "12345F"),
])
def test_card_ids_rewritten_read_back(session: CardSession, card: HealthCardSim, name: str,
                                      value: str, raw: str) -> None:
    # Rewriting one is an issuer's job: the card keeps the keys of the old ids, so later
    # SM writes would fail. But the bytes round-trip: written under DDF1's update key,
    # read back from the free file.
    session.update_element("DDF1/EF05", name, value)
    issuer = CardSession(InProcessTransport(card), None).read_issuer()
    assert getattr(issuer, name) == value
    tag = next(e.tag for e in FILES["DDF1/EF05"].elements if e.name == name)
    assert card.records("DDF1/EF05")[FILES["DDF1/EF05"].record_of(tag) - 1] == \
        bytes.fromhex(raw)


def test_sm_writes_authenticate_with_the_update_key_first(session: CardSession,
                                                          card: HealthCardSim) -> None:
    start = len(card.commands)
    session.append_allergy("青霉素", "皮疹")
    sent = [c[:4].hex().upper() for c in card.commands[start:]]
    auth = sent.index("00820086")  # DF02's update key
    assert sent.index("04DC0003", auth) > auth
    start = len(card.commands)
    session.update_element("DF01/EF07", "occupation", "X9Z")
    sent = [c[:4].hex().upper() for c in card.commands[start:]]
    assert "00820085" in sent and sent.index("00820085") < sent.index("04DC0304")


@pytest.mark.parametrize(("kind", "index"), [("inpatient", i) for i in (1, 2, 3)]
                         + [("outpatient", i) for i in (1, 2, 3, 4, 5)])
def test_every_medical_record_at_maximum_length(session: CardSession, card: HealthCardSim,
                                                kind: str, index: int) -> None:
    d, s, c = R.INPATIENT_LAYOUT if kind == "inpatient" else R.OUTPATIENT_LAYOUT
    data = bytes((index * 7 + i) % 254 + 1 for i in range(d))  # never 00 or FF at the end
    signature = bytes((index + i) % 256 for i in range(s))
    certificate = bytes((index * 3 + i) % 256 for i in range(c))
    write = (session.write_inpatient_record if kind == "inpatient"
             else session.write_outpatient_record)
    write(index, data, signature=signature, certificate=certificate)
    path = f"DF03/{'EE' if kind == 'inpatient' else 'ED'}{index:02d}"
    assert card.binary(path) == data + signature + certificate  # the whole file, no padding
    got = session.read_medical_record(kind, index)  # type: ignore[arg-type]
    assert (got.index, got.data, got.signature, got.certificate) == \
        (index, data, signature, certificate)
    contents = session.read_all()
    records = contents.inpatient if kind == "inpatient" else contents.outpatient
    assert [r.index for r in records] == [index] and records[0].data == data
    with pytest.raises(E.CardParameterError):
        write(index, data + b"\x01")  # one byte over
    with pytest.raises(E.CardParameterError):
        write(index, data[:-1] + b"\xff")  # would read back shorter


def test_cyclic_allergies_keep_newest_first_and_wrap(session: CardSession) -> None:
    for i in range(12):
        session.append_allergy(f"青霉素{i}", "皮疹" * 25)  # reaction = 100 bytes exactly
    allergies = session.read_all().allergies
    assert len(allergies) == 10
    assert allergies[0].substance == "青霉素11" and allergies[-1].substance == "青霉素2"
    with pytest.raises(E.CardParameterError):
        session.append_allergy("x" * 21, "")


def test_immunisations_round_trip(session: CardSession) -> None:
    session.append_immunisation("乙肝疫苗", "20240301")
    session.append_immunisation("𠀀苗", "20250102")
    assert session.read_all().immunisations == (
        R.Immunisation("𠀀苗", "20250102"), R.Immunisation("乙肝疫苗", "20240301"))
    with pytest.raises(E.CardParameterError):
        session.append_immunisation("流感", "20241301")


def test_medical_records_write_flag_read_erase(session: CardSession, card: HealthCardSim
                                               ) -> None:
    data = "门诊：上呼吸道感染".encode("gb18030") * 100
    session.write_outpatient_record(5, data, signature=b"\x01" * 64, certificate=b"\x02" * 190)
    session.write_inpatient_record(1, b"ward 3")
    c = session.read_all()
    assert c.flags.outpatient == (False, False, False, False, True)
    assert c.flags.inpatient == (True, False, False)
    rec = c.outpatient[0]
    assert (rec.index, rec.data, rec.signature, rec.certificate) == \
        (5, data, b"\x01" * 64, b"\x02" * 190)
    assert c.inpatient[0].data == b"ward 3"
    assert session.read_medical_record("outpatient", 5).data == data
    session.erase_record("outpatient", 5)
    assert card.records("DF03/EF06")[4] == b"\xff"
    with pytest.raises(E.RecordErased):
        session.read_medical_record("outpatient", 5)
    with pytest.raises(E.CardParameterError):
        session.write_outpatient_record(6, b"x")
    with pytest.raises(E.CardParameterError):
        session.write_outpatient_record(1, b"x" * 3014)


def test_photo_at_maximum_size() -> None:
    image = b"\xff\xd8\xff" + bytes(range(256)) * 11 + b"\x00" * (3070 - 3 - 2816)
    assert len(image) == 3070
    card = HealthCardSim.from_holder(photo=image)
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    photo = CardSession(InProcessTransport(card), sam).read_photo()
    assert photo.image == image and photo.format == "jpeg"


def test_photo_with_bad_length_is_a_photo_error() -> None:
    card = HealthCardSim.from_holder(photo=b"")
    card.set_binary("DDF1/EF07", b"\x0f\xff")  # 4095 > 3070
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    with pytest.raises(E.CardDataError) as e:
        CardSession(InProcessTransport(card), sam).read_photo()
    assert e.value.file == "DDF1/EF07"


def test_read_all_masks_personal_data(session: CardSession) -> None:
    d = session.read_all().to_dict(masked=True)
    assert d["holder"]["name"] == "欧**娜"
    assert d["holder"]["id_number"] == "440***********002X"
    assert d["issuer"]["card_number"] == "H440**********0009"
    assert d["clinical"] == "***"
    full = session.read_all().to_dict(masked=False)
    assert full["holder"]["name"] == "欧阳娜娜"


def test_write_without_sam_is_refused(card: HealthCardSim) -> None:
    with pytest.raises(E.SamUnavailable):
        CardSession(InProcessTransport(card), None).append_allergy("a", "b")
