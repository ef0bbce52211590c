"""The acceptance test of exactly-once delivery with two central instances on PostgreSQL.

See docs/architecture.md, "Delivery rules" (several central instances: the store is what
they agree through) and central/leases.py.

Two ``ykt central`` processes, A and B, share one PostgreSQL database (a fresh one from the
session's server), one external Mosquitto and one shared subscription group, so each device
request goes to one of them; each has its own data_dir, dashboard, client id and broker
accounts. The devices (registered through A, whose password file the broker reads) and the
workload are those of the single-instance test (tests/faults/chaos_workload.py), against the
reference platform dropping 10 % of the replies after commit. Meanwhile:

- A is SIGKILLed in the middle of a platform call. B takes the jobs lease (payment
  resolver …) over after ``[cluster] lease_s``; only then is A restarted: A's earlier boot's
  claimed requests are its own again at once, requests queued for A's session wait for it.
- the broker is SIGKILLed and restarted;
- B is SIGKILLed in the middle of a platform call and stays dead: A takes the jobs lease
  back, and the requests B had claimed (its rows, ``received``) over after ``[forwarder]
  lease_s`` when their devices resend.

Then everything the single-instance test holds against the platform's own records
(chaos_workload.check_exactly_once: every request a definitive outcome, exactly one platform
effect per successful mutating request, every pending/unknown payment resolved — by the
resolver on A, the lease holder after B's death), and: both instances did real work (their
forwarders' counters, sampled before each kill, and the owners of the stored request rows),
and central's audit chain, appended to by both, verifies.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from faults.chaos_workload import (
    Mix,
    Run,
    Setup,
    check_exactly_once,
    open_desks,
    prepare,
    settle_walked,
    summary,
    wait_resolved,
    work,
)
from support import wait_until_async

from central.store import Store, open_store

if TYPE_CHECKING:  # the fixtures' module: imported by pytest, never again at run time
    from faults.conftest import Stack

A, B = 0, 1
MIX = Mix(total=500, booked_then_paid=40, bookings=60, payments=125, reports=50)
DEVICES = 6
RATE = 14.0  # requests started per second overall: the run lasts well past every fault
CALL_TIMEOUT_S = 4.0  # a platform call (read timeout 2 s, the sim's hangs 3 s) ends by then
REQUEST_LEASE_S = 8.0  # a dead instance's claimed request is taken over after this
JOBS_LEASE_S = 3.0  # the jobs lease moves after this (central/leases.py)
# (fraction of the requests done, what happens)
CHAOS = [(0.2, "kill A"), (0.45, "broker"), (0.6, "kill B")]


@pytest.fixture
def two_centrals(cluster_db: str, make_stack: Callable[..., Stack]) -> Stack:
    """Platform, broker and centrals A and B on ``cluster_db``, started (stopped by
    ``make_stack`` afterwards)."""
    return make_stack(instances=2, store_url=cluster_db,
                      forwarder={"share_group": "chaos", "lease_s": REQUEST_LEASE_S,
                                 "call_timeout_s": CALL_TIMEOUT_S},
                      cluster={"lease_s": JOBS_LEASE_S})


class Watch:
    """What each instance did: its forwarder's counters summed over its boots (a killed
    boot's counters are read just before the kill), who held the jobs lease when, and the
    requests each killed instance had claimed and not finished (its rows left ``received``).
    """

    def __init__(self, stack: Stack, store: Store) -> None:
        self.stack = stack
        self.store = store  # the shared database, read as the instances write it
        self.handled: Counter[str] = Counter()  # instance name -> requests replied
        self.lease: list[tuple[str, int]] = []  # (holder's name, epoch), each time it moved
        self.orphans: dict[str, list[str]] = {}  # instance name -> request ids

    def sample(self, i: int) -> None:
        """Add instance ``i``'s forwarder counters (once per boot, near its end)."""
        fw = self.stack.central_status(i)["forwarder"]
        self.handled[self.stack.centrals[i].name] += fw["replied"]

    def claimed(self, i: int, older_than_s: float = 0.0) -> list[str]:
        """Ids of the requests instance ``i`` has claimed and not finished, claimed at least
        ``older_than_s`` ago (the row's time is the instance's clock: this machine's)."""
        return [rid for (rid,) in self.store.connection().execute(
            "SELECT id FROM requestlog WHERE state = 'received' AND owner LIKE ? "
            "AND received_at < ?",
            (f"{self.stack.centrals[i].name}/%", time.time() - older_than_s)).fetchall()]

    async def kill_mid_call(self, i: int) -> None:
        """SIGKILL instance ``i`` while it is calling the platform: once one of its claimed
        requests has been in flight for a while (a call the platform hangs on: its read
        timeout is 2 s away, time enough to kill first); keep the ids it leaves claimed."""
        name = self.stack.centrals[i].name
        await asyncio.to_thread(self.sample, i)  # a lower bound of what this boot did
        await wait_until_async(lambda: asyncio.to_thread(self.claimed, i, 0.3), 30,
                               interval=0.05, what=f"{name} in the middle of a platform call")
        await asyncio.to_thread(self.stack.kill_central, i)
        self.orphans[name] = await asyncio.to_thread(self.claimed, i)

    async def lease_to(self, i: int) -> None:
        """Wait until instance ``i`` holds the jobs lease; note it."""
        def held() -> dict[str, Any] | None:
            jobs = self.stack.central_status(i)["jobs"]
            return jobs if jobs["held"] else None

        name = self.stack.centrals[i].name
        jobs = await wait_until_async(lambda: asyncio.to_thread(held), 6 * JOBS_LEASE_S,
                                      interval=0.2, what=f"{name} to take the jobs lease")
        self.lease.append((name, int(jobs["epoch"])))


