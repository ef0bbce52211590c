"""The acceptance test of exactly-once delivery under faults.

See docs/architecture.md, "Delivery rules".

1,000 mixed requests (the workload and checks of tests/faults/chaos_workload.py) — bookings
(prepaid/cash/later), payments (prepaid, cash and WeChat/Alipay codes including ones that go
pending/unknown/declined), report.printed and lookups — from several devices, each an
in-process Uplink with its own durable outbox, through a real Mosquitto, a real ``ykt
central`` process and the real reference platform process with ``drop_reply_after_commit``
at 10 % on every mutating operation. Meanwhile the broker is SIGKILLed and restarted 5 times
and central twice (same data_dir).

Then: every request has a definitive outcome; the platform counted exactly one effect per
request; every payment that was not final is resolved by central's payment resolver, and
every reversal it made is counted once (chaos_workload.check_exactly_once).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from faults.chaos_workload import (
    FULL,
    Run,
    check_exactly_once,
    open_desks,
    prepare,
    settle_walked,
    summary,
    wait_resolved,
    work,
)
from support import wait_until_async

DEVICES = 6
RATE = 22.0  # requests started per second overall: spreads the run over the fault schedule
# (fraction of requests finished, what to kill): 5 broker kills, 2 central kills. Central is
# killed early on purpose: a request central was calling the platform for when it died stays
# "received" in its dedup table; the restarted central (same client id, new boot nonce) takes
# its own earlier boot's rows over on the device's resend, without waiting out lease_s.
CHAOS = [(0.03, "central"), (0.06, "broker"), (0.10, "central"), (0.18, "broker"),
         (0.32, "broker"), (0.48, "broker"), (0.64, "broker")]


async def chaos(stack: Any, run: Run, t0: float) -> None:
    for frac, what in CHAOS:
        await wait_until_async(lambda n=frac * FULL.total: run.done >= n, 240, interval=0.05,
                               what=f"{frac:.0%} of the requests done before the {what} fault")
        if what == "broker":
            await asyncio.to_thread(stack.broker.kill9)
            await asyncio.sleep(0.5)  # the outage itself: devices and central see it down
            await asyncio.to_thread(stack.broker.start)
        else:
            await asyncio.to_thread(stack.kill_central)
            await asyncio.sleep(0.3)  # the outage itself: requests arrive while it is down
            await asyncio.to_thread(stack.start_central)
        run.chaos_log.append((round(time.monotonic() - t0, 1), what))


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_chaos_exactly_once(stack: Any, tmp_path: Path) -> None:
    t_setup = time.monotonic()
    setup = await prepare(stack, tmp_path, FULL, DEVICES)
    run = Run()
    t0 = time.monotonic()
    try:
        await open_desks(setup, run)
        t0 = time.monotonic()
        chaos_task = asyncio.create_task(chaos(stack, run, t0))
        await work(setup, run, RATE)
        t_work = time.monotonic() - t0
        await asyncio.wait_for(chaos_task, 60)
        await settle_walked(run, setup.desks)
        await wait_resolved(stack.unresolved_payments)
        t_resolved = time.monotonic() - t0
        stats = await asyncio.to_thread(stack.stats)
    finally:
        for up in setup.uplinks:
            await up.stop()

    assert [w for _, w in run.chaos_log].count("broker") == 5
    assert [w for _, w in run.chaos_log].count("central") == 2
    verdict = check_exactly_once(stack, run, FULL, setup.before, stats)
    print(f"\nchaos: {FULL.total} requests in {t_work:.1f}s, payments resolved at "
          f"{t_resolved:.1f}s, setup {t0 - t_setup:.1f}s; {summary(run, verdict, stats)}")
