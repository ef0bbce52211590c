"""The device's durable SQLite files: one way to open them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["open_durable"]


def open_durable(path: str | Path, *, timeout_s: float = 5.0) -> sqlite3.Connection:
    """Open (creating its folder) a SQLite file whose commits survive power loss.

    WAL with ``synchronous=FULL``: a commit returns only after the WAL is fsynced. Autocommit
    mode (callers open their own transactions) and usable from the worker threads that the
    callers serialise with their own locks. ``":memory:"`` gives a throwaway database.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None,
                          check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    # These files are small and read by key: a 256 KiB page cache per connection instead of
    # SQLite's 2 MB default keeps the daemon's memory flat in service (bench/soak.py).
    con.execute("PRAGMA cache_size=-256")
    return con