async def chaos(stack: Stack, run: Run, watch: Watch, t0: float) -> None:
    for frac, what in CHAOS:
        await wait_until_async(lambda n=frac * MIX.total: run.done >= n, 240, interval=0.05,
                               what=f"{frac:.0%} of the requests done before {what}")
        if what == "broker":
            await asyncio.to_thread(stack.broker.kill9)
            await asyncio.sleep(0.5)  # the outage itself: devices and centrals see it down
            await asyncio.to_thread(stack.broker.start)
        elif what == "kill A":
            await watch.kill_mid_call(A)
            await watch.lease_to(B)  # the survivor runs the resolver now
            await asyncio.to_thread(stack.start_central, A)
        else:
            await watch.kill_mid_call(B)  # and it stays dead
            await watch.lease_to(A)
        run.chaos_log.append((round(time.monotonic() - t0, 1), what))


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_chaos_two_instances(two_centrals: Stack, tmp_path: Path) -> None:
    stack = two_centrals
    t_setup = time.monotonic()
    store = open_store(stack.store_target)
    watch = Watch(stack, store)
    setup: Setup | None = None
    try:
        await watch.lease_to(A)  # started first: A runs the jobs, B only forwards
        setup = await prepare(stack, tmp_path, MIX, DEVICES)
        run = Run()
        await open_desks(setup, run)
        t0 = time.monotonic()
        chaos_task = asyncio.create_task(chaos(stack, run, watch, t0))
        await work(setup, run, RATE)
        t_work = time.monotonic() - t0
        await asyncio.wait_for(chaos_task, 60)
        await settle_walked(run, setup.desks)
        await wait_resolved(lambda: stack.unresolved_payments(A))
        t_resolved = time.monotonic() - t0
        stats = await asyncio.to_thread(stack.stats)
        await asyncio.to_thread(watch.sample, A)
        rows = await asyncio.to_thread(lambda: store.connection().execute(
            "SELECT id, state, owner FROM requestlog").fetchall())
        ok, bad = await asyncio.to_thread(store.verify_chain)
        (n_audit,) = store.connection().execute("SELECT count(*) FROM auditrecord").fetchone()
    finally:
        if setup is not None:
            for up in setup.uplinks:
                await up.stop()
        store.close()

    assert [w for _, w in run.chaos_log] == [w for _, w in CHAOS]
    verdict = check_exactly_once(stack, run, MIX, setup.before, stats)

    # The jobs lease went A → B (A killed) → A (B killed), a new epoch each time, and the
    # resolver that settled the payments above ran on A, the one left.
    assert [name for name, _ in watch.lease] == ["central-a", "central-b", "central-a"]
    epochs = [epoch for _, epoch in watch.lease]
    assert epochs == sorted(set(epochs)), watch.lease
    status_a = await asyncio.to_thread(stack.central_status, A)
    assert status_a["jobs"]["held"] and "payments" in status_a["jobs"]["jobs"], status_a["jobs"]

    # Both instances did real work: their forwarders answered requests (counters over
    # A's two boots and B's one) and the stored request rows name both as their owner.
    requests = {rid: (state, str(owner).rpartition("/")[0]) for rid, state, owner in rows}
    owners = Counter(owner for state, owner in requests.values() if state == "done")
    for c in stack.centrals:
        assert watch.handled[c.name] >= MIX.total // 5, (watch.handled, owners)
        assert owners[c.name] >= MIX.total // 5, (watch.handled, owners)
    # Each was killed in the middle of a platform call. What A's first boot left claimed was
    # finished (by its next boot at once, or by B); what B left, by A after the lease.
    assert watch.orphans["central-a"] and watch.orphans["central-b"], watch.orphans
    for rid in watch.orphans["central-a"]:
        assert requests[rid][0] == "done", (rid, requests[rid])
    for rid in watch.orphans["central-b"]:
        assert requests[rid] == ("done", "central-a"), (rid, requests[rid])

    # One audit chain, appended to by both instances (under the store's lock), verifies.
    assert ok, f"central's audit chain breaks at seq {bad}"
    assert n_audit >= MIX.total // 2

    print(f"\nchaos, two instances: {MIX.total} requests in {t_work:.1f}s, payments resolved "
          f"at {t_resolved:.1f}s, setup {t0 - t_setup:.1f}s; handled {dict(watch.handled)}, "
          f"request owners {dict(owners)}, jobs lease {watch.lease}, orphans "
          f"{ {k: len(v) for k, v in watch.orphans.items()} }, audit {n_audit}; "
          f"{summary(run, verdict, stats)}")
