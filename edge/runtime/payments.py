"""Money at this terminal: the payment desk (pay, status, reverse, refund) and its ledger.

Delivery rules (docs/architecture.md): a payment whose outcome is unknown is never paid
again; the caller asks ``request_result`` with the same request id. Only confirmed outcomes
go into the ledger, once per payment id however often their approval is seen.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from edge.runtime.audit_ship import AuditShipper
from edge.runtime.card_session import CardSessions
from edge.runtime.errors import SessionError
from edge.runtime.events import EventBus
from edge.runtime.link import PlatformLink
from edge.runtime.memory import PayIntent, RefundDone, SessionMemory
from edge.runtime.ports import Clock
from edge.runtime.scans import ScanDesk
from edge.runtime.terminal import Terminal
from yikatong.common.storage import open_durable
from yikatong.protocol.messages import PaymentList, PaymentResult, PaymentSummary, RefundResult

if TYPE_CHECKING:
    from edge.runtime.staff import StaffDesk

__all__ = ["Ledger", "PaymentDesk"]

log = logging.getLogger("edge.runtime")


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


class PaymentDesk:
    """``pay.*`` for the session's patient, the ledger, and payments settled later."""

    def __init__(self, *, terminal: Terminal, link: PlatformLink, cards: CardSessions,
                 scans: ScanDesk, staff: StaffDesk, ledger: Ledger, shipper: AuditShipper,
                 bus: EventBus, clock: Clock, memory: SessionMemory) -> None:
        self.terminal = terminal
        self.link = link
        self.cards = cards
        self.scans = scans
        self.staff = staff
        self.ledger = ledger
        self.shipper = shipper
        self.bus = bus
        self.clock = clock
        self.memory = memory
        # request id or payment id → what the payment was for; kept beyond the session,
        # since a payment may settle after the patient left (ledger kind, cash change).
        self._intents: dict[str, PayIntent] = {}

    async def pay(self, *, purpose: str, refs: list[str], amount_fen: int, method: str,
                  scan_id: str | None, request_id: str, timeout_s: float | None,
                  tendered_fen: int | None = None) -> PaymentResult:
        """``pay.create`` for the session's patient; a payment code is taken by its scan id.

        ``request_id`` is the caller's idempotency key: after OutcomeUnknown the caller asks
        ``request_result`` with it and never pays again. ``tendered_fen``: the cash handed
        over at a desk (实收); the change (找零) is worked out here, for the receipt.
        """
        _, patient = self.cards.require_patient()
        body: dict[str, Any] = {"patient_id": patient.patient_id, "purpose": purpose,
                                "refs": refs, "amount_fen": amount_fen}
        if method == "cash":
            self.staff.require()  # only a desk takes cash
            body["method"] = "cash"
            if tendered_fen is not None and tendered_fen < amount_fen:
                raise SessionError("not_enough_cash",
                                   "The cash tendered is less than the amount due.",
                                   "实收金额不足应收金额。")
        elif method == "prepaid":
            body["method"] = "prepaid"
        elif method == "code":
            held = self.scans.take_code(scan_id)
            if held is None:
                raise SessionError("scan_code_again",
                                   "Please show your payment code again (it expires quickly).",
                                   "付款码已失效，请刷新后重新出示。")
            body["method"], body["auth_code"] = held.wallet, held.code
        else:
            raise SessionError("bad_method", f"Unknown payment method {method}.", "支付方式无效。")
        self._intents[request_id] = PayIntent(
            purpose, tuple(refs), amount_fen, tendered_fen if method == "cash" else None)
        # Never the payment code: the method says which wallet, the request id which payment.
        self.shipper.record("payment.requested", {
            "request_id": request_id, "amount_fen": amount_fen, "method": body["method"],
            "purpose": purpose})
        try:
            result = await self.link.call("pay.create", body, timeout_s, request_id)
        except Exception as exc:
            self.shipper.record("payment.error", {
                "request_id": request_id,
                "error": str(getattr(exc, "code", "")) or type(exc).__name__})
            raise
        if not isinstance(result, PaymentResult):  # the uplink validated it as this model
            raise TypeError(f"pay.create answered with {type(result).__name__}")
        self.outcome(request_id, result)
        return result

    def outcome(self, request_id: str, result: BaseModel) -> None:
        """An answer to request ``request_id`` (also one learnt later): audit and ledger."""
        if isinstance(result, PaymentResult):
            self._audit(request_id, result)
            self._note(result, request_id)

    async def settled_later(self, type_: str, request_id: str, result: BaseModel | None,
                            error: Any) -> None:
        """The uplink's follow-up learnt a payment's outcome after its screen gave up."""
        if type_ != "pay.create":
            return
        paid = result if isinstance(result, PaymentResult) else None
        state = paid.state if paid is not None else ("" if result is not None else "failed")
        if paid is not None:
            self._audit(request_id, paid)
            self._note(paid, request_id)
        body = {"request_id": request_id, "state": state,
                "payment_id": paid.payment_id if paid is not None else ""}
        self.bus.publish("payment.settled", body)
        log.info("payment %s settled after the screen gave up: %s", request_id, state)

    def _audit(self, request_id: str, r: PaymentResult) -> None:
        self.shipper.record("payment.outcome", {
            "request_id": request_id, "payment_id": r.payment_id, "state": r.state,
            "method": r.method, "amount_fen": r.amount_fen})

    def _note(self, result: PaymentResult, key: str | None = None) -> None:
        """Remember the payment for its receipt; an approved one goes into the ledger."""
        intent = self._intents.get(key) if key is not None else None
        if intent is None:
            intent = self._intents.get(result.payment_id)
        elif result.payment_id not in self._intents:
            self._intents[result.payment_id] = intent
        self.memory.remember_payment(result, intent)
        if result.state != "approved":
            return
        purpose = intent.purpose if intent is not None else "bills"
        kind = "topup" if purpose == "topup" else "payment"
        staff = self.staff.current
        self.ledger.record(f"pay-{result.payment_id}", self.clock.now(), kind=kind,
                           method=result.method, amount_fen=result.amount_fen,
                           payment_id=result.payment_id,
                           operator=staff.staff_id if staff is not None else "")
        if (result.method == "cash" and self.terminal.is_desk and intent is not None
                and intent.tendered_fen is not None):
            # 实收/找零 for the receipt and for a copy printed later (first one wins).
            self.ledger.record_cash(result.payment_id, intent.tendered_fen,
                                    intent.tendered_fen - intent.amount_fen)

    async def status(self, payment_id: str) -> PaymentResult:
        """``pay.status``; a payment seen approved here is written to the ledger."""
        result = await self.link.call("pay.status", {"payment_id": payment_id})
        return self._payment(result)

    async def reverse(self, payment_id: str) -> PaymentResult:
        """``pay.reverse`` of a payment that never resolved (the wallet deadline passed).

        A payment that settled meanwhile comes back approved: it is paid, and recorded so.
        """
        result = await self.link.call("pay.reverse", {"payment_id": payment_id}, 30)
        return self._payment(result)

    def _payment(self, result: BaseModel) -> PaymentResult:
        if not isinstance(result, PaymentResult):  # the uplink validated it as this model
            raise TypeError(f"pay.* answered with {type(result).__name__}")
        self._note(result)
        return result

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> RefundDone:
        """Cashier refund to the original method; the refund plus that method."""
        staff = self.staff.require()
        self.cards.require_patient()
        # Central allows a refund for any patient this desk identified in the last half hour;
        # the desk itself refunds only a payment of the patient whose card is in the reader.
        original = next((p for p in await self.pay_list() if p.payment_id == payment_id),
                        None)
        if original is None:
            raise SessionError("not_this_patient",
                               "This payment belongs to another patient than the one whose "
                               "card was read.", "该笔支付不属于当前读卡的患者。")
        result = await self.link.call("pay.refund", {"payment_id": payment_id,
                                                     "amount_fen": amount_fen,
                                                     "reason": reason}, 30)
        if not isinstance(result, RefundResult):  # the uplink validated it as this model
            raise TypeError(f"pay.refund answered with {type(result).__name__}")
        self.ledger.record(f"refund-{result.refund_id}", self.clock.now(), kind="refund",
                           method=original.method, amount_fen=result.amount_fen,
                           payment_id=payment_id, operator=staff.staff_id)
        self.shipper.record("refund", {"refund_id": result.refund_id, "payment_id": payment_id,
                                       "amount_fen": result.amount_fen,
                                       "method": original.method})
        done = RefundDone(result, original.method, reason)
        self.memory.remember_refund(done)
        return done

    async def pay_list(self) -> list[PaymentSummary]:
        """The identified patient's payments, newest first (the desk refunds or reprints one)."""
        self.staff.require()
        s, patient = self.cards.require_patient()
        result = await self.link.call("pay.list", {"patient_id": patient.patient_id}, 20)
        self.cards.still(s)  # card pulled while we waited: not this patient's any more
        if not isinstance(result, PaymentList):  # the uplink validated it as this model
            raise TypeError(f"pay.list answered with {type(result).__name__}")
        return list(result.payments)
