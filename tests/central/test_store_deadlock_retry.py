"""A write PostgreSQL ends to break a deadlock runs again (central/store/core.py).

With several central instances on one database, the writer's group commit takes row locks
in its operations' order and another instance's in another; PostgreSQL then ends one of the
transactions ("deadlock detected"). Nothing of it was written, so the writer runs it again
instead of failing its callers (seen in tests/faults/test_chaos_two_instances.py: a request
claim deadlocked with another instance's batch on a staff session row).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from central.store import open_store

pytestmark = pytest.mark.parametrize("store_engine", ["postgresql"], indirect=True)


async def test_a_deadlock_victim_is_written_on_its_next_run(
        tmp_path: Path, central_db: Callable[[Path], Path | str]) -> None:
    url = central_db(tmp_path)
    store = open_store(url)
    other = psycopg.connect(str(url))  # another instance's transaction
    try:
        with store.atomic():
            store.connection().execute("CREATE TABLE pair (id BIGINT PRIMARY KEY, v BIGINT)")
            store.connection().execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
        # The store's session detects the deadlock (after 1 s) and is the one ended.
        other.execute("SET deadlock_timeout = '30s'")
        other.execute("UPDATE pair SET v = v + 1 WHERE id = 1")
        runs, holds_two = [], threading.Event()

        def write() -> None:  # row 2, then row 1 (which the other transaction holds)
            runs.append(1)
            store.connection().execute("UPDATE pair SET v = v + 10 WHERE id = 2")
            holds_two.set()
            store.connection().execute("UPDATE pair SET v = v + 10 WHERE id = 1")

        def close_the_cycle() -> None:  # the other: row 1, then row 2
            holds_two.wait(10)
            other.execute("UPDATE pair SET v = v + 1 WHERE id = 2")
            other.commit()

        closer = asyncio.create_task(asyncio.to_thread(close_the_cycle))
        await asyncio.wait_for(store.write(write), 20)
        await closer
        assert len(runs) == 2
        rows = store.connection().execute("SELECT id, v FROM pair ORDER BY id").fetchall()
        assert [tuple(r) for r in rows] == [(1, 11), (2, 11)]
    finally:
        other.close()
        store.close()
