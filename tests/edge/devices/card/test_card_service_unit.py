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
    CardInsertedEvent,
    CardReadFailed,
    CardRemovedEvent,
    CardService,
    IdentityRead,
    ReaderAddedEvent,
    ReaderRemovedEvent,
    ServiceEvent,
    reader_matches,
)
from edge.devices.card.sim.cardos import Faults, HealthCardSim
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

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


async def start_service(tmp_path: Path, cards: dict[str, Any], pin: str = "123456"
                        ) -> tuple[CardService, ScriptedWatcher]:
    """A started service whose watcher has reported both readers and the SAM."""
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin)
    config = CardConfig(patient_reader="*00 00", sam_reader="*00 01", sam_pin_file=pin_file,
                        hotlist_path=tmp_path / "hot.sqlite", state_dir=tmp_path / "state",
                        timeouts={"apdu_s": 0.6, "operation_s": 3.0})  # type: ignore[arg-type]
    svc = CardService(config, HotList(config.hotlist_path), clock=lambda: dt.date(2026, 1, 1),
                      transport_factory=lambda r: InProcessTransport(cards[r], r, 0.2),
                      watcher_factory=ScriptedWatcher)
    await svc.start()
    w = ScriptedWatcher.instances[-1]
    w.emit(W.ReaderAdded(PATIENT))
    w.emit(W.ReaderAdded(SAM))  # the SAM's reader is not announced to the kiosk
    w.emit(W.CardInserted(SAM, cards[SAM].atr))
    assert await collect(svc, 1) == [ReaderAddedEvent(PATIENT)]
    return svc, w


async def stop_service(svc: CardService, w: ScriptedWatcher) -> None:
    await svc.stop()
    assert w.stopped
    svc.hotlist.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    cards: dict[str, Any] = {SAM: SamSim("123456")}
    svc, w = await start_service(tmp_path, cards)
    yield {"svc": svc, "w": w, "cards": cards}
    await stop_service(svc, w)


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
    # Well past apdu_s, which itself leaves room for a loaded CI machine (an in-memory APDU
    # once took longer than a 0.2 s limit there).
    card = HealthCardSim.from_holder(faults=Faults(delay_s=1.0))
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


async def test_missing_sam_is_generic_for_patients_specific_in_health(
        rig: dict[str, Any]) -> None:
    svc = rig["svc"]
    rig["w"].emit(W.CardRemoved(SAM))
    card = HealthCardSim.from_holder()
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 2)
    assert isinstance(events[1], CardReadFailed)
    err = events[1].error
    assert isinstance(err, E.CardServiceUnavailable)
    assert err.to_dict() == {"code": "card_service_unavailable",
                             "message": "Card service unavailable.",
                             "message_zh": "读卡服务暂不可用。", "reader": PATIENT}
    assert isinstance(err.cause, E.SamUnavailable)  # kept for logs, not for the screen
    health = svc.health()
    assert health["sam"]["state"] == "missing" and health["reader_present"] is True
    assert health["fault"]["code"] == "sam_unavailable"
    assert "No SAM" in health["fault"]["message"]
    # the SAM is back: the next card reads and the fault clears
    rig["w"].emit(W.CardInserted(SAM, rig["cards"][SAM].atr))
    rig["w"].emit(W.CardRemoved(PATIENT))
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 3)
    assert isinstance(events[2], IdentityRead)
    assert svc.health()["fault"] is None and svc.health()["sam"]["state"] == "ok"


async def test_a_card_that_came_before_the_sam_is_read_when_the_sam_arrives(
        rig: dict[str, Any]) -> None:
    """Boot or pcscd restart: the patient reader can report its card before the SAM reader
    reports the SAM. The patient must not have to pull the card out and push it in again."""
    svc = rig["svc"]
    rig["w"].emit(W.CardRemoved(SAM))
    card = HealthCardSim.from_holder()
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 2)
    assert isinstance(events[1], CardReadFailed)
    rig["w"].emit(W.CardInserted(SAM, rig["cards"][SAM].atr))
    (again,) = await collect(svc, 1)
    assert isinstance(again, IdentityRead) and again.reader == PATIENT
    assert svc.health()["fault"] is None


