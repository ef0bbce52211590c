"""The store's leases (central/leases.py): one holder at a time, on both engines.

Two :class:`Store` objects on one database stand for two central instances (each has its
own connections, as two processes would).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.leases import JobsLease, Leases
from central.store import open_store

pytestmark = BOTH_ENGINES


@pytest.fixture
def two(tmp_path: Path, central_db):
    a = open_store(central_db(tmp_path))
    b = open_store(central_db(tmp_path))
    yield a, b
    a.close()
    b.close()


def test_one_holder_renewal_release_and_epochs(two) -> None:
    a, b = two
    la, lb = Leases(a, "central-a/1"), Leases(b, "central-b/1")
    assert la.acquire("jobs", 30) == 1
    assert lb.acquire("jobs", 30) is None  # a holds it
    assert la.acquire("jobs", 30) == 1  # renewal keeps the epoch
    assert lb.state("jobs").holder == "central-a/1"
    assert la.release("jobs") and not lb.release("jobs")
    assert lb.state("jobs").holder is None
    assert lb.acquire("jobs", 30) == 2  # changed hands: the epoch grows
    assert la.acquire("jobs", 30) is None
    assert lb.acquire("other", 30) == 1  # leases are independent


def test_an_expired_lease_moves_and_the_old_holder_loses_it(two) -> None:
    a, b = two
    la, lb = Leases(a, "central-a/1"), Leases(b, "central-b/1")
    assert la.acquire("jobs", 0.3) == 1
    assert lb.acquire("jobs", 0.3) is None
    time.sleep(0.45)
    assert lb.acquire("jobs", 30) == 2
    assert la.acquire("jobs", 30) is None  # its renewal now fails


def test_a_restarted_instance_takes_its_earlier_boots_lease_at_once(two) -> None:
    a, b = two
    assert Leases(a, "central-a/boot1").acquire("jobs", 600) == 1
    assert Leases(b, "central-b/boot1").acquire("jobs", 600) is None
    # the same client id, a new boot: that process is gone, no need to wait 600 s
    assert Leases(b, "central-a/boot2").acquire("jobs", 600) == 2
    assert Leases(a, "central-a/boot1").acquire("jobs", 600) is None


def test_racing_instances_never_both_take_a_lease(two) -> None:
    a, b = two
    la, lb = Leases(a, "central-a/1"), Leases(b, "central-b/1")
    rounds = 40
    won: list[list[str]] = [[] for _ in range(rounds)]
    barrier = threading.Barrier(2)

    def contend(leases: Leases, me: str) -> None:
        for i in range(rounds):
            barrier.wait()
            if leases.acquire(f"race-{i}", 30) is not None:
                won[i].append(me)

    threads = [threading.Thread(target=contend, args=(la, "a")),
               threading.Thread(target=contend, args=(lb, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(len(w) == 1 for w in won), won


async def test_jobs_run_on_one_instance_and_move_when_it_dies(two) -> None:
    a, b = two
    running: dict[str, int] = {"a": 0, "b": 0}
    overlap: list[float] = []
    started: list[str] = []

    def job(me: str):
        async def run() -> None:
            running[me] += 1
            started.append(me)
            try:
                while True:
                    if running["a"] and running["b"]:
                        overlap.append(time.monotonic())
                    await asyncio.sleep(0.02)
            finally:
                running[me] -= 1
        return run

    ja = JobsLease(Leases(a, "central-a/1"), {"resolver": job("a")}, lease_s=1.2)
    jb = JobsLease(Leases(b, "central-b/1"), {"resolver": job("b")}, lease_s=1.2)
    ta = asyncio.create_task(ja.run())
    await wait_until_async(lambda: running["a"] == 1, 5)
    tb = asyncio.create_task(jb.run())
    await asyncio.sleep(1.5)  # b keeps trying; a keeps renewing
    assert running == {"a": 1, "b": 0} and ja.held and not jb.held
    assert jb.status()["held"] is False and ja.status()["jobs"] == ["resolver"]

    # a dies without giving the lease up (kill -9): b takes over once it expires
    ja.leases.release = lambda name: False  # type: ignore[method-assign]
    t_dead = time.monotonic()
    ta.cancel()
    await asyncio.gather(ta, return_exceptions=True)
    await wait_until_async(lambda: running["b"] == 1, 10)
    waited = time.monotonic() - t_dead
    assert 0.8 <= waited <= 4.0, waited  # not before expiry, not long after
    assert jb.epoch == 2 and started == ["a", "b"]

    # a clean stop gives the lease up at once
    tb.cancel()
    await asyncio.gather(tb, return_exceptions=True)
    assert Leases(a, "central-c/1").acquire("jobs", 5) == 3
    assert overlap == []


async def test_an_instance_kept_out_of_jobs_never_runs_them(two) -> None:
    a, _ = two
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    j = JobsLease(Leases(a, "central-a/1"), {"x": job}, lease_s=1.0, enabled=False)
    t = asyncio.create_task(j.run())
    await asyncio.sleep(0.5)
    t.cancel()
    await asyncio.gather(t, return_exceptions=True)
    assert ran == [] and Leases(a, "central-b/1").acquire("jobs", 5) == 1


async def test_metrics_say_which_instance_holds_the_jobs_lease(two) -> None:
    from prometheus_client import generate_latest

    from central.metrics import CentralMetrics

    a, b = two
    ja = JobsLease(Leases(a, "central-a/1"), {}, lease_s=5)
    jb = JobsLease(Leases(b, "central-b/1"), {}, lease_s=5)
    ma, mb = CentralMetrics(a), CentralMetrics(b)
    ma.watch(jobs=ja)
    mb.watch(jobs=jb)
    tasks = [asyncio.create_task(ja.run())]
    await wait_until_async(lambda: ja.held, 5)
    tasks.append(asyncio.create_task(jb.run()))
    await asyncio.sleep(0.2)
    assert b"ykt_jobs_lease_held 1.0" in generate_latest(ma.registry)
    assert b"ykt_jobs_lease_held 0.0" in generate_latest(mb.registry)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
