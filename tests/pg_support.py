"""PostgreSQL for the tests: the session's server and the two-engine marker.

The server is :class:`yikatong.site.postgres.PgServer` (``initdb`` in a temporary directory,
loopback), started once per test session by tests/conftest.py ``postgres``; each test that
runs on PostgreSQL gets a database of its own (``central_db``), dropped afterwards.
:func:`race` runs the same operation on several stores of one database at once, as several
central instances would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pytest

from yikatong.site.postgres import PgServer, pg_bin

__all__ = ["BOTH_ENGINES", "PgServer", "pg_bin", "race"]

S = TypeVar("S")

#: Run a test (or with ``pytestmark``, a module) once on each store engine (the
#: ``store_engine`` / ``central_db`` fixtures of tests/conftest.py).
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ["sqlite", "postgresql"], indirect=True)


def race(stores: Sequence[S], op: Callable[[int, S, int], Any], rounds: int
         ) -> list[list[Any]]:
    """``op(k, stores[k], round)`` on one thread per store, each round started together.

    A :class:`threading.Barrier` releases the threads of a round at the same moment, so the
    operations really overlap (two Store objects: two connections, like two instances).
    Returns each round's results in store order; the first exception is raised. Each thread
    closes its connection to its store at the end.
    """
    barrier = threading.Barrier(len(stores))
    results: list[list[Any]] = [[None] * len(stores) for _ in range(rounds)]
    errors: list[BaseException] = []

    def run(k: int, store: Any) -> None:
        try:
            for r in range(rounds):
                barrier.wait(timeout=60)
                results[r][k] = op(k, store, r)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)
            barrier.abort()
        finally:
            store.db.close()

    threads = [threading.Thread(target=run, args=(k, s), name=f"race-{k}")
               for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
