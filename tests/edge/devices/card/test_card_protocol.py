"""APDU builders, status words, file map and the auth scheme, against byte fixtures."""

from __future__ import annotations

import pytest

from edge.devices.card import errors as E
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol import security as sec
from edge.devices.card.protocol.files import FILES, FileKind
from edge.devices.card.protocol.status import describe, error_for, is_success
from edge.devices.card.sim.cardos import HEALTH_ATR


def test_select_and_read_record_bytes() -> None:
    assert A.select_fid(0xDDF1).to_bytes() == bytes.fromhex("00A4000002DDF1")
    assert A.read_record_by_tag(0x08).to_bytes() == bytes.fromhex("00B2080014")
    assert A.read_record_by_tag(0x39).to_bytes() == bytes.fromhex("00B2390005")
    assert A.read_record_by_tag(0x08, sfi=5).to_bytes() == bytes.fromhex("00B2082814")
    assert A.read_record(3).to_bytes() == bytes.fromhex("00B2030400")
    assert A.read_record(3, sfi=6).to_bytes() == bytes.fromhex("00B2033400")


def test_le_table_matches_the_file_map() -> None:
    spec = FILES["DDF1/EF05"]
    assert {e.tag: e.length + 2 for e in spec.elements} == A.DDF1_EF05_LE


def test_binary_challenge_auth_and_flags() -> None:
    assert A.read_binary(0x0180).to_bytes() == bytes.fromhex("00B0018080")
    assert A.get_challenge().to_bytes() == bytes.fromhex("0084000008")
    ea = A.external_authenticate(0x04, bytes(17)).to_bytes()
    assert ea[:5] == bytes.fromhex("0082000411") and len(ea) == 22
    assert A.set_record_valid_flag(2).to_bytes() == bytes.fromhex("84D2020400")
    assert A.erase_record_flag(2).to_bytes() == bytes.fromhex("840C020400")
    assert A.update_record_sm(1, bytes(20)).to_bytes()[:5] == bytes.fromhex("04DC010414")
    assert A.append_record_sm(bytes(36)).to_bytes()[:5] == bytes.fromhex("04DC000324")
    assert A.update_binary(0x10, b"\x01").to_bytes() == bytes.fromhex("00D600100101")


def test_sam_commands() -> None:
    assert A.verify_pin("123456").to_bytes() == bytes.fromhex("0020000003123456")
    assert A.verify_pin("12345").to_bytes() == bytes.fromhex("002000000312345F")
    assert A.sam_select_df01().to_bytes() == bytes.fromhex("00A4000002DF01")
    assert A.sam_diversify(0x04, bytes(16)).to_bytes()[:5] == bytes.fromhex("80DE000410")
    assert A.sam_compute(0, bytes(8)).to_bytes() == \
        bytes.fromhex("80FA0000080000000000000000") + b"\x00"
    assert A.get_response(0x10).to_bytes() == bytes.fromhex("00C0000010")


@pytest.mark.parametrize("bad", [lambda: A.verify_pin("12a4"), lambda: A.verify_pin("123"),
                                 lambda: A.select_fid(0x10000),
                                 lambda: A.external_authenticate(4, bytes(16)),
                                 lambda: A.update_record_sm(1, bytes(21)),
                                 lambda: A.read_binary(0x8000)])
