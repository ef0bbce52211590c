"""Who may ask for what: central's authorization of every device request (docs/security.md).

The broker's ACL only keeps a device on its own topics; it says nothing about what the
device may ask for. A kiosk's broker password sits on a machine in a public hall, so
everything here assumes the sender is a stolen device using real credentials. Decisions
are made from what central itself holds, never from what the device says about itself:

1. **Role table** (:data:`POLICY`): which request types each device role may send, which
   need a staff session, and the limits that apply (cash only at a desk, top-up bounds,
   which ``patient.identify`` methods a kiosk may use). Anything not in the table is
   refused.
2. **Staff sessions** (:mod:`central.staff`): at a desk, every request but sign-in, the
   hot list and the resolution of its own payments carries the session token central
   issued at ``staff.login`` (envelope ``auth``), bound to that device and badge.
3. **Object grants**: a device may name only objects central handed to *it* recently — a
   patient reference from its own ``patient.identify``, the bookings, bills, reports and
   payments from its own replies. Patient references are opaque (``pr_…``): the platform's
   patient id never reaches a device, and a reference is useless on another device or
   after ``grant_ttl_s``. A refund must be of a payment of a patient the desk identified.

A refused request gets a typed ``forbidden`` / ``session_expired`` / ``throttled`` reply, an
audit record (a security event on the dashboard), and is stored as its final outcome.
A request that passed once is not judged again when it is resent (``request_authz``), so a
payment whose outcome is being confirmed is never stranded by a session that ended since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field

from central.platform.errors import PlatformRejected
from central.staff import StaffSessions, ThrottleState
from central.store import Store, StoreError
from central.store.engine import Conn
from central.store.migrations import SCHEMA_LOCK
from yikatong.common.config import StrictModel
from yikatong.common.errors import LocalizedError
from yikatong.common.privacy import mask_card_number, mask_id_number, mask_name
from yikatong.protocol.envelope import Envelope, format_ts
from yikatong.protocol.messages import CENTRAL_REQUESTS, ErrorCode

__all__ = [
    "POLICY",
    "SECURITY_ACTIONS",
    "AuthzSettings",
    "Denied",
    "Guard",
    "Rule",
    "Verdict",
]

log = logging.getLogger(__name__)

#: Audit actions shown as security events on the dashboard.
SECURITY_ACTIONS = frozenset({
    "request.forbidden", "message.unauthorized", "staff.signin_failed",
    "staff.signin_throttled", "staff.session_rejected", "request.rate_limited",
})

PATIENT_REF_PREFIX = "pr_"


class AuthzSettings(StrictModel):
    """``[authz]`` of central.toml: limits of the role table and grant lifetimes."""

    #: Largest top-up a kiosk may take (wallet payment code only), fen.
    kiosk_topup_max_fen: int = Field(default=500_000, ge=0, le=1_000_000_000)
    #: Largest top-up at a staffed desk (cash or wallet), fen.
    desk_topup_max_fen: int = Field(default=5_000_000, ge=0, le=1_000_000_000)
    #: Largest single refund at a desk, fen.
    refund_max_fen: int = Field(default=5_000_000, ge=0, le=1_000_000_000)
    #: How long a device may use the patient references, bookings, bills, reports and
    #: payments central handed it (one visit at a kiosk or desk).
    grant_ttl_s: int = Field(default=1800, ge=60, le=86_400)
    #: Patient look-ups per device and minute: a kiosk serves a patient a minute or two, so a
    #: stolen one trying card numbers is slowed down and shows up as a security event.
    kiosk_identify_per_minute: int = Field(default=30, ge=1, le=10_000)
    desk_identify_per_minute: int = Field(default=120, ge=1, le=10_000)


class Denied(LocalizedError):
    """A request refused by policy; ``code`` is the reply's error code."""

    def __init__(self, code: ErrorCode, reason: str, message: str, message_zh: str,
                 *, retryable: bool = False, action: str | None = None) -> None:
        super().__init__(message, message_zh, reason=reason)
        self.code = code
        self.retryable = retryable
        #: The audit action; by default derived from ``code``.
        self.action = action or {
            ErrorCode.THROTTLED: "staff.signin_throttled",
            ErrorCode.SESSION_EXPIRED: "staff.session_rejected",
        }.get(code, "request.forbidden")


Check = Callable[[dict[str, Any], AuthzSettings], str | None]


