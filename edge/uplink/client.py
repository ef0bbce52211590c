"""The device's uplink: requests through the durable outbox, replies matched by ``corr``.

Delivery (docs/architecture.md "Delivery rules"):

* :meth:`Uplink.request` writes the envelope to the outbox (fsynced) **before** publishing;
  the entry ends only on the application reply (``down/resp`` with ``corr`` = id), never on
  PUBACK. Until then the same bytes (same ``id``) are republished after every reconnect and
  every ``retry_interval_s``; central dedups by id and re-sends its stored reply.
* Every send is recorded in the outbox (one fsynced transaction per batch) **before** the
  bytes go to MQTT, so a crash right after a publish can never leave an entry that looks
  unsent. Unsent entries past ``exp`` are failed locally (``expired``) and never sent: that
  is "definitely not taken". Entries ever marked sent are resent past ``exp`` until central
  answers: with the stored outcome, or ``expired`` if it never saw the request — either way
  the truth; if it never answers they end as ``no_reply`` = :class:`OutcomeUnknown`. The
  default ``exp`` is the caller's timeout plus 30 s of clock-skew allowance (capped by
  ``request_exp_s``), so nothing starts taking effect long after the patient was told it is
  being confirmed.
* The pump hands MQTT at most its free inflight slots (``max_inflight`` minus unacknowledged
  publishes), highest priority first, and a PUBACK wakes it when it waits for a slot: a
  payment enqueued behind a burst of lookups goes out next, not after everything paho
  already queued. A request that finds a free slot and nothing stored due skips the pump:
  it is stored and marked sent in one fsynced transaction (``Outbox.enqueue_sent``) and
  published at once — the same rule with one commit instead of two.
* Those two hot writes — storing a new request, storing its reply (with the request's
  personal data minimised and the WAL truncated) — run on worker threads, so their fsyncs
  never stall the event loop; the caller is answered after the reply is on disk.
* Caller timeouts (``timeout``, default per type prefix, ``pay.*`` longer):

  - ``pay.*`` → :class:`OutcomeUnknown`, always; the entry keeps going and a late reply is
    kept for :meth:`result_of` (the kiosk says "payment being confirmed — do not pay again");
    ``result_of`` later gives the result, or :class:`RequestExpired` = definitely not taken.
  - a retry with the same ``id`` after ``outcome_unknown``/``platform_unavailable`` or a
    withdrawal re-opens the entry and asks central again (same idempotency key).
  - other **mutating** types (``reg.book``, ``reg.cancel``, ``report.printed``) → if the
    request was never published, it is withdrawn (failed locally, ``caller_timeout``) and
    :class:`PlatformUnavailable` is raised — nothing happened; if it was published,
    :class:`OutcomeUnknown` and the entry keeps going, as for payments.
  - **read-only** types → withdrawn and :class:`PlatformUnavailable`; a read that happens
    later has no effect, so "nothing happened" is true.

* Events and command results are durable too, but end on PUBACK: the broker then holds them
  for central's subscription, and they have no reply to wait for. A broker crash in that
  window loses the event — acceptable for monitoring, and audit records carry a hash chain
  with ``seq`` so central notices a gap.
* Telemetry is QoS 0 and not stored; the next sample supersedes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from edge.uplink.config import UplinkConfig
from edge.uplink.errors import (
    OutcomeUnknown,
    PlatformUnavailable,
    Rejected,
    RequestExpired,
    UnknownRequest,
    UplinkClosed,
    UplinkError,
)
from edge.uplink.outbox import (
    Clock,
    Outbox,
    OutboxEntry,
    is_final_reply,
    minimise_body,
    priority_for,
    utc_now,
)
from yikatong.mqtt.session import InboundMessage, MqttSession, Will, next_boot_seq, state_payload
from yikatong.protocol import topics
from yikatong.protocol.envelope import Envelope, decode, encode, format_ts, new_envelope
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.messages import ReplyOk, make_request, parse_reply, parse_result

#: paho's queue may hold this many messages beyond ``max_inflight``: the birth and the final
#: offline state are published outside the pump's slot accounting.
_PAHO_QUEUE_HEADROOM = 8

__all__ = ["MUTATING_TYPES", "Uplink", "error_from_reply"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Request types with an effect on the platform (mirrors central.platform MUTATING_OPERATIONS;
#: the edge does not import central).
#: Requests that move money: while one has no final outcome the device is not idle.
PAYMENT_TYPES = frozenset({"pay.create", "pay.reverse", "pay.refund"})

MUTATING_TYPES = frozenset(
    {"reg.book", "reg.cancel", "reg.checkin", "reg.printed", "pay.create", "pay.reverse",
     "pay.refund", "report.printed"}
)

#: Seconds added to a request's default ``exp`` for clock skew between device and central.
EXP_SKEW_ALLOWANCE_S = 30.0

Handler = Callable[[InboundMessage], Awaitable[None] | None]
_HANDLER_KINDS = frozenset({"cmd", "config", "hotlist"})


def _reply_parts(env: Envelope) -> tuple[bool, dict[str, Any]]:
    """Validate a reply (catalogue "Reply envelope"): (True, result) or (False, error)."""
    reply = parse_reply(env)
    if isinstance(reply, ReplyOk):
        return True, dict(reply.result)
    return False, reply.error.model_dump(mode="json")


def _unsettled(entry: OutboxEntry) -> bool:
    """True when a finished entry's reply says the outcome is not final yet."""
    if entry.reply is None:
        return False
    if not is_final_reply(entry.reply, entry.type):
        return True  # also a payment still pending/unknown: resending asks for its end
    try:
        ok, data = _reply_parts(decode(entry.reply))
    except ProtocolError:
        return False
    return not ok and data.get("code") in ("outcome_unknown", "platform_unavailable")


