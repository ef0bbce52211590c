"""This terminal's money movements (SQLite): what the closing and handover reports count.

Only confirmed outcomes are written, once per payment id (edge/runtime/payments.py).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from yikatong.common.storage import open_durable

__all__ = ["Ledger"]


class Ledger:
    """This terminal's money movements (SQLite), the source of the cashier's closing report.

    Only confirmed outcomes are written: an approved payment or top-up, a refund. A payment is
    recorded once, by its id, however many times its approval is seen (create, then status).
    No personal data: amounts, methods, platform ids and the operator's staff id.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = open_durable(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS ledger (entry_id TEXT PRIMARY KEY, ts TEXT NOT NULL,"
            " kind TEXT NOT NULL, method TEXT NOT NULL, amount_fen INTEGER NOT NULL,"
            " payment_id TEXT NOT NULL, operator TEXT NOT NULL DEFAULT '')")
        # Cash handed over at the desk (实收/找零), for a copy of the receipt printed later.
        self._db.execute("CREATE TABLE IF NOT EXISTS cash (payment_id TEXT PRIMARY KEY,"
                         " tendered_fen INTEGER NOT NULL, change_fen INTEGER NOT NULL)")
        # Shift handovers on this desk: the next shift report starts at the last one.
        self._db.execute("CREATE TABLE IF NOT EXISTS handover (ts TEXT NOT NULL,"
                         " operator TEXT NOT NULL)")

    def record(self, entry_id: str, ts: datetime, *, kind: str, method: str, amount_fen: int,
               payment_id: str, operator: str = "") -> bool:
        """Add one movement (kind payment|topup|refund); False when it was already there."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry_id, ts.astimezone(ZoneInfo("UTC")).isoformat(), kind, method, amount_fen,
             payment_id, operator))
        return cur.rowcount == 1

    def method_of(self, payment_id: str) -> str | None:
        """The method a payment recorded here was made with."""
        row = self._db.execute("SELECT method FROM ledger WHERE payment_id = ? AND kind != "
                               "'refund' LIMIT 1", (payment_id,)).fetchone()
        return None if row is None else str(row[0])

    def record_cash(self, payment_id: str, tendered_fen: int, change_fen: int) -> None:
        """Remember the cash tendered and the change given for a payment (first one wins)."""
        self._db.execute("INSERT OR IGNORE INTO cash VALUES (?, ?, ?)",
                         (payment_id, tendered_fen, change_fen))

    def cash_of(self, payment_id: str) -> tuple[int, int] | None:
        """(tendered, change) of a cash payment taken here, or None."""
        row = self._db.execute("SELECT tendered_fen, change_fen FROM cash WHERE payment_id = ?",
                               (payment_id,)).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def record_handover(self, ts: datetime, operator: str) -> None:
        """A shift was handed over on this desk at ``ts``."""
        self._db.execute("INSERT INTO handover VALUES (?, ?)",
                         (ts.astimezone(ZoneInfo("UTC")).isoformat(), operator))

    def last_handover(self) -> datetime | None:
        """When the last shift was handed over on this desk (None: never)."""
        row = self._db.execute("SELECT MAX(ts) FROM handover").fetchone()
        return None if row is None or row[0] is None else datetime.fromisoformat(row[0])

    def totals(self, start: datetime, end: datetime,
               operator: str | None = None) -> list[dict[str, Any]]:
        """Per-method counts and sums of each kind between start and end (one operator's)."""
        utc = ZoneInfo("UTC")
        rows = self._db.execute(
            "SELECT method, kind, COUNT(*), SUM(amount_fen) FROM ledger WHERE ts >= ? AND ts < ?"
            " AND (? IS NULL OR operator = ?) GROUP BY method, kind ORDER BY method",
            (start.astimezone(utc).isoformat(), end.astimezone(utc).isoformat(), operator,
             operator)).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for method, kind, count, total in rows:
            line = out.setdefault(method, {"method": method, "payment_count": 0,
                                           "payment_fen": 0, "topup_count": 0, "topup_fen": 0,
                                           "refund_count": 0, "refund_fen": 0})
            line[f"{kind}_count"] = int(count)
            line[f"{kind}_fen"] = int(total or 0)
        return list(out.values())

    def close(self) -> None:
        """Close the database."""
        self._db.close()
