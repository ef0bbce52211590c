"""Staff accounts, web sessions and roles at central: the dashboard and ``ykt fw``.

docs/fleet-trust.md ("Staff roles at central"). Not the desk sessions of cashiers
(central/staff.py): those are badge sign-ins at terminals over MQTT.

* **Accounts** (``dashboard_user``): user name (``^[a-z][a-z0-9._-]{1,31}$``), display name,
  role ``viewer`` < ``technician`` < ``administrator``, an scrypt hash with its own salt
  (n=2**14, r=8, p=1; the parameters are stored with the hash), a disabled flag. Accounts
  are never deleted, only disabled, so the audit's names keep meaning someone.
* **Sessions** (``dashboard_session``): a random token, of which only the SHA-256 is kept;
  ended at sign-out, after ``idle_s`` (30 min) unused, ``max_s`` (12 h) after sign-in, when
  the account is disabled or its password set. The page's automatic refreshes send
  ``X-Ykt-Poll: 1`` and do not count as use. The browser holds the token in the cookie
  ``ykt_session`` (HttpOnly, SameSite=Strict, Secure over https, Path=/) and never sees it
  otherwise; ``ykt fw`` asks for it in the sign-in answer (``want_token``) and sends it as
  ``Authorization: Bearer``. The role is read from the account on every request, so a
  change applies at once.
* **The admin token** (``[dashboard] admin_token_file``) keeps working as the bootstrap
  administrator, actor ``admin-token``: as a Bearer header (scripts, ``ykt fw --token-file``)
  or exchanged for a browser session at the sign-in form. Such a session is bound to the
  token: after a new token it is refused.
* **Sign-in throttling** per user name, like the desks' (central/staff.py): the first
  :data:`FREE_FAILURES` failures cost nothing, then each doubles the wait before the next
  try, up to ``max_delay_s``. Never a permanent lock: the right password works again once
  the wait is over, and setting a password clears it. Unknown and known names are treated
  alike (no user-name probing); names that cannot exist share one count. A try is counted
  before its password is checked, so parallel tries get no more through than serial ones.
  Every failure is a security event, and so is the first refused try of each wait.
* **CSRF**: a state-changing request authenticated by the cookie must carry
  ``X-Requested-With: ykt`` (the dashboard's JS sends it; another site's form cannot), or
  it is refused 403. ``POST /api/login`` needs the header too. Bearer requests are exempt:
  a browser never adds that header by itself.

``GET /api/status`` stays open for health checks; without a signed-in caller it says only
the site's name and time zone (the sign-in page shows them) — no devices, no audit chain,
no broker or forwarder figures.

Every write is audited in central's chain with the staff member's user name as the actor.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from central.store import Store
from central.store.migrations import SCHEMA_LOCK
from yikatong.common.config import StrictModel
from yikatong.common.errors import LocalizedError
from yikatong.protocol.envelope import format_ts

__all__ = [
    "ADMIN_ACTOR",
    "ROLES",
    "SECURITY_ACTIONS",
    "SESSION_COOKIE",
    "Administrator",
    "ApiError",
    "AuthSettings",
    "DashboardAuth",
    "StaffAccounts",
    "StaffUser",
    "Technician",
    "Viewer",
    "auth_router",
    "hash_password",
    "require",
    "verify_password",
]

Role = Literal["viewer", "technician", "administrator"]
ROLES: tuple[str, ...] = ("viewer", "technician", "administrator")
_RANK = {r: i for i, r in enumerate(ROLES)}
ROLE_ZH = {"viewer": "查看员", "technician": "技术员", "administrator": "管理员"}

USERNAME_RE = r"^[a-z][a-z0-9._-]{1,31}$"
_USERNAME = re.compile(USERNAME_RE)
#: The actor of the admin token; reserved, no account may take this name.
ADMIN_ACTOR = "admin-token"
SESSION_COOKIE = "ykt_session"
CSRF_HEADER = "x-requested-with"
CSRF_VALUE = "ykt"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

FREE_FAILURES = 3
#: Audit actions of this module shown as security events on the dashboard.
SECURITY_ACTIONS = frozenset({"dashboard.signin_failed", "dashboard.signin_throttled",
                              "dashboard.forbidden", "dashboard.csrf_refused"})

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: Sessions ended or expired this long ago are deleted at the next sign-in.
_KEEP_ENDED_S = 7 * 86_400
#: ``last_used`` is written at most this often per session (every poll would be a write).
_TOUCH_S = 10.0

# The SQL both engines take (central/store/engine.py); SQLite tables of earlier versions keep
# their REAL columns (the same 8-byte float there).
_SQL = (
    "CREATE TABLE IF NOT EXISTS dashboard_user (username TEXT PRIMARY KEY, "
    "name TEXT NOT NULL, role TEXT NOT NULL, pw_hash TEXT NOT NULL, "
    "disabled INTEGER NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL, "
    "created_by TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dashboard_session (token_hash TEXT PRIMARY KEY, "
    "username TEXT NOT NULL, bound TEXT NOT NULL DEFAULT '', "
    "created_at DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION, end_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS dashboard_session_user ON dashboard_session (username)",
    "CREATE TABLE IF NOT EXISTS dashboard_throttle (username TEXT PRIMARY KEY, "
    "failures INTEGER NOT NULL, last_failure DOUBLE PRECISION NOT NULL, "
    "next_allowed DOUBLE PRECISION NOT NULL, "
    "refused_audited DOUBLE PRECISION NOT NULL DEFAULT 0)",
)
_THROTTLE_GET = ("SELECT failures, next_allowed, refused_audited FROM dashboard_throttle "
                 "WHERE username = ?")
#: The throttle key of every user name that cannot exist (fails :data:`USERNAME_RE`): one
#: shared count, so made-up names are throttled like a real one and add no rows.
INVALID_NAME_KEY = "(invalid)"
#: At most this many scrypt checks of sign-ins run at once (the rest wait their turn).
SCRYPT_CONCURRENCY = 4
#: Requests carrying this header (the dashboard's automatic refreshes and long-polls) are
#: authenticated as usual but do not restart the session's idle clock.
POLL_HEADER = "x-ykt-poll"


class AuthSettings(StrictModel):
    """Lifetimes of staff sessions and the sign-in throttle."""

    #: A session unused this long ends.
    idle_s: int = Field(default=1800, ge=60, le=86_400)
    #: A session ends this long after sign-in whatever happens (one shift).
    max_s: int = Field(default=12 * 3600, ge=300, le=7 * 86_400)
    #: The wait after the first failure beyond the free ones; doubles with each further one.
    base_delay_s: int = Field(default=5, ge=1, le=3600)
    #: The longest wait between two sign-in attempts of one user name.
    max_delay_s: int = Field(default=900, ge=5, le=86_400)


@dataclass(frozen=True, slots=True)
class StaffUser:
    """A signed-in staff member (or the admin token)."""

    username: str
    name: str
    role: str

    def may(self, role: str) -> bool:
        """True when this user's role is ``role`` or above."""
        return _RANK.get(self.role, -1) >= _RANK[role]


