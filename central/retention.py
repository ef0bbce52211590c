"""How long central keeps what (docs/privacy.md), and the task that enforces it.

Central keeps each request's reply so that a resend gets the same answer (exactly once).
The replies that carry personal or health data (who a patient is, their bills, bookings,
lab results; a staff session token) are needed for that only while the device may still
resend — minutes. After ``personal_reply_retention_s`` such a reply is replaced by a
"no longer held" error reply (the request row stays, so a very late resend is still
recognised and never acted on twice); after ``request_log_retention_days`` the row goes.
Grants and staff sessions are purged with it. Payment records are money records and are
kept (they hold no name or ID number, only the platform's patient id).

Telemetry history (central/telemetry_history.py) is pruned by the same task: raw samples
after ``[telemetry] raw_days``, minute and hour aggregates after ``minute_days`` /
``hour_days``, in batches of short transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from central.authz import Guard
from central.store import Store
from yikatong.common.config import StrictModel
from yikatong.protocol.envelope import decode, encode
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.messages import ErrorCode, make_reply_error

__all__ = ["PERSONAL_REPLY_TYPES", "PrivacySettings", "Retention", "redact_reply"]

log = logging.getLogger(__name__)

#: Request types whose replies carry personal or health data (or a session token).
PERSONAL_REPLY_TYPES = frozenset({
    "patient.identify", "report.fetch", "report.list", "bill.list", "reg.bookings",
    "staff.login", "pay.list",
})


class PrivacySettings(StrictModel):
    """``[privacy]`` of central.toml."""

    #: Replies with personal data are minimised this long after they were sent.
    personal_reply_retention_s: int = Field(default=3600, ge=60, le=30 * 86_400)
    #: Request rows (ids, types, hashes, non-personal replies) are deleted after this.
    request_log_retention_days: int = Field(default=30, ge=1, le=3650)
    #: How often the purge runs.
    purge_interval_s: int = Field(default=300, ge=5, le=86_400)


def redact_reply(reply: bytes) -> bytes:
    """The stored reply with its result dropped: an error saying it is no longer held."""
    try:
        env = decode(reply)
    except ProtocolError:
        return b"{}"
    fake_req = env.model_copy(update={"id": env.corr or env.id})
    out = make_reply_error(fake_req, ErrorCode.EXPIRED,
                           "reply no longer held (privacy retention)", "结果已过保存期限",
                           False, now=datetime.fromisoformat(env.ts.replace("Z", "+00:00")),
                           id=env.id)
    return encode(out)


class Retention:
    """Runs the purge every ``purge_interval_s``."""

    def __init__(self, store: Store, guard: Guard | None, settings: PrivacySettings, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 telemetry: Any = None) -> None:
        self.store = store
        #: a ``central.telemetry_history.TelemetryHistory`` (its ``prune_once``), or None
        self.telemetry = telemetry
        self.guard = guard
        self.settings = settings
        self._clock = clock

    def purge_once(self) -> dict[str, int]:
        """One purge; returns what it did (for logs and tests)."""
        s = self.settings
        now = self._clock()
        keep_s = s.request_log_retention_days * 86_400
        redacted, deleted = self.store.purge_requests(
            now, personal_types=PERSONAL_REPLY_TYPES,
            personal_keep_s=s.personal_reply_retention_s, keep_s=keep_s, redact=redact_reply)
        grants = self.guard.purge(now, min(keep_s, 86_400)) if self.guard is not None else 0
        out = {"redacted": redacted, "deleted": deleted, "grants": grants}
        if self.telemetry is not None:
            pruned = self.telemetry.prune_once(now)
            out.update({f"telemetry_{tier}": n for tier, n in pruned.items()})
        return out

    async def run(self) -> None:
        """Purge now and then every ``purge_interval_s`` (as a task)."""
        while True:
            try:
                done = await asyncio.to_thread(self.purge_once)
                if any(done.values()):
                    log.info("retention purge", extra=done)
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(self.settings.purge_interval_s)
