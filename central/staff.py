"""Staff sessions at cashier desks, and sign-in throttling (docs/security.md).

Central, not the desk, decides who is signed in. A successful ``staff.login`` opens a
session: a random token (only its SHA-256 is stored) bound to the device and the badge,
which every later staff request carries in its envelope's ``auth``. It ends at
``staff.logout``, ``idle_s`` after its last use, at ``max_s`` after sign-in, or when an
administrator resets the badge. A new sign-in at the same desk ends the desk's earlier
session.

Failed sign-ins are throttled per badge and per device with growing delays: the first
:data:`FREE_FAILURES` failures cost nothing (typing mistakes), then each failure doubles the
wait before the next attempt, up to ``max_delay_s``. There is no lock that a device could
trigger for everyone: a wrong PIN only ever delays the next try, the right PIN works again
once the wait is over, and an administrator can reset a badge at once. Reaching
:data:`ALARM_FAILURES` raises a security event on the dashboard. Attempts during a wait are
refused by central and never reach the platform, so the platform's own lock-out counter
(the reference platform's is time-limited) sees only the attempts central let through.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from central.store import Store
from central.store.engine import Conn
from central.store.migrations import SCHEMA_LOCK
from yikatong.common.config import StrictModel
from yikatong.protocol.envelope import format_ts

__all__ = ["ALARM_FAILURES", "FREE_FAILURES", "Session", "StaffSessions", "StaffSettings",
           "ThrottleState"]

FREE_FAILURES = 3
ALARM_FAILURES = 5

# The SQL both engines take (central/store/engine.py); SQLite tables of earlier versions keep
# their REAL columns (the same 8-byte float there).
_SQL = (
    "CREATE TABLE IF NOT EXISTS staff_session (token_hash TEXT PRIMARY KEY, dev TEXT NOT NULL, "
    "badge TEXT NOT NULL, staff_id TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL, "
    "issued_at DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION, end_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS staff_session_dev ON staff_session (dev)",
    "CREATE TABLE IF NOT EXISTS signin_throttle (key TEXT PRIMARY KEY, "
    "failures INTEGER NOT NULL, last_failure DOUBLE PRECISION NOT NULL, "
    "next_allowed DOUBLE PRECISION NOT NULL)",
)
_SESSION = ("SELECT dev, badge, staff_id, name, role, last_used, expires_at, ended_at "
            "FROM staff_session WHERE token_hash = ?")
# One statement counts a failure, so failures counted by several instances at once add up
# (the conflicting row stays locked until the transaction ends).
_FAILURE = ("INSERT INTO signin_throttle (key, failures, last_failure, next_allowed) "
            "VALUES (?, 1, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "failures = signin_throttle.failures + 1, last_failure = excluded.last_failure")


class StaffSettings(StrictModel):
    """``[staff]`` of central.toml."""

    #: A session unused this long ends (the desk's own screen lock is shorter).
    idle_s: int = Field(default=900, ge=60, le=86_400)
    #: A session ends this long after sign-in whatever happens (one shift).
    max_s: int = Field(default=12 * 3600, ge=300, le=86_400)
    #: The longest wait the throttle imposes between two sign-in attempts.
    max_delay_s: int = Field(default=900, ge=5, le=86_400)
    #: The wait after the first failure beyond the free ones; doubles with each further one.
    base_delay_s: int = Field(default=5, ge=1, le=3600)


@dataclass(frozen=True, slots=True)
class Session:
    """A live staff session."""

    dev: str
    badge: str
    staff_id: str
    name: str
    role: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ThrottleState:
    """Failure counts after a failed sign-in, and the wait it imposed."""

    badge_failures: int
    dev_failures: int
    wait_s: int
    alarm: bool


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _desk_lock(dev: str) -> int:
    """The store-wide lock key of one desk's sign-ins (a signed 64-bit number)."""
    return int.from_bytes(hashlib.sha256(f"staff-desk:{dev}".encode()).digest()[:8], "big",
                          signed=True)


