"""A component's background loop: started once, stopped by cancel-and-await, errors not lost."""

from __future__ import annotations

import asyncio

import pytest

from yikatong.common.tasks import BackgroundTask


async def test_start_is_idempotent_and_stop_waits_for_the_end() -> None:
    runs: list[str] = []

    async def loop() -> None:
        runs.append("start")
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            runs.append("cleaned up")

    task = BackgroundTask(loop, name="loop")
    task.start()
    task.start()
    await asyncio.sleep(0)
    assert task.running
    await task.stop()
    assert runs == ["start", "cleaned up"]
    assert not task.running
    await task.stop()  # a second stop does nothing


async def test_it_can_run_again_after_a_stop() -> None:
    count = 0

    async def loop() -> None:
        nonlocal count
        count += 1
        await asyncio.Event().wait()

    task = BackgroundTask(loop, name="loop")
    for _ in range(2):
        task.start()
        await asyncio.sleep(0)
        await task.stop()
    assert count == 2


async def test_an_error_the_loop_ended_with_is_raised_by_stop() -> None:
    async def loop() -> None:
        raise ValueError("broken")

    task = BackgroundTask(loop, name="loop")
    task.start()
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await task.stop()


async def test_cancelling_the_caller_of_stop_is_not_swallowed() -> None:
    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)

    task = BackgroundTask(slow_to_end, name="loop")
    task.start()
    await asyncio.sleep(0)
    stopper = asyncio.create_task(task.stop())  # e.g. a daemon shutdown that is itself cut
    await asyncio.sleep(0.01)
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not task.running
