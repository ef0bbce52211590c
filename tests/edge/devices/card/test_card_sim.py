"""The card and SAM simulators answer like a COS: access rules and ISO status words."""

from __future__ import annotations

import socket
import time

import pytest

from edge.devices.card.errors import CardParameterError, VpcdConnectError
from edge.devices.card.protocol import apdu as A
from edge.devices.card.protocol import security as sec
from edge.devices.card.sim.cardos import BANK_ATR, HealthCardSim
from edge.devices.card.sim.issuer import IssuerKeys
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot


def sw(card: object, hexapdu: str) -> str:
    return card.process_apdu(bytes.fromhex(hexapdu))[-2:].hex().upper()  # type: ignore[attr-defined]


def test_free_and_protected_files() -> None:
    card = HealthCardSim.from_holder()
    assert sw(card, "00B2080014") == "6986"  # nothing selected yet
    assert sw(card, "00A4000002DDF1") == "9000"
    assert sw(card, "00A4000002EF05") == "9000"
    assert card.process_apdu(bytes.fromhex("00B2080014"))[:2] == b"\x08\x12"
    assert sw(card, "00B2080010") == "6C14"  # wrong Le → exact length
    assert sw(card, "00A4000002EF06") == "9000"
    assert sw(card, "00B2010400") == "6982"  # holder needs EXTERNAL AUTHENTICATE
    assert sw(card, "00B2063400") == "6982"  # also by SFI


def test_iso_status_words() -> None:
    card = HealthCardSim.from_holder()
    assert sw(card, "00A40000021234") == "6A82"
    assert sw(card, "00A4040002DDF1") == "6A86"
    assert sw(card, "00A400000301") == "6700"
    assert sw(card, "00CA000000") == "6D00"
    assert sw(card, "A0A4000002DDF1") == "6E00"
    assert sw(card, "0084000005") == "6700"
    sw(card, "00A4000002DDF1")
    sw(card, "00A4000002EF05")
    assert sw(card, "00B2400000") == "6A83"  # no record with identifier 40
    assert sw(card, "00B0000010") == "6981"  # READ BINARY on a record file
    assert sw(card, "00A4000002EF07") == "9000"
    assert sw(card, "00B00C0010") == "6982"  # the photo needs authentication first
    assert sw(card, "0082000411" + "00" * 17) == "6985"  # no challenge first


def test_external_authenticate_retry_counter() -> None:
    card = HealthCardSim.from_holder(key_tries=3)
    sw(card, "00A4000002DDF1")
    results = []
    for _ in range(4):
        sw(card, "0084000008")
        results.append(sw(card, "0082000411" + "01" + "00" * 16))
    assert results == ["63C2", "63C1", "6983", "6983"]
    assert sw(card, "0082009911" + "00" * 17) == "6A88"  # unknown key


def _ext_auth(card: HealthCardSim, key_ref: int) -> str:
    """EXTERNAL AUTHENTICATE as a terminal with the test issuer's SAM would send it."""
    challenge = card.process_apdu(bytes.fromhex("0084000008"))[:-2]
    scheme = sec.AuthScheme()
    factor = sec.diversification_factor(scheme, card.card_number, card.city_code, card.atr)
    key = sec.diversify(scheme, IssuerKeys.for_tests().masters[key_ref], factor)
    data = sec.ext_auth_data(scheme, sec.cryptogram(scheme, key, challenge))
    return sw(card, A.external_authenticate(key_ref, data).to_bytes().hex())


def test_sm_write_needs_the_update_key_and_a_valid_mac() -> None:
    card = HealthCardSim.from_holder()
    for a in ("00A4000002DDF1", "00A4000002DF02", "00A4000002EF07"):
        assert sw(card, a) == "9000"
    sw(card, "0084000008")
    assert sw(card, "04DC000384" + "00" * 132) == "6982"  # no EXTERNAL AUTHENTICATE
    assert _ext_auth(card, 0x84) == "9000"  # the read key does not allow writing
    sw(card, "0084000008")
    assert sw(card, "04DC000384" + "00" * 132) == "6982"
    assert _ext_auth(card, 0x86) == "9000"  # DF02's update key
    assert sw(card, "04DC000384" + "00" * 132) == "6985"  # no challenge
    sw(card, "0084000008")
    assert sw(card, "04DC000384" + "00" * 132) == "6988"  # bad MAC
    assert sw(card, "00A4000002DF01") == "9000"
    assert sw(card, "00A4000002EF05") == "9000"
    sw(card, "0084000008")
    assert sw(card, "04DC010414" + "00" * 20) == "6982"  # DF02's key does not open DF01


