"""The store's audit: central's own hash chain, and the devices' chains checked on arrival.

Both hash with yikatong/protocol/audit.py. Central's records hash the wire form of their
time (``format_ts``, milliseconds), so the stored ``ts`` is rounded to the millisecond. The
chain head (seq, hash) is kept in memory, so appending is one INSERT; a conflicting seq
(another process appended) re-reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import peewee as pw

from central.store import sql
from central.store.core import StoreCore
from central.store.engine import INTEGRITY_ERRORS
from central.store.values import AuditEntry, StoreError, canon, from_ts, to_ts
from yikatong.protocol.audit import GENESIS_HASH, audit_hash, audit_hash_text
from yikatong.protocol.envelope import canonical_json, format_ts

__all__ = ["AuditOps"]

log = logging.getLogger("central.store")

#: The advisory lock (PostgreSQL) serializing appends to central's chain between instances.
AUDIT_CHAIN_LOCK = 0x796B7402


def _flat(detail: dict[str, Any]) -> bool:
    """True when ``detail`` is already what JSON would give back (str keys, plain values)."""
    return all(
        type(k) is str and (v is None or type(v) in (str, int, bool))
        for k, v in detail.items()
    )


class AuditOps(StoreCore):
    """Audit chains (part of :class:`~central.store.Store`)."""

    # -- central's chain -------------------------------------------------------------------
    def audit(self, now: datetime, actor: str, action: str, detail: dict[str, Any]) -> AuditEntry:
        """Append one hash-chained audit record."""
        with self.atomic():
            return self.append_audit_in_tx(now, actor, action, detail)

    def append_audit_in_tx(
        self, now: datetime, actor: str, action: str, detail: dict[str, Any]
    ) -> AuditEntry:
        """:meth:`audit` inside the caller's write transaction (one INSERT as a rule)."""
        self._require_write()
        # Milliseconds, like every wire timestamp: the hash covers format_ts of this value.
        t = round(to_ts(now), 3)
        if not _flat(detail):
            detail = json.loads(canon(detail))  # JSON-normalise (str keys): reproducible hash
        text = canonical_json(detail).decode()
        ts_text = format_ts(from_ts(t) or now)
        if self.dialect.postgres:
            # Several instances append to one chain: each holds the chain's lock until its
            # transaction ends, and reads the head under it (another instance may have
            # appended since this one last did).
            self.lock_in_tx(AUDIT_CHAIN_LOCK)
            self._head = self._read_head()
        for _ in range(5):
            if self._head is None:
                self._head = self._read_head()
            seq, prev = self._head[0] + 1, self._head[1]
            h = audit_hash_text(seq, ts_text, actor, action, text, prev)
            try:
                self.connection().execute(sql.AUDIT_ADD, (seq, t, actor, action, text, prev, h))
            except INTEGRITY_ERRORS:
                if self.dialect.postgres:  # cannot happen under the lock; the write fails
                    raise
                self._head = None  # another process appended: re-read the head and relink
                continue
            self._head = (seq, h)
            return AuditEntry(seq, from_ts(t) or now, actor, action, detail, prev, h)
        raise StoreError("audit chain head keeps moving", "审计链写入冲突")

    def _read_head(self) -> tuple[int, str]:
        A = self.AuditRecord
        last = A.select(A.seq, A.hash).order_by(A.seq.desc()).first()
        return (0, GENESIS_HASH) if last is None else (int(last.seq), str(last.hash))

    def audit_entries(self, since_seq: int = 0) -> list[AuditEntry]:
        """Audit records after ``since_seq``, in order."""
        A = self.AuditRecord
        return [_entry(r) for r in A.select().where(A.seq > since_seq).order_by(A.seq)]

    def audit_by_actions(self, actions: frozenset[str], limit: int) -> list[AuditEntry]:
        """The newest ``limit`` audit records whose action is in ``actions``, newest first."""
        A = self.AuditRecord
        rows = (A.select().where(A.action.in_(sorted(actions))).order_by(A.seq.desc())
                .limit(limit))
        return [_entry(r) for r in rows]

    def verify_chain(self) -> tuple[bool, int | None]:
        """Check every audit hash and link; returns (ok, first bad seq or None)."""
        prev = GENESIS_HASH
        expected = 1
        for r in self.AuditRecord.select().order_by(self.AuditRecord.seq):
            detail = json.loads(r.detail)
            if (
                r.seq != expected
                or r.prev_hash != prev
                or audit_hash(r.seq, format_ts(from_ts(r.ts) or datetime.now(UTC)), r.actor,
                              r.action, detail, prev) != r.hash
            ):
                return False, r.seq
            prev = r.hash
            expected += 1
        return True, None

    # -- device audit chains ---------------------------------------------------------------
    def add_device_audit(self, dev: str, body: dict[str, Any], now: datetime) -> str:
        """Store one device audit record, checking its hash and link; returns its status."""
        with self.atomic():
            return self.add_device_audit_in_tx(dev, body, now)

    def add_device_audit_in_tx(self, dev: str, body: dict[str, Any], now: datetime) -> str:
        """:meth:`add_device_audit` inside a write: idempotent by (dev, seq); bad ones flagged."""
        from yikatong.protocol.messages import AuditRecord

        self._require_write()
        try:
            r = AuditRecord.model_validate(body)
        except ValueError:
            log.warning("invalid audit record from %s ignored", dev)
            return "invalid"
        db = self.connection()
        old = db.execute(sql.DEV_AUDIT_HASH, (dev, r.seq)).fetchone()
        if old is not None:
            if old[0] == r.hash:
                return "duplicate"  # a resend after a lost PUBACK
            db.execute(sql.DEV_AUDIT_CONFLICT, (dev, r.seq))
            self._flag_device_audit(dev, r.seq, "conflict", now)
            return "conflict"
        detail = json.loads(canon(r.detail))
        if r.ts is None or r.actor is None or audit_hash(
                r.seq, r.ts, r.actor, r.action, detail, r.prev_hash) != r.hash:
            status = "bad_hash"
        elif r.seq == 1:
            status = "ok" if r.prev_hash == GENESIS_HASH else "broken_link"
        else:
            prev = db.execute(sql.DEV_AUDIT_HASH, (dev, r.seq - 1)).fetchone()
            status = "gap" if prev is None else ("ok" if prev[0] == r.prev_hash
                                                 else "broken_link")
        if db.execute(sql.DEV_AUDIT_ADD,
                      (dev, r.seq, r.ts or "", r.actor or "", r.action, canon(detail).decode(),
                       r.prev_hash, r.hash, status, to_ts(now))).rowcount != 1:
            # Another instance stored this (dev, seq) since the read above: judge it again.
            return self.add_device_audit_in_tx(dev, body, now)
        # A late record may close a gap: its successor's link can be checked now.
        nxt = db.execute(sql.DEV_AUDIT_GAP_LINK, (dev, r.seq + 1)).fetchone()
        if nxt is not None:
            db.execute(sql.DEV_AUDIT_SET_STATUS,
                       ("ok" if nxt[0] == r.hash else "broken_link", dev, r.seq + 1))
            if nxt[0] != r.hash:
                self._flag_device_audit(dev, r.seq + 1, "broken_link", now)
        if status == "gap":
            log.warning("device %s audit chain has a gap before seq %d", dev, r.seq)
        elif status != "ok":
            self._flag_device_audit(dev, r.seq, status, now)
        return status

    def _flag_device_audit(self, dev: str, seq: int, status: str, now: datetime) -> None:
        log.warning("device %s audit record %d: %s", dev, seq, status)
        self.append_audit_in_tx(now, "forwarder", "device_audit.flagged",
                                {"dev": dev, "seq": seq, "status": status})

    def device_audit_state(self, dev: str) -> dict[str, Any]:
        """``{audit_ok, last_seq, count, first_bad_seq}`` of ``dev``'s audit chain."""
        db = self.connection()
        count, last, bad = db.execute(sql.DEV_AUDIT_SUMMARY, (dev,)).fetchone()
        count, last = int(count or 0), int(last or 0)
        if bad is None and count != last:  # a hole that no later record pointed out yet
            seqs = [r[0] for r in db.execute(sql.DEV_AUDIT_SEQS, (dev,))]
            bad = next((i + 1 for i, q in enumerate(seqs) if q != i + 1), None)
        return {"audit_ok": bad is None, "last_seq": last, "count": count,
                "first_bad_seq": None if bad is None else int(bad)}

    def device_audit_states(self, devs: Sequence[str] | None = None
                            ) -> dict[str, dict[str, Any]]:
        """:meth:`device_audit_state` of many devices (``None``: every device with records).

        One aggregate query over the devices' chains, plus at most one window query for the
        chains with a hole nothing pointed out yet — the same answers as the per-device
        method, whatever the number of devices. Given ``devs``, each of them is in the result
        (a device without records has ``count`` 0).
        """
        D = self.DeviceAudit
        bad_seq = pw.fn.MIN(pw.Case(None, [(D.status != "ok", D.seq)], None))
        q = D.select(D.dev, pw.fn.COUNT(D.seq), pw.fn.MAX(D.seq), bad_seq).group_by(D.dev)
        if devs is not None:
            if not devs:
                return {}
            q = q.where(D.dev.in_(list(devs)))
        out: dict[str, dict[str, Any]] = {}
        holes: list[str] = []
        for dev, n_rows, max_seq, bad in q.tuples():
            count, last = int(n_rows or 0), int(max_seq or 0)
            out[dev] = {"audit_ok": bad is None, "last_seq": last, "count": count,
                        "first_bad_seq": None if bad is None else int(bad)}
            if bad is None and count != last:
                holes.append(dev)
        if holes:
            # The first seq missing from 1, 2, 3 …: the first row whose seq is not its rank.
            rank = pw.fn.ROW_NUMBER().over(partition_by=[D.dev], order_by=[D.seq])
            ranked = (D.select(D.dev.alias("dev"), D.seq.alias("seq"), rank.alias("rn"))
                      .where(D.dev.in_(holes)).alias("ranked"))
            first = (pw.Select([ranked], [ranked.c.dev, pw.fn.MIN(ranked.c.rn)])
                     .where(ranked.c.seq != ranked.c.rn).group_by(ranked.c.dev)
                     .bind(self.db))
            for dev, rn in first.tuples():
                out[dev].update(audit_ok=False, first_bad_seq=int(rn))
        if devs is not None:
            for dev in devs:
                out.setdefault(dev, {"audit_ok": True, "last_seq": 0, "count": 0,
                                     "first_bad_seq": None})
        return out

    def device_audit_entries(self, dev: str, since_seq: int = 0) -> list[dict[str, Any]]:
        """``dev``'s stored audit records after ``since_seq``, with their arrival status."""
        D = self.DeviceAudit
        rows = D.select().where((D.dev == dev) & (D.seq > since_seq)).order_by(D.seq)
        return [{"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action,
                 "detail": json.loads(r.detail), "prev_hash": r.prev_hash, "hash": r.hash,
                 "status": r.status} for r in rows]

    def verify_chain_since(self, seq: int, hash_: str, limit: int
                           ) -> tuple[int | None, int, str, int]:
        """:meth:`verify_chain` from a record already checked: the next ``limit`` records.

        ``seq`` / ``hash_`` is where an earlier check ended (0 and ``GENESIS_HASH``: the
        start). That record is read again (still there, same hash), then up to ``limit``
        records after it are checked like :meth:`verify_chain` does, so the cost is what was
        appended since, not the chain's length (the dashboard's status check,
        docs/performance.md "Fleet").
        Returns (first bad seq or None, the last seq found good, its hash, records read);
        fewer than ``limit`` new records read means the check reached the chain's head.
        """
        A = self.AuditRecord
        rows = (A.select(A.seq, A.ts, A.actor, A.action, A.detail, A.prev_hash, A.hash)
                .where(A.seq >= seq).order_by(A.seq).limit(limit + (seq > 0)).tuples())
        good, prev, read = seq, hash_, 0
        for r_seq, ts, actor, action, detail, prev_hash, h in rows:
            read += 1
            if read == 1 and seq > 0:
                if r_seq != seq or h != hash_:  # the record the last check ended at changed
                    return seq, good, prev, read
                continue
            if (
                r_seq != good + 1
                or prev_hash != prev
                or audit_hash(r_seq, format_ts(from_ts(ts) or datetime.now(UTC)), actor,
                              action, json.loads(detail), prev) != h
            ):
                return int(r_seq), good, prev, read
            good, prev = int(r_seq), str(h)
        if seq > 0 and read == 0:  # the chain is shorter than it was
            return seq, good, prev, read
        return None, good, prev, read


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(r.seq, from_ts(r.ts) or datetime.now(UTC), r.actor, r.action,
                      json.loads(r.detail), r.prev_hash, r.hash)
