"""CardService + ReaderWatcher on the real stack: insertions become events, pcscd may die."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge.devices.card import errors as E
from edge.devices.card.config import CardConfig
from edge.devices.card.hotlist import HotList
from edge.devices.card.service import (
    CardInsertedEvent,
    CardReadFailed,
    CardRemovedEvent,
    CardService,
    IdentityRead,
    ReaderAddedEvent,
    ReaderRemovedEvent,
    ServiceEvent,
)
from edge.devices.card.sim.cardos import BankCardSim, HealthCardSim
from edge.devices.card.sim.pcscd import PcscDaemon
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot

pytestmark = pytest.mark.stack

CARD_NO = "H11010119800101001"


def _card(name: str = "张三") -> HealthCardSim:
    return HealthCardSim.from_holder(name=name, card_number=CARD_NO)


@pytest.fixture
async def service(pcscd: PcscDaemon, sam_pin_file: Path, tmp_path: Path
                  ) -> AsyncIterator[CardService]:
    config = CardConfig(patient_reader=pcscd.patient_reader, sam_reader=pcscd.sam_reader,
                        sam_pin_file=sam_pin_file, hotlist_path=tmp_path / "hot.sqlite",
                        poll_interval_s=0.2)
    svc = CardService(config, HotList(config.hotlist_path), clock=lambda: dt.date(2026, 6, 1))
    await svc.start()
    yield svc
    await svc.stop()
    svc.hotlist.close()


async def next_event(svc: CardService, kind: type, wait_s: float = 8.0) -> ServiceEvent:
    async def wait() -> ServiceEvent:
        async for ev in svc.events():
            if isinstance(ev, kind):
                return ev
        raise AssertionError("event stream ended")
    return await asyncio.wait_for(wait(), wait_s)


async def test_insert_read_remove(service: CardService, pcscd: PcscDaemon,
                                  patient_slot: VirtualCardSlot,
                                  sam_slot: VirtualCardSlot) -> None:
    await asyncio.to_thread(patient_slot.insert, _card())
    ins = await next_event(service, CardInsertedEvent)
    assert ins.reader == pcscd.patient_reader  # type: ignore[union-attr]
    ev = await next_event(service, IdentityRead)
    assert ev.identity.name == "张三" and ev.reader == pcscd.patient_reader  # type: ignore[union-attr]
    assert service.sam_status()["state"] == "ok"
    assert service.sam_status()["terminal_number"] == "110100000001"
    contents = await service.read_all()
    assert contents.holder.id_number == "110101198001011234"
    await asyncio.to_thread(patient_slot.remove)
    removed = await next_event(service, CardRemovedEvent)
    assert removed.reader == pcscd.patient_reader  # type: ignore[union-attr]
    with pytest.raises(E.CardRemoved):
        await service.read_all()


async def test_hot_listed_and_foreign_cards_fail_typed(
        service: CardService, patient_slot: VirtualCardSlot,
        sam_slot: VirtualCardSlot) -> None:
    service.hotlist.apply_delta(1, added=[CARD_NO])
    card = _card()
    await asyncio.to_thread(patient_slot.insert, card)
    failed = await next_event(service, CardReadFailed)
    assert isinstance(failed.error, E.CardBlocked)  # type: ignore[union-attr]
    assert "DDF1/EF06" not in card.reads
    await asyncio.to_thread(patient_slot.insert, BankCardSim())
    failed = await next_event(service, CardReadFailed)
    assert isinstance(failed.error, E.NotAHealthCard)  # type: ignore[union-attr]


async def test_wrong_pin_reported_and_never_resent(
        service: CardService, pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
        wait_card: Callable[..., None], tmp_path: Path) -> None:
    sam = SamSim("000000")  # the site's PIN file says 123456
    sam_slot = VirtualCardSlot(pcscd.sam_port)
    await asyncio.to_thread(sam_slot.insert, sam)
    try:
        await asyncio.to_thread(wait_card, pcscd.sam_reader, True)
        for _ in range(2):
            await asyncio.to_thread(patient_slot.insert, _card())
            failed = await next_event(service, CardReadFailed)
            err = failed.error  # type: ignore[union-attr]
            assert isinstance(err, E.CardServiceUnavailable)  # no PIN talk on the screen
            assert isinstance(err.cause, E.SamPinError) and err.cause.retries_left == 2
        assert sam.verify_count == 1
        status = service.sam_status()
        assert status["state"] == "pin_error" and status["retries_left"] == 2
        assert service.health()["fault"]["code"] == "sam_pin_error"
        assert "123456" not in repr(service.health())
    finally:
        await asyncio.to_thread(sam_slot.remove)
        await asyncio.to_thread(wait_card, pcscd.sam_reader, False)


async def test_pcscd_killed_and_restarted_while_watching(
        service: CardService, pcscd: PcscDaemon, patient_slot: VirtualCardSlot,
        sam_slot: VirtualCardSlot) -> None:
    await asyncio.to_thread(patient_slot.insert, _card("李四"))
    assert (await next_event(service, IdentityRead)).identity.name == "李四"  # type: ignore[union-attr]
    await asyncio.to_thread(pcscd.kill)
    await next_event(service, CardRemovedEvent)  # the watcher reports the loss
    gone = await next_event(service, ReaderRemovedEvent)
    assert gone.reader == pcscd.patient_reader  # type: ignore[union-attr]
    assert not service.reader_present and not service.cards
    await asyncio.to_thread(pcscd.start)
    back = await next_event(service, ReaderAddedEvent, wait_s=15)
    assert back.reader == pcscd.patient_reader and service.reader_present  # type: ignore[union-attr]
    # vpcd's connections died with pcscd: both virtual cards go back in
    await asyncio.to_thread(sam_slot.insert, SamSim("123456"))
    await asyncio.to_thread(patient_slot.insert, _card("王五"))
    ev = await next_event(service, IdentityRead, wait_s=15)
    assert ev.identity.name == "王五"  # type: ignore[union-attr]
    assert service._watcher is not None and service._watcher.reconnects >= 2
