"""Payments whose outcome is not final, and their resolution (DESIGN.md "Delivery rules").

States::

    created → pending → approved | declined | unknown → reversed
              (pending/unknown may also resolve to approved/declined)

``Payments.observe`` is the forwarder's outcome observer: every ``pay.create`` outcome is
recorded (keyed by the request id, which is also the platform's idempotency key), and
``pay.status``/``pay.reverse`` results update the record. ``resolve_once`` (run every few
seconds by ``run``) handles what is still open:

* known ``payment_id`` → ``pay.status``; still open past the deadline → ``pay.reverse``
  (fixed idempotency key per payment, so repeated reversal attempts reverse once);
* no ``payment_id`` (the create call's answer was lost) → ``pay.create`` again with the
  **same idempotency key and body**: the platform returns the original outcome and never
  charges twice. A wallet payment's body holds the payment code, which is never stored, so
  those wait for the device's resend (same id) and are listed for staff meanwhile.

Every transition is an audit record. ``unresolved()`` feeds the staff dashboard.
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
    PlatformError,
    PlatformRejected,
    PlatformUnavailable,
)
from central.store import Store
from edge.protocol.envelope import Envelope

__all__ = ["OPEN_STATES", "PaymentInfo", "Payments"]

log = logging.getLogger(__name__)

OPEN_STATES = ("created", "pending", "unknown")
FINAL_STATES = ("approved", "declined", "reversed")
_SECRET_FIELDS = frozenset({"auth_code"})


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
    ) -> None:
        self.store = store
        self.adapter = adapter
        self._clock = clock
        self.deadline_s = deadline_s
        self.poll_interval_s = poll_interval_s

    # -- recording ---------------------------------------------------------------------
    async def observe(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        """Forwarder hook: record ``pay.*`` outcomes."""
        if env.type == "pay.create":
            self._record_create(env, result, error)
        elif env.type in ("pay.status", "pay.reverse") and result is not None:
            self._update_by_payment_id(result, actor=f"device:{env.dev}")

    def _record_create(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        P = self.store.Payment
        now = self._clock().timestamp()
        body = env.body
        with self.store.atomic():
            row = P.get_or_none(P.request_id == env.id)
            if row is None:
                if isinstance(error, PlatformUnavailable):
                    return  # nothing happened: nothing to track
                stored_body = (
                    None if _SECRET_FIELDS & body.keys()
                    else json.dumps(body, sort_keys=True, ensure_ascii=False)
                )
                row = P.create(
                    request_id=env.id, payment_id=None, dev=env.dev,
                    patient_id=str(body.get("patient_id", ""))[:64],
                    amount_fen=int(body.get("amount_fen", 0)), method=str(body.get("method", "")),
                    state="created", created_at=now, updated_at=now,
                    deadline=now + self.deadline_s, request_body=stored_body,
                )
                self.store.audit(
                    self._clock(), "payments", "payment.created",
                    {"request_id": env.id, "dev": env.dev, "amount_fen": row.amount_fen},
                )
        if result is not None:
            self._apply(env.id, result, actor="forwarder")
        elif isinstance(error, PlatformRejected):
            self._transition(env.id, "declined", reason=f"{error.code}: {error.reason}",
                             actor="forwarder")
        elif error is not None:
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
            row = P.get_or_none(P.request_id == request_id)
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
            if row.request_body is None:
                return  # wallet payment: the device's resend (same id) resolves it
            result = await self.adapter.call(
                "pay.create", json.loads(row.request_body), idempotency_key=row.request_id
            )
            self._apply(row.request_id, result, actor="resolver")
            return
        result = await self.adapter.call(
            "pay.status", {"payment_id": row.payment_id},
            idempotency_key=_key(f"status{row.checks}", row.request_id),
        )
        self._apply(row.request_id, result, actor="resolver")
        current = self.store.Payment.get(self.store.Payment.request_id == row.request_id)
        if current.state in OPEN_STATES and now >= row.deadline:
            result = await self.adapter.call(
                "pay.reverse", {"payment_id": row.payment_id},
                idempotency_key=_key("reverse", row.request_id),
            )
            self._apply(row.request_id, result, actor="resolver")

    async def run(self) -> None:
        """Resolve open payments every ``poll_interval_s`` until cancelled."""
        while True:
            try:
                await self.resolve_once()
            except Exception:  # one bad round must not stop resolving money; say so loudly
                log.exception("payment resolver round failed")
            await asyncio.sleep(self.poll_interval_s)

    def unresolved(self) -> list[PaymentInfo]:
        """Payments not yet final (for the staff dashboard), oldest first."""
        P = self.store.Payment
        return [
            PaymentInfo(
                r.request_id, r.payment_id, r.dev, r.amount_fen, r.method, r.state,
                datetime.fromtimestamp(r.created_at, UTC),
                datetime.fromtimestamp(r.updated_at, UTC),
                datetime.fromtimestamp(r.deadline, UTC), r.checks, r.reason,
            )
            for r in P.select().where(P.state.in_(OPEN_STATES)).order_by(P.created_at)
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
            datetime.fromtimestamp(r.deadline, UTC), r.checks, r.reason,
        )