@dataclass(frozen=True, slots=True)
class Rule:
    """One allowed request type for a role: ``staff`` = needs a staff session."""

    staff: bool = False
    check: Check | None = None


# -- limits (pure: body, settings → reason refused or None) -------------------------------

def _identify_at_kiosk(body: dict[str, Any], _: AuthzSettings) -> str | None:
    # A typed ID number proves nothing about who stands at the kiosk; the card (read through
    # the SAM) and the e-health QR (issued to the patient's phone) do.
    if body.get("by") not in ("card", "ehc_qr"):
        return "a kiosk identifies patients by card or e-health QR only"
    return None


def _pay_at_kiosk(body: dict[str, Any], s: AuthzSettings) -> str | None:
    if body.get("method") == "cash":
        return "cash is taken only at a staffed desk"
    if body.get("purpose") == "topup" and int(body.get("amount_fen", 0)) > s.kiosk_topup_max_fen:
        return f"a kiosk top-up is at most {s.kiosk_topup_max_fen} fen"
    return None


def _pay_at_desk(body: dict[str, Any], s: AuthzSettings) -> str | None:
    if body.get("purpose") == "topup" and int(body.get("amount_fen", 0)) > s.desk_topup_max_fen:
        return f"a desk top-up is at most {s.desk_topup_max_fen} fen"
    return None


def _refund_at_desk(body: dict[str, Any], s: AuthzSettings) -> str | None:
    if int(body.get("amount_fen", 0)) > s.refund_max_fen:
        return f"a refund is at most {s.refund_max_fen} fen"
    return None


_OPEN = Rule()
_STAFF = Rule(staff=True)

#: role → request type → rule. The one place that says what each kind of device may ask.
POLICY: dict[str, dict[str, Rule]] = {
    "kiosk": {
        "patient.identify": Rule(check=_identify_at_kiosk),
        "reg.departments": _OPEN,
        "reg.slots": _OPEN,
        "reg.book": _OPEN,
        "reg.cancel": _OPEN,
        "reg.bookings": _OPEN,
        "reg.checkin": _OPEN,
        "reg.printed": _OPEN,
        "bill.list": _OPEN,
        "pay.create": Rule(check=_pay_at_kiosk),
        "pay.status": _OPEN,
        "pay.reverse": _OPEN,
        "report.list": _OPEN,
        "report.fetch": _OPEN,
        "report.printed": _OPEN,
        "hotlist.delta": _OPEN,
        # Fleet trust (docs/fleet-trust.md): a device renews its own certificate and
        # uploads the logs a command asked for; central/fleet checks the rest.
        "device.cert_renew": _OPEN,
        "device.log_bundle": _OPEN,
        # not: pay.refund, staff.login, staff.logout, staff.session
    },
    "cashier": {
        "staff.login": _OPEN,  # throttled per badge and per device (central.staff)
        "staff.logout": _STAFF,
        "staff.session": _STAFF,  # asked before a desk prints its closing report
        "hotlist.delta": _OPEN,
        # The device's own business, not the cashier's: no staff session needed.
        "device.cert_renew": _OPEN,
        "device.log_bundle": _OPEN,
        # Resolving the desk's own payments goes on after the cashier signed out.
        "pay.status": _OPEN,
        "pay.reverse": _OPEN,
        "patient.identify": _STAFF,
        "reg.departments": _STAFF,
        "reg.slots": _STAFF,
        "reg.book": _STAFF,
        "reg.cancel": _STAFF,
        "reg.bookings": _STAFF,
        "reg.checkin": _STAFF,
        "reg.printed": _STAFF,
        "bill.list": _STAFF,
        "pay.create": Rule(staff=True, check=_pay_at_desk),
        "pay.refund": Rule(staff=True, check=_refund_at_desk),
        "pay.list": _STAFF,  # the identified patient's payments, to refund or reprint
        "report.list": _STAFF,
        "report.fetch": _STAFF,
        "report.printed": _STAFF,
    },
}