ADMIN_USER = StaffUser(ADMIN_ACTOR, "管理员令牌 Admin token", "administrator")


class ApiError(LocalizedError):
    """An API refusal: HTTP status and ``{"error": code, "message", "message_zh", …}``."""

    code = "api_error"

    def __init__(self, status: int, code: str, message: str, message_zh: str,
                 **extra: Any) -> None:
        super().__init__(message, message_zh, reason=code)
        self.status = status
        self.code = code
        self.extra = extra
        self.headers: dict[str, str] | None = None

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "message": self.message,
                             "message_zh": self.message_zh, **self.extra},
                            status_code=self.status, headers=self.headers)


def _unauthorized(message: str = "sign in first", message_zh: str = "请先登录") -> ApiError:
    e = ApiError(401, "unauthorized", message, message_zh)
    e.headers = {"WWW-Authenticate": "Bearer"}
    return e


def _role_needed(role: str) -> ApiError:
    return ApiError(403, "forbidden", f"{role} role needed", f"需要{ROLE_ZH[role]}权限",
                    need=role)


# -- passwords ----------------------------------------------------------------------------

def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) of ``password`` with a fresh 16-byte salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                        dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare of the hashes)."""
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        dk = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                            r=int(r), p=int(p), dklen=len(base64.b64decode(want)),
                            maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk, base64.b64decode(want))


_DUMMY: list[str] = []
_DUMMY_LOCK = threading.Lock()


def _dummy_hash() -> str:
    """A hash to check unknown names against, so they take as long as known ones.

    An scrypt run: computed once, when :class:`StaffAccounts` starts (or else in the worker
    thread of the first check), never on the event loop while requests wait.
    """
    with _DUMMY_LOCK:
        if not _DUMMY:
            _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
        return _DUMMY[0]


def _verify(password: str, stored: str | None) -> bool:
    """:func:`verify_password` against ``stored``, or the dummy hash when None (worker thread)."""
    return verify_password(password, stored if stored is not None else _dummy_hash())


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _iso(t: float) -> str:
    return format_ts(datetime.fromtimestamp(t, UTC))


# -- accounts and sessions ----------------------------------------------------------------

class StaffAccounts:
    """Staff accounts, sessions and the sign-in throttle in central's store."""

    def __init__(self, store: Store, settings: AuthSettings | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 token: Callable[[int], str] = secrets.token_urlsafe) -> None:
        self.store = store
        self.settings = settings or AuthSettings()
        self.clock = clock
        self._token = token
        #: Bounds the scrypt checks of concurrent sign-ins (CPU and memory).
        self._scrypt = asyncio.Semaphore(SCRYPT_CONCURRENCY)
        with store.atomic():
            store.lock_in_tx(SCHEMA_LOCK)
            db = store.connection()
            for sql in _SQL:
                db.execute(sql)
            cols = {c.name for c in store.db.get_columns("dashboard_throttle")}
            if "refused_audited" not in cols:  # a store from before this column
                db.execute("ALTER TABLE dashboard_throttle ADD COLUMN refused_audited "
                           "DOUBLE PRECISION NOT NULL DEFAULT 0")
        _dummy_hash()  # at start-up, not on the event loop at the first unknown name

    def now(self) -> datetime:
        return self.clock()

    def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        """One record in central's audit chain."""
        self.store.audit(self.clock(), actor, action, detail)

    # -- accounts -------------------------------------------------------------------------
    def user(self, username: str) -> dict[str, Any] | None:
        row = self.store.connection().execute(
            "SELECT username, name, role, disabled, created_at, created_by, updated_at "
            "FROM dashboard_user WHERE username = ?", (username,)).fetchone()
        return None if row is None else self._user_dict(row)

    def users(self) -> list[dict[str, Any]]:
        rows = self.store.connection().execute(
            "SELECT username, name, role, disabled, created_at, created_by, updated_at "
            "FROM dashboard_user ORDER BY username").fetchall()
        return [self._user_dict(r) for r in rows]

    @staticmethod
    def _user_dict(r: Any) -> dict[str, Any]:
        return {"username": r[0], "name": r[1], "role": r[2], "disabled": bool(r[3]),
                "created_at": _iso(r[4]), "created_by": r[5], "updated_at": _iso(r[6])}

    async def add_user(self, username: str, name: str, role: str, password: str, *,
                       actor: str) -> dict[str, Any]:
        """Create an account (audited ``dashboard.user_add``); 409 if the name is taken."""
        if not _USERNAME.match(username) or username == ADMIN_ACTOR:
            raise ApiError(400, "bad_username", f"{username!r} cannot be a user name",
                           "用户名不可用")
        if role not in _RANK:
            raise ApiError(400, "bad_role", f"unknown role {role!r}", "未知角色")
        pw_hash = await asyncio.to_thread(hash_password, password)
        t = self.clock().timestamp()
        with self.store.atomic():
            # No look-before-insert: the same name added on two instances at once must give
            # one account and one 409, not a duplicate-key error.
            if not self.store.connection().execute(
                    "INSERT INTO dashboard_user (username, name, role, pw_hash, disabled, "
                    "created_at, created_by, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?) "
                    "ON CONFLICT (username) DO NOTHING",
                    (username, name, role, pw_hash, t, actor, t)).rowcount:
                raise ApiError(409, "user_exists", f"user {username} exists already",
                               f"用户 {username} 已存在")
            self.store.append_audit_in_tx(self.clock(), actor, "dashboard.user_add",
                                          {"username": username, "name": name, "role": role})
        return self.user(username) or {}

    def set_disabled(self, username: str, disabled: bool, *, actor: str) -> dict[str, Any]:
        """Disable (ending every session) or enable an account (audited)."""
        t = self.clock().timestamp()
        with self.store.atomic():
            db = self.store.connection()
            n = db.execute("UPDATE dashboard_user SET disabled = ?, updated_at = ? "
                           "WHERE username = ?", (int(disabled), t, username)).rowcount
            if not n:
                raise ApiError(404, "unknown_user", f"no user {username}",
                               f"没有用户 {username}")
            ended = 0
            if disabled:
                ended = self._end_all_in_tx(username, t, "disabled")
            self.store.append_audit_in_tx(
                self.clock(), actor,
                "dashboard.user_disable" if disabled else "dashboard.user_enable",
                {"username": username, "sessions_ended": ended})
        return self.user(username) or {}

    async def set_password(self, username: str, password: str, *,
                           actor: str) -> dict[str, Any]:
        """A new password: ends the user's sessions and clears its throttle (audited)."""
        pw_hash = await asyncio.to_thread(hash_password, password)
        t = self.clock().timestamp()
        with self.store.atomic():
            db = self.store.connection()
            n = db.execute("UPDATE dashboard_user SET pw_hash = ?, updated_at = ? "
                           "WHERE username = ?", (pw_hash, t, username)).rowcount
            if not n:
                raise ApiError(404, "unknown_user", f"no user {username}",
                               f"没有用户 {username}")
            ended = self._end_all_in_tx(username, t, "password")
            db.execute("DELETE FROM dashboard_throttle WHERE username = ?", (username,))
            self.store.append_audit_in_tx(self.clock(), actor, "dashboard.user_password",
                                          {"username": username, "sessions_ended": ended})
        return self.user(username) or {}

    def _end_all_in_tx(self, username: str, t: float, reason: str) -> int:
        return int(self.store.connection().execute(
            "UPDATE dashboard_session SET ended_at = ?, end_reason = ? "
            "WHERE username = ? AND ended_at IS NULL", (t, reason, username)).rowcount)

    # -- sign-in --------------------------------------------------------------------------
    def wait_s(self, username: str) -> int:
        """Seconds until ``username`` may try again (0: now)."""
        row = self.store.connection().execute(
            "SELECT next_allowed FROM dashboard_throttle WHERE username = ?",
            (username,)).fetchone()
        t = self.clock().timestamp()
        return 0 if row is None or row[0] <= t else int(row[0] - t + 0.999)

    def delay_s(self, failures: int) -> int:
        """The wait after ``failures`` consecutive failures (0 for the free ones)."""
        if failures <= FREE_FAILURES:
            return 0
        return int(min(self.settings.base_delay_s * 2 ** (failures - FREE_FAILURES - 1),
                       self.settings.max_delay_s))

    def reserve(self, username: str, detail: dict[str, Any]) -> tuple[bool, int, int]:
        """Count a sign-in try *before* its password is checked: (allowed, failures, wait_s).

        One transaction: when ``username`` must still wait, the try is refused
        (``(False, failures, seconds left)``; audited ``dashboard.signin_throttled`` once per
        wait, not at every refusal). Otherwise it is counted as a failure at once and the
        wait that failure brings starts now (``(True, failures, wait_s)``); a success then
        clears the count (:meth:`open_session`). So tries sent in parallel are counted like
        tries one after another: none sees a count its neighbours have not raised yet.
        """
        now = self.clock()
        t = now.timestamp()
        with self.store.atomic():
            db = self.store.connection()
            # The row exists (a try counts as a failure until it succeeds, so it would be
            # written below anyway) and is locked on PostgreSQL: tries arriving at several
            # instances at once are counted one after another, like tries at one.
            db.execute("INSERT INTO dashboard_throttle (username, failures, last_failure, "
                       "next_allowed, refused_audited) VALUES (?, 0, ?, 0, 0) "
                       "ON CONFLICT (username) DO NOTHING", (username, t))
            row = db.execute(_THROTTLE_GET + self.store.dialect.for_update,
                             (username,)).fetchone()
            n = row[0]
            if row[1] > t:
                wait = int(row[1] - t + 0.999)
                if row[2] != row[1]:  # the first refusal of this wait
                    db.execute("UPDATE dashboard_throttle SET refused_audited = next_allowed "
                               "WHERE username = ?", (username,))
                    self.store.append_audit_in_tx(
                        now, "dashboard", "dashboard.signin_throttled",
                        {"username": username, "failures": n, "next_try_s": wait, **detail})
                return False, n, wait
            n += 1
            wait = self.delay_s(n)
            db.execute("UPDATE dashboard_throttle SET failures = ?, last_failure = ?, "
                       "next_allowed = ?, refused_audited = 0 WHERE username = ?",
                       (n, t, t + wait, username))
        return True, n, wait

    def failed(self, username: str, failures: int, wait: int,
               detail: dict[str, Any]) -> None:
        """Audit a failed sign-in counted by :meth:`reserve` (a security event)."""
        self.audit("dashboard", "dashboard.signin_failed",
                   {"username": username, "failures": failures, "next_try_s": wait, **detail})

    async def check_password(self, username: str, password: str) -> dict[str, Any] | None:
        """The account when ``password`` is right and it is enabled; None otherwise.

        An unknown name is checked against a dummy hash, so it takes as long as a known one.
        """
        row = self.store.connection().execute(
            "SELECT pw_hash, disabled FROM dashboard_user WHERE username = ?",
            (username,)).fetchone()
        ok = await self.verify(password, row[0] if row else None)
        if not ok or row is None or row[1]:
            return None
        return self.user(username)

    async def verify(self, password: str, stored: str | None) -> bool:
        """:func:`verify_password` in a worker thread, at most :data:`SCRYPT_CONCURRENCY` at
        once; ``stored`` None checks against the dummy hash (and is always False)."""
        async with self._scrypt:
            ok = await asyncio.to_thread(_verify, password, stored)
        return ok and stored is not None

    def open_session(self, username: str, *, bound: str = "",
                     detail: dict[str, Any] | None = None) -> tuple[str, float]:
        """A new session for ``username`` (audited ``dashboard.signin``); (token, expires_at)."""
        now = self.clock()
        t = now.timestamp()
        token = self._token(32)
        exp = t + self.settings.max_s
        with self.store.atomic():
            db = self.store.connection()
            db.execute("DELETE FROM dashboard_throttle WHERE username = ?", (username,))
            db.execute("DELETE FROM dashboard_session WHERE (ended_at IS NOT NULL AND "
                       "ended_at < ?) OR expires_at < ?", (t - _KEEP_ENDED_S,
                                                           t - _KEEP_ENDED_S))
            db.execute("INSERT INTO dashboard_session (token_hash, username, bound, created_at, "
                       "last_used, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                       (_sha(token), username, bound, t, t, exp))
            self.store.append_audit_in_tx(now, username, "dashboard.signin", detail or {})
        return token, exp

    def session(self, token: str, *, bound: str = "", touch: bool = True
                ) -> tuple[StaffUser, dict[str, Any]] | None:
        """The live session ``token`` names, or None.

        ``bound`` is the admin token's fingerprint: a session opened with the admin token
        lives only while that token is central's. ``touch`` restarts the idle clock: False
        for the page's automatic refreshes (:data:`POLL_HEADER`), so a dashboard left open
        and unattended is signed out after ``idle_s`` like any other.
        """
        t = self.clock().timestamp()
        db = self.store.connection()
        row = db.execute("SELECT username, bound, created_at, last_used, expires_at, ended_at "
                         "FROM dashboard_session WHERE token_hash = ?",
                         (_sha(token),)).fetchone()
        if row is None or row[5] is not None:
            return None
        username, s_bound, created, last_used, expires_at, _ = row
        reason = None
        if t >= expires_at or t - last_used >= self.settings.idle_s:
            reason = "expired"
        if username == ADMIN_ACTOR:
            user: StaffUser | None = ADMIN_USER if hmac.compare_digest(s_bound, bound) else None
        else:
            u = self.user(username)
            user = StaffUser(u["username"], u["name"], u["role"]) if u and not u["disabled"] \
                else None
        if user is None:
            reason = reason or "revoked"
        if reason is not None:
            with self.store.atomic():
                db.execute("UPDATE dashboard_session SET ended_at = ?, end_reason = ? "
                           "WHERE token_hash = ? AND ended_at IS NULL",
                           (t, reason, _sha(token)))
            return None
        if touch and t - last_used >= _TOUCH_S:
            with self.store.atomic():
                db.execute("UPDATE dashboard_session SET last_used = ? WHERE token_hash = ?",
                           (t, _sha(token)))
            last_used = t
        assert user is not None
        return user, {"created_at": _iso(created), "expires_at": _iso(expires_at),
                      "idle_expires_at": _iso(min(expires_at,
                                                  last_used + self.settings.idle_s)),
                      "idle_timeout_s": self.settings.idle_s}

    def end_session(self, token: str, reason: str = "signout") -> str | None:
        """End the session ``token`` names; its user name, or None when it was not live."""
        t = self.clock().timestamp()
        with self.store.atomic():
            db = self.store.connection()
            # Compare-and-set: of two sign-outs of one session (two instances), one ends it.
            if not db.execute("UPDATE dashboard_session SET ended_at = ?, end_reason = ? "
                              "WHERE token_hash = ? AND ended_at IS NULL",
                              (t, reason, _sha(token))).rowcount:
                return None
            row = db.execute("SELECT username FROM dashboard_session WHERE token_hash = ?",
                             (_sha(token),)).fetchone()
            self.store.append_audit_in_tx(self.clock(), row[0], "dashboard.signout",
                                          {"reason": reason})
        return str(row[0])

    def throttles(self) -> list[dict[str, Any]]:
        """User names with failed sign-ins (the dashboard's security list)."""
        t = self.clock().timestamp()
        rows = self.store.connection().execute(
            "SELECT username, failures, last_failure, next_allowed FROM dashboard_throttle "
            "ORDER BY username").fetchall()
        return [{"kind": "user", "id": u, "failures": n, "last_failure": _iso(lf),
                 "wait_s": max(0, int(na - t + 0.999))} for u, n, lf, na in rows]

    def active_sessions(self) -> list[dict[str, Any]]:
        """Live staff sessions: user, since, last used."""
        t = self.clock().timestamp()
        rows = self.store.connection().execute(
            "SELECT username, created_at, last_used FROM dashboard_session WHERE ended_at IS "
            "NULL AND expires_at > ? AND last_used > ? ORDER BY username",
            (t, t - self.settings.idle_s)).fetchall()
        return [{"username": r[0], "since": _iso(r[1]), "last_used": _iso(r[2])} for r in rows]


# -- requests -----------------------------------------------------------------------------

class DashboardAuth:
    """Who sends a request: the admin token, a Bearer session token or the session cookie."""

    def __init__(self, accounts: StaffAccounts, admin_token: str) -> None:
        self.accounts = accounts
        self._admin = admin_token
        #: Binds sessions opened with the admin token to this token.
        self.admin_fingerprint = _sha("ykt-admin-session:" + admin_token)[:32]

    def is_admin_token(self, token: str) -> bool:
        return bool(self._admin) and hmac.compare_digest(token.encode(), self._admin.encode())

    def _bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("a Bearer token is needed", "需要 Bearer 令牌")
        return token.strip()

    def identify(self, request: Request) -> tuple[StaffUser, str, dict[str, Any] | None] | None:
        """(user, how: ``admin-token`` | ``bearer`` | ``cookie``, session) or None (nobody).

        A bad Bearer header is refused (401) even when a good cookie comes with it. A request
        with ``X-Ykt-Poll: 1`` (an automatic refresh, not the staff member's doing) does not
        restart the session's idle clock.
        """
        touch = request.headers.get(POLL_HEADER, "") != "1"
        token = self._bearer(request)
        if token is not None:
            if self.is_admin_token(token):
                return ADMIN_USER, ADMIN_ACTOR, None
            found = self.accounts.session(token, bound=self.admin_fingerprint, touch=touch)
            if found is None:
                raise _unauthorized("session expired or unknown: sign in again",
                                    "会话已过期或无效，请重新登录")
            return found[0], "bearer", found[1]
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            found = self.accounts.session(cookie, bound=self.admin_fingerprint, touch=touch)
            if found is not None:
                return found[0], "cookie", found[1]
        return None

    def check(self, request: Request, role: str) -> StaffUser:
        """The caller, when signed in with ``role`` or above; else 401 / 403 (audited)."""
        who = self.identify(request)
        if who is None:
            raise _unauthorized()
        user, how, _ = who
        writes = request.method not in SAFE_METHODS
        if how == "cookie" and writes and not csrf_ok(request):
            self.accounts.audit(user.username, "dashboard.csrf_refused",
                                {"method": request.method, "path": request.url.path})
            raise ApiError(403, "csrf", "request refused: header X-Requested-With: ykt missing",
                           "请求被拒绝：缺少 X-Requested-With 头")
        if not user.may(role):
            if writes:  # a read refused is no event; a write refused is
                self.accounts.audit(user.username, "dashboard.forbidden",
                                    {"method": request.method, "path": request.url.path,
                                     "role": user.role, "need": role})
            raise _role_needed(role)
        request.state.staff_user = user
        return user


def csrf_ok(request: Request) -> bool:
    return request.headers.get(CSRF_HEADER, "").lower() == CSRF_VALUE


def require(role: str) -> Callable[[Request], Awaitable[StaffUser]]:
    """A FastAPI dependency: the signed-in :class:`StaffUser` with ``role`` or above.

    Async on purpose: FastAPI runs sync dependencies in a worker thread, and the store's
    connection belongs to the event loop's thread.
    """
    if role not in _RANK:
        raise ValueError(role)

    async def dep(request: Request) -> StaffUser:
        auth: DashboardAuth = request.app.state.staff_auth
        return auth.check(request, role)

    dep.__name__ = f"require_{role}"
    return dep


VIEWER = require("viewer")
TECHNICIAN = require("technician")
ADMINISTRATOR = require("administrator")
#: Endpoint parameters: ``user: Technician`` is the signed-in technician (or above).
Viewer = Annotated[StaffUser, Depends(VIEWER)]
Technician = Annotated[StaffUser, Depends(TECHNICIAN)]
Administrator = Annotated[StaffUser, Depends(ADMINISTRATOR)]


def signed_in(request: Request) -> StaffUser | None:
    """The caller if signed in (any role), else None; never raises for a missing sign-in."""
    auth: DashboardAuth = request.app.state.staff_auth
    try:
        who = auth.identify(request)
    except ApiError:
        return None
    return None if who is None else who[0]


# -- endpoints ----------------------------------------------------------------------------

_NAME = r"^[^\x00-\x1f\x7f]{1,64}$"


class LoginIn(BaseModel):
    """User name and password, or the admin token (bootstrap administrator)."""

    model_config = ConfigDict(extra="forbid")
    username: str | None = Field(default=None, max_length=64)
    password: str | None = Field(default=None, max_length=1024)
    token: str | None = Field(default=None, max_length=1024)
    #: Answer the session token in the body too (``ykt fw login``). The browser never asks:
    #: it has the HttpOnly cookie, which the page's scripts cannot read.
    want_token: bool = False


class UserIn(BaseModel):
    """A new staff account."""

    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_RE)
    name: str = Field(pattern=_NAME)
    role: Role
    password: str = Field(min_length=10, max_length=1024)


