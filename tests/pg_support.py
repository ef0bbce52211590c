"""PostgreSQL for the tests: the session's server and the two-engine marker.

The server is :class:`yikatong.site.postgres.PgServer` (``initdb`` in a temporary directory,
loopback), started once per test session by tests/conftest.py ``postgres``; each test that
runs on PostgreSQL gets a database of its own (``central_db``), dropped afterwards.
"""

from __future__ import annotations

import pytest

from yikatong.site.postgres import PgServer, pg_bin

__all__ = ["BOTH_ENGINES", "PgServer", "pg_bin"]

#: Run a test (or with ``pytestmark``, a module) once on each store engine (the
#: ``store_engine`` / ``central_db`` fixtures of tests/conftest.py).
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ["sqlite", "postgresql"], indirect=True)