def test_faults_delay_and_disconnect() -> None:
    slept: list[float] = []
    card = HealthCardSim.from_holder(sleep=slept.append)
    card.with_faults(delay_s=0.25, disconnect_at=2)
    assert sw(card, "00A4000002DDF1") == "9000"
    assert card.process_apdu(bytes.fromhex("00A4000002EF05")) == b""
    assert card.removed and slept == [0.25, 0.25]


def test_sam_pin_counter_and_blocking() -> None:
    sam = SamSim("1234", pin_tries=2)
    assert sw(sam, "80DE00041000000000000000000000000000000000") == "6982"
    assert sw(sam, "00200000021111") == "63C1"
    assert sw(sam, "002000000000"[:8]) == "63C1"  # no data: how many tries are left
    assert sw(sam, "00200000021111") == "6983"
    assert sw(sam, "00200000021234") == "6983"  # blocked even with the right PIN
    assert sw(sam, "00200000") == "6983"  # the query says blocked too
    assert (sam.verify_count, sam.verify_queries) == (3, 2)
    with pytest.raises(CardParameterError):
        SamSim("12ab")


def test_sam_files_and_t0_get_response() -> None:
    sam = SamSim("1234", terminal_number=bytes.fromhex("440300000123"))
    assert sw(sam, "00A40000020016") == "9000"
    assert sam.process_apdu(bytes.fromhex("00B0000006")) == bytes.fromhex("4403000001239000")
    assert sw(sam, "00200000") == "63C3"  # query before: tries left, none spent
    assert sw(sam, "00200000021234") == "9000"
    assert sw(sam, "0020000000") == "9000"  # query after: already verified (Le form too)
    assert sw(sam, "00A4000002DF01") == "9000"
    for fid, size in (("001A", 25), ("001B", 180), ("001C", 190)):
        assert sw(sam, "00A4000002" + fid) == "9000"
        assert len(sam.process_apdu(bytes.fromhex("00B0000000"))) == size + 2
    assert sw(sam, "80DE00041000112233445566778899AABBCCDDEEFF") == "9000"
    assert sw(sam, "80FA0000080102030405060708" + "00") == "6110"
    assert len(sam.process_apdu(bytes.fromhex("00C0000010"))) == 18
    assert sw(sam, "00C0000010") == "6985"
    assert sw(sam, "00A4000002001A") == "9000"
    assert sw(sam, "00B0002010") == "6B00"  # offset beyond the 25-byte file


def test_bank_card_atr_is_pboc_like() -> None:
    x = 0
    for b in BANK_ATR[1:]:
        x ^= b
    assert x == 0 and BANK_ATR[0] == 0x3B


def test_slot_without_vpcd_gives_typed_error_quickly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slot = VirtualCardSlot(port, connect_timeout=0.3)
    t = time.monotonic()
    with pytest.raises(VpcdConnectError):
        slot.insert(HealthCardSim.from_holder())
    assert time.monotonic() - t < 2
    assert not slot.is_inserted


def test_slot_speaks_the_vpcd_protocol() -> None:
    """A fake vpcd (a listening socket) sees length-prefixed controls and APDUs."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        slot = VirtualCardSlot(srv.getsockname()[1])
        card = HealthCardSim.from_holder()
        slot.insert(card)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(3)
            conn.sendall(b"\x00\x01\x04")  # get ATR
            n = int.from_bytes(conn.recv(2), "big")
            assert conn.recv(n) == card.atr
            conn.sendall(b"\x00\x01\x01")  # power on: no answer expected
            conn.sendall(b"\x00\x07" + bytes.fromhex("00A4000002DDF1"))
            assert conn.recv(4) == b"\x00\x02\x90\x00"
            assert slot.is_inserted
            slot.remove()
            assert conn.recv(10) == b""  # removal = connection closed
    assert not slot.is_inserted
