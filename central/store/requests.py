"""The store's request dedup log: claim, finish, release, attempted requests, retention."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from central.store import sql
from central.store.audit import AuditOps
from central.store.values import Begin, to_ts

__all__ = ["RequestOps"]


class RequestOps(AuditOps):
    """Request dedup (part of :class:`~central.store.Store`; a finish appends an audit record)."""

    @property
    def _req_get_locked(self) -> str:
        return sql.req_get_locked(self.dialect.for_update)

    def begin_request(  # noqa: PLR0917
        self, req_id: str, dev: str, type_: str, body_hash: str, now: datetime, lease_s: float,
        owner: str | None = None,
    ) -> Begin:
        """Claim request ``req_id`` for processing, or say why not (done/busy/mismatch).

        A ``received`` row older than ``lease_s`` belongs to a forwarder that died mid-call;
        it is taken over (the platform's idempotency key makes the repeat call harmless).
        ``owner`` is ``"<client_id>/<boot nonce>"``: a row left by an earlier boot of the
        same client id is taken over at once — that process is gone (the broker allows one
        connection per client id), so waiting out the lease would only delay the device.
        """
        with self.atomic():
            return self.begin_request_in_tx(req_id, dev, type_, body_hash, now, lease_s, owner)

    def begin_request_in_tx(  # noqa: PLR0917
        self, req_id: str, dev: str, type_: str, body_hash: str, now: datetime, lease_s: float,
        owner: str | None = None, *, legacy: Callable[[], str] | None = None,
    ) -> Begin:
        """:meth:`begin_request` inside the caller's write transaction.

        ``legacy()``: the body hash as an older version computed it (asked only on a
        mismatch), so a resend across an upgrade is not mistaken for another body.
        """
        self._require_write()
        t = to_ts(now)
        db = self.connection()
        # The INSERT is the claim: of two instances given the same new id at once, exactly
        # one inserts; the other waits for its commit and reads the row below.
        if db.execute(sql.REQ_NEW, (req_id, dev, type_, body_hash, t, owner)).rowcount == 1:
            return Begin("new")
        r = db.execute(self._req_get_locked, (req_id,)).fetchone()
        if r is None:  # released by its claimer between the two statements: claim it now
            db.execute(sql.REQ_NEW, (req_id, dev, type_, body_hash, t, owner))
            return Begin("new")
        r_dev, r_type, r_hash, r_state, r_reply, r_received, r_owner = r
        same_body = r_hash == body_hash or (legacy is not None and r_hash == legacy())
        if r_dev != dev or r_type != type_ or not same_body:
            return Begin("mismatch")
        if r_state == "done":
            return Begin("done", bytes(r_reply) if r_reply is not None else None)
        if t - r_received < lease_s and not _earlier_boot(r_owner, owner):
            return Begin("busy")
        db.execute(sql.REQ_TAKE, (t, owner, req_id))
        return Begin("new", retaken=True)

    def finish_request(
        self, req_id: str, reply: bytes, now: datetime, *, actor: str, action: str,
        detail: dict[str, Any],
    ) -> None:
        """Store the reply and mark the request done, with its audit record, in one transaction."""
        with self.atomic():
            self.finish_request_in_tx(req_id, reply, now, actor=actor, action=action,
                                      detail=detail)

    def finish_request_in_tx(
        self, req_id: str, reply: bytes, now: datetime, *, actor: str, action: str,
        detail: dict[str, Any],
    ) -> None:
        """:meth:`finish_request` inside the caller's write transaction."""
        self._require_write()
        self.connection().execute(sql.REQ_DONE, (reply, to_ts(now), req_id))
        self.append_audit_in_tx(now, actor, action, detail)

    def replace_reply_in_tx(self, req_id: str, reply: bytes) -> None:
        """Inside a write: store ``reply`` as a done request's answer (brought up to date)."""
        self._require_write()
        self.connection().execute(sql.REQ_SET_REPLY, (reply, req_id))

    def release_request(self, req_id: str) -> None:
        """Forget an unfinished request (nothing happened): a resend is processed afresh."""
        with self.atomic():
            self.release_request_in_tx(req_id)

    def release_request_in_tx(self, req_id: str) -> None:
        """:meth:`release_request` inside the caller's write transaction."""
        self._require_write()
        R = self.RequestLog
        R.delete().where((R.id == req_id) & (R.state == "received")).execute()

    def mark_attempted_in_tx(self, req_id: str, dev: str, now: datetime) -> None:
        """Inside a write: the platform was asked for ``req_id`` and may have acted."""
        self._require_write()
        self.connection().execute(sql.ATTEMPTED_ADD, (req_id, dev, to_ts(now)))

    def was_attempted(self, req_id: str) -> bool:
        """True when the platform was asked for ``req_id`` before without a final answer."""
        return self.connection().execute(sql.ATTEMPTED_GET, (req_id,)).fetchone() is not None

    def request_state(self, req_id: str) -> str | None:
        """``received``/``done`` or None (tests, dashboard)."""
        r = self.RequestLog.get_or_none(self.RequestLog.id == req_id)
        return None if r is None else str(r.state)

    def purge_requests(self, now: datetime, *, personal_types: frozenset[str],
                       personal_keep_s: float, keep_s: float,
                       redact: Callable[[bytes], bytes]) -> tuple[int, int]:
        """Retention (docs/privacy.md): minimise old personal replies, forget old requests.

        A done request of a ``personal_types`` type older than ``personal_keep_s`` keeps its
        row (so a late resend is still recognised) but its reply is replaced by
        ``redact(reply)``; any request older than ``keep_s`` is deleted. Returns (redacted,
        deleted).
        """
        t = to_ts(now)
        with self.atomic():
            db = self.connection()
            rows = db.execute(sql.req_personal_done(len(personal_types)),
                              (*sorted(personal_types), t - personal_keep_s)).fetchall()
            for req_id, reply in rows:
                db.execute(sql.REQ_REDACT, (redact(bytes(reply)), req_id))
            deleted = db.execute(sql.REQ_DELETE_OLD, (t - keep_s,)).rowcount
            db.execute(sql.ATTEMPTED_DELETE_OLD, (t - keep_s,))
        return len(rows), int(deleted)


def _earlier_boot(row_owner: str | None, owner: str | None) -> bool:
    """True when ``row_owner`` is another boot of ``owner``'s client id."""
    if not row_owner or not owner or row_owner == owner:
        return False
    return row_owner.rpartition("/")[0] == owner.rpartition("/")[0]
