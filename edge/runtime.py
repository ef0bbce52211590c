"""The daemon's live state: the patient session, the event bus and the actions the API offers.

Personal data (the cardholder's name and ID number) stays here, in memory, for the length
of one card session; the kiosk only ever gets masked values. Card removal wipes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from yikatong.common.logging import known_names
from yikatong.common.privacy import mask_card_number, mask_id_number, mask_name
from yikatong.common.storage import open_durable

log = logging.getLogger("edge.runtime")

__all__ = ["EdgeRuntime", "EventBus", "Ledger", "SessionError"]

#: How long a scanned payment code may wait for its payment. Wallet codes are short-lived
#: (about a minute) and single-use: a stale one must not be charged later.
PAY_CODE_TTL_S = 60.0
#: Used when the daemon has no scanner config: the site-in-a-box's specimen and badge shapes.
DEFAULT_SPECIMEN_REGEX = r"[0-9A-Za-z][0-9A-Za-z-]{5,31}"
DEFAULT_BADGE_REGEX = r"S[0-9]{4}"


class SessionError(Exception):
    """An API action that needs a card session (or a patient) found none."""

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_zh = message_zh


class Clock(Protocol):
    """Wall clock, injectable for tests."""

    def now(self) -> datetime:
        """Return an aware datetime."""
        ...


class EventBus:
    """Fan-out of daemon events to API subscribers; a slow subscriber loses old events only."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        self._maxsize = maxsize
        self._seq = 0

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber (never blocks)."""
        self._seq += 1
        event = {"seq": self._seq, "kind": kind, "data": data}
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Yield a queue receiving every event published while the context is open."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subs.add(q)
        try:
            yield q
        finally:
            self._subs.discard(q)


@dataclass
class CardSessionState:
    """One inserted card, from insertion to removal."""

    session_id: str
    reader: str
    state: str  # "reading" | "ready" | "error"
    identity: Any = None  # edge.devices.card.protocol.records.Identity (full, in memory only)
    error: dict[str, str] | None = None
    patient: dict[str, Any] | None = None  # platform's patient record (full)
    started: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    via: str = "card"  # "card" | "ehc_qr"

    @property
    def holder_name(self) -> str:
        """The full name for paper (masked by the layout), from the card or the platform."""
        if self.identity is not None:
            return str(self.identity.name)
        return str((self.patient or {}).get("name", ""))

    @property
    def card_no(self) -> str:
        """The health card number (full; masked on paper)."""
        if self.identity is not None:
            return str(self.identity.card_number)
        return str((self.patient or {}).get("card_no", ""))

    def masked(self) -> dict[str, Any]:
        """What the kiosk may see."""
        out: dict[str, Any] = {"session_id": self.session_id, "state": self.state,
                               "via": self.via}
        if self.identity is not None:
            out["identity"] = self.identity.masked()
        if self.error:
            out["error"] = self.error
        if self.patient:
            p = self.patient
            out["patient"] = {
                "patient_id": p["patient_id"],
                "name": mask_name(p["name"]),
                "sex": p.get("sex", "U"),
                "id_number": mask_id_number(p["id_number"]),
                "card_no": mask_card_number(p["card_no"]),
                "balance_fen": p.get("balance_fen", 0),
                "insured": p.get("insured", False),
            }
        return out


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


@dataclass
class HeldCode:
    """A scanned payment code waiting for its payment (never logged, never persisted)."""

    wallet: str
    code: str = field(repr=False)
    masked: str = ""
    at: float = 0.0


class EdgeRuntime:
    """Glue between the card service, the printer, the uplink and the local API."""

    def __init__(
        self,
        *,
        device_id: str,
        role: str,
        hospital_name: str,
        timezone: str = "Asia/Shanghai",
        uplink: Any,
        printer: Any,
        clock: Clock,
        rules: Any = None,
        ledger: Ledger | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        audit: Any = None,
    ) -> None:
        self.device_id = device_id
        self.role = role
        self.hospital_name = hospital_name
        self.tz = ZoneInfo(timezone)
        self.uplink = uplink
        self.printer = printer
        self.clock = clock
        self.bus = EventBus()
        self.session: CardSessionState | None = None
        self.reader_present = False
        # The card service's health (reader, SAM state, last fault); set by the daemon.
        self.card_health: Callable[[], dict[str, Any]] | None = None
        self.started = clock.now()
        # The last idle printer status (event body), for telemetry; None until the first poll.
        self.printer_state: dict[str, Any] | None = None
        if rules is None:
            from edge.devices.scanner.classify import ClassifierRules

            rules = ClassifierRules.from_strings(DEFAULT_SPECIMEN_REGEX, DEFAULT_BADGE_REGEX)
        self.rules = rules
        self.ledger = ledger or Ledger()
        self.monotonic = monotonic
        self.codes: dict[str, HeldCode] = {}
        self.staff: dict[str, Any] | None = None
        self.platform_ok: bool | None = None  # last request's verdict on the platform link
        self._purposes: dict[str, str] = {}  # payment id or request id -> purpose (ledger kind)
        self._ehc_pending: str | None = None
        self.last_job: str | None = None
        # The last document printed, for the desk's "reprint last (copy)"; it holds personal
        # data, so it lives in memory only and goes at sign-out (kiosks: at session end).
        self._last_doc: tuple[str, Any, str] | None = None
        # The device audit log (edge.fleet.audit.AuditLog); None: nothing is audited (tests).
        self.audit = audit
        self._shipping: set[asyncio.Task[None]] = set()
        if hasattr(uplink, "on_settled"):
            # A payment whose outcome was unknown when its screen gave up is asked again by
            # the uplink in the background; its final answer lands here (ledger, audit, and
            # an event the desk and central can act on), also after the patient left.
            uplink.on_settled = self._settled_later

    # -- audit and events to central -------------------------------------------------------

    def _audit(self, action: str, detail: dict[str, Any]) -> None:
        """Append one masked record to the audit log and queue it for central."""
        if self.audit is None:
            return
        audit = self.audit
        actor = str((self.staff or {}).get("staff_id") or self.role)
        try:
            row = audit.record(actor, action, detail)
        except Exception as exc:  # the audit must not take the kiosk down; say so loudly
            log.error("audit record %s refused: %s", action, type(exc).__name__)
            return
        self._ship("audit", row.wire_body(), lambda: audit.mark_shipped(row.seq))

    def _ship(self, type_: str, body: dict[str, Any],
              done: Callable[[], None] | None = None) -> None:
        """Queue an event for central from sync code (the uplink's outbox is durable)."""
        async def send() -> None:
            try:
                await self.uplink.publish_event(type_, body)
            except Exception as exc:
                log.warning("event %s not queued: %s", type_, type(exc).__name__)
                return
            if done is not None:
                done()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a sync test): unshipped audit records go at the next start
        task = loop.create_task(send())
        self._shipping.add(task)  # keep a reference until it ran
        task.add_done_callback(self._shipping.discard)

    async def resend_audit(self) -> int:
        """Queue the audit records a crash left out of the outbox; returns how many."""
        if self.audit is None:
            return 0
        rows = self.audit.unshipped()
        for row in rows:
            await self.uplink.publish_event("audit", row.wire_body())
            self.audit.mark_shipped(row.seq)
        return len(rows)

    # -- card events ---------------------------------------------------------------------

    def card_inserted(self, reader: str, atr: bytes | None = None) -> None:
        """A card went into the patient slot: open a session in the reading state."""
        self._wipe()
        self.session = CardSessionState(
            session_id=secrets.token_hex(8), reader=reader, state="reading",
            started=self.clock.now(),
        )
        self.bus.publish("card.inserted", {"session_id": self.session.session_id})
        self._audit("card.inserted", {"reader": reader, "session_id": self.session.session_id})
        if atr:
            self._ship("card.inserted", {"reader": reader, "atr": atr.hex().upper()})

    def identity_read(self, reader: str, identity: Any) -> None:
        """The card's identity was read and passed the hot-list check."""
        if self.session is None or self.session.reader != reader:
            self.card_inserted(reader)
        assert self.session is not None
        self.session.identity = identity
        self.session.state = "ready"
        known_names.add(identity.name)
        self.bus.publish("card.identity", self.session.masked())
        self._audit("card.read", {"reader": reader, "session_id": self.session.session_id,
                                  "card_masked": mask_card_number(str(identity.card_number))})
        log.info("card read", extra={"session": self.session.session_id})

    def card_failed(self, reader: str, code: str, message: str, message_zh: str) -> None:
        """Reading failed (not a health card, blocked, removed mid-read, SAM fault...)."""
        if self.session is None or self.session.reader != reader:
            self.card_inserted(reader)
        assert self.session is not None
        self.session.state = "error"
        self.session.error = {"code": code, "message": message, "message_zh": message_zh}
        self.bus.publish("card.error", self.session.masked())
        self._audit("card.read_failed", {"reader": reader, "code": code})
        self._ship("card.read_failed", {"reader": reader, "code": code})

    def card_removed(self, reader: str) -> None:
        """The card left the slot: the session and its personal data end now."""
        if self.session is not None and self.session.reader == reader:
            sid = self.session.session_id
            self._wipe()
            self.bus.publish("card.removed", {"session_id": sid})
            self._audit("card.removed", {"reader": reader, "session_id": sid})
            self._ship("card.removed", {"reader": reader})

    def end_session(self) -> None:
        """The kiosk ended the session (timeout, done): wipe personal data."""
        if self.session is not None:
            sid = self.session.session_id
            self._wipe()
            self.bus.publish("session.ended", {"session_id": sid})

    def _wipe(self) -> None:
        if self.session is not None:
            if self.session.identity is not None:
                known_names.discard(self.session.identity.name)
            if self.session.patient:
                known_names.discard(self.session.patient.get("name", ""))
        self.session = None
        self.codes.clear()  # a scanned payment code never outlives the patient's session
        if self.role != "cashier":
            self._last_doc = None

    # -- actions -------------------------------------------------------------------------

    def _require_identity(self) -> CardSessionState:
        s = self.session
        if s is None or s.state != "ready" or (s.identity is None and not s.patient):
            raise SessionError(
                "no_card", "Please insert your health card.", "请插入您的居民健康卡。"
            )
        return s

    async def identify_patient(self) -> dict[str, Any]:
        """Ask the platform who the card in the slot belongs to."""
        s = self._require_identity()
        if s.identity is None:  # opened by an e-health QR: already identified
            return s.masked()
        result = await self._call(
            "patient.identify", {"by": "card", "value": s.identity.card_number, "scene": "0200"}
        )
        if self.session is not s:  # card pulled while we waited: drop the answer
            raise SessionError("card_removed", "The card was removed.", "卡已被取出。")
        s.patient = dict(result)
        known_names.add(result["name"])
        return s.masked()

    async def request(self, type_: str, body: dict[str, Any], timeout_s: float | None,
                      request_id: str | None = None) -> Any:
        """Forward a non-personal request (slots, booking...) through the uplink."""
        return await self._call(type_, body, timeout_s, request_id)

    async def _call(self, type_: str, body: dict[str, Any], timeout_s: float | None = None,
                    request_id: str | None = None) -> Any:
        """One uplink request; remembers whether the platform answered (out-of-service)."""
        from edge.uplink.errors import PlatformUnavailable, Rejected, UplinkClosed

        kw: dict[str, Any] = {"timeout": timeout_s}
        if request_id is not None:
            kw["id"] = request_id
        staff = self.staff
        if staff is not None and staff.get("session") and type_ != "staff.login":
            # Central checks this session on every desk request (docs/security.md).
            kw["auth"] = staff["session"]
        try:
            result = await self.uplink.request(type_, body, **kw)
        except (PlatformUnavailable, UplinkClosed):
            self._platform(False)
            raise
        except Rejected as exc:
            self._platform(True)
            if exc.code == "session_expired" and staff is not None and self.staff is staff:
                # Central ended the session (idle, shift over, reset): lock the desk.
                self._end_staff("expired")
            raise
        except Exception:
            self._platform(True)  # an answer (rejection) or an unknown outcome: link alive
            raise
        self._platform(True)
        return result

    def _platform(self, ok: bool) -> None:
        if self.platform_ok is not ok:
            self.platform_ok = ok
            self.bus.publish("platform.status", {"ok": ok})

    async def request_result(self, request_id: str, wait_s: float) -> Any:
        """The outcome of an earlier request whose caller gave up (OutcomeUnknown)."""
        result = await self.uplink.result_of(request_id, wait_s=wait_s)
        self._audit_payment(request_id, result)
        await self._note_payment(result, self._purposes.get(request_id))
        return result

    # -- scans -----------------------------------------------------------------------------

    def scan_text(self, text: str, source: str = "ui") -> dict[str, Any]:
        """Classify text typed into the kiosk's scan field (a keyboard-wedge scanner)."""
        from edge.devices.scanner.classify import classify

        return self.scan_received(classify(text, self.rules), source)

    def scan_received(self, scan: Any, source: str = "scanner") -> dict[str, Any]:
        """Handle one classified scan; publish a ``scan`` event without secrets; return it."""
        from edge.devices.scanner.classify import (
            EhcQr,
            PaymentCode,
            SpecimenBarcode,
            StaffBadge,
        )

        now = self.monotonic()
        self.codes = {k: c for k, c in self.codes.items() if now - c.at <= PAY_CODE_TTL_S}
        event: dict[str, Any] = {"scan_id": secrets.token_hex(8), "source": source}
        if isinstance(scan, PaymentCode):
            # The code stays here; the kiosk and the event stream get a handle and a mask.
            self.codes = {event["scan_id"]: HeldCode(scan.wallet, scan.code, scan.masked, now)}
            event.update(kind="payment_code", wallet=scan.wallet, masked=scan.masked)
        elif isinstance(scan, SpecimenBarcode):
            event.update(kind="specimen", value=scan.value)
        elif isinstance(scan, StaffBadge):
            event.update(kind="staff_badge", value=scan.badge_id)
        elif isinstance(scan, EhcQr):
            self._ehc_pending = scan.raw
            event.update(kind="ehc_qr", qr=scan.kind)
        else:
            event.update(kind="unknown", length=getattr(scan, "length", 0))
        self.bus.publish("scan", event)
        return event

    async def identify_by_qr(self) -> dict[str, Any]:
        """Open a session for the e-health QR scanned last (no card in the slot)."""
        raw, self._ehc_pending = self._ehc_pending, None
        if not raw:
            raise SessionError("no_qr", "Please show your e-health card QR code again.",
                               "请重新出示电子健康卡二维码。")
        if self.session is not None and self.session.identity is not None:
            raise SessionError("card_in_slot", "A card is in the slot.", "读卡器中已有卡片。")
        result = await self._call("patient.identify",
                                  {"by": "ehc_qr", "value": raw, "scene": "0200"})
        self._wipe()
        self.session = CardSessionState(session_id=secrets.token_hex(8), reader="qr",
                                        state="ready", started=self.clock.now(), via="ehc_qr",
                                        patient=dict(result))
        known_names.add(result["name"])
        masked = self.session.masked()
        self.bus.publish("card.identity", masked)
        return masked

    # -- money -----------------------------------------------------------------------------

    def _require_patient(self) -> tuple[CardSessionState, dict[str, Any]]:
        s = self._require_identity()
        if not s.patient:
            raise SessionError("not_identified", "Your record has not been looked up yet.",
                               "尚未查询到您的就诊信息。")
        return s, s.patient

    def _require_staff(self) -> dict[str, Any]:
        if self.role != "cashier" or self.staff is None:
            raise SessionError("staff_only", "Only a signed-in cashier can do this.",
                               "此操作需要收费员登录。")
        return self.staff

    async def pay(self, *, purpose: str, refs: list[str], amount_fen: int, method: str,
                  scan_id: str | None, request_id: str, timeout_s: float | None) -> Any:
        """``pay.create`` for the session's patient; a payment code is taken by its scan id.

        ``request_id`` is the caller's idempotency key: after OutcomeUnknown the caller asks
        ``request_result`` with it and never pays again.
        """
        _, patient = self._require_patient()
        body: dict[str, Any] = {"patient_id": patient["patient_id"], "purpose": purpose,
                                "refs": refs, "amount_fen": amount_fen}
        if method == "cash":
            self._require_staff()  # only a desk takes cash
            body["method"] = "cash"
        elif method == "prepaid":
            body["method"] = "prepaid"
        elif method == "code":
            held = self.codes.pop(scan_id or "", None)
            if held is None or self.monotonic() - held.at > PAY_CODE_TTL_S:
                raise SessionError("scan_code_again",
                                   "Please show your payment code again (it expires quickly).",
                                   "付款码已失效，请刷新后重新出示。")
            body["method"], body["auth_code"] = held.wallet, held.code
        else:
            raise SessionError("bad_method", f"Unknown payment method {method}.", "支付方式无效。")
        self._purposes[request_id] = purpose
        # Never the payment code: the method says which wallet, the request id which payment.
        self._audit("payment.requested", {"request_id": request_id, "amount_fen": amount_fen,
                                          "method": body["method"], "purpose": purpose})
        try:
            result = await self._call("pay.create", body, timeout_s, request_id)
        except Exception as exc:
            self._audit("payment.error", {"request_id": request_id,
                                          "error": str(getattr(exc, "code", "")) or
                                          type(exc).__name__})
            raise
        self._audit_payment(request_id, result)
        await self._note_payment(result, purpose)
        return result

    async def _settled_later(self, type_: str, request_id: str, result: Any,
                             error: Any) -> None:
        if type_ != "pay.create":
            return
        state = str((result or {}).get("state", "")) if result is not None else "failed"
        if result is not None:
            self._audit_payment(request_id, result)
            await self._note_payment(result, self._purposes.get(request_id))
        body = {"request_id": request_id, "state": state,
                "payment_id": str((result or {}).get("payment_id", ""))}
        self.bus.publish("payment.settled", body)
        log.info("payment %s settled after the screen gave up: %s", request_id, state)

    def _audit_payment(self, request_id: str, result: Any) -> None:
        r = result if isinstance(result, dict) else {}
        self._audit("payment.outcome", {
            "request_id": request_id, "payment_id": str(r.get("payment_id", "")),
            "state": str(r.get("state", "unknown")), "method": str(r.get("method", "")),
            "amount_fen": int(r.get("amount_fen", 0) or 0)})

    async def pay_status(self, payment_id: str) -> Any:
        """``pay.status``; a payment seen approved here is written to the ledger."""
        result = await self._call("pay.status", {"payment_id": payment_id})
        await self._note_payment(result)
        return result

    async def pay_reverse(self, payment_id: str) -> Any:
        """``pay.reverse`` of a payment that never resolved (the wallet deadline passed)."""
        return await self._call("pay.reverse", {"payment_id": payment_id}, 30)

    async def _note_payment(self, result: Any, purpose: str | None = None) -> None:
        if not isinstance(result, dict) or result.get("state") != "approved":
            return
        if "payment_id" not in result:
            return
        if purpose is None:
            purpose = self._purposes.get(result["payment_id"], "bills")
        self._purposes[result["payment_id"]] = purpose
        kind = "topup" if purpose == "topup" else "payment"
        self.ledger.record(f"pay-{result['payment_id']}", self.clock.now(), kind=kind,
                           method=result["method"], amount_fen=int(result["amount_fen"]),
                           payment_id=result["payment_id"],
                           operator=(self.staff or {}).get("staff_id", ""))

    async def refund(self, payment_id: str, amount_fen: int, reason: str) -> dict[str, Any]:
        """Cashier refund to the original method; returns the refund plus that method."""
        staff = self._require_staff()
        self._require_patient()
        # Central allows a refund for any patient this desk identified in the last half hour;
        # the desk itself refunds only a payment of the patient whose card is in the reader.
        original = next((p for p in await self.pay_list() if p["payment_id"] == payment_id),
                        None)
        if original is None:
            raise SessionError("not_this_patient",
                               "This payment belongs to another patient than the one whose "
                               "card was read.", "该笔支付不属于当前读卡的患者。")
        result = await self._call("pay.refund", {"payment_id": payment_id,
                                                 "amount_fen": amount_fen, "reason": reason}, 30)
        self.ledger.record(f"refund-{result['refund_id']}", self.clock.now(), kind="refund",
                           method=original["method"], amount_fen=int(result["amount_fen"]),
                           payment_id=payment_id, operator=staff.get("staff_id", ""))
        self._audit("refund", {"refund_id": result["refund_id"], "payment_id": payment_id,
                               "amount_fen": int(result["amount_fen"]),
                               "method": original["method"]})
        return {**result, "method": original["method"]}

    async def pay_list(self) -> list[dict[str, Any]]:
        """The identified patient's payments, newest first (the desk refunds or reprints one)."""
        self._require_staff()
        s, patient = self._require_patient()
        result = await self._call("pay.list", {"patient_id": patient["patient_id"]}, 20)
        if self.session is not s:  # card pulled while we waited: not this patient's any more
            raise SessionError("card_removed", "The card was removed.", "卡已被取出。")
        return list(result["payments"])

    async def reprint_payment(self, payment_id: str) -> Any:
        """A copy of an earlier receipt of the identified patient, by payment number.

        The last document is still in memory and is printed again as it was; any earlier
        one (printed bytes are dropped) is rebuilt from the platform's ``pay.list`` answer
        and the ledger (cash tendered and change), marked as a copy.
        """
        import dataclasses

        from edge.devices.printer import documents as docs

        staff = self._require_staff()
        s, _ = self._require_patient()
        entry = next((p for p in await self.pay_list() if p["payment_id"] == payment_id), None)
        if entry is None:
            raise SessionError("not_this_patient",
                               "This payment number is not one of this patient's payments.",
                               "该支付编号不属于当前读卡的患者。")
        if entry["state"] != "approved":
            raise SessionError("not_paid", "This payment did not go through: no receipt.",
                               "该笔支付未成功，没有凭条可补打。")
        topup = entry["purpose"] == "topup"
        base = f"{'topup' if topup else 'receipt'}-{payment_id}"
        last = self._last_doc
        if last is not None and last[2].split("-copy-")[0] == base:
            doc = dataclasses.replace(last[1], copy=True)
        else:
            now = self.clock.now().astimezone(self.tz)
            cash = self.ledger.cash_of(payment_id) if entry["method"] == "cash" else None
            tendered, change = cash if cash is not None else (None, None)
            amount = int(entry["amount_fen"])
            txn = entry.get("txn_id") or payment_id
            if topup:
                doc = docs.TopUpReceipt(
                    hospital_name=self.hospital_name, patient_name=s.holder_name,
                    card_no=s.card_no, amount_fen=amount, method=entry["method"], txn_id=txn,
                    balance_after_fen=None, printed_at=now, operator=staff["name"], copy=True,
                    tendered_fen=tendered, change_fen=change, payment_id=payment_id)
            else:
                what = "挂号费" if entry["purpose"] == "registration" else "门诊费用"
                doc = docs.PaymentReceipt(
                    hospital_name=self.hospital_name, patient_name=s.holder_name,
                    card_no=s.card_no, items=(docs.ReceiptItem(what, 1, amount, amount),),
                    total_fen=amount, method=entry["method"], txn_id=txn, printed_at=now,
                    payment_id=payment_id, operator=staff["name"], copy=True,
                    tendered_fen=tendered, change_fen=change)
        job_id = f"{base}-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(doc, job_id=job_id, copy=True)
        self._audit("receipt.reprinted", {"payment_id": payment_id, "job_id": job_id})
        await self._report_print(outcome, doc.kind, True)
        return outcome

    # -- shift handover --------------------------------------------------------------------

    def _shift(self, staff: dict[str, Any]) -> Any:
        """This cashier's takings since the desk's last handover (else since midnight)."""
        from edge.devices.printer import documents as docs

        now = self.clock.now().astimezone(self.tz)
        last = self.ledger.last_handover()
        start = (last.astimezone(self.tz) if last is not None
                 else now.replace(hour=0, minute=0, second=0, microsecond=0))
        lines = tuple(docs.ClosingLine(**x) for x in self.ledger.totals(
            start, now + timedelta(seconds=1), operator=staff["staff_id"]))
        return docs.ShiftReport(
            hospital_name=self.hospital_name, terminal_id=self.device_id,
            cashier=f"{staff['name']} ({staff['badge']})", period_start=min(start, now),
            period_end=now, lines=lines, printed_at=now)

    def shift_summary(self) -> dict[str, Any]:
        """What the handover report will say, for the desk's screen before it prints."""
        report = self._shift(self._require_staff())
        return {"cashier": report.cashier, "period_start": report.period_start.isoformat(),
                "period_end": report.period_end.isoformat(),
                "lines": [{**dataclasses_asdict(x), "net_fen": x.net_fen}
                          for x in report.lines]}

    async def shift_handover(self) -> Any:
        """交班: print this cashier's shift report, record it, then sign the desk out.

        Central is asked first whether the session is still live (as for the closing
        report). A report that did not print hands nothing over: the cashier stays signed
        in and can print it again once the printer is fixed.
        """
        staff = self._require_staff()
        await self._call("staff.session", {}, 10)
        report = self._shift(staff)
        # Unique per handover: two within one second must not look like one job to the
        # printer's job store (which prints a known job id only once).
        job_id = f"shift-{report.printed_at:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        outcome = await self.printer.print(report, job_id=job_id, copy=False)
        await self._report_print(outcome, report.kind, False)
        if outcome.state != "printed":
            return outcome
        self.ledger.record_handover(report.period_end, staff["staff_id"])
        self._audit("shift.handover", {
            "staff_id": staff["staff_id"], "job_id": job_id,
            "period_start": report.period_start.isoformat(),
            "period_end": report.period_end.isoformat(),
            "count": sum(x.payment_count + x.topup_count + x.refund_count for x in report.lines),
            "net_fen": sum(x.net_fen for x in report.lines)})
        self._end_staff("handover")
        token = staff.get("session")
        if token:
            self._spawn(self._logout_at_central(token))
        return outcome

    # -- staff -----------------------------------------------------------------------------

    async def staff_login(self, badge: str, pin: str) -> dict[str, Any]:
        """``staff.login`` at central; the PIN is passed through, never kept or logged."""
        if self.role != "cashier":
            raise SessionError("not_a_desk", "Staff sign-in is for desk terminals.",
                               "仅收费终端可登录。")
        result = await self._call("staff.login", {"badge": badge, "pin": pin}, 20)
        if self.staff is not None:
            self.staff_logout()  # one cashier at a time; central ended the old session too
        self.staff = {"staff_id": result["staff_id"], "name": result["name"],
                      "role": result["role"], "badge": badge,
                      "since": self.clock.now().isoformat(),
                      # Central's session token: memory only, sent as ``auth``.
                      "session": result.get("session_token"),
                      "expires_at": result.get("expires_at")}
        self.bus.publish("staff.login", {"name": result["name"], "role": result["role"]})
        self._audit("staff.login", {"staff_id": result["staff_id"]})
        return {k: v for k, v in self.staff.items() if k != "session"}

    def staff_logout(self) -> None:
        """Lock the desk: the staff session ends at central and here (patient session too)."""
        token = (self.staff or {}).get("session")
        self._end_staff("logout")
        if token:
            self._spawn(self._logout_at_central(token))

    def _end_staff(self, reason: str) -> None:
        if self.staff is not None:
            self._audit("staff.logout", {"staff_id": self.staff["staff_id"], "reason": reason})
        self.staff = None
        self._last_doc = None
        self.end_session()
        self.bus.publish("staff.logout", {"reason": reason})

    async def _logout_at_central(self, token: str) -> None:
        try:
            await self.uplink.request("staff.logout", {}, timeout=10, auth=token)
        except Exception as exc:  # the session still ends at central by its idle limit
            log.info("staff.logout not confirmed by central: %s", type(exc).__name__)

    def _spawn(self, coro: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._shipping.add(task)
        task.add_done_callback(self._shipping.discard)

    async def print_registration_slip(self, booking: dict[str, Any], *, copy: bool) -> Any:
        """Print the slip of a confirmed booking for the patient in the slot."""
        return await self.print_document("registration_slip", booking, copy=copy)

    async def print_document(self, kind: str, data: dict[str, Any], *, copy: bool) -> Any:
        """Print one document for the current session; personal fields come from here.

        The kiosk sends only what the platform told it (booking, bills, payment ids); the
        holder's name, card and ID numbers are filled in from the daemon's session.
        """
        from edge.devices.printer.errors import InvalidDocument

        try:
            doc, job_id = await self._build(kind, data, copy)
        except (InvalidDocument, KeyError, TypeError, ValueError) as exc:
            raise SessionError("bad_document", f"Cannot print this {kind}: {exc}",
                               "凭条内容不完整，无法打印，请到人工窗口办理。") from exc
        existing = self.printer.job(job_id) if hasattr(self.printer, "job") else None
        if existing is not None and existing.state == "printed":
            copy = True  # it is on paper already: any second print is a marked copy
            doc, _ = await self._build(kind, data, copy)
        if copy:
            job_id += f"-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(doc, job_id=job_id, copy=copy)
        self.last_job = job_id
        self._last_doc = (kind, doc, job_id)
        await self._report_print(outcome, kind, copy)
        if kind == "lab_report" and outcome.state == "printed" and not copy:
            with contextlib.suppress(Exception):
                await self._call("report.printed", {"report_no": data["report_no"]}, 20)
        return outcome

    async def reprint_failed(self, job_id: str) -> Any:
        """Print a job that failed once more (paid but no slip); a copy only if an original
        may be on paper (see PrinterService.reprint)."""
        # The one reprint a job is allowed must not be spent on a printer that cannot print
        # now (paper out, cover open): say so, and let the patient try again once fixed.
        check = await self.printer_check()
        if not check["ready"]:
            raise SessionError("printer_not_ready", check["message"], check["message_zh"])
        outcome = await self.printer.reprint(job_id)
        await self._report_print(outcome, outcome.doc_kind, bool(outcome.copy))
        return outcome

    async def reprint_last(self) -> Any:
        """Cashier: print the last document again, marked as a copy."""
        import dataclasses

        self._require_staff()
        if self._last_doc is None:
            raise SessionError("nothing_printed", "Nothing has been printed yet.",
                               "尚无可补打的凭条。")
        kind, doc, job_id = self._last_doc
        job_id = f"{job_id.split('-copy-')[0]}-copy-{secrets.token_hex(3)}"
        outcome = await self.printer.print(dataclasses.replace(doc, copy=True), job_id=job_id,
                                           copy=True)
        await self._report_print(outcome, kind, True)
        return outcome

    async def _report_print(self, outcome: Any, kind: str, copy: bool) -> None:
        ev = "print.done" if outcome.state == "printed" else "print.failed"
        body: dict[str, Any] = {"job_id": outcome.job_id, "doc_kind": kind, "copy": copy}
        if outcome.state != "printed":
            body = {"job_id": outcome.job_id, "reason": outcome.reason or "unknown"}
        self.bus.publish(ev, body)
        self._audit(ev, body)
        with contextlib.suppress(Exception):
            await self.uplink.publish_event(ev, body)

    async def printer_status_changed(self, status: Any) -> None:
        """Publish an idle printer status change to the kiosk and to central."""
        body = status.event_body()
        self.printer_state = dict(body)
        self.bus.publish("printer.status", {**body, "paper_near_end": body["paper"] == "near_end",
                                            "paper_out": body["paper"] == "out"})
        with contextlib.suppress(Exception):
            await self.uplink.publish_event("printer.status", body)

    async def _build(self, kind: str, d: dict[str, Any], copy: bool) -> tuple[Any, str]:
        from edge.devices.printer import documents as docs

        now = self.clock.now().astimezone(self.tz)
        operator = (self.staff or {}).get("name", "")
        if kind == "closing_report":
            staff = self._require_staff()
            # The day's takings go on paper only for a session central still holds.
            await self._call("staff.session", {}, 10)
            start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            lines = tuple(docs.ClosingLine(**x) for x in self.ledger.totals(
                start, now + timedelta(seconds=1)))
            return docs.ClosingReport(
                hospital_name=self.hospital_name, terminal_id=self.device_id,
                cashier=staff["name"], period_start=start, period_end=now, lines=lines,
                printed_at=now, copy=copy), f"closing-{now:%Y%m%d%H%M%S}"
        if kind == "lab_report":
            # Printing by specimen barcode needs no card: the barcode slip is the credential.
            r = await self._call("report.fetch", {"report_no": d["report_no"]}, 20)
            return docs.LabReport(
                hospital_name=self.hospital_name, report_no=r["report_no"], title=r["title"],
                patient_name=r["patient_name"], sex=r["sex"], age=r["age"],
                dept_name=r["dept_name"], specimen=r["specimen"],
                sampled_at=_local(r["sampled_at"], self.tz),
                reported_at=_local(r["reported_at"], self.tz),
                items=tuple(docs.LabItem(**i) for i in r["items"]), doctor=r["doctor"],
                verify_url=r["verify_url"], printed_at=now, copy=copy,
            ), f"report-{r['report_no']}"
        s = self._require_identity()
        name, card = s.holder_name, s.card_no
        if kind == "registration_slip":
            id_number = s.identity.id_number if s.identity is not None else (
                (s.patient or {}).get("id_number", ""))
            return docs.RegistrationSlip(
                hospital_name=self.hospital_name, patient_name=name, id_number=id_number,
                card_no=card, dept_name=d["dept_name"], doctor_name=d["doctor_name"],
                doctor_title=d.get("title", ""), date=d["date"], start=d["start"],
                end=d["end"], queue_no=int(d["queue_no"]), location=d.get("location", ""),
                fee_fen=int(d["fee_fen"]), visit_no=d["visit_no"],
                insured=bool(d.get("insured", (s.patient or {}).get("insured", False))),
                printed_at=now, copy=copy,
            ), f"slip-{d['booking_id']}"
        if kind == "payment_receipt":
            items = tuple(docs.ReceiptItem(name=i["name"], qty=int(i["qty"]),
                                           unit_price_fen=int(i["unit_price_fen"]),
                                           amount_fen=int(i["amount_fen"]))
                          for i in d["items"])
            return docs.PaymentReceipt(
                hospital_name=self.hospital_name, patient_name=name, card_no=card,
                items=items, total_fen=int(d["total_fen"]), method=d["method"],
                txn_id=d.get("txn_id") or d["payment_id"], printed_at=now,
                balance_after_fen=d.get("balance_after_fen"), payment_id=d["payment_id"],
                dept_name=d.get("dept_name", ""), operator=operator, copy=copy,
                **self._cash(d),
            ), f"receipt-{d['payment_id']}"
        if kind == "topup_receipt":
            return docs.TopUpReceipt(
                hospital_name=self.hospital_name, patient_name=name, card_no=card,
                amount_fen=int(d["amount_fen"]), method=d["method"],
                txn_id=d.get("txn_id") or d["payment_id"],
                balance_after_fen=int(d["balance_after_fen"]), printed_at=now,
                operator=operator, copy=copy, **self._cash(d),
                # the desk reprints by payment number: it goes on the desk's receipts
                payment_id=d["payment_id"] if self.role == "cashier" else "",
            ), f"topup-{d['payment_id']}"
        if kind == "cancellation_slip":
            refund = int(d.get("refund_fen") or 0)
            return docs.CancellationSlip(
                hospital_name=self.hospital_name, patient_name=name, card_no=card,
                booking_id=d["booking_id"], dept_name=d["dept_name"],
                doctor_name=d["doctor_name"], date=d["date"], start=d["start"], end=d["end"],
                queue_no=int(d["queue_no"]), refund_fen=refund,
                method=d.get("refund_method") if refund else None,
                refund_id=d.get("refund_id") or "", balance_after_fen=d.get("balance_fen"),
                printed_at=now, copy=copy,
            ), f"cancel-{d['booking_id']}"
        if kind == "refund_receipt":
            return docs.RefundReceipt(
                hospital_name=self.hospital_name, patient_name=name, card_no=card,
                refund_id=d["refund_id"], payment_id=d["payment_id"],
                amount_fen=int(d["amount_fen"]), method=d["method"], reason=d["reason"],
                printed_at=now, balance_after_fen=d.get("balance_after_fen"),
                operator=operator, copy=copy,
            ), f"refund-{d['refund_id']}"
        raise ValueError(f"unknown document kind {kind}")

    def _cash(self, d: dict[str, Any]) -> dict[str, int]:
        """实收/找零 of a cash payment at a desk (kept in the ledger for later copies)."""
        if d.get("method") != "cash" or d.get("tendered_fen") is None or self.role != "cashier":
            return {}
        tendered, change = int(d["tendered_fen"]), int(d.get("change_fen") or 0)
        self.ledger.record_cash(d["payment_id"], tendered, change)
        return {"tendered_fen": tendered, "change_fen": change}

    async def printer_check(self) -> dict[str, Any]:
        """Can a job sent now print completely? Asked before taking money."""
        from edge.devices.printer.errors import PrinterError

        try:
            st = await self.printer.status()
        except PrinterError as exc:
            reason = getattr(exc, "reason", None) or "offline"
            return {"ready": False, "problem": reason, "paper": "unknown",
                    **_printer_text(reason)}
        problem = None if st.ready else (st.problem or "printer_error")
        return {"ready": st.ready, "problem": problem, "paper": st.paper,
                "online": st.online, "cover_open": st.cover_open,
                **(_printer_text(problem) if problem else {})}

    def health(self) -> dict[str, Any]:
        """A snapshot for the kiosk's status bar and the API's /health."""
        return {
            "device_id": self.device_id,
            "role": self.role,
            "uplink_connected": bool(getattr(self.uplink, "connected", False)),
            "reader_present": self.reader_present,
            "card": self.card_health() if self.card_health is not None else None,
            "session": self.session.masked() if self.session else None,
            "platform_ok": self.platform_ok,
            "staff": {"name": self.staff["name"], "role": self.staff["role"]}
            if self.staff else None,
            "uptime_s": self.uptime_s(),
        }

    def uptime_s(self) -> int:
        """Seconds since the daemon started (by the injected clock)."""
        return int((self.clock.now() - self.started).total_seconds())


def dataclasses_asdict(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict (imported lazily: the runtime starts without the printer)."""
    import dataclasses

    return dataclasses.asdict(obj)


def _local(ts: str, tz: ZoneInfo) -> datetime:
    """An RFC 3339 timestamp from the platform as hospital-local time."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(tz)


_PRINTER_TEXT = {
    "paper_out": ("The printer is out of paper.", "打印机缺纸。"),
    "cover_open": ("The printer cover is open.", "打印机上盖未关闭。"),
    "offline": ("The printer is not responding.", "打印机无响应。"),
}


def _printer_text(reason: str) -> dict[str, str]:
    en, zh = _PRINTER_TEXT.get(reason, ("The printer has a fault.", "打印机故障。"))
    return {"message": en, "message_zh": zh}
