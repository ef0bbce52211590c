"""Tier 2: sessions over the real stack — pyscard → pcscd → vpcd → our simulators."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardSession
from edge.devices.card.hotlist import HotList
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import BankCardSim, Faults, HealthCardSim
from edge.devices.card.sim.pcscd import PcscDaemon
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot
from edge.devices.card.transport import PcscContext, PyscardTransport

pytestmark = pytest.mark.stack

PIN = "123456"
CARD_NO = "H11010119800101001"


def _card(**kw: object) -> HealthCardSim:
    return HealthCardSim.from_holder(name="张三", sex="1", ethnicity="01",
                                     birth_date="19800101", id_number="110101198001011234",
                                     card_number=CARD_NO, **kw)  # type: ignore[arg-type]


def _read(pcscd: PcscDaemon, *, pin: str = PIN, hotlist: HotList | None = None,
          sam: SamSession | None = None) -> tuple[object, CardSession]:
    own_sam = sam is None
    sam = sam or SamSession(PyscardTransport(pcscd.sam_reader), pin)
    transport = PyscardTransport(pcscd.patient_reader)
    session = CardSession(transport, sam, hotlist=hotlist)
    try:
        return session.read_identity(), session
    finally:
        transport.close()
        if own_sam:
            sam.close()


def test_read_identity_over_pcscd(pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
                                  sam_slot: VirtualCardSlot,
                                  wait_card: Callable[..., None]) -> None:
    patient_slot.insert(_card())
    wait_card(pcscd.patient_reader, True)
    ident, session = _read(pcscd)
    assert ident.name == "张三" and ident.card_number == CARD_NO  # type: ignore[attr-defined]
    # SAM: 7 to open it (first use: SELECT+READ 0015, VERIFY query, VERIFY, SELECT+READ
    # 0016, SELECT DF01) + 80DE P1=01 + 00C0
    assert session.last_apdus == {"card": 12, "sam": 9}
    assert session.sam.terminal_number == bytes.fromhex("110100000001")  # type: ignore[union-attr]


def test_card_pulled_at_every_apdu_of_read_identity(
        pcscd: PcscDaemon, patient_slot: VirtualCardSlot, sam_slot: VirtualCardSlot,
        wait_card: Callable[..., None]) -> None:
    sam = SamSession(PyscardTransport(pcscd.sam_reader), PIN)
    try:
        for n in range(1, 13):
            card = _card(faults=Faults(disconnect_at=n))
            patient_slot.insert(card)
            wait_card(pcscd.patient_reader, True)
            with pytest.raises(E.CardRemoved) as e:
                _read(pcscd, sam=sam)
            assert card.apdu_count == n
            # the error names the reader and carries nothing read from the card
            assert e.value.reader == pcscd.patient_reader
            assert CARD_NO not in repr(vars(e.value)) and "张三" not in repr(vars(e.value))
            patient_slot.wait_removed()
            wait_card(pcscd.patient_reader, False)
        # the same SAM session still works for the next good card
        patient_slot.insert(_card())
        wait_card(pcscd.patient_reader, True)
        assert _read(pcscd, sam=sam)[0].name == "张三"  # type: ignore[attr-defined]
    finally:
        sam.close()


def test_hot_listed_card_refused_before_ef06(pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
                                             sam_slot: VirtualCardSlot, tmp_path: Path,
                                             wait_card: Callable[..., None]) -> None:
    hot = HotList(tmp_path / "hot.sqlite")
    hot.apply_delta(7, added=[CARD_NO])
    card = _card()
    patient_slot.insert(card)
    wait_card(pcscd.patient_reader, True)
    with pytest.raises(E.CardBlocked):
        _read(pcscd, hotlist=hot)
    assert "DDF1/EF06" not in card.reads
    assert not any(c[:2] == b"\x00\x82" for c in card.commands)  # not even authenticated


def test_bank_card_refused(pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
                           sam_slot: VirtualCardSlot, wait_card: Callable[..., None]) -> None:
    bank = BankCardSim()
    patient_slot.insert(bank)
    wait_card(pcscd.patient_reader, True)
    with pytest.raises(E.NotAHealthCard) as e:
        _read(pcscd)
    assert e.value.atr == bank.atr
    assert e.value.reader == pcscd.patient_reader


def test_wrong_sam_pin_not_retried(pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
                                   wait_card: Callable[..., None]) -> None:
    sam_sim = SamSim(PIN)
    sam_slot = VirtualCardSlot(pcscd.sam_port)
    sam_slot.insert(sam_sim)
    try:
        wait_card(pcscd.sam_reader, True)
        patient_slot.insert(_card())
        wait_card(pcscd.patient_reader, True)
        sam = SamSession(PyscardTransport(pcscd.sam_reader), "999999")
        try:
            for _ in range(3):
                with pytest.raises(E.SamPinError) as e:
                    _read(pcscd, sam=sam)
                assert e.value.retries_left == 2
        finally:
            sam.close()
        assert sam_sim.verify_count == 1
        assert sam_sim.pin_tries_left == 2
    finally:
        sam_slot.remove()
        wait_card(pcscd.sam_reader, False)


def test_daemon_properties(pcscd: PcscDaemon) -> None:
    assert pcscd.sam_port == pcscd.patient_port + 1
    assert pcscd.env == {"PCSCLITE_CSOCK_NAME": str(pcscd.socket_path)}
    assert pcscd.socket_path.exists() and pcscd.running
    assert pcscd.patient_reader.endswith("00 00") and pcscd.sam_reader.endswith("00 01")


def test_shared_context_survives_a_pcscd_restart(
        pcscd: PcscDaemon, patient_slot: VirtualCardSlot, sam_slot: VirtualCardSlot,
        wait_card: Callable[..., None]) -> None:
    ctx = PcscContext()
    try:
        patient_slot.insert(_card())
        wait_card(pcscd.patient_reader, True)
        for _ in range(2):  # the second card reuses the context (no new one per card)
            sam = SamSession(PyscardTransport(pcscd.sam_reader, context=ctx), PIN)
            transport = PyscardTransport(pcscd.patient_reader, context=ctx)
            try:
                assert CardSession(transport, sam).read_identity().name == "张三"
            finally:
                transport.close()
                sam.close()
        old = ctx.acquire()[1]
        pcscd.stop()
        pcscd.start()
        patient_slot.insert(_card())  # vpcd connections died with the daemon: re-insert
        sam_slot.insert(SamSim(PIN))
        wait_card(pcscd.patient_reader, True)
        wait_card(pcscd.sam_reader, True)
        # the old context died with the daemon: the next connect establishes a new one
        transport = PyscardTransport(pcscd.patient_reader, context=ctx)
        try:
            sam = SamSession(PyscardTransport(pcscd.sam_reader, context=ctx), PIN)
            try:
                assert CardSession(transport, sam).read_identity().name == "张三"
            finally:
                sam.close()
        finally:
            transport.close()
        assert ctx.acquire()[1] != old
    finally:
        ctx.close()


def test_cos_answering_sfi_reads_with_6986_is_read_via_select(
        pcscd: PcscDaemon, patient_slot: VirtualCardSlot, sam_slot: VirtualCardSlot,
        wait_card: Callable[..., None]) -> None:
    # A COS that ignores the SFI in P2 and says "no current EF" (6986): read_mode "auto"
    # must select the EFs instead of failing every read (the patient re-inserting forever).
    patient_slot.insert(_card(faults=Faults(supports_sfi=False, sfi_refusal_sw=0x6986)))
    wait_card(pcscd.patient_reader, True)
    ident, session = _read(pcscd)
    assert ident.name == "张三" and ident.card_number == CARD_NO  # type: ignore[attr-defined]
    assert session.last_apdus["card"] == 16  # one refused SFI read + three EF selects