def error_from_reply(request_id: str, err: dict[str, Any]) -> UplinkError:
    """Map a reply's error object to the typed error the caller sees."""
    code = str(err.get("code", ""))
    message = str(err.get("message", ""))
    message_zh = err.get("message_zh") if isinstance(err.get("message_zh"), str) else None
    if code == "platform_unavailable":
        return PlatformUnavailable(
            message or "platform unavailable", message_zh or "医院系统暂时无法连接，请稍后再试"
        )
    if code == "outcome_unknown":
        return OutcomeUnknown(request_id, message_zh=message_zh or "结果确认中，请勿重复操作")
    if code == "expired":
        return RequestExpired(request_id)
    if code == "rejected":
        # The platform's reason code leads the message ("slot_full: …"): expose it as .code.
        head, sep, rest = message.partition(":")
        if sep and head.strip().replace("_", "").isalnum():
            return Rejected(head.strip(), rest.strip() or head.strip(), message_zh)
        return Rejected("rejected", message, message_zh)
    return Rejected(code or "error", message, message_zh)


class Uplink:
    """A device's link to central: durable requests, events, telemetry, inbound handlers."""

    def __init__(
        self,
        config: UplinkConfig,
        device_id: str,
        *,
        role: str,
        version: str,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        session_factory: Callable[..., MqttSession] = MqttSession,
    ) -> None:
        self.config = config
        self.device_id = topics.check_device_id(device_id)
        self.role = role
        self.version = version
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        # Tests pass a scripted stand-in with MqttSession's asyncio-side API.
        self._session_factory = session_factory
        self.outbox = Outbox(
            config.outbox_path,
            clock,
            max_entries=config.max_entries,
            retry_interval_s=config.retry_interval_s,
        )
        self.boot_seq: int | None = None
        self._session: MqttSession | None = None
        self._waiters: dict[str, asyncio.Future[bytes | None]] = {}
        self._handlers: dict[str, list[Handler]] = {k: [] for k in _HANDLER_KINDS}
        self._wake: asyncio.Event | None = None
        self._connect_listeners: list[Callable[[], None]] = []
        self._pump_task: asyncio.Task[None] | None = None
        # The pump's last round found every in-flight slot taken: a PUBACK wakes it.
        self._blocked = False
        # Outbox writes running on worker threads (_off_loop, _on_reply), and the in-flight
        # slots promised to requests being stored for a direct send.
        self._disk_ops: set[asyncio.Future[Any]] = set()
        self._reserved = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = True
        # Ids asked again by the follow-up (see _follow_up) and not settled yet, with when
        # to ask next and the current wait (doubling: an outcome that takes long is not
        # asked for every round).
        self._following: set[str] = set()
        self._follow_next: dict[str, tuple[float, float]] = {}
        #: Told when a followed-up request gets its final answer after its caller gave up:
        #: ``(type, id, result or None, error or None)`` (e.g. the runtime books a payment
        #: that turned out approved into its ledger and prints nothing yet).
        self.on_settled: Callable[[str, str, BaseModel | None, UplinkError | None],
                                  Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def unresolved_payments(self) -> list[str]:
        """Request ids of payments with no final outcome, from the durable outbox (so also
        after a restart): queued or sent and unanswered, or answered "pending"/"unknown"/
        "unavailable" and still followed up (within ``give_up_after_exp_s``)."""
        since = self._clock() - timedelta(seconds=self.outbox.give_up_after_exp_s)
        return [*self.outbox.open_ids(PAYMENT_TYPES),
                *self.outbox.unsettled(PAYMENT_TYPES, since)]

    @property
    def connected(self) -> bool:
        """True while the MQTT session is up."""
        return self._session is not None and self._session.connected

    async def start(self) -> None:
        """Bump boot_seq, connect (in the background) and start sending the outbox."""
        if not self._closed:
            return
        cfg = self.config
        password: str | None = None
        if cfg.password_file is not None:
            try:
                password = cfg.password_file.read_text().strip()
            except OSError as exc:
                raise UplinkError(
                    f"cannot read password file {cfg.password_file}: {exc.strerror}",
                    "无法读取通信密码文件",
                ) from exc
        self.boot_seq = next_boot_seq(cfg.state_path)
        state_topic = topics.state(self.device_id)
        self._wake = asyncio.Event()
        self._session = self._session_factory(
            self.device_id,
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=password,
            tls=cfg.tls,
            keepalive=cfg.keepalive,
            protocol=cfg.protocol,
            clean_session=True,  # see session.py: the outbox redelivers
            max_inflight=cfg.max_inflight,
            max_queued=cfg.max_inflight + _PAHO_QUEUE_HEADROOM,
            backoff_min_s=cfg.backoff_min_s,
            backoff_max_s=cfg.backoff_max_s,
            rng=self._rng,
            will=Will(state_topic, state_payload(dev=self.device_id, online=False,
                                                 boot_seq=self.boot_seq, now=self._clock())),
            birth=Will(
                state_topic,
                state_payload(
                    dev=self.device_id, online=True, boot_seq=self.boot_seq,
                    now=self._clock(), version=self.version, role=self.role,
                ),
            ),
            subscriptions=[(f, 1) for f in topics.device_filters(self.device_id)],
            on_message=self._on_message,
            on_connected=self._on_connected,
        )
        self._closed = False
        await self._session.start()
        self._pump_task = asyncio.create_task(self._pump(), name=f"outbox-{self.device_id}")
        follow = asyncio.create_task(self._follow_up(), name=f"follow-up-{self.device_id}")
        self._tasks.add(follow)
        follow.add_done_callback(self._task_done)

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait until the session is connected; False on timeout."""
        if self._session is None:
            raise UplinkClosed()
        return await self._session.wait_connected(timeout_s)

    async def stop(self) -> None:
        """Publish the offline state, disconnect, stop the pump; pending entries stay on disk."""
        if self._closed:
            if self._session is None:
                self.outbox.close()  # never started: only the outbox is open
            return
        self._closed = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        for t in list(self._tasks):
            t.cancel()
        if self._session is not None and self.boot_seq is not None:
            final = Will(
                topics.state(self.device_id),
                state_payload(dev=self.device_id, online=False, boot_seq=self.boot_seq,
                              now=self._clock()),
            )
            await self._session.stop(final=final)
        if self._disk_ops:  # requests and replies being stored: let them finish, then close
            await asyncio.gather(*self._disk_ops, return_exceptions=True)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(UplinkClosed())
                fut.exception()  # mark retrieved: nobody may be waiting any more
        self._waiters.clear()
        self.outbox.close()

    # -- requests ------------------------------------------------------------------------
    async def request(
        self,
        type: str,
        body: dict[str, Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the caller's deadline is the API
        exp: datetime | None = None,
        id: str | None = None,
        auth: str | None = None,
    ) -> BaseModel:
        """Send a request durably and return its validated result model, or a typed error.

        The result is an instance of the request type's result model
        (``yikatong.protocol.messages.REQUESTS``, docs/protocol.md): ``PatientInfo`` for
        ``patient.identify``, ``Booking`` for ``reg.book``, ``PaymentResult`` for ``pay.*``.
        ``auth``: the staff session token central issued at ``staff.login`` (desk requests).
        """
        if self._closed:
            raise UplinkClosed()
        now = self._clock()
        wait_s = timeout if timeout is not None else self.config.timeout_for(type)
        if exp is None:
            # Central must not start acting on a request after its caller gave up: then a
            # payment that could not be sent in time is never taken. The allowance covers
            # clock skew between device and central; sent requests stay safe past exp.
            exp = now + timedelta(
                seconds=min(self.config.request_exp_s, wait_s + EXP_SKEW_ALLOWANCE_S)
            )
        try:
            env = make_request(type, self.device_id, body, now=now, id=id, exp=format_ts(exp),
                               auth=auth)
        except ProtocolError as exc:
            raise Rejected(exc.code, exc.message, exc.message_zh) from exc
        payload = encode(env)  # once: the outbox stores exactly these bytes
        prio = priority_for("req", type)
        if exp > now and self._free_slots() > 0:  # past exp: failed locally, never sent
            # Stored and marked sent in one fsynced transaction (on a worker thread: the loop
            # goes on meanwhile), then published at once instead of in the pump's next round.
            # None when something stored is due: then this one queues behind it.
            self._reserved += 1  # the slot it will take, until it is handed to paho
            try:
                sent = await self._off_loop(self.outbox.enqueue_sent, env, payload, now,
                                            priority=prio)
                if sent is not None:
                    if self._closed:
                        raise UplinkClosed()  # stored: sent again after the next start
                    fut = self._waiter(sent.id)
                    self._publish_entry(sent)
            finally:
                self._reserved -= 1
            if sent is not None:
                return await self._await_reply(sent, fut, type, wait_s)
        entry = self.outbox.enqueue(env, priority=prio, kind="req", payload=payload)
        if entry.payload != payload:
            stored = decode(entry.payload)
            # A finished entry keeps only a minimised body (outbox.minimise): a legitimate
            # resend matches that form. (A body differing only in masked/secret fields then
            # gets the stored outcome too — under the same id, so never a second effect.)
            if (stored.type, stored.body) not in (
                (env.type, env.body), (env.type, minimise_body(env.body, env.type))
            ):
                # The same id was used for something else: never answer it with that outcome.
                raise Rejected(
                    "duplicate_mismatch", f"request id {env.id} already used with another body",
                    "请求编号重复且内容不同",
                )
        if (entry.state == "done" and _unsettled(entry)) or entry.fail_reason == "caller_timeout":
            # A retry with the same id after "outcome unknown"/"unavailable"/withdrawn: ask
            # again. The id is the platform's idempotency key: never two effects.
            entry = self.outbox.reopen(entry.id, now) or entry
        if entry.state != "pending":  # the same id was already finished: its outcome stands
            return self._outcome(entry)
        fut = self._waiter(entry.id)
        self._kick()
        return await self._await_reply(entry, fut, type, wait_s)

    async def _await_reply(self, entry: OutboxEntry, fut: asyncio.Future[bytes | None],
                           type_: str, wait_s: float) -> BaseModel:
        fresh: bytes | None = None
        try:
            fresh = await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            current = self.outbox.get(entry.id)
            if current is None or current.state == "pending":
                raise self._gave_up(entry.id, type_) from None
        if fresh is not None:
            # The waiter gets reply bytes only after complete() stored them (the entry is
            # done): no read, which would wait for the outbox lock behind another fsync.
            return self._outcome(dataclasses.replace(entry, state="done"), fresh)
        final = self.outbox.get(entry.id)
        if final is None:
            raise UnknownRequest(entry.id)
        return self._outcome(final, fresh)

    def _free_slots(self) -> int:
        """In-flight slots neither taken nor promised to a request being stored."""
        session = self._session
        if session is None or not session.connected:
            return 0
        return session.free_slots - self._reserved

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` (an outbox write: it waits for fsync) on a worker thread; :meth:`stop`
        waits for it before it closes the outbox. A cancelled caller leaves it running."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
        self._disk_ops.add(task)
        task.add_done_callback(self._disk_ops.discard)
        return await asyncio.shield(task)

    def _gave_up(self, req_id: str, type_: str) -> UplinkError:
        """The error for a caller timeout on a still-pending request (rules in the docstring)."""
        entry = self.outbox.get(req_id)
        sent = entry is not None and entry.attempts > 0
        self._waiters.pop(req_id, None)  # result_of makes a new one if someone asks
        if type_.startswith("pay.") or (sent and type_ in MUTATING_TYPES):
            return OutcomeUnknown(req_id)
        # Withdrawn: no await since the attempts check, so the pump cannot send it meanwhile.
        self.outbox.fail(req_id, "caller_timeout")
        return PlatformUnavailable(
            f"no reply to {type_} in time (request {req_id})", "医院系统响应超时，请稍后再试"
        )

    def _outcome(self, entry: OutboxEntry, fresh: bytes | None = None) -> BaseModel:
        """Result of a finished entry, or the typed error it ended with.

        ``fresh``: the reply as it arrived, for the callers waiting right then; the outbox
        keeps only its minimised form, which later readers (``result_of``, a resend) get.
        """
        if entry.state == "pending":
            raise OutcomeUnknown(entry.id)
        if entry.state == "failed":
            if entry.fail_reason == "expired":
                raise RequestExpired(entry.id)
            if entry.fail_reason == "caller_timeout":
                raise PlatformUnavailable(
                    f"request {entry.id} withdrawn after the caller's timeout",
                    "请求已撤回，未被处理",
                )
            raise OutcomeUnknown(entry.id)  # no_reply: sent, never answered
        raw = fresh if fresh is not None and entry.state == "done" else entry.reply
        try:
            if raw is None:
                # Done without a reply body (never for a request; kept for safety): the
                # result model of an empty result, or a typed error when it needs fields.
                return parse_result(entry.type, ReplyOk(result={}))
            reply = parse_reply(decode(raw))
            if isinstance(reply, ReplyOk):
                # The caller gets the result model of the request type: a malformed reply is
                # a typed error here, never a KeyError deep in a flow.
                return parse_result(entry.type, reply)
        except ProtocolError as exc:
            raise self._invalid_reply(entry, exc) from exc
        raise error_from_reply(entry.id, reply.error.model_dump(mode="json"))

    @staticmethod
    def _invalid_reply(entry: OutboxEntry, exc: ProtocolError) -> UplinkError:
        """The error for a reply that does not parse or does not match its result model."""
        log.warning("invalid reply to %s %s: %s", entry.type, entry.id, exc.code)
        if entry.type in MUTATING_TYPES:
            # Central answered, so something happened, but we cannot read what: a payment
            # here is neither paid nor "not taken" until pay.status says which.
            return OutcomeUnknown(entry.id, message=f"unreadable reply ({exc.code})")
        return Rejected("invalid_reply", exc.message, exc.message_zh)

    async def result_of(self, request_id: str, *, wait_s: float = 0.0) -> BaseModel:
        """Outcome of an earlier request (also after the caller gave up); waits up to wait_s."""
        entry = self.outbox.get(request_id)
        if entry is None:
            raise UnknownRequest(request_id)
        fresh: bytes | None = None
        if entry.state == "pending" and wait_s > 0:
            fut = self._waiter(request_id)
            with contextlib.suppress(TimeoutError):
                fresh = await asyncio.wait_for(asyncio.shield(fut), wait_s)
            entry = self.outbox.get(request_id) or entry
        return self._outcome(entry, fresh)

    def _waiter(self, req_id: str) -> asyncio.Future[bytes | None]:
        fut = self._waiters.get(req_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self._waiters[req_id] = fut
        return fut

    def _resolve(self, req_id: str, reply: bytes | None = None) -> None:
        # The waiters get the reply itself: the outbox may already hold only its minimised
        # form (personal fields masked), which is not what the caller asked for.
        fut = self._waiters.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    # -- events / telemetry --------------------------------------------------------------
    async def publish_event(self, type: str, body: dict[str, Any]) -> str:
        """Queue an event durably (QoS 1, ends on PUBACK); returns its id."""
        return self._enqueue_oneway("event", type, body, corr=None)

    async def publish_result(
        self, type: str, body: dict[str, Any], *, corr: str
    ) -> str:
        """Queue a command result (``up/result``) durably; returns its id."""
        return self._enqueue_oneway("result", type, body, corr=corr)

    def _enqueue_oneway(
        self, kind: str, type_: str, body: dict[str, Any], *, corr: str | None
    ) -> str:
        if self._closed:
            raise UplinkClosed()
        try:
            env = new_envelope(type_, self.device_id, body, now=self._clock(), corr=corr)
            payload = encode(env)
        except ProtocolError as exc:
            raise Rejected(exc.code, exc.message, exc.message_zh) from exc
        entry = self.outbox.enqueue(
            env, priority=priority_for(kind, type_), kind=kind, payload=payload
        )
        self._kick()
        return entry.id

    def publish_telemetry(self, body: dict[str, Any]) -> bool:
        """Publish a telemetry sample (QoS 0, not stored); False if offline or invalid."""
        if self._session is None or not self._session.connected:
            return False
        try:
            env = new_envelope("telemetry", self.device_id, body, now=self._clock())
            payload = encode(env)
        except ProtocolError as exc:
            log.warning("telemetry dropped: %s", exc.code)
            return False
        fut = self._session.publish_nowait(topics.up(self.device_id, "telemetry"), payload, qos=0)
        return fut.done() and fut.exception() is None

    # -- inbound -------------------------------------------------------------------------
    def on_message(self, kind: str, handler: Handler) -> None:
        """Register a handler for ``cmd``, ``config`` (down/…) or ``hotlist`` messages."""
        if kind not in _HANDLER_KINDS:
            raise ValueError(f"kind must be one of {sorted(_HANDLER_KINDS)}")
        self._handlers[kind].append(handler)

    def _on_message(self, msg: InboundMessage) -> None:
        try:
            t = topics.parse(msg.topic)
        except ProtocolError:
            log.warning("message on unexpected topic dropped")
            return
        if t.direction == "down" and t.dev == self.device_id and t.kind == "resp":
            self._on_reply(msg)
            return
        kind = "hotlist" if t.direction == "fleet" else t.kind
        if (t.direction == "down" and t.dev != self.device_id) or kind not in _HANDLER_KINDS:
            log.warning("message on %s ignored", msg.topic)
            return
        for h in self._handlers[kind]:
            res = h(msg)
            if inspect.isawaitable(res):
                task = asyncio.ensure_future(res)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("handler failed: %r", task.exception())

    def _on_reply(self, msg: InboundMessage) -> None:
        try:
            env = decode(msg.payload)
        except ProtocolError as exc:
            log.warning("unreadable reply dropped: %s", exc.code)
            return
        if env.type != "resp" or env.corr is None or env.dev != self.device_id:
            log.warning("reply without corr/dev dropped (id %s)", env.id)
            return
        # The completion (its commit, and the WAL truncation that clears the request's
        # personal data) runs on a worker thread: those fsyncs would otherwise stall this
        # loop, which meanwhile serves the screen and the other replies. The caller gets
        # its answer once the completion is stored, as before.
        done = asyncio.ensure_future(
            asyncio.to_thread(self.outbox.complete, env.corr, msg.payload))
        self._disk_ops.add(done)
        done.add_done_callback(self._disk_ops.discard)
        done.add_done_callback(functools.partial(self._completed, env.corr, msg.payload))

    def _completed(self, req_id: str, reply: bytes, done: asyncio.Future[bool]) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:
            # Still pending on disk: the resend gets central's stored reply again.
            log.error("storing the reply to %s failed: %r", req_id, done.exception())
            return
        if done.result():
            self._resolve(req_id, reply)
            if req_id in self._following:
                self._settled(req_id, reply)
        # else: a duplicate reply (central re-sent it for our resend) or not ours — ignore.

    # -- follow-up of unknown outcomes -----------------------------------------------------
    async def _follow_up(self) -> None:
        """Ask again, in the background, every mutating request whose answer was not final.

        Central answers ``outcome_unknown`` when the platform may have acted without telling
        it; the caller (a kiosk screen) waits a while and then the patient walks away. The
        outbox still holds the request: reopening it resends the same bytes under the same
        id, which central forwards again under the same idempotency key (never a second
        effect) until the answer is final. Entries older than the outbox's give-up window
        are left to staff (central lists them).
        """
        interval = self.config.follow_up_interval_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                now, t = self._clock(), loop.time()
                since = now - timedelta(seconds=self.outbox.give_up_after_exp_s)
                asked = 0
                for req_id in self.outbox.unsettled(MUTATING_TYPES, since):
                    at, wait = self._follow_next.get(req_id, (t, interval / 2))
                    if at > t:
                        continue
                    if self.outbox.reopen(req_id, now) is not None:
                        self._following.add(req_id)
                        self._follow_next[req_id] = (t + min(wait * 2, 300.0),
                                                     min(wait * 2, 300.0))
                        asked += 1
                if asked:
                    log.info("asking again for %d unsettled request(s)", asked)
                    self._kick()
            except Exception:  # one bad round must not end the follow-up
                log.exception("follow-up round failed")

    def _settled(self, req_id: str, reply: bytes) -> None:
        entry = self.outbox.get(req_id)
        if entry is None or _unsettled(entry):
            return  # still not final: the next round asks again
        self._following.discard(req_id)
        self._follow_next.pop(req_id, None)
        result: BaseModel | None = None
        error: UplinkError | None = None
        try:
            result = self._outcome(entry, reply)
        except UplinkError as exc:
            error = exc
        log.info("%s %s settled after follow-up", entry.type, req_id)
        if self.on_settled is not None:
            try:
                res = self.on_settled(entry.type, req_id, result, error)
                if inspect.isawaitable(res):
                    task = asyncio.ensure_future(res)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                log.exception("on_settled failed for %s", req_id)

    def add_connect_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop, must not block) after every (re)connect."""
        self._connect_listeners.append(listener)

    def _on_connected(self) -> None:
        # Everything pending goes out again on the new connection, same ids.
        self.outbox.retry_all_now(self._clock())
        self._kick()
        for listener in self._connect_listeners:
            try:
                listener()
            except Exception:  # a listener's fault must not stop the resend
                log.exception("connect listener failed")

    # -- the pump ------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _pump(self) -> None:
        assert self._wake is not None  # set in start(), before the task exists
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            self._wake.clear()
            status = "idle"
            try:
                if loop.time() >= next_prune:
                    # Finished entries are kept for result_of, then deleted (hourly check).
                    self.outbox.prune(self._clock(), self.config.keep_done_s)
                    next_prune = loop.time() + 3600
                status = self._send_due()
            except Exception:
                log.exception("outbox pump error")  # keep pumping: the next tick retries
            self._blocked = status == "blocked"
            delay = self.config.retry_interval_s
            nxt = self.outbox.next_due_at()
            if nxt is not None and status != "blocked":
                # blocked: every slot is in flight; a PUBACK or a reconnect kicks the pump.
                delay = max(0.05, min(delay, (nxt - self._clock()).total_seconds()))
            if status == "more":
                delay = 0
            # Not wait_for: on 3.11 it swallows a cancel that lands in the same loop turn as a
            # kick (stop() right after the CONNACK's kick hung forever); timeout() does not.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _send_due(self, limit: int = 200) -> str:
        """Publish what is due: "more" (a full batch went), "blocked" (no free slot), "idle"."""
        now = self._clock()
        for e in self.outbox.expire(now):
            self._resolve(e.id)
        session = self._session
        if session is None or not session.connected:
            return "idle"
        batch = min(limit, self._free_slots())
        if batch <= 0 and session.give_up_unacked(max(30.0, 3 * self.config.keepalive)):
            batch = min(limit, self._free_slots())
        if batch <= 0:
            return "blocked"
        due = self.outbox.due(now, batch)
        if not due:
            return "idle"
        # Durable before the first byte leaves (one fsync for the batch): if we die after a
        # publish, the entry must not look unsent, or it would expire as "not taken".
        marked = self.outbox.mark_sent_many([e.id for e in due], now)
        for i, e in enumerate(due):
            if e.id not in marked:
                continue  # finished meanwhile (a reply, a withdrawal): nothing to send
            if not self._publish_entry(e):
                # The link dropped. This one stays "maybe sent" (the safe side); the rest were
                # never handed over, so they are unsent again. The reconnect resends all.
                rest = [x.id for x in due[i + 1:] if x.id in marked]
                if rest:
                    self.outbox.unmark_sent(rest, now)
                return "idle"
        if len(due) == limit:
            return "more"
        return "blocked" if len(due) == batch else "idle"

    def _publish_entry(self, e: OutboxEntry) -> bool:
        """Hand a stored, marked-sent entry to MQTT; False when the link is down."""
        assert self._session is not None  # only called while connected
        fut = self._session.publish_nowait(topics.up(self.device_id, e.kind), e.payload, qos=1)
        if fut.done() and fut.exception() is not None:
            fut.exception()  # read: the outbox resends it after the reconnect
            return False
        oneway = e.kind in ("event", "result")
        fut.add_done_callback(functools.partial(self._acked, e.id, oneway))
        return True

    def _acked(self, entry_id: str, oneway: bool, fut: asyncio.Future[None]) -> None:
        # Requests end on the reply, not PUBACK; events and results end here. Either way a
        # slot is free again (or the link dropped): a pump that waits for one gets its turn.
        # (A pump that is not blocked runs on its own schedule; a round per PUBACK would
        # cost every request its queries for nothing.)
        if not fut.cancelled() and fut.exception() is None and oneway:
            self.outbox.complete(entry_id, None)
        if not fut.cancelled():
            fut.exception()  # read, so asyncio does not log it
        if self._blocked or fut.cancelled() or fut.exception() is not None:
            self._kick()
