"""Payments whose outcome is not final, and their resolution.

See docs/architecture.md, "Delivery rules".

States::

    created → pending → approved | declined | unknown → reversed
              (pending/unknown may also resolve to approved/declined)

``Payments`` is the forwarder's :class:`~central.forwarder.RequestHooks`:

* ``before_call`` writes the ``created`` row (keyed by the request id, which is also the
  platform's idempotency key) and commits it **before** the platform is called, so a central
  crash during the call still leaves a row for the resolver and for staff;
* ``outcome_in_tx`` records the outcome in the same transaction that stores the reply;
  ``pay.status``/``pay.reverse`` results update the record too.

Several central instances may share one PostgreSQL store (docs/scaling.md): every
read-modify-write of a row here holds the row's lock (``FOR UPDATE``, PostgreSQL only; on
SQLite the write transaction is already the only one) or is a compare-and-set UPDATE, so no
final outcome is overwritten, no transition is audited twice, and a payment is never both
reversed and answered "approved": a reversal is first claimed on the row (``REVERSING``), and
a ``pay.create`` reply reads the row under its lock.

``resolve_once`` (run every few seconds by ``run``) handles what is still open, and never
creates a payment again (a repeat ``pay.create`` after the patient left could charge them):

* known ``payment_id`` → ``pay.status``; still open ``deadline_s`` after creation →
  ``pay.reverse`` (fixed idempotency key per payment, so repeated reversal attempts reverse
  once; the kiosk, told "being confirmed", learns it by ``pay.status``);
* no ``payment_id`` (central died during the call, or the answer was lost) → asked by its
  idempotency key, the merchant's order number to the platform (as WeChat Pay / Alipay
  query and reverse by ``out_trade_no``): found → recorded like ``pay.status``; still open
  past the deadline → reversed by key. "Not found" is only believed ``safety_window_s``
  after the row was created (a create may still be on its way) and only from the reversal
  by key, which also closes the key on the platform so a late or resent create is refused:
  the row then ends ``declined`` as not charged. A platform without by-key lookups
  (``PlatformUnsupported``) leaves the row to the device's resend and, past the deadline,
  flags it for staff, who check the platform and resolve it from the dashboard.

Staff actions (dashboard): ``staff_status`` (ask now), ``staff_reverse`` (reverse now),
``staff_resolve`` (record a final state with a reason). Every transition is an audit
record. ``unresolved()`` feeds the staff dashboard.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from central.platform.base import PlatformAdapter
from central.platform.errors import (
    PaymentNotFound,
    PlatformError,
    PlatformRejected,
    PlatformUnavailable,
    PlatformUnsupported,
)
from central.store import Store
from central.store.engine import INTEGRITY_ERRORS
from yikatong.common.errors import LocalizedError
from yikatong.protocol.envelope import Envelope, decode, encode
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.messages import make_reply_ok

__all__ = ["NEEDS_STAFF", "NOT_TAKEN", "OPEN_STATES", "REVERSING", "PaymentError", "PaymentInfo",
           "Payments"]

log = logging.getLogger(__name__)

OPEN_STATES = ("created", "pending", "unknown")
FINAL_STATES = ("approved", "declined", "reversed")
_SECRET_FIELDS = frozenset({"auth_code"})
NEEDS_STAFF = "needs staff: outcome unknown and no payment id to ask the platform about"
NOT_TAKEN = "not charged: the platform never took a payment under this key (key closed)"
#: The reason of an open payment whose reversal has started: from then on no ``pay.create``
#: reply says "approved" for it, whatever the replying instance's clock says.
REVERSING = "reversal started: the outcome was still open"


class PaymentError(LocalizedError):
    """A staff action on a payment was refused; ``code`` says why (``not_found`` …)."""

    code = "payment_error"

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code


@dataclass(frozen=True, slots=True)
class PaymentInfo:
    """One payment as the dashboard sees it."""

    request_id: str
    payment_id: str | None
    dev: str
    amount_fen: int
    method: str
    state: str
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    checks: int
    reason: str | None
    #: False for a payment central settled (resolver, staff) but never answered the device
    #: about: an approved one means a charged patient who may have left with nothing.
    device_told: bool = True


def _int(value: Any) -> int:
    return value if type(value) is int else 0


def _key(kind: str, request_id: str) -> str:
    # Deterministic and short: the same payment always gets the same reversal key.
    return hashlib.sha256(f"{kind}:{request_id}".encode()).hexdigest()[:40]


class Payments:
    """Records payment outcomes and resolves the open ones."""

    def __init__(
        self,
        store: Store,
        adapter: PlatformAdapter,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        deadline_s: float = 30.0,
        poll_interval_s: float = 3.0,
        safety_window_s: float = 60.0,
    ) -> None:
        if safety_window_s < 0 or deadline_s < 0:
            raise ValueError("deadline_s and safety_window_s must not be negative")
        self.store = store
        self.adapter = adapter
        self._clock = clock
        self.deadline_s = deadline_s
        # How long after the row a create may still reach the platform (in flight, or a
        # platform that commits late); only after it is "not found" taken as final.
        self.safety_window_s = safety_window_s
        self.poll_interval_s = poll_interval_s
        self._fresh: set[str] = set()  # rows inserted by before_call, call not answered yet

    # -- recording ---------------------------------------------------------------------
    async def before_call(self, env: Envelope) -> None:
        """Forwarder hook: commit the ``created`` row before ``pay.create`` goes out."""
        if env.type == "pay.create":
            await self.store.write(lambda: self._insert_created(env))

    def outcome_in_tx(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        """Forwarder hook: record a ``pay.*`` outcome (inside the reply's transaction)."""
        if env.type == "pay.create":
            self._record_create(env, result, error)
        elif env.type in ("pay.status", "pay.reverse") and result is not None:
            self._update_by_payment_id(result, actor=f"device:{env.dev}")
            if result.get("state") in FINAL_STATES:
                P = self.store.Payment
                P.update(told=1).where(P.payment_id == result.get("payment_id")).execute()

    def reply_result(self, env: Envelope, result: dict[str, Any]) -> dict[str, Any]:
        """What a ``pay.create`` reply may say now (inside the reply's transaction).

        The platform answers a resend with the outcome it stored first. If the resolver (or
        staff) has since reversed that payment — or is reversing it right now: the row is
        claimed ``REVERSING`` before the reversal is sent — an "approved" reply would print a
        receipt for money that went back: say the current state instead, so the device shows
        the truth and asks ``pay.status``. The row is read under its lock, so a claim made on
        another instance either committed before (seen here) or waits for this transaction
        and then finds the payment final (and does not reverse it). No clock is compared:
        two instances' clocks may disagree about the deadline, the row cannot.
        """
        if env.type != "pay.create" or result.get("state") not in ("approved", "pending"):
            return result
        row = self._row(env.id, lock=True)
        if row is None:
            return result
        if row.state == "reversed":
            return {**result, "state": "reversed", "reason": "reversed_past_deadline"}
        if row.state in OPEN_STATES and row.reason == REVERSING:
            return {**result, "state": "unknown", "reason": "being_reversed"}
        return result

    def refresh_reply(self, env: Envelope, reply: bytes, now: datetime,
                      reply_id: str) -> bytes | None:
        """Inside a write: the stored ``pay.create`` reply, brought up to date, or None.

        The platform answered "pending" (the payer is still confirming) or central replied
        "outcome unknown"; since then the resolver (or a ``pay.status``) may have settled
        the payment. A device that sends the same request again — its own follow-up, after
        the patient left — then gets the final state, and the payment counts as told.
        """
        if env.type != "pay.create":
            return None
        try:
            body = decode(reply).body
        except ProtocolError:
            return None
        result = body.get("result") if body.get("status") == "ok" else None
        if not isinstance(result, dict) or result.get("state") not in ("pending", "unknown"):
            return None
        P = self.store.Payment
        row = self._row(env.id, lock=True)
        if row is None or row.state not in FINAL_STATES:
            return None
        # Under the row's lock: a resend handled by another instance meanwhile has brought the
        # stored reply up to date already; every resend gets those same bytes.
        R = self.store.RequestLog
        stored = R.get_or_none(R.id == env.id)
        if stored is not None and stored.reply is not None and bytes(stored.reply) != reply:
            return bytes(stored.reply)
        fresh = {**result, "state": row.state}
        if row.payment_id:
            fresh["payment_id"] = row.payment_id
        data = encode(make_reply_ok(env, fresh, now=now, id=reply_id))
        self.store.replace_reply_in_tx(env.id, data)
        P.update(told=1).where(P.request_id == env.id).execute()
        return data

    async def observe(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        """Record a ``pay.*`` outcome on its own (forwarders without hooks, tests)."""
        with self.store.atomic():
            self.outcome_in_tx(env, result, error)

    def _insert_created(self, env: Envelope) -> bool:
        """Insert the ``created`` row unless one exists; True when inserted."""
        P = self.store.Payment
        if P.get_or_none(P.request_id == env.id) is not None:
            return False  # a resend: the row of the first attempt stays
        now = self._clock()
        body = env.body
        deadline = now.timestamp() + self.deadline_s
        stored_body = (
            None if _SECRET_FIELDS & body.keys()
            else json.dumps(body, sort_keys=True, ensure_ascii=False)
        )
        try:
            # Nested in the caller's write, a savepoint: a row another instance inserted
            # meanwhile (a request taken over after its lease) fails this INSERT alone.
            with self.store.atomic():
                row = P.create(
                    request_id=env.id, payment_id=None, dev=env.dev,
                    patient_id=str(body.get("patient_id", ""))[:64],
                    amount_fen=_int(body.get("amount_fen")),
                    method=str(body.get("method", ""))[:16],
                    state="created", created_at=now.timestamp(), updated_at=now.timestamp(),
                    deadline=deadline, request_body=stored_body,
                )
                self.store.append_audit_in_tx(
                    now, "payments", "payment.created",
                    {"request_id": env.id, "dev": env.dev, "amount_fen": row.amount_fen},
                )
        except INTEGRITY_ERRORS:
            return False
        self._fresh.add(env.id)
        return True

    def _record_create(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        P = self.store.Payment
        fresh = env.id in self._fresh
        self._fresh.discard(env.id)
        with self.store.atomic():
            row = P.get_or_none(P.request_id == env.id)
            if row is None:
                if isinstance(error, PlatformUnavailable):
                    return  # nothing happened: nothing to track
                self._insert_created(env)
                self._fresh.discard(env.id)
            elif isinstance(error, PlatformUnavailable) and fresh and row.state == "created":
                # This call created the row and the platform certainly did nothing: no
                # payment exists. (A row from an earlier attempt stays: that attempt may
                # have charged.) Compare-and-set: a row another instance moved on stays.
                if P.delete().where((P.request_id == env.id)
                                    & (P.state == "created")).execute():
                    self.store.append_audit_in_tx(
                        self._clock(), "payments", "payment.not_sent",
                        {"request_id": env.id, "dev": env.dev},
                    )
                return
        if result is not None:
            # What the reply says (reply_result, same transaction, decided before this outcome
            # is recorded — as the forwarder decides it): final → the device knows. Asked
            # after, an "approved" just recorded would count a reply that said "unknown".
            said = self.reply_result(env, result).get("state")
            self._apply(env.id, result, actor="forwarder")
            if said in FINAL_STATES:
                P.update(told=1).where(P.request_id == env.id).execute()
        elif isinstance(error, PlatformRejected):
            self._transition(env.id, "declined", reason=f"{error.code}: {error.reason}",
                             actor="forwarder")
            P.update(told=1).where(P.request_id == env.id).execute()
        elif error is not None and not isinstance(error, PlatformUnavailable):
            self._transition(env.id, "unknown", reason=error.message[:200], actor="forwarder")

    def _apply(self, request_id: str, result: dict[str, Any], *, actor: str) -> None:
        state = result.get("state")
        if state not in ("approved", "declined", "pending", "unknown", "reversed"):
            return
        P = self.store.Payment
        pid = result.get("payment_id")
        with self.store.atomic():
            if isinstance(pid, str):
                P.update(payment_id=pid).where(P.request_id == request_id).execute()
        self._transition(request_id, state, reason=result.get("reason"), actor=actor)

    def _update_by_payment_id(self, result: dict[str, Any], *, actor: str) -> None:
        P = self.store.Payment
        row = P.get_or_none(P.payment_id == result.get("payment_id"))
        if row is not None:
            self._apply(row.request_id, result, actor=actor)

    def _transition(
        self, request_id: str, state: str, *, reason: Any = None, actor: str
    ) -> None:
        P = self.store.Payment
        now = self._clock()
        with self.store.atomic():
            # Locked until the transaction ends: two instances recording outcomes of one
            # payment at once decide one after the other, on the row as the other left it.
            row = self._row(request_id, lock=True)
            if row is None or row.state == state:
                return
            if row.state in FINAL_STATES and not (row.state != "reversed" and state == "reversed"):
                # A final outcome is never overwritten by a later, staler answer (only a
                # reversal may follow an approval).
                log.warning("payment %s: %s → %s refused", request_id, row.state, state)
                return
            P.update(
                state=state, updated_at=now.timestamp(),
                reason=str(reason)[:200] if reason else row.reason,
            ).where(P.request_id == request_id).execute()
            self.store.audit(
                now, actor, "payment.state",
                {"request_id": request_id, "payment_id": row.payment_id, "from": row.state,
                 "to": state},
            )

    def _row(self, request_id: str, *, lock: bool = False) -> Any:
        """The payment row, or None; ``lock``: held until the write ends (PostgreSQL)."""
        P = self.store.Payment
        query = P.select().where(P.request_id == request_id)
        if lock and self.store.dialect.postgres:  # SQLite rejects FOR UPDATE (and needs none)
            query = query.for_update()
        return query.first()

    def _claim_reversal(self, request_id: str) -> bool:
        """Mark an open payment ``REVERSING`` before the reversal is sent; False when it is
        final by now (e.g. another instance answered "approved" meanwhile: not reversed)."""
        P = self.store.Payment
        with self.store.atomic():
            return bool(P.update(reason=REVERSING).where(
                (P.request_id == request_id) & P.state.in_(OPEN_STATES)).execute())

    # -- resolution --------------------------------------------------------------------
    async def resolve_once(self) -> int:
        """One pass over open payments; returns how many are still open afterwards."""
        P = self.store.Payment
        rows = list(P.select().where(P.state.in_(OPEN_STATES)).order_by(P.created_at))
        for row in rows:
            try:
                await self._resolve(row)
            except PlatformError as exc:
                log.info("payment %s still open: %s", row.request_id, exc.message)
            finally:
                with self.store.atomic():
                    P.update(checks=P.checks + 1).where(P.request_id == row.request_id).execute()
        return int(P.select().where(P.state.in_(OPEN_STATES)).count())

    async def _resolve(self, row: Any) -> None:
        now = self._clock().timestamp()
        if row.payment_id is None:
            try:
                await self._resolve_by_key(row, now)
            except PlatformUnsupported:
                self._flag_needs_staff(row, now)
            return
        await self._ask_status(row, actor="resolver")
        current = self.store.Payment.get(self.store.Payment.request_id == row.request_id)
        if current.state in OPEN_STATES and now >= row.deadline:
            await self._reverse(row, actor="resolver")

    async def _resolve_by_key(self, row: Any, now: float) -> None:
        """No payment id: ask by idempotency key; never pay.create again."""
        try:
            result: dict[str, Any] | None = await self.adapter.pay_status_by_key(row.request_id)
        except PaymentNotFound:
            result = None  # not taken (yet): the create may still arrive, or be resent
        if result is not None:
            self._apply(row.request_id, result, actor="resolver")
        P = self.store.Payment
        current = P.get(P.request_id == row.request_id)
        if current.state not in OPEN_STATES or now < row.deadline:
            return
        if result is None and now < row.created_at + self.safety_window_s:
            return  # "not found" is not believed yet: keep asking
        await self._reverse_by_key(current, actor="resolver")

    def _flag_needs_staff(self, row: Any, now: float) -> None:
        # The platform cannot be asked by key: until exp the device's resend (same key)
        # brings the outcome; after the deadline staff must look.
        if now < row.deadline or row.reason == NEEDS_STAFF:
            return
        P = self.store.Payment
        with self.store.atomic():
            # Compare-and-set: flagged (and audited) once, whichever instance gets here first.
            if not P.update(reason=NEEDS_STAFF).where(
                    (P.request_id == row.request_id) & P.state.in_(OPEN_STATES)
                    & ((P.reason != NEEDS_STAFF) | P.reason.is_null())).execute():
                return
            self.store.audit(
                self._clock(), "resolver", "payment.needs_staff",
                {"request_id": row.request_id, "state": row.state},
            )
        log.warning("payment %s: outcome unknown past its deadline, needs staff",
                    row.request_id)

    async def _reverse_by_key(self, row: Any, *, actor: str) -> None:
        # Its own fixed key: the by-id reversal's key is bound to another request body.
        if not self._claim_reversal(row.request_id):
            return
        try:
            result = await self.adapter.pay_reverse_by_key(
                row.request_id, idempotency_key=_key("reverse_by_key", row.request_id))
        except PlatformUnsupported:
            # Nothing was sent: the row's reason goes back to what it said.
            P = self.store.Payment
            with self.store.atomic():
                P.update(reason=row.reason).where(
                    (P.request_id == row.request_id) & (P.reason == REVERSING)).execute()
            raise
        except PaymentNotFound:
            # Definitive: nothing was taken, and the platform now refuses the key for good.
            with self.store.atomic():
                self.store.audit(self._clock(), actor, "payment.not_taken",
                                 {"request_id": row.request_id, "state": row.state})
                self._transition(row.request_id, "declined", reason=NOT_TAKEN, actor=actor)
            return
        self._apply(row.request_id, result, actor=actor)

    async def _ask_status_by_key(self, row: Any, *, actor: str) -> None:
        try:
            result = await self.adapter.pay_status_by_key(row.request_id)
        except PaymentNotFound:
            return  # not taken so far; only a reversal by key may conclude "not charged"
        self._apply(row.request_id, result, actor=actor)

    async def _ask_status(self, row: Any, *, actor: str) -> None:
        result = await self.adapter.call(
            "pay.status", {"payment_id": row.payment_id},
            idempotency_key=_key(f"status{row.checks}", row.request_id),
        )
        self._apply(row.request_id, result, actor=actor)

    async def _reverse(self, row: Any, *, actor: str) -> None:
        if not self._claim_reversal(row.request_id):
            return
        result = await self.adapter.call(
            "pay.reverse", {"payment_id": row.payment_id},
            idempotency_key=_key("reverse", row.request_id),
        )
        self._apply(row.request_id, result, actor=actor)

    # -- staff actions (dashboard) -----------------------------------------------------
    def _open_row(self, request_id: str, *, lock: bool = False) -> Any:
        row = self._row(request_id, lock=lock)
        if row is None:
            raise PaymentError("not_found", f"no payment for request {request_id}",
                               "没有该支付记录")
        if row.state not in OPEN_STATES:
            raise PaymentError("already_final", f"payment is already {row.state}",
                               "该支付已有最终结果")
        return row

    @staticmethod
    def _no_payment_id() -> PaymentError:
        return PaymentError(
            "no_payment_id",
            "the platform never told us this payment's id and cannot be asked by key: "
            "check it on the platform and mark it resolved",
            "平台未返回支付单号且不支持按订单号查询，请在医院平台核实后手工标记结果",
        )

    def _staff_audit(self, staff: str, action: str, request_id: str, **extra: Any) -> None:
        self.store.audit(self._clock(), f"staff:{staff}", action,
                         {"request_id": request_id, **extra})

    async def staff_status(self, request_id: str, *, staff: str) -> PaymentInfo:
        """Staff: ask the platform for the payment's state now."""
        row = self._open_row(request_id)
        self._staff_audit(staff, "payment.staff_status", request_id)
        if row.payment_id is not None:
            await self._ask_status(row, actor=f"staff:{staff}")
            return self._info(request_id)
        try:
            await self._ask_status_by_key(row, actor=f"staff:{staff}")
        except PlatformUnsupported as exc:
            raise self._no_payment_id() from exc
        return self._info(request_id)

    async def staff_reverse(self, request_id: str, *, staff: str) -> PaymentInfo:
        """Staff: reverse an open payment now (same key as the resolver's reversal)."""
        row = self._open_row(request_id)
        self._staff_audit(staff, "payment.staff_reverse", request_id)
        if row.payment_id is not None:
            await self._reverse(row, actor=f"staff:{staff}")
            return self._info(request_id)
        try:
            # Closes the key on the platform: "not found" here is final at once.
            await self._reverse_by_key(row, actor=f"staff:{staff}")
        except PlatformUnsupported as exc:
            raise self._no_payment_id() from exc
        return self._info(request_id)

    def staff_resolve(
        self, request_id: str, state: str, reason: str, *, staff: str
    ) -> PaymentInfo:
        """Staff: record the final state found on the platform, with the reason."""
        if state not in FINAL_STATES:
            raise PaymentError("bad_state", f"{state!r} is not a final state",
                               "只能标记为最终结果（成功/失败/已撤销）")
        reason = reason.strip()
        if not reason:
            raise PaymentError("reason_required", "a reason is required", "请填写处理原因")
        P = self.store.Payment
        with self.store.atomic():
            if state == "approved" and P.update(told=1, reason=f"staff: {reason}"[:200]).where(
                    (P.request_id == request_id) & (P.state == "approved")
                    & (P.told == 0)).execute():
                # Charged, and the terminal never learnt it: staff served the patient (slip
                # reprinted at the desk, or contacted); that settles it (once: the update is
                # a compare-and-set).
                self._staff_audit(staff, "payment.staff_served", request_id,
                                  reason=reason[:200])
                return self._info(request_id)
            # Checked under the row's lock: of two staff resolving one payment on two
            # instances, the second is told it is final already.
            self._open_row(request_id, lock=True)
            self._staff_audit(staff, "payment.staff_resolve", request_id, state=state,
                              reason=reason[:200])
            self._transition(request_id, state, reason=f"staff: {reason}",
                             actor=f"staff:{staff}")
        return self._info(request_id)

    def _info(self, request_id: str) -> PaymentInfo:
        info = self.get(request_id)
        if info is None:  # pragma: no cover - rows are never deleted once answered
            raise PaymentError("not_found", f"no payment for request {request_id}",
                               "没有该支付记录")
        return info

    async def run(self) -> None:
        """Resolve open payments every ``poll_interval_s`` until cancelled."""
        while True:
            try:
                await self.resolve_once()
            except Exception:  # one bad round must not stop resolving money; say so loudly
                log.exception("payment resolver round failed")
            await asyncio.sleep(self.poll_interval_s)

    def unresolved(self) -> list[PaymentInfo]:
        """Payments that need attention (staff dashboard), oldest first: not final yet, or
        approved while the device that took them was never told (the patient may have left
        charged and empty-handed; it resends, or staff serve them)."""
        P = self.store.Payment
        return [
            PaymentInfo(
                r.request_id, r.payment_id, r.dev, r.amount_fen, r.method, r.state,
                datetime.fromtimestamp(r.created_at, UTC),
                datetime.fromtimestamp(r.updated_at, UTC),
                datetime.fromtimestamp(r.deadline, UTC), r.checks, r.reason, bool(r.told),
            )
            for r in P.select().where(P.state.in_(OPEN_STATES) | (
                (P.state == "approved") & (P.told == 0))).order_by(P.created_at)
        ]

    def get(self, request_id: str) -> PaymentInfo | None:
        """One payment by its pay.create request id."""
        P = self.store.Payment
        r = P.get_or_none(P.request_id == request_id)
        if r is None:
            return None
        return PaymentInfo(
            r.request_id, r.payment_id, r.dev, r.amount_fen, r.method, r.state,
            datetime.fromtimestamp(r.created_at, UTC), datetime.fromtimestamp(r.updated_at, UTC),
            datetime.fromtimestamp(r.deadline, UTC), r.checks, r.reason, bool(r.told),
        )