class StaffSessions:
    """Sessions and throttles in central's store (all methods run inside a write)."""

    def __init__(self, store: Store, settings: StaffSettings | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 token: Callable[[int], str] = secrets.token_urlsafe) -> None:
        self.store = store
        self.settings = settings or StaffSettings()
        self._clock = clock
        self._token = token
        with store.atomic():
            store.lock_in_tx(SCHEMA_LOCK)
            for sql in _SQL:
                store.connection().execute(sql)

    # -- sessions -------------------------------------------------------------------------
    def open(self, db: Conn, dev: str, badge: str, info: dict[str, Any],
             now: datetime) -> dict[str, Any]:
        """After the platform accepted badge + PIN: a new session; returns the reply result."""
        t = now.timestamp()
        # Two sign-ins at one desk handled by two instances at once: the second waits for the
        # first to commit, then ends its session, so a desk never has two live ones.
        self.store.lock_in_tx(_desk_lock(dev))
        db.execute("UPDATE staff_session SET ended_at = ?, end_reason = 'replaced' "
                   "WHERE dev = ? AND ended_at IS NULL", (t, dev))
        token = self._token(32)
        exp = t + self.settings.max_s
        db.execute("INSERT INTO staff_session (token_hash, dev, badge, staff_id, name, role, "
                   "issued_at, last_used, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (_hash(token), dev, badge, str(info["staff_id"]), str(info["name"]),
                    str(info["role"]), t, t, exp))
        db.execute("DELETE FROM signin_throttle WHERE key IN (?, ?)",
                   (f"badge:{badge}", f"dev:{dev}"))
        return {**info, "session_token": token,
                "expires_at": format_ts(datetime.fromtimestamp(exp, UTC))}

    def use(self, db: Conn, dev: str, token: str | None,
            now: datetime) -> Session | None:
        """The live session ``token`` names at ``dev`` (its idle clock restarts), or None."""
        if not token:
            return None
        t = now.timestamp()
        # Locked (PostgreSQL): a sign-out committed by another instance meanwhile is seen
        # here, never overwritten by this use.
        row = db.execute(_SESSION + self.store.dialect.for_update, (_hash(token),)).fetchone()
        if row is None:
            return None
        r_dev, badge, staff_id, name, role, last_used, expires_at, ended_at = row
        if r_dev != dev or ended_at is not None:
            return None
        if t >= expires_at or t - last_used >= self.settings.idle_s:
            db.execute("UPDATE staff_session SET ended_at = ?, end_reason = 'expired' "
                       "WHERE token_hash = ? AND ended_at IS NULL", (t, _hash(token)))
            return None
        db.execute("UPDATE staff_session SET last_used = ? WHERE token_hash = ?",
                   (t, _hash(token)))
        return Session(dev, badge, staff_id, name, role, expires_at)

    def end(self, db: Conn, dev: str, token: str | None, now: datetime,
            reason: str) -> bool:
        """End the session ``token`` names at ``dev``; False when it was not live."""
        if not token:
            return False
        n = db.execute("UPDATE staff_session SET ended_at = ?, end_reason = ? WHERE "
                       "token_hash = ? AND dev = ? AND ended_at IS NULL",
                       (now.timestamp(), reason, _hash(token), dev)).rowcount
        return bool(n)

    def active(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Live sessions (dashboard): device, badge, staff, since, last used."""
        t = (now or self._clock()).timestamp()
        rows = self.store.connection().execute(
            "SELECT dev, badge, staff_id, name, issued_at, last_used FROM staff_session "
            "WHERE ended_at IS NULL AND expires_at > ? AND last_used > ? ORDER BY dev",
            (t, t - self.settings.idle_s)).fetchall()
        return [{"dev": r[0], "badge": r[1], "staff_id": r[2], "name": r[3],
                 "since": datetime.fromtimestamp(r[4], UTC),
                 "last_used": datetime.fromtimestamp(r[5], UTC)} for r in rows]

    # -- throttle -------------------------------------------------------------------------
    def throttle_wait_s(self, db: Conn, dev: str, badge: str,
                        now: datetime) -> tuple[int, str]:
        """Seconds until the badge and the device may try again (0: now), and which waits."""
        t = now.timestamp()
        worst = (0, "")
        for kind, key in (("badge", f"badge:{badge}"), ("device", f"dev:{dev}")):
            row = db.execute("SELECT next_allowed FROM signin_throttle WHERE key = ?",
                             (key,)).fetchone()
            if row is not None and row[0] > t:
                wait = int(row[0] - t + 0.999)
                if wait > worst[0]:
                    worst = (wait, kind)
        return worst

    def failed(self, db: Conn, dev: str, badge: str,
               now: datetime) -> ThrottleState:
        """Count one failed sign-in for the badge and the device; returns the new state."""
        t = now.timestamp()
        counts: list[int] = []
        waits: list[int] = []
        for key in (f"badge:{badge}", f"dev:{dev}"):
            db.execute(_FAILURE, (key, t, t))
            n = int(db.execute("SELECT failures FROM signin_throttle WHERE key = ?",
                               (key,)).fetchone()[0])
            wait = self.delay_s(n)
            db.execute("UPDATE signin_throttle SET next_allowed = ? WHERE key = ?",
                       (t + wait, key))
            counts.append(n)
            waits.append(wait)
        return ThrottleState(counts[0], counts[1], max(waits),
                             alarm=max(counts) >= ALARM_FAILURES)

    def delay_s(self, failures: int) -> int:
        """The wait after ``failures`` consecutive failures (0 for the free ones)."""
        if failures <= FREE_FAILURES:
            return 0
        return min(self.settings.base_delay_s * 2 ** (failures - FREE_FAILURES - 1),
                   self.settings.max_delay_s)

    def reset_badge(self, badge: str, now: datetime) -> bool:
        """Administrator: clear a badge's failures and end its sessions; True if anything."""
        with self.store.atomic():
            db = self.store.connection()
            n = db.execute("DELETE FROM signin_throttle WHERE key = ?",
                           (f"badge:{badge}",)).rowcount
            n += db.execute("UPDATE staff_session SET ended_at = ?, end_reason = 'reset' "
                            "WHERE badge = ? AND ended_at IS NULL",
                            (now.timestamp(), badge)).rowcount
        return bool(n)

    def reset_device(self, dev: str) -> bool:
        """Administrator: clear a device's sign-in failures."""
        with self.store.atomic():
            n = self.store.connection().execute("DELETE FROM signin_throttle WHERE key = ?",
                                                (f"dev:{dev}",)).rowcount
        return bool(n)

    def throttles(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Badges and devices with failures (dashboard)."""
        t = (now or self._clock()).timestamp()
        rows = self.store.connection().execute(
            "SELECT key, failures, last_failure, next_allowed FROM signin_throttle "
            "ORDER BY key").fetchall()
        return [{"kind": k.split(":", 1)[0], "id": k.split(":", 1)[1], "failures": n,
                 "last_failure": datetime.fromtimestamp(lf, UTC),
                 "wait_s": max(0, int(na - t + 0.999))} for k, n, lf, na in rows]

    def purge(self, db: Conn, now: datetime, keep_s: float) -> int:
        """Delete ended or expired sessions older than ``keep_s``."""
        t = now.timestamp()
        return int(db.execute(
            "DELETE FROM staff_session WHERE (ended_at IS NOT NULL AND ended_at < ?) OR "
            "expires_at < ?", (t - keep_s, t - keep_s)).rowcount)