#: request type → (body field, grant kind) of every object the request names.
_OBJECTS: dict[str, tuple[tuple[str, str], ...]] = {
    "reg.book": (("patient_id", "patient"),),
    "reg.bookings": (("patient_id", "patient"),),
    "bill.list": (("patient_id", "patient"),),
    "report.list": (("patient_id", "patient"),),
    "pay.list": (("patient_id", "patient"),),
    "pay.create": (("patient_id", "patient"), ("refs", "ref")),
    "reg.cancel": (("booking_id", "booking"),),
    "reg.checkin": (("booking_id", "booking"),),
    "reg.printed": (("booking_id", "booking"),),
    "report.fetch": (("report_no", "report"),),
    "report.printed": (("report_no", "report"),),
    "pay.status": (("payment_id", "payment"),),
    "pay.reverse": (("payment_id", "payment"),),
}

#: The grant kind naming the patient a device identified last (``ref`` is empty): the
#: patient at the desk, whose payments it may refund. One row per device, replaced by each
#: ``patient.identify`` — no ordering of grants by insertion, which PostgreSQL does not keep.
CURRENT_PATIENT = "current"

# The SQL both engines take (central/store/engine.py): DOUBLE PRECISION times, BIGINT minutes,
# upserts by ON CONFLICT. Tables made by earlier versions on SQLite keep their REAL columns
# (the same 8-byte float there).
_SQL = (
    "CREATE TABLE IF NOT EXISTS access_grant (dev TEXT NOT NULL, kind TEXT NOT NULL, "
    "ref TEXT NOT NULL, value TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (dev, kind, ref))",
    "CREATE INDEX IF NOT EXISTS access_grant_expiry ON access_grant (expires_at)",
    "CREATE TABLE IF NOT EXISTS request_authz (id TEXT PRIMARY KEY, dev TEXT NOT NULL, "
    "type TEXT NOT NULL, body_hash TEXT NOT NULL, auth_hash TEXT, "
    "at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS request_authz_at ON request_authz (at)",
    "CREATE TABLE IF NOT EXISTS rate_limit (key TEXT PRIMARY KEY, minute BIGINT NOT NULL, "
    "count INTEGER NOT NULL)",
)
_GRANT = ("INSERT INTO access_grant (dev, kind, ref, value, expires_at) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT (dev, kind, ref) DO UPDATE SET value = excluded.value, "
          "expires_at = excluded.expires_at")
_PASSED = ("INSERT INTO request_authz (id, dev, type, body_hash, auth_hash, at) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET dev = excluded.dev, "
           "type = excluded.type, body_hash = excluded.body_hash, "
           "auth_hash = excluded.auth_hash, at = excluded.at")
# One statement counts the look-up, so instances sharing a database add up exactly (the
# conflicting row is locked until the transaction ends). A minute older than the stored one
# (an instance whose clock lags) counts into the stored minute instead of resetting it.
_COUNT = ("INSERT INTO rate_limit (key, minute, count) VALUES (?, ?, 1) "
          "ON CONFLICT (key) DO UPDATE SET "
          "count = CASE WHEN rate_limit.minute >= excluded.minute THEN rate_limit.count + 1 "
          "ELSE 1 END, "
          "minute = CASE WHEN rate_limit.minute >= excluded.minute THEN rate_limit.minute "
          "ELSE excluded.minute END")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _body_hash(env: Envelope) -> str:
    return _hash(json.dumps({"type": env.type, "body": env.body}, sort_keys=True,
                            separators=(",", ":"), ensure_ascii=False))


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


@dataclass(frozen=True, slots=True)
class Verdict:
    """An allowed request: the body to send on (patient references replaced)."""

    env: Envelope
    role: str
    staff_id: str | None