async def test_a_card_removed_while_waiting_for_the_sam_is_not_read(
        rig: dict[str, Any]) -> None:
    svc = rig["svc"]
    rig["w"].emit(W.CardRemoved(SAM))
    card = HealthCardSim.from_holder()
    rig["cards"][PATIENT] = card
    rig["w"].emit(W.CardInserted(PATIENT, card.atr))
    await collect(svc, 2)
    rig["w"].emit(W.CardRemoved(PATIENT))
    rig["w"].emit(W.CardInserted(SAM, rig["cards"][SAM].atr))
    assert await collect(svc, 1) == [CardRemovedEvent(PATIENT)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(svc, 1), 0.5)  # no read of a card that is gone


async def test_reader_hot_plug_is_published_for_the_patient_reader(
        rig: dict[str, Any]) -> None:
    svc, w = rig["svc"], rig["w"]
    assert svc.reader_present and svc.health()["patient_reader"] == PATIENT
    w.emit(W.ReaderRemoved(SAM))  # not the patient's: no event
    w.emit(W.ReaderRemoved(PATIENT))
    assert await collect(svc, 1) == [ReaderRemovedEvent(PATIENT)]
    assert not svc.reader_present and svc.health()["reader_present"] is False
    w.emit(W.ReaderAdded(SAM))
    w.emit(W.ReaderAdded(PATIENT))
    assert await collect(svc, 1) == [ReaderAddedEvent(PATIENT)]
    assert svc.reader_present
    assert svc._events is not None and svc._events.empty()


async def test_wrong_pin_spends_one_try_across_a_service_restart(tmp_path: Path) -> None:
    sam = SamSim("123456")
    cards: dict[str, Any] = {SAM: sam}
    for run in range(2):  # the daemon, then the daemon restarted: same PIN file, same SAM
        svc, w = await start_service(tmp_path, cards, pin="999999")
        card = HealthCardSim.from_holder()
        cards[PATIENT] = card
        w.emit(W.CardInserted(PATIENT, card.atr))
        events = await collect(svc, 2)
        assert isinstance(events[1], CardReadFailed)
        assert isinstance(events[1].error, E.CardServiceUnavailable)
        assert "999999" not in repr(svc.health())
        status = svc.health()["sam"]
        assert status["state"] == "pin_error" and status["retries_left"] == 2, run
        assert (sam.verify_count, sam.pin_tries_left) == (1, 2), run
        if run == 0:
            await stop_service(svc, w)
    # staff fix the PIN file: the running service notices, presents the new PIN once
    (tmp_path / "pin").write_text("123456\n")
    w.emit(W.CardRemoved(PATIENT))
    w.emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 3)
    assert isinstance(events[2], IdentityRead)
    assert (sam.verify_count, sam.pin_tries_left) == (2, 3)
    assert svc.sam_status()["state"] == "ok"
    await stop_service(svc, w)


async def test_sam_with_one_try_left_is_never_verified(tmp_path: Path) -> None:
    sam = SamSim("123456", pin_tries=1)
    cards: dict[str, Any] = {SAM: sam}
    svc, w = await start_service(tmp_path, cards)
    card = HealthCardSim.from_holder()
    cards[PATIENT] = card
    w.emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 2)
    assert isinstance(events[1], CardReadFailed)
    assert events[1].error.message_zh == "读卡服务暂不可用。"
    health = svc.health()
    assert health["sam"]["state"] == "pin_tries_low" and health["sam"]["retries_left"] == 1
    assert health["fault"]["code"] == "sam_pin_tries_low"
    assert sam.verify_count == 0
    await stop_service(svc, w)