def test_bad_parameters_are_typed_errors(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(E.CardParameterError):
        bad()


def test_command_parse_round_trip_and_errors() -> None:
    for raw in ("00A4000002DDF1", "00B2080014", "0084000008", "80FA0000081122334455667788"
                "00", "00B20104"):
        assert A.Command.parse(bytes.fromhex(raw)).to_bytes() == bytes.fromhex(raw)
    with pytest.raises(E.CardParameterError):
        A.Command.parse(b"\x00\xa4")
    with pytest.raises(E.CardParameterError):
        A.Command.parse(bytes.fromhex("00A4000005DDF1"))
    with pytest.raises(E.CardDataError):
        A.Response.parse(b"\x90")
    r = A.Response.parse(bytes.fromhex("01029000"))
    assert (r.data, r.sw, r.ok) == (b"\x01\x02", 0x9000, True)


@pytest.mark.parametrize(("sw", "cls"), [
    (0x6A82, E.CardFileNotFound), (0x6982, E.CardAuthFailed), (0x6983, E.CardAuthBlocked),
    (0x63C2, E.CardAuthFailed), (0x6700, E.CardCommandError), (0x6D00, E.CardCommandError),
    (0x6E00, E.CardCommandError), (0x6B00, E.CardCommandError), (0x6C14, E.CardCommandError),
    (0x6FFF, E.CardCommandError),
])
def test_status_words_map_to_typed_errors(sw: int, cls: type[E.CardError]) -> None:
    err = error_for(sw >> 8, sw & 0xFF, action="READ", file="DDF1/EF06", reader="r0")
    assert type(err) is cls
    assert err.sw == f"{sw:04X}" and err.reader == "r0"
    assert f"{sw:04X}" in err.message and f"{sw:04X}" in err.message_zh


def test_status_meanings() -> None:
    assert is_success(0x90, 0x00) and is_success(0x61, 0x10) and not is_success(0x62, 0x82)
    assert describe(0x63, 0xC2).en == "verification failed, 2 tries left"
    assert "还可尝试 2 次" in describe(0x63, 0xC2).zh
    assert describe(0x6A, 0x82).zh == "文件未找到"
    err = error_for(0x63, 0xC1, action="EXTERNAL AUTHENTICATE")
    assert isinstance(err, E.CardAuthFailed) and err.retries_left == 1


def test_file_map_is_complete() -> None:
    paths = set(FILES)
    assert {"DDF1/EF05", "DDF1/EF06", "DDF1/EF07", "DDF1/EF08"} <= paths
    assert {f"DF01/EF0{i}" for i in range(5, 9)} <= paths
    assert {f"DF02/EF0{i}" for i in range(5, 9)} <= paths
    assert {"DF03/EF05", "DF03/EF06", "DF03/EE01", "DF03/EE03", "DF03/ED05"} <= paths
    assert len(FILES["DF01/EF06"].elements) == 9
    assert len(FILES["DF02/EF05"].elements) == 15
    assert FILES["DF03/ED02"].size == 3267 and FILES["DF03/EE02"].size == 1893
    assert FILES["DF02/EF07"].kind is FileKind.CYCLIC and FILES["DF02/EF07"].record_size == 120
    assert FILES["DDF1/EF05"].read_key is None
    assert all(f.read_key is not None for p, f in FILES.items() if p != "DDF1/EF05")


@pytest.mark.parametrize("scheme", [
    sec.AuthScheme(),
    sec.AuthScheme(cipher="AES-128", card_factor_source="atr_historical", city_pad=0x00,
                   city_align="right", levels="card", ext_auth_layout="kv_last",
                   key_version=7),
])
def test_scheme_pieces(scheme: sec.AuthScheme) -> None:
    atr = HEALTH_ATR
    factor = sec.diversification_factor(scheme, "H12345678901234567", "110100", atr)
    assert len(factor) == 16
    key = sec.diversify(scheme, bytes(range(16)), factor)
    assert len(key) == 16 and key != bytes(range(16))
    crypt = sec.cryptogram(scheme, key, bytes(8))
    data = sec.ext_auth_data(scheme, crypt)
    assert sec.parse_ext_auth_data(scheme, data) == (scheme.key_version, crypt)
    assert sec.decrypt(scheme, key, sec.encrypt(scheme, key, "过敏".encode("gbk"))) == \
        "过敏".encode("gbk")
    m = sec.mac(scheme, key, bytes(16), b"abc")
    assert len(m) == 4 and m != sec.mac(scheme, key, bytes(16), b"abd")


def test_city_factor_padding_variants() -> None:
    assert sec.city_factor(sec.AuthScheme(), "110100") == bytes.fromhex("110100FFFFFFFFFF")
    assert sec.city_factor(sec.AuthScheme(city_pad=0, city_align="right"), "110100") == \
        bytes.fromhex("0000000000110100")
    assert sec.card_factor(sec.AuthScheme(), "H12345678901234567", b"") == b"01234567"


def test_sm4_matches_gbt32907_example() -> None:
    # GB/T 32907-2016 Appendix A example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert sec._ecb(sec.AuthScheme(), k, k).hex() == "681edf34d206965e86b3e94f536e4246"


def test_atr_historical_bytes() -> None:
    atr = bytes.fromhex("3B6D0000") + b"HC" + bytes.fromhex("0201018601122334455667")
    assert sec.atr_historical_bytes(atr) == atr[4:]
    bank = bytes.fromhex("3B8E800180318066B1840C016E01830090001C")
    assert sec.atr_historical_bytes(bank) == bytes.fromhex("80318066B1840C016E0183009000")
    assert sec.atr_historical_bytes(b"\x3b") == b""
