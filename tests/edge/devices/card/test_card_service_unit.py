"""CardService logic with a scripted watcher and in-process cards (no pcscd needed)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from edge.devices.card import errors as E
from edge.devices.card import watcher as W
from edge.devices.card.config import CardConfig
from edge.devices.card.hotlist import HotList
from edge.devices.card.service import (
    CardReadFailed,
    CardRemovedEvent,
    CardService,
    IdentityRead,
    ServiceEvent,
    reader_matches,
)
from edge.devices.card.session import InProcessTransport
from edge.devices.card.sim.cardos import Faults, HealthCardSim
from edge.devices.card.sim.sam import SamSim

PATIENT, SAM = "ACS ACR39U 00 00", "ACS ACR39U 00 01"


class ScriptedWatcher:
    """Stands in for ReaderWatcher: the test pushes events through the same one door."""

    instances: ClassVar[list[ScriptedWatcher]] = []

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any],
                 **_: Any) -> None:
        self.loop, self.queue = loop, queue
        self.started = self.stopped = False
        ScriptedWatcher.instances.append(self)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def emit(self, ev: W.WatchEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    pin = tmp_path / "pin"
    pin.write_text("123456")
    cards: dict[str, Any] = {SAM: SamSim("123456")}
    config = CardConfig(patient_reader="*00 00", sam_reader="*00 01", sam_pin_file=pin,
                        hotlist_path=tmp_path / "hot.sqlite",
                        timeouts={"apdu_s": 0.2, "operation_s": 2.0})  # type: ignore[arg-type]
    svc = CardService(config, HotList(config.hotlist_path), clock=lambda: dt.date(2026, 1, 1),
                      transport_factory=lambda r: InProcessTransport(cards[r], r, 0.2),
                      watcher_factory=ScriptedWatcher)
    await svc.start()
    w = ScriptedWatcher.instances[-1]
    w.emit(W.ReaderAdded(PATIENT))
    w.emit(W.ReaderAdded(SAM))
    w.emit(W.CardInserted(SAM, cards[SAM].atr))
    yield {"svc": svc, "w": w, "cards": cards}
    await svc.stop()
    assert w.stopped
    svc.hotlist.close()


async def collect(svc: CardService, n: int, wait_s: float = 3.0) -> list[ServiceEvent]:
    out: list[ServiceEvent] = []

    async def run() -> None:
        async for ev in svc.events():
            out.append(ev)
            if len(out) == n:
                return
    await asyncio.wait_for(run(), wait_s)
    return out


def test_reader_patterns() -> None:
    assert reader_matches("*00 00", "ACS ACR39U 00 00")
    assert reader_matches("acs*", "ACS ACR39U 00 00")
    assert not reader_matches("*00 00", "ACS ACR39U 00 01")


async def test_identity_event(rig: dict[str, Any]) -> None:
    card = HealthCardSim.from_holder(name="张三")
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(rig["svc"], 2)
    assert isinstance(events[1], IdentityRead) and events[1].identity.name == "张三"
    assert rig["svc"].sam_status()["state"] == "ok"


async def test_result_of_a_removed_card_is_dropped(rig: dict[str, Any]) -> None:
    card = HealthCardSim.from_holder(faults=Faults(delay_s=0.05))  # ≈0.6 s per read
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    await asyncio.sleep(0.1)  # the read is under way
    rig["w"].emit(W.CardRemoved(PATIENT))
    events = await collect(rig["svc"], 2)
    assert isinstance(events[1], CardRemovedEvent)
    await asyncio.sleep(1.0)  # the read finishes meanwhile…
    assert card.apdu_count >= 12  # the read did complete on the card…
    assert rig["svc"]._events.empty()  # …but no stale IdentityRead follows


async def test_slow_card_times_out(rig: dict[str, Any]) -> None:
    card = HealthCardSim.from_holder(faults=Faults(delay_s=0.3))
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(rig["svc"], 2)
    assert isinstance(events[1], CardReadFailed)
    assert isinstance(events[1].error, E.CardTimeout)


async def test_expired_card_rejected_by_default(rig: dict[str, Any]) -> None:
    card = HealthCardSim.from_holder(faults=Faults(expired=True))
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(rig["svc"], 2)
    assert isinstance(events[1], CardReadFailed)
    assert isinstance(events[1].error, E.CardExpired)
    assert "过有效期" in events[1].error.message_zh


async def test_missing_sam_is_reported(rig: dict[str, Any]) -> None:
    rig["w"].emit(W.CardRemoved(SAM))
    card = HealthCardSim.from_holder()
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(rig["svc"], 2)
    assert isinstance(events[1], CardReadFailed)
    assert isinstance(events[1].error, E.SamUnavailable)
    assert rig["svc"].sam_status()["state"] == "missing"


async def test_disabled_service_does_nothing(tmp_path: Path) -> None:
    svc = CardService(CardConfig(enabled=False, hotlist_path=tmp_path / "h.sqlite"),
                      HotList(tmp_path / "h.sqlite"), watcher_factory=ScriptedWatcher)
    before = len(ScriptedWatcher.instances)
    await svc.start()
    assert len(ScriptedWatcher.instances) == before
    assert svc.sam_status()["state"] == "disabled"
    await svc.stop()
    svc.hotlist.close()
