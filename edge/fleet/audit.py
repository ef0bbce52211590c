"""The device's append-only, hash-chained audit log (SQLite), shipped to central as ``audit``.

Each record's hash follows the one audit-hash rule (:mod:`yikatong.protocol.audit`), the same
central chains its own audit with, so central can recompute every device hash from the
shipped body alone. Details never hold personal data in clear: keys that name personal fields are
refused, and every string is passed through :func:`yikatong.common.privacy.mask_text` on the way
in (ID numbers, phone numbers and payment codes are masked even if a caller slips).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from yikatong.common.errors import LocalizedError
from yikatong.common.privacy import mask_text
from yikatong.common.storage import open_durable
from yikatong.protocol.audit import GENESIS_HASH, audit_hash
from yikatong.protocol.envelope import canonical_json, format_ts

__all__ = ["AuditError", "AuditLog", "AuditRow"]

# Keys whose value would be personal data or a secret in clear: a caller must send a masked
# value under another key (``card_masked``), never these.
_FORBIDDEN_KEYS = frozenset({
    "name", "patient_name", "holder_name", "id_number", "card_no", "card_number",
    "auth_code", "pin", "password", "phone", "badge",
})


class AuditError(LocalizedError):
    """An audit record was refused (personal data in clear) or the log is unusable."""

    code = "audit_error"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit record as a value."""

    seq: int
    ts: str
    actor: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def wire_body(self) -> dict[str, Any]:
        """The ``audit`` event body (yikatong.protocol.messages.AuditRecord)."""
        return {"seq": self.seq, "ts": self.ts, "actor": self.actor, "action": self.action,
                "detail": self.detail, "prev_hash": self.prev_hash, "hash": self.hash}


def _clean(value: Any, key: str = "") -> Any:
    """Mask free text, refuse personal keys; returns a JSON-plain copy."""
    if key.lower() in _FORBIDDEN_KEYS:
        raise AuditError(f"audit detail may not carry {key!r} in clear",
                         f"审计记录不得包含明文个人信息（{key}）")
    if isinstance(value, dict):
        return {str(k): _clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, key) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    raise AuditError(f"audit detail value of type {type(value).__name__} is not allowed",
                     "审计记录含不支持的数据类型")


class AuditLog:
    """Append-only audit records with a hash chain that continues across restarts."""

    def __init__(self, path: str | Path = ":memory:", *, clock: Any = None) -> None:
        self._db = open_durable(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL,"
            " actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT NOT NULL,"
            " prev_hash TEXT NOT NULL, hash TEXT NOT NULL)")
        # The highest seq whose ``audit`` event is in the uplink's durable outbox.
        self._db.execute("CREATE TABLE IF NOT EXISTS shipped (id INTEGER PRIMARY KEY CHECK"
                         " (id = 1), seq INTEGER NOT NULL)")
        self._clock = clock
        self._lock = threading.Lock()

    def _now(self) -> str:
        now = self._clock.now() if self._clock is not None else datetime.now(UTC)
        return format_ts(now.astimezone(UTC))  # the wire timestamp, as the audit rule says

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> AuditRow:
        """Append one record (masked detail) and return it."""
        clean = _clean(dict(detail))
        ts = self._now()
        with self._lock:
            head = self._db.execute(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (1, GENESIS_HASH) if head is None else (int(head[0]) + 1, str(head[1]))
            h = audit_hash(seq, ts, actor, action, clean, prev)
            self._db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (seq, ts, actor, action, canonical_json(clean).decode(), prev, h))
        return AuditRow(seq, ts, actor, action, clean, prev, h)

    def rows(self, since_seq: int = 0) -> list[AuditRow]:
        """Records after ``since_seq``, in order."""
        cur = self._db.execute("SELECT seq, ts, actor, action, detail, prev_hash, hash FROM"
                               " audit WHERE seq > ? ORDER BY seq", (since_seq,))
        return [AuditRow(int(s), t, a, ac, json.loads(d), p, h)
                for s, t, a, ac, d, p, h in cur.fetchall()]

    def verify(self) -> tuple[bool, int | None]:
        """Check every hash and link; returns (ok, first bad seq or None)."""
        prev, expected = GENESIS_HASH, 1
        for r in self.rows():
            if (r.seq != expected or r.prev_hash != prev
                    or audit_hash(r.seq, r.ts, r.actor, r.action, r.detail, prev) != r.hash):
                return False, r.seq
            prev, expected = r.hash, expected + 1
        return True, None

    def unshipped(self) -> list[AuditRow]:
        """Records not yet handed to the uplink's outbox (resent after a crash)."""
        row = self._db.execute("SELECT seq FROM shipped WHERE id = 1").fetchone()
        return self.rows(0 if row is None else int(row[0]))

    def mark_shipped(self, seq: int) -> None:
        """Remember that records up to ``seq`` are in the durable outbox."""
        with self._lock:
            self._db.execute("INSERT INTO shipped VALUES (1, ?) ON CONFLICT(id) DO UPDATE"
                             " SET seq = MAX(seq, excluded.seq)", (seq,))

    def close(self) -> None:
        """Close the database."""
        self._db.close()