async def test_card_stuck_in_61xx_fails_typed_and_frees_the_reader(
        rig: dict[str, Any]) -> None:
    svc, w = rig["svc"], rig["w"]
    stuck = HealthCardSim.from_holder(faults=Faults(stuck_sw_from=(2, 0x6110)))
    rig["cards"][PATIENT] = stuck
    w.emit(W.CardInserted(PATIENT, stuck.atr))
    events = await collect(svc, 2)
    assert isinstance(events[1], CardReadFailed)
    assert isinstance(events[1].error, E.CardCommandError) and events[1].error.sw == "6110"
    good = HealthCardSim.from_holder(name="李四")
    rig["cards"][PATIENT] = good
    w.emit(W.CardRemoved(PATIENT))
    w.emit(W.CardInserted(PATIENT, good.atr))
    events = await collect(svc, 3)
    assert isinstance(events[2], IdentityRead) and events[2].identity.name == "李四"


@pytest.mark.parametrize("n", range(1, 13))
async def test_card_pulled_at_each_apdu_publishes_no_partial_data(
        rig: dict[str, Any], n: int) -> None:
    svc, w = rig["svc"], rig["w"]
    card = HealthCardSim.from_holder(name="欧阳娜娜", id_number="44030619991231002X",
                                     card_number="H44030000000000009",
                                     faults=Faults(disconnect_at=n))
    rig["cards"][PATIENT] = card
    w.emit(W.CardInserted(PATIENT, card.atr))
    events = await collect(svc, 2)
    w.emit(W.CardRemoved(PATIENT))
    events += await collect(svc, 1)
    assert [type(e) for e in events] == [CardInsertedEvent, CardReadFailed, CardRemovedEvent]
    assert isinstance(events[1].error, E.CardRemoved)  # type: ignore[union-attr]
    assert card.apdu_count == n
    text = repr(events) + repr([vars(e.error) for e in events if isinstance(e, CardReadFailed)])
    for secret in ("欧阳", "娜娜", "44030619991231002X", "H44030000000000009", "0009"):
        assert secret not in text
    assert svc._events is not None and svc._events.empty()


async def test_disabled_service_does_nothing(tmp_path: Path) -> None:
    svc = CardService(CardConfig(enabled=False, hotlist_path=tmp_path / "h.sqlite"),
                      HotList(tmp_path / "h.sqlite"), watcher_factory=ScriptedWatcher)
    before = len(ScriptedWatcher.instances)
    await svc.start()
    assert len(ScriptedWatcher.instances) == before
    assert svc.sam_status()["state"] == "disabled"
    await svc.stop()
    svc.hotlist.close()


class _Clock:
    def now(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)


async def test_daemon_glue_reader_hot_plug_and_sam_fault(rig: dict[str, Any]) -> None:
    from edge.daemon import _pump_cards
    from edge.runtime import EdgeRuntime

    svc, w = rig["svc"], rig["w"]
    rt = EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="示范医院",
                     uplink=None, printer=None, clock=_Clock())
    rt.card_health = svc.health
    async with rt.bus.subscribe() as q:
        pump = asyncio.create_task(_pump_cards(svc, rt))

        async def kind() -> tuple[str, dict[str, Any]]:
            ev = await asyncio.wait_for(q.get(), 3.0)
            return ev["kind"], ev["data"]
        try:
            w.emit(W.ReaderRemoved(PATIENT))
            assert await kind() == ("reader.removed", {"reader": PATIENT})
            assert rt.reader_present is False and rt.health()["card"]["reader_present"] is False
            w.emit(W.ReaderAdded(PATIENT))
            assert await kind() == ("reader.added", {"reader": PATIENT})
            assert rt.reader_present is True
            w.emit(W.CardRemoved(SAM))  # the SAM is pulled: patients get the generic text
            card = HealthCardSim.from_holder()
            rig["cards"][PATIENT] = card
            w.emit(W.CardInserted(PATIENT, card.atr))
            assert (await kind())[0] == "card.inserted"
            k, data = await kind()
            assert k == "card.error"
            assert data["error"] == {"code": "card_service_unavailable",
                                     "message": "Card service unavailable.",
                                     "message_zh": "读卡服务暂不可用。"}
            health = rt.health()["card"]
            assert health["sam"]["state"] == "missing"
            assert health["fault"]["code"] == "sam_unavailable"
        finally:
            pump.cancel()