class PasswordIn(BaseModel):
    """A new password for an account."""

    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=10, max_length=1024)


def _public(user: StaffUser) -> dict[str, Any]:
    return {"username": user.username, "name": user.name, "role": user.role}


def auth_router(auth: DashboardAuth) -> APIRouter:
    """``/api/login``, ``/api/logout``, ``/api/me`` and ``/api/users…``."""
    api = APIRouter(prefix="/api")
    acc = auth.accounts

    @api.post("/login")
    async def login(body: LoginIn, request: Request, response: Response) -> dict[str, Any]:
        if not csrf_ok(request):
            raise ApiError(403, "csrf", "request refused: header X-Requested-With: ykt missing",
                           "请求被拒绝：缺少 X-Requested-With 头")
        ip = request.client.host if request.client else None
        if body.token is not None:
            name, detail = ADMIN_ACTOR, {"via": "admin-token", "ip": ip}
        elif body.username is not None and body.password is not None:
            name, detail = body.username.strip().lower(), {"via": "password", "ip": ip}
        else:
            raise ApiError(400, "bad_request", "give username and password",
                           "请输入用户名和密码")
        valid_name = name == ADMIN_ACTOR or bool(_USERNAME.match(name))
        # Counted before the (slow) check, in one transaction: parallel tries cannot all
        # pass the throttle before the first of them fails. Names that cannot exist share
        # one count.
        key = name if valid_name else INVALID_NAME_KEY
        allowed, failures, wait = acc.reserve(key, {"ip": ip})
        if not allowed:
            raise ApiError(429, "throttled",
                           f"too many failed sign-ins: try again in {wait} s",
                           f"登录失败次数过多，请 {wait} 秒后再试", retry_after_s=wait)
        user: StaffUser | None = None
        bound = ""
        if body.token is not None:
            if auth.is_admin_token(body.token):
                user, bound = ADMIN_USER, auth.admin_fingerprint
        elif valid_name:
            found = await acc.check_password(name, body.password or "")
            if found is not None:
                user = StaffUser(found["username"], found["name"], found["role"])
        else:
            await acc.verify(body.password or "", None)  # as long as a real check
        if user is None:
            acc.failed(key, failures, wait, {"ip": ip})
            raise ApiError(401, "signin_failed", "wrong user name or password",
                           "用户名或密码错误", retry_after_s=wait)
        token, exp = acc.open_session(user.username, bound=bound, detail=detail)
        response.set_cookie(SESSION_COOKIE, token, max_age=acc.settings.max_s, path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        out = {**_public(user), "expires_at": _iso(exp), "idle_timeout_s": acc.settings.idle_s}
        return {"token": token, **out} if body.want_token else out

    @api.post("/logout")
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        bearer = auth._bearer(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        if bearer is None and cookie and not csrf_ok(request):
            raise ApiError(403, "csrf", "request refused: header X-Requested-With: ykt missing",
                           "请求被拒绝：缺少 X-Requested-With 头")
        token = bearer if bearer is not None else cookie
        who = None
        if token and not auth.is_admin_token(token):
            who = acc.end_session(token)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return {"signed_out": who is not None, "username": who}

    @api.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        who = auth.identify(request)
        if who is None:
            raise _unauthorized()
        user, how, session = who
        return {**_public(user), "via": how, "session": session}

    @api.get("/users")
    async def users(_: Administrator) -> dict[str, Any]:
        return {"users": acc.users()}

    @api.post("/users", status_code=201)
    async def add_user(body: UserIn, user: Administrator) -> dict[str, Any]:
        return {"user": await acc.add_user(body.username, body.name, body.role,
                                           body.password, actor=user.username)}

    @api.post("/users/{username}/disable")
    async def disable_user(username: str, user: Administrator) -> dict[str, Any]:
        if username == user.username:
            raise ApiError(409, "self", "you cannot disable your own account",
                           "不能停用自己的账号")
        return {"user": acc.set_disabled(username, True, actor=user.username)}

    @api.post("/users/{username}/enable")
    async def enable_user(username: str, user: Administrator) -> dict[str, Any]:
        return {"user": acc.set_disabled(username, False, actor=user.username)}

    @api.post("/users/{username}/password")
    async def set_password(username: str, body: PasswordIn, user: Administrator
                           ) -> dict[str, Any]:
        return {"user": await acc.set_password(username, body.password, actor=user.username)}

    return api
