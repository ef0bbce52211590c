"""The local copy of the lost/stolen card list (SQLite), enforced also when offline.

Central publishes a version; the device applies full snapshots or deltas. A delta whose
version is not newer than the local one is ignored (MQTT may redeliver or reorder).

Lookups are on the card-read path, so ``is_blocked`` answers from an in-memory frozenset
snapshot, never from SQLite: ``apply_delta`` updates the snapshot with its commit, and a
change written by another connection (``PRAGMA data_version``) is picked up within
``recheck_s`` — the edge daemon is the only writer in practice, so that is a safety net.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edge.devices.card.errors import CardParameterError
from yikatong.common.storage import open_durable

__all__ = ["HotList"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blocked (card_no TEXT PRIMARY KEY);
"""


def _norm(card_no: str) -> str:
    return card_no.strip().upper()


class HotList:
    """Version + set of blocked card numbers, safe to use from several threads."""

    def __init__(self, path: Path | str, *, recheck_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path) if str(path) != ":memory:" else path
        self._db = open_durable(path)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)
        self._recheck_s = recheck_s
        self._monotonic = monotonic
        self._blocked: frozenset[str] = frozenset()
        self._data_version = -1
        self._checked_at = monotonic()
        with self._lock:
            self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        """Reload the snapshot when another connection committed (caller holds the lock)."""
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._data_version:
            rows = self._db.execute("SELECT card_no FROM blocked").fetchall()
            self._blocked = frozenset(r[0] for r in rows)
            self._data_version = version
        self._checked_at = self._monotonic()

    @property
    def version(self) -> int:
        """Version of the list held locally (0 = never received)."""
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k='version'").fetchone()
        return int(row[0]) if row else 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM blocked").fetchone()[0])

    def is_blocked(self, card_no: str) -> bool:
        """True when the card number is on the list (answered from memory)."""
        if self._monotonic() - self._checked_at >= self._recheck_s:
            with self._lock:
                self._reload_if_changed()
        return _norm(card_no) in self._blocked

    def apply_delta(self, version: int, added: Iterable[str] = (),
                    removed: Iterable[str] = (), full: bool = False) -> bool:
        """Apply a delta (or a full snapshot when ``full``); False when it is not newer."""
        if not isinstance(version, int) or version < 0:
            raise CardParameterError("hot list version must be a non-negative integer",
                                     "挂失名单版本号错误")
        add = frozenset(_norm(c) for c in added if c.strip())
        rem = frozenset(_norm(c) for c in removed if c.strip())
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k='version'").fetchone()
            current = int(row[0]) if row else 0
            if version <= current and not (full and version == current):
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if full:
                    self._db.execute("DELETE FROM blocked")
                self._db.executemany("DELETE FROM blocked WHERE card_no=?",
                                     [(c,) for c in rem])
                self._db.executemany("INSERT OR IGNORE INTO blocked(card_no) VALUES (?)",
                                     [(c,) for c in add])
                self._db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('version', ?)",
                                 (version,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Our own commit does not move data_version; another writer's commit does,
            # and then the snapshot is rebuilt from the table instead of patched.
            self._blocked = add if full else (self._blocked - rem) | add
            self._reload_if_changed()
        return True

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
