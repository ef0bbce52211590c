"""ReaderWatcher against a fake ``scard`` module: hot-plug, cards, a pcscd restart (tier 1)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from smartcard import scard as real  # for the constants only; never called

from edge.devices.card import watcher as W
from edge.devices.card.sim.cardos import BLANK_ATR, HEALTH_ATR

READER = "Fake Reader 00 00"
ATR, OTHER_ATR = HEALTH_ATR, BLANK_ATR


class FakeScard:
    """A stateful pcscd stand-in with pyscard's ``scard`` calling conventions.

    Readers hold a card (ATR) or not, with pcsc-lite's per-reader event counter in the
    high 16 bits of the state. ``restart()`` kills every context like a pcscd restart;
    ``stop()`` makes the daemon unreachable until ``start()``.
    """

    SCARD_S_SUCCESS = real.SCARD_S_SUCCESS
    SCARD_SCOPE_USER = real.SCARD_SCOPE_USER
    SCARD_E_NO_READERS_AVAILABLE = real.SCARD_E_NO_READERS_AVAILABLE
    SCARD_E_TIMEOUT = real.SCARD_E_TIMEOUT
    SCARD_E_CANCELLED = real.SCARD_E_CANCELLED
    SCARD_E_UNKNOWN_READER = real.SCARD_E_UNKNOWN_READER
    SCARD_E_NO_SERVICE = real.SCARD_E_NO_SERVICE
    SCARD_E_INVALID_HANDLE = real.SCARD_E_INVALID_HANDLE
    SCARD_STATE_UNAWARE = real.SCARD_STATE_UNAWARE
    SCARD_STATE_CHANGED = real.SCARD_STATE_CHANGED
    SCARD_STATE_EMPTY = real.SCARD_STATE_EMPTY
    SCARD_STATE_PRESENT = real.SCARD_STATE_PRESENT
    SCARD_STATE_MUTE = real.SCARD_STATE_MUTE

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._contexts: set[int] = set()
        self._cancelled: set[int] = set()
        self.readers: dict[str, tuple[bytes | None, int]] = {}  # name → (ATR, events)
        self.running = True
        self.attempts = 0  # SCardEstablishContext calls, failed ones included

    # --- the test's hands --------------------------------------------------------------
    def _change(self, fn: Any) -> None:
        with self._cond:
            fn()
            self._cond.notify_all()

    def add_reader(self, name: str, atr: bytes | None = None) -> None:
        self._change(lambda: self.readers.__setitem__(name, (atr, 1 if atr else 0)))

    def remove_reader(self, name: str) -> None:
        self._change(lambda: self.readers.pop(name))

    def insert(self, name: str, atr: bytes) -> None:
        self._change(lambda: self.readers.__setitem__(name, (atr, self.readers[name][1] + 1)))

    def remove(self, name: str) -> None:
        self._change(lambda: self.readers.__setitem__(name, (None, self.readers[name][1] + 1)))

    def restart(self) -> None:
        """pcscd dies and comes back: every context is gone, readers and cards remain."""
        self._change(self._contexts.clear)

    def stop(self) -> None:
        def down() -> None:
            self.running = False
            self._contexts.clear()
        self._change(down)

    def start(self) -> None:
        self._change(lambda: setattr(self, "running", True))

    # --- scard API ------------------------------------------------------------------------
    def SCardEstablishContext(self, scope: int) -> tuple[int, int]:
        with self._cond:
            self.attempts += 1
            if not self.running:
                return self.SCARD_E_NO_SERVICE, 0
            ctx = next(self._ids)
            self._contexts.add(ctx)
            return self.SCARD_S_SUCCESS, ctx

    def SCardReleaseContext(self, ctx: int) -> int:
        with self._cond:
            self._contexts.discard(ctx)
            return self.SCARD_S_SUCCESS

    def SCardCancel(self, ctx: int) -> int:
        self._change(lambda: self._cancelled.add(ctx))
        return self.SCARD_S_SUCCESS

    def SCardListReaders(self, ctx: int, groups: list[str]) -> tuple[int, list[str]]:
        with self._cond:
            if ctx not in self._contexts:
                return self.SCARD_E_INVALID_HANDLE, []
            if not self.readers:
                return self.SCARD_E_NO_READERS_AVAILABLE, []
            return self.SCARD_S_SUCCESS, sorted(self.readers)

    def _state(self, name: str) -> int:
        atr, events = self.readers[name]
        flag = self.SCARD_STATE_PRESENT if atr else self.SCARD_STATE_EMPTY
        return flag | (events << 16)

    def SCardGetStatusChange(self, ctx: int, timeout_ms: int,
                             query: list[tuple[str, int]]) -> tuple[int, list[Any]]:
        with self._cond:
            deadline = timeout_ms / 1000
            while True:
                if ctx in self._cancelled:
                    self._cancelled.discard(ctx)
                    return self.SCARD_E_CANCELLED, []
                if ctx not in self._contexts:
                    return self.SCARD_E_NO_SERVICE, []
                out, changed = [], False
                for name, known in query:
                    if name.startswith("\\\\?PnP?"):
                        now = len(self.readers) << 16
                        changed |= now != known
                        out.append((name, now, []))
                        continue
                    if name not in self.readers:
                        return self.SCARD_E_UNKNOWN_READER, []
                    now = self._state(name)
                    if now != known & ~self.SCARD_STATE_CHANGED:
                        changed = True
                        now |= self.SCARD_STATE_CHANGED
                    out.append((name, now, list(self.readers[name][0] or b"")))
                if changed:
                    return self.SCARD_S_SUCCESS, out
                if not self._cond.wait(deadline):
                    return self.SCARD_E_TIMEOUT, []


@pytest.fixture
async def rig() -> AsyncIterator[tuple[FakeScard, W.ReaderWatcher, asyncio.Queue[Any]]]:
    fake = FakeScard()
    queue: asyncio.Queue[W.WatchEvent] = asyncio.Queue()
    watcher = W.ReaderWatcher(asyncio.get_running_loop(), queue, poll_timeout_ms=2000,
                              retry_s=0.01, max_retry_s=0.05, scard=fake)
    watcher.start()
    yield fake, watcher, queue
    await asyncio.to_thread(watcher.stop)


async def take(queue: asyncio.Queue[Any], n: int, wait_s: float = 3.0) -> list[Any]:
    return [await asyncio.wait_for(queue.get(), wait_s) for _ in range(n)]


async def quiet(queue: asyncio.Queue[Any], wait_s: float = 0.15) -> bool:
    await asyncio.sleep(wait_s)
    return queue.empty()


async def test_reader_and_card_lifecycle(rig: tuple[FakeScard, W.ReaderWatcher, Any]) -> None:
    fake, watcher, q = rig
    assert await quiet(q)  # no readers: nothing to say
    fake.add_reader(READER)
    assert await take(q, 1) == [W.ReaderAdded(READER)]
    assert await quiet(q)
    fake.insert(READER, ATR)
    assert await take(q, 1) == [W.CardInserted(READER, ATR)]
    assert watcher.cards() == {READER: ATR}
    fake.remove(READER)
    assert await take(q, 1) == [W.CardRemoved(READER)]
    fake.insert(READER, ATR)
    assert await take(q, 1) == [W.CardInserted(READER, ATR)]
    fake.remove_reader(READER)  # unplugged with the card in it
    assert await take(q, 2) == [W.CardRemoved(READER), W.ReaderRemoved(READER)]
    assert watcher.readers() == [] and watcher.cards() == {}
    assert await quiet(q)


async def test_reader_plugged_in_with_a_card(rig: tuple[FakeScard, W.ReaderWatcher, Any]
                                             ) -> None:
    fake, _, q = rig
    fake.add_reader(READER, ATR)
    assert await take(q, 2) == [W.ReaderAdded(READER), W.CardInserted(READER, ATR)]


async def test_quick_swap_is_reported_as_removal_and_insertion(
        rig: tuple[FakeScard, W.ReaderWatcher, Any]) -> None:
    fake, _, q = rig
    fake.add_reader(READER, ATR)
    await take(q, 2)

    def swap() -> None:  # out and in between two polls: only the event counter shows it
        _atr, events = fake.readers[READER]
        fake.readers[READER] = (OTHER_ATR, events + 2)
    fake._change(swap)
    assert await take(q, 2) == [W.CardRemoved(READER), W.CardInserted(READER, OTHER_ATR)]


async def test_pcscd_restart_is_recovered(rig: tuple[FakeScard, W.ReaderWatcher, Any]
                                          ) -> None:
    fake, watcher, q = rig
    fake.add_reader(READER, ATR)
    await take(q, 2)
    assert watcher.reconnects == 1
    fake.restart()  # the context error makes the watcher forget, then find everything again
    assert await take(q, 4) == [W.CardRemoved(READER), W.ReaderRemoved(READER),
                                W.ReaderAdded(READER), W.CardInserted(READER, ATR)]
    assert watcher.reconnects == 2
    fake.remove(READER)  # and it keeps watching on the new context
    assert await take(q, 1) == [W.CardRemoved(READER)]


async def test_pcscd_down_for_a_while(rig: tuple[FakeScard, W.ReaderWatcher, Any]) -> None:
    fake, watcher, q = rig
    fake.add_reader(READER, ATR)
    await take(q, 2)
    fake.stop()
    assert await take(q, 2) == [W.CardRemoved(READER), W.ReaderRemoved(READER)]
    before = fake.attempts
    await asyncio.sleep(0.2)
    # it keeps trying, backing off (0.01 s doubling to 0.05 s: ~5 tries, not 20)
    assert 2 <= fake.attempts - before <= 10 and await quiet(q, 0)
    fake.start()
    assert await take(q, 2) == [W.ReaderAdded(READER), W.CardInserted(READER, ATR)]
    assert watcher.reconnects == 2


async def test_stop_cancels_a_pending_wait(rig: tuple[FakeScard, W.ReaderWatcher, Any]
                                           ) -> None:
    fake, watcher, q = rig
    fake.add_reader(READER)
    await take(q, 1)
    await asyncio.sleep(0.05)  # the thread now waits in GetStatusChange (2 s timeout)
    thread = watcher._thread
    assert thread is not None
    await asyncio.wait_for(asyncio.to_thread(watcher.stop), 1.0)
    assert not thread.is_alive()