class Guard:
    """Central's authorization of device requests; used by the forwarder (see module doc)."""

    def __init__(self, store: Store, settings: AuthzSettings | None = None, *,
                 staff: StaffSessions | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 token: Callable[[int], str] = secrets.token_urlsafe) -> None:
        self.store = store
        self.settings = settings or AuthzSettings()
        self._clock = clock
        self._token = token
        self.staff = staff or StaffSessions(store, clock=clock, token=token)
        #: Central-local request types answered by another component (central/fleet).
        self._local: dict[str, Callable[[Envelope], dict[str, Any]]] = {}
        with store.atomic():
            store.lock_in_tx(SCHEMA_LOCK)
            for sql in _SQL:
                store.connection().execute(sql)

    # -- the decision (runs inside one store write) ---------------------------------------
    async def authorize(self, env: Envelope) -> Verdict:
        """Allow ``env`` (returning what to forward) or raise :class:`Denied` (audited)."""
        now = self._clock()
        try:
            return await self.store.write(lambda: self.authorize_in_tx(env, now))
        except Denied as exc:
            await self.refused(env, exc, now)
            raise

    def authorize_in_tx(self, env: Envelope, now: datetime | None = None) -> Verdict:
        """:meth:`authorize` inside the caller's write, without the audit of a refusal.

        The forwarder decides in the transaction that claims the request (one commit fewer
        per request). A :class:`Denied` leaves this method's writes (the look-up count) to
        the caller's savepoint to roll back, and :meth:`refused` to record.
        """
        if not self.store.in_write():
            raise StoreError("authorize_in_tx was called outside a write transaction",
                             "授权检查不在数据库事务中")
        return self._authorize_tx(env, self._clock() if now is None else now)

    async def refused(self, env: Envelope, exc: Denied, now: datetime | None = None) -> None:
        """Record a refusal (an audit record, a security event on the dashboard) and log it."""
        at = self._clock() if now is None else now
        detail = {"dev": env.dev, "type": env.type, "id": env.id,
                  "code": str(exc.code), "reason": exc.reason[:200]}
        action = exc.action
        await self.store.write(lambda: self.store.append_audit_in_tx(at, "authz", action,
                                                                     detail))
        log.warning("refused %s from %s: %s", env.type, env.dev, exc.reason)

    def _authorize_tx(self, env: Envelope, now: datetime) -> Verdict:
        db = self.store.connection()
        role = self.store.device_role(env.dev)
        if role is None:
            raise Denied(ErrorCode.FORBIDDEN, "device has no role", "device not registered",
                         "设备未登记")
        rule = POLICY.get(role, {}).get(env.type)
        if rule is None:
            raise Denied(ErrorCode.FORBIDDEN, f"{env.type} is not allowed for role {role}",
                         f"a {role} may not send {env.type}", "此终端无权办理该业务")
        bh = _body_hash(env)
        passed = db.execute("SELECT dev, type, body_hash FROM request_authz WHERE id = ?",
                            (env.id,)).fetchone()
        if passed is not None and tuple(passed) == (env.dev, env.type, bh):
            # Judged and allowed before (the device resends after a lost reply or an unknown
            # outcome): the same bytes get the same decision, whatever expired since.
            return Verdict(self._translate(db, env, now, strict=False), role, None)
        if rule.check is not None and (why := rule.check(env.body, self.settings)):
            raise Denied(ErrorCode.FORBIDDEN, why, why, "超出此终端的办理权限")
        if env.type == "patient.identify":
            self._rate_limit(db, env.dev, role, now)
        staff_id: str | None = None
        if env.type == "staff.login":
            wait, which = self.staff.throttle_wait_s(db, env.dev, str(env.body.get("badge", "")),
                                                     now)
            if wait:
                raise Denied(ErrorCode.THROTTLED, f"sign-in throttled ({which})",
                             f"too many failed sign-ins: try again in {wait} s, or ask an "
                             "administrator to reset the badge",
                             f"登录失败次数过多，请 {wait} 秒后再试，或请管理员重置",
                             retryable=True)
        if rule.staff:
            session = self.staff.use(db, env.dev, env.auth, now)
            if session is None:
                raise Denied(ErrorCode.SESSION_EXPIRED, "no valid staff session",
                             "staff session missing or ended: sign in again",
                             "收费员登录已失效，请重新登录")
            staff_id = session.staff_id
        out = self._translate(db, env, now, strict=True)
        if env.type == "pay.refund":
            self._check_refund(db, env, now)
        db.execute(_PASSED,
                   (env.id, env.dev, env.type, bh, _hash(env.auth) if env.auth else None,
                    now.timestamp()))
        return Verdict(out, role, staff_id)

    def _rate_limit(self, db: Conn, dev: str, role: str, now: datetime) -> None:
        """At most ``*_identify_per_minute`` look-ups per device and clock minute.

        A refused look-up raises inside the write, so its count is rolled back: the counter
        stays at the limit until the minute turns.
        """
        limit = (self.settings.kiosk_identify_per_minute if role == "kiosk"
                 else self.settings.desk_identify_per_minute)
        minute = int(now.timestamp() // 60)
        key = f"identify:{dev}"
        db.execute(_COUNT, (key, minute))
        count = int(db.execute("SELECT count FROM rate_limit WHERE key = ?", (key,)).fetchone()[0])
        if count > limit:
            raise Denied(ErrorCode.THROTTLED, f"more than {limit} patient look-ups a minute",
                         "too many patient look-ups from this terminal; try again in a minute",
                         "本终端查询过于频繁，请稍后再试", retryable=True,
                         action="request.rate_limited")

    def _translate(self, db: Conn, env: Envelope, now: datetime, *,
                   strict: bool) -> Envelope:
        """Check every object the request names; patient references become platform ids."""
        fields = _OBJECTS.get(env.type)
        if not fields:
            return env
        body = dict(env.body)
        t = now.timestamp()
        for field_name, kind in fields:
            if field_name not in body:
                continue
            values = _str_list(body[field_name])
            real: list[str] = []
            for v in values:
                value = self._granted(db, env.dev, kind, v, t, strict=strict)
                if value is None:
                    raise Denied(ErrorCode.FORBIDDEN,
                                 f"{field_name} {v[:40]} was not handed to this device",
                                 f"unknown or expired {field_name} for this device",
                                 "信息已失效，请重新读卡")
                real.append(value)
            body[field_name] = real if isinstance(body[field_name], list) else real[0]
        return env.model_copy(update={"body": body})

    def _granted(self, db: Conn, dev: str, kind: str, ref: str, t: float, *,
                 strict: bool) -> str | None:
        kinds = ("booking", "bill") if kind == "ref" else (kind,)
        for k in kinds:
            row = db.execute("SELECT value, expires_at FROM access_grant WHERE dev = ? AND "
                             "kind = ? AND ref = ?", (dev, k, ref)).fetchone()
            if row is not None and (row[1] > t or not strict):
                return str(row[0])
        if kind == "payment":
            row = self.store.payment_owner(ref)
            if row is None:
                return None
            if row[0] == dev:
                # The device's own payment, also after the grant expired: resolving an
                # unknown outcome must never be refused.
                return ref
            # Another terminal's payment of a patient this device identified (a desk
            # looking at a kiosk payment before refunding it).
            mine = db.execute("SELECT 1 FROM access_grant WHERE dev = ? AND kind = 'patient' "
                              "AND value = ? AND expires_at > ?", (dev, row[1], t)).fetchone()
            if mine is not None:
                return ref
        return None

    def _check_refund(self, db: Conn, env: Envelope, now: datetime) -> None:
        pid = str(env.body.get("payment_id", ""))
        owner = self.store.payment_owner(pid)
        if owner is None:
            raise Denied(ErrorCode.FORBIDDEN, f"payment {pid[:40]} unknown to central",
                         "this payment is not known here; refund it at the platform",
                         "查无此笔支付，无法在此退款")
        # The patient at the desk is the one it identified last (a new card replaces the
        # previous patient, even while that patient's references are still valid).
        current = db.execute("SELECT value FROM access_grant WHERE dev = ? AND kind = ? "
                             "AND ref = '' AND expires_at > ?",
                             (env.dev, CURRENT_PATIENT, now.timestamp())).fetchone()
        if current is None or current[0] != owner[1]:
            raise Denied(ErrorCode.FORBIDDEN, "refund of another patient's payment",
                         "this payment belongs to another patient than the one at the desk",
                         "该笔支付不属于当前读卡的患者")

    # -- central's own operations ---------------------------------------------------------
    def handles(self, type_: str) -> bool:
        """True for request types central answers itself (no platform call)."""
        return type_ in CENTRAL_REQUESTS

    def add_local_handler(self, type_: str, handler: Callable[[Envelope], dict[str, Any]]
                          ) -> None:
        """Let ``handler`` answer the central-local request ``type_`` (inside the store write
        that stores the reply; raise ``PlatformRejected`` to refuse it)."""
        if type_ not in CENTRAL_REQUESTS:
            raise ValueError(f"{type_} is not a central-local request")
        self._local[type_] = handler

    def call_local(self, env: Envelope) -> dict[str, Any]:
        """Answer a central-local request; runs inside a store write (see Forwarder)."""
        handler = self._local.get(env.type)
        if handler is not None:
            return handler(env)
        if env.type.startswith("device."):
            raise PlatformRejected("not_enabled", "fleet management is not enabled at central",
                                   message_zh="中心未启用设备管理")
        db, now = self.store.connection(), self._clock()
        if env.type == "staff.session":
            # authorize() already checked (and refreshed) the session; report it.
            session = self.staff.use(db, env.dev, env.auth, now)
            if session is None:  # ended between the check and now
                raise Denied(ErrorCode.SESSION_EXPIRED, "session ended", "sign in again",
                             "收费员登录已失效，请重新登录")
            return {"staff_id": session.staff_id, "name": session.name,
                    "expires_at": format_ts(datetime.fromtimestamp(session.expires_at, UTC))}
        ended = self.staff.end(db, env.dev, env.auth, now, "logout")
        return {"ended": ended}

    # -- replies (inside the transaction that stores them) ---------------------------------
    def shape_in_tx(self, env: Envelope, result: dict[str, Any]) -> dict[str, Any]:
        """The result as this device may see it; records the grants it hands out."""
        db = self.store.connection()
        now = self._clock()
        exp = now.timestamp() + self.settings.grant_ttl_s
        dev = env.dev

        def grant(kind: str, refs: Iterable[str], value: str = "") -> None:
            db.executemany(_GRANT, [(dev, kind, r, value or r, exp) for r in refs])

        t = env.type
        if t == "patient.identify":
            ref = PATIENT_REF_PREFIX + self._token(18)
            grant("patient", [ref], str(result["patient_id"]))
            grant(CURRENT_PATIENT, [""], str(result["patient_id"]))
            return minimise_patient(result, ref)
        if t in ("reg.book", "reg.checkin"):
            grant("booking", [str(result.get("booking_id", ""))])
        elif t == "reg.bookings":
            grant("booking", [str(b.get("booking_id", "")) for b in result.get("bookings", [])])
        elif t == "bill.list":
            grant("bill", [str(b.get("bill_id", "")) for b in result.get("bills", [])])
        elif t == "report.list":
            grant("report", [str(r.get("report_no", "")) for r in result.get("reports", [])])
        elif t == "report.fetch":
            return {**result, "patient_name": mask_name(str(result.get("patient_name", "")))}
        elif t == "pay.create" and result.get("payment_id"):
            grant("payment", [str(result["payment_id"])])
        elif t == "pay.list":
            grant("payment", [str(p.get("payment_id", "")) for p in result.get("payments", [])])
        elif t == "staff.login":
            return self.staff.open(db, env.dev, str(env.body.get("badge", "")), result, now)
        return result

    def outcome_in_tx(self, env: Envelope, result: dict[str, Any] | None,
                      error: Exception | None) -> None:
        """Inside the reply's transaction: count failed sign-ins (throttle + alarm)."""
        if env.type == "staff.login" and result is None and error is not None:
            state = self.staff.failed(self.store.connection(), env.dev,
                                      str(env.body.get("badge", "")), self._clock())
            self._audit_signin_failure(env, state)

    def _audit_signin_failure(self, env: Envelope, state: ThrottleState) -> None:
        now = self._clock()
        detail = {"dev": env.dev, "badge": str(env.body.get("badge", ""))[:32],
                  "badge_failures": state.badge_failures, "device_failures": state.dev_failures,
                  "next_try_s": state.wait_s}
        self.store.append_audit_in_tx(now, "authz", "staff.signin_failed", detail)
        if state.alarm:
            self.store.append_audit_in_tx(now, "authz", "staff.signin_throttled", detail)

    # -- retention ------------------------------------------------------------------------
    def purge(self, now: datetime, keep_s: float) -> int:
        """Drop expired grants and old authorization records; returns rows deleted."""
        t = now.timestamp()
        with self.store.atomic():
            db = self.store.connection()
            n = db.execute("DELETE FROM access_grant WHERE expires_at < ?", (t,)).rowcount
            n += db.execute("DELETE FROM request_authz WHERE at < ?", (t - keep_s,)).rowcount
            n += self.staff.purge(db, now, keep_s)
        return int(n)


def minimise_patient(info: dict[str, Any], ref: str) -> dict[str, Any]:
    """``patient.identify`` as a device gets it: masked, no phone or birth date, a reference."""
    out = {
        "patient_id": ref,
        "name": mask_name(str(info.get("name", ""))),
        "sex": info.get("sex", "U"),
        "id_number": mask_id_number(str(info.get("id_number", ""))),
        "card_no": mask_card_number(str(info.get("card_no", ""))),
        "balance_fen": info.get("balance_fen", 0),
        "insured": bool(info.get("insured", False)),
    }
    return out
