"""The forwarder: device requests from MQTT → dedup table → platform adapter → stored reply.

One paho client (:class:`yikatong.mqtt.session.MqttSession`: its thread hands messages to
asyncio through ``call_soon_threadsafe``), a queue, and ``concurrency`` workers. Every
message is checked in this order and never stops the forwarder, whatever it contains:

1. topic parses (else log; nobody to answer);
2. envelope decodes within 256 KiB (else an error reply if the topic names a registered
   device and an ``id`` can be read, else a log line);
3. sender: topic dev == envelope dev == a registered, enabled device (else ``unauthorized``,
   an audit record and a log line);
4. dedup by request id — *before* expiry, so a resend past ``exp`` still gets the stored
   outcome: same id + same body → the stored reply again; same id + other body →
   ``duplicate_mismatch``; in progress → ignored (the device resends later);
5. ``exp`` passed → ``expired`` (stored: a resend gets the same answer);
6. body validated against the catalogue model;
6a. authorized by central's policy (``guard``, central/authz.py): the device's role, a staff
   session where one is needed, and only objects central handed that device; refused →
   ``forbidden``/``session_expired``/``throttled`` (stored, audited). Patient references
   become platform ids here. Steps 4–6a are one write transaction (the claim, its expiry
   and its authorization commit together), so a request costs one commit fewer; a refusal
   rolls back only its own writes (a savepoint), the claim stays;
7. ``adapter.call(type, body, idempotency_key=env.id)`` (or central answers itself, e.g.
   ``staff.logout``);
8. reply minimised for the device (masked personal fields, grants recorded) and stored **in
   the same transaction** that marks the request done (with its audit record, and the
   payment record's update when ``hooks`` are given), then published on ``down/resp`` —
   only after that transaction committed.

Fleet trust (``fleet``, central/fleet): ``up/result`` envelopes of type ``config.report``,
``cmd.result`` and ``update.status`` (docs/updates.md) are validated (``parse_fleet_body``;
invalid ones audited and dropped) and go to the fleet service instead of the event ring, and
every birth is passed on (a device running another config gets it re-signed).
``device.cert_renew`` / ``device.log_bundle`` are central-local requests answered through
``guard.call_local`` on the normal request path.

Every write goes through the store's writer thread (:meth:`Store.write`, group commit):
the workers await their operation's commit instead of each paying an fsync'd transaction
on the event-loop thread. ``last_seen`` is buffered and the device check is cached.

Why a crash between 3 and 8 is safe: the request row stays ``received`` and nothing was
stored as the outcome. The device's outbox resends the same id (it ends only on the reply);
after ``lease_s`` another worker/instance takes the row over (a restarted instance with the
same ``client_id`` takes over its own earlier boot's rows at once: each row records its
owner, client id + boot nonce) and calls the platform again with the **same idempotency
key**, so the platform performs the operation at most once and
returns the original outcome. Exactly one effect, and the reply reaches the device.

Outcomes that say "nothing happened" or "we do not know" (``platform_unavailable``,
``outcome_unknown``) are replied but not stored as final: the row is released so that a
resend asks the platform again (same key), which is how an unknown outcome becomes known.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from central.authz import Denied, Guard, Verdict
from central.platform.base import MUTATING_OPERATIONS, PlatformAdapter
from central.platform.errors import (
    PlatformError,
    PlatformOutcomeUnknown,
    PlatformRejected,
    PlatformUnavailable,
)
from central.store import Begin, Store
from yikatong.mqtt.config import TlsConfig
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import (
    MAX_PAYLOAD_BYTES,
    Envelope,
    canonical_json,
    check_topic,
    decode,
    encode,
    is_expired,
    new_envelope,
    peek_id,
)
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import TYPE_CMD_RESULT, TYPE_CONFIG_REPORT, parse_fleet_body
from yikatong.protocol.messages import (
    ErrorCode,
    make_reply_error,
    make_reply_ok,
    parse_request,
    parse_state,
)
from yikatong.protocol.update import TYPE_UPDATE_STATUS

__all__ = ["FleetHooks", "Forwarder", "ForwarderSettings", "OutcomeObserver", "RequestHooks",
           "TelemetrySink", "body_hash"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
_FLEET_RESULTS = frozenset({TYPE_CONFIG_REPORT, TYPE_CMD_RESULT, TYPE_UPDATE_STATUS})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# When the worker took the message it is handling (each worker is a task of its own).
_STARTED: contextvars.ContextVar[float] = contextvars.ContextVar("ykt_fwd_started")


class ForwarderSettings(BaseModel):
    """Broker connection and processing limits of one forwarder instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str = "central"
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    # Fixed per instance and unique across instances (a second connection with the same id
    # makes the broker drop the first): central keeps a persistent session (clean_session
    # false) so the broker queues events for it while it restarts — hence the raised
    # max_queued_messages. ``ykt central`` derives it from the host name and instance.
    client_id: str = Field(default="central", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    keepalive: int = Field(default=30, ge=5, le=3600)
    concurrency: int = Field(default=32, ge=1, le=1024)
    # Longer than any platform call: a row older than this was left by a dead worker.
    lease_s: float = Field(default=120.0, gt=0)
    call_timeout_s: float = Field(default=60.0, gt=0)
    max_payload: int = Field(default=MAX_PAYLOAD_BYTES, ge=1024, le=MAX_PAYLOAD_BYTES)

    def read_password(self) -> str | None:
        """The broker password, from the setting or the password file."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class OutcomeObserver(Protocol):
    """Told about every platform outcome (e.g. :class:`central.payments.Payments`)."""

    def __call__(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> Awaitable[None] | None:
        """Observe one request's outcome."""


class FleetHooks(Protocol):
    """Fleet trust (:class:`central.fleet.service.FleetService`): results and births."""

    async def on_result(self, dev: str, env: Envelope, body: Any) -> None:
        """A validated ``config.report`` / ``cmd.result`` / ``update.status`` from ``dev``."""

    async def on_birth(self, dev: str) -> None:
        """``dev`` came online (a birth newer than the last one)."""


class TelemetrySink(Protocol):
    """Telemetry history (:class:`central.telemetry_history.TelemetryHistory`)."""

    def record(self, dev: str, body: dict[str, Any], now: datetime) -> bool:
        """Buffer an accepted ``telemetry`` sample (must not block: runs on the loop)."""

    def note_birth(self, dev: str) -> None:
        """``dev`` came online (a live birth, not a retained copy)."""


class ForwarderMetrics(Protocol):
    """Counts answered requests (:class:`central.metrics.CentralMetrics`)."""

    def request_done(self, type_: str, outcome: object, seconds: float | None) -> None:
        """A request of ``type_`` answered (or released) with ``outcome`` (a reply code,
        ``ok``, ``resent`` …) ``seconds`` after a worker took it."""


class RequestHooks(Protocol):
    """Per-request hooks (e.g. :class:`central.payments.Payments`)."""

    async def before_call(self, env: Envelope) -> None:
        """Runs (and commits) before the platform is called; raising stops the call."""

    def outcome_in_tx(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        """Runs inside the transaction that stores (or releases) the request's outcome."""

    def reply_result(self, env: Envelope, result: dict[str, Any]) -> dict[str, Any]:
        """Inside that transaction, before the ok reply is encoded: the result to send."""


def body_hash(env: Envelope) -> str:
    """SHA-256 of the request's type and body as sorted, compact JSON (dedup comparison).

    The stdlib's C encoder rather than :func:`canonical_json` (a third of the forwarder's
    per-request CPU went into the pure-Python one): this hash is only compared with itself,
    and a resend carries the same body.
    """
    text = json.dumps({"type": env.type, "body": env.body}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def legacy_body_hash(env: Envelope) -> str:
    """The hash dedup rows written before :func:`body_hash` changed hold (canonical JSON)."""
    return hashlib.sha256(canonical_json({"type": env.type, "body": env.body})).hexdigest()


def _clean(text: str, fallback: str) -> str:
    text = _CONTROL.sub(" ", text).strip()[:500]
    return text or fallback


class Forwarder:
    """Central's MQTT ↔ platform forwarder; ``await run()`` until ``await stop()``."""

    def __init__(
        self,
        settings: ForwarderSettings,
        store: Store,
        adapter: PlatformAdapter,
        *,
        clock: Clock = lambda: datetime.now(UTC),
        share_group: str | None = None,
        observer: OutcomeObserver | None = None,
        hooks: RequestHooks | None = None,
        guard: Guard | None = None,
        fleet: FleetHooks | None = None,
        metrics: ForwarderMetrics | None = None,
        history: TelemetrySink | None = None,
    ) -> None:
        self.settings = settings
        self._guard = guard
        # up/result of the fleet types goes here instead of the event ring (central/fleet).
        self._fleet = fleet
        # Each answered request and its latency (central/metrics.py).
        self._metrics = metrics
        # Accepted telemetry samples and live births also go to the history (charts).
        self._history = history
        self.store = store
        self.adapter = adapter
        self._clock = clock
        self._share_group = share_group
        self._observer = observer
        self._hooks = hooks
        # Rows this boot claims; a later boot of the same client id takes them over at once.
        self._boot = uuid.uuid4().hex[:12]
        self.owner = f"{settings.client_id}/{self._boot}"
        # Reply ids: unique per boot without a urandom call per reply.
        self._reply_seq = itertools.count(1)
        self._queue: asyncio.Queue[InboundMessage] | None = None
        self._session: MqttSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stopped: asyncio.Event | None = None
        self.stats: dict[str, int] = {
            "received": 0, "replied": 0, "resent": 0, "rejected": 0, "errors": 0,
            "connects": 0, "disconnects": 0, "forbidden": 0,
        }

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._session is not None and self._session.connected

    @property
    def queue_depth(self) -> int:
        """Messages received and waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Connect and start the workers (returns at once; ``wait_connected`` to wait)."""
        if self._session is not None:
            return
        self._queue = asyncio.Queue()
        self._stopped = asyncio.Event()
        subs = [(f, 1) for f in topics.central_filters(self._share_group)]
        if self._share_group is not None:
            subs.append((topics.state_snapshot_filter(), 1))
        s = self.settings
        self._session = MqttSession(
            s.client_id,
            host=s.host,
            port=s.port,
            username=s.username,
            password=s.read_password(),
            tls=s.tls,
            keepalive=s.keepalive,
            clean_session=False,
            max_inflight=100,
            subscriptions=subs,
            on_message=self._enqueue,
            on_connected=lambda: self._count("connects"),
            # A disconnect not asked for: e.g. another instance using the same client id.
            on_disconnected=lambda: self._count("disconnects"),
        )
        await self._session.start()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"forwarder-{i}")
            for i in range(s.concurrency)
        ]

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait until the broker connection is up; False on timeout."""
        if self._session is None:
            return False
        return await self._session.wait_connected(timeout_s)

    async def run(self) -> None:
        """Start (if needed) and run until :meth:`stop`."""
        await self.start()
        assert self._stopped is not None  # set by start()
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop the workers (in-flight requests are abandoned safely) and disconnect."""
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
        self._workers = []
        if self._session is not None:
            await self._session.stop()
            self._session = None
        if self._stopped is not None:
            self._stopped.set()

    def _count(self, key: str) -> None:
        self.stats[key] += 1

    # -- intake --------------------------------------------------------------------------
    def _enqueue(self, msg: InboundMessage) -> None:
        if self._queue is not None:
            self._queue.put_nowait(msg)

    async def _worker(self) -> None:
        assert self._queue is not None  # set by start()
        while True:
            msg = await self._queue.get()
            try:
                await self.handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug for one message must not stop the forwarder; the device resends.
                self.stats["errors"] += 1
                log.exception("forwarder failed on a message for %s", msg.topic[:120])

    async def handle(self, msg: InboundMessage) -> None:
        """Process one inbound message (public for tests and for other transports)."""
        self.stats["received"] += 1
        _STARTED.set(time.perf_counter())
        try:
            t = topics.parse(msg.topic)
        except ProtocolError as exc:
            log.warning("dropped message on bad topic: %s", exc.message)
            return
        if t.direction == "state" and t.dev is not None:
            await self._handle_state(t.dev, msg)
            return
        if t.direction != "up" or t.dev is None:
            log.info("ignored message on %s", msg.topic)
            return
        now = self._clock()
        try:
            env = decode(msg.payload, max_bytes=self.settings.max_payload)
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            log.warning("bad envelope from %s on %s: %s", t.dev, t.kind, exc.code)
            req_id = peek_id(msg.payload) if t.kind == "req" else None
            if req_id is not None and self._sender_ok(t.dev):
                self._publish_error_raw(t.dev, req_id, exc.reply_code, exc, now)
            return
        try:
            check_topic(env, t)
            if not self._sender_ok(t.dev):
                raise _Unauthorized(t.dev)
        except (ProtocolError, _Unauthorized) as exc:
            self.stats["rejected"] += 1
            log.warning("unauthorized message on %s (envelope dev %s)", msg.topic, env.dev)
            detail = {"topic": msg.topic[:200], "dev": env.dev, "id": env.id, "type": env.type}
            await self.store.write(lambda: self.store.append_audit_in_tx(
                now, "forwarder", "message.unauthorized", detail))
            if t.kind == "req" and self._sender_ok(t.dev):
                # The topic's device is real (the ACL guarantees who published): tell it.
                self._publish(t.dev, _error_reply(env, t.dev, "unauthorized", exc, now))
                self._measure(env.type, "unauthorized")
            return
        self.store.touch(t.dev, now)
        if t.kind == "req":
            await self._handle_request(env, now)
        elif t.kind == "telemetry":
            # Telemetry is state: it overwrites the device's health row and stays out of the
            # event ring, where a sample every 30 s would push the real events out.
            dev = t.dev
            if not await self.store.write(
                lambda: self.store.update_health_in_tx(dev, env.type, env.body, now)
            ):
                self.stats["rejected"] += 1
                log.warning("invalid telemetry from %s ignored", dev)
            elif self._history is not None:
                self._history.record(dev, env.body, now)
        elif t.kind == "event" and env.type == "audit":
            # The device's audit chain has its own table (checked link by link), and stays
            # out of the event ring like telemetry.
            dev = t.dev
            await self.store.write(lambda: self.store.add_device_audit_in_tx(dev, env.body, now))
        elif t.kind == "result" and self._fleet is not None and env.type in _FLEET_RESULTS:
            await self._handle_fleet_result(t.dev, env, now)
        else:
            dev = t.dev

            def add() -> None:
                self.store.add_event_in_tx(dev, t.kind, env.type, env.body, now)
                if t.kind == "event":  # printer.status, print.* update the health view now
                    self.store.update_health_in_tx(dev, env.type, env.body, now)

            await self.store.write(add)

    def _sender_ok(self, dev: str) -> bool:
        return self.store.device_enabled(dev)

    async def _handle_fleet_result(self, dev: str, env: Envelope, now: datetime) -> None:
        """``config.report`` / ``cmd.result`` / ``update.status``: validated, then to the
        fleet service."""
        assert self._fleet is not None
        try:
            body = parse_fleet_body(env)
        except ProtocolError as exc:
            self.stats["rejected"] += 1
            log.warning("invalid %s from %s dropped: %s", env.type, dev, exc.message[:200])
            detail = {"dev": dev, "id": env.id, "type": env.type, "error": exc.message[:200]}
            await self.store.write(lambda: self.store.append_audit_in_tx(
                now, "forwarder", "fleet.result_invalid", detail))
            return
        await self._fleet.on_result(dev, env, body)

    # -- requests ------------------------------------------------------------------------
    async def _handle_request(self, env: Envelope, now: datetime) -> None:
        bh, lease, owner = body_hash(env), self.settings.lease_s, self.owner
        try:
            parse_request(env)  # pure: its answer is used only for a newly claimed request
            invalid: ProtocolError | None = None
        except ProtocolError as exc:
            invalid = exc
        guard = self._guard

        def claim() -> tuple[Begin, bool, Verdict | Denied | None]:
            # Claim, expiry and authorization in one transaction (one commit per request
            # fewer than a write each): (begin, expired, verdict or refusal).
            begin = self.store.begin_request_in_tx(
                env.id, env.dev, env.type, bh, now, lease, owner,
                legacy=lambda: legacy_body_hash(env))
            if begin.status != "new":
                return begin, False, None
            if (is_expired(env, now) and not begin.retaken
                    and not self.store.was_attempted(env.id)):
                return begin, True, None
            if invalid is not None or guard is None:
                return begin, False, None
            try:
                with self.store.atomic():  # a savepoint: a refusal undoes only its own writes
                    return begin, False, guard.authorize_in_tx(env)
            except Denied as exc:
                return begin, False, exc

        begin, expired, verdict = await self.store.write(claim)
        if begin.status == "done":
            self.stats["resent"] += 1
            reply = begin.reply
            hooks = self._hooks
            if (reply is not None and env.type == "pay.create" and hooks is not None
                    and hasattr(hooks, "refresh_reply")):
                # A payment answered "pending"/"unknown" may have ended since: a resend of
                # its request gets the outcome as central knows it now (payments.py).
                old = reply
                reply = await self.store.write(
                    lambda: hooks.refresh_reply(env, old, now, self._reply_id())) or old
            if reply is not None:
                self._publish_bytes(env.dev, reply)
                self._measure(env.type, "resent")
            return
        if begin.status == "busy":
            return  # another worker is on it; the device will resend if that one dies
        if begin.status == "mismatch":
            detail = {"id": env.id, "dev": env.dev, "type": env.type}
            await self.store.write(lambda: self.store.append_audit_in_tx(
                now, "forwarder", "request.duplicate_mismatch", detail))
            self._publish(
                env.dev,
                make_reply_error(
                    env, ErrorCode.DUPLICATE_MISMATCH,
                    "request id already used with a different body",
                    "请求编号重复且内容不同", False, now=now,
                ),
            )
            self._measure(env.type, "duplicate_mismatch")
            return
        if expired:
            # Past exp and never sent to the platform: not acted on. One that was sent (the
            # outcome was unknown, or a worker died during the call) is asked again below
            # with the same idempotency key — "expired" would tell the device "not charged"
            # for a payment the platform may have taken.
            await self._finish(env, make_reply_error(
                env, ErrorCode.EXPIRED, f"request expired at {env.exp}", "请求已过期，未处理",
                False, now=now,
            ), now, "expired")
            return
        if invalid is not None:
            await self._finish(env, make_reply_error(
                env, invalid.reply_code, _clean(invalid.message, invalid.code),
                _clean(invalid.message_zh, "请求无效"), False, now=now,
            ), now, invalid.reply_code)
            return
        if isinstance(verdict, Denied):
            assert guard is not None
            self.stats["forbidden"] += 1
            await guard.refused(env, verdict)
            await self._finish(env, make_reply_error(
                env, verdict.code, _clean(verdict.message, str(verdict.code)),
                _clean(verdict.message_zh, "无权办理"), verdict.retryable, now=now,
            ), now, str(verdict.code))
            return
        if verdict is not None:
            env = verdict.env
        if self._hooks is not None:
            try:
                await self._hooks.before_call(env)
            except Exception as exc:
                # Nothing was sent: free the row and say so; the device asks again.
                log.exception("before-call hook failed for %s %s", env.type, env.id)
                await self.store.write(lambda: self.store.release_request_in_tx(env.id))
                self._publish(env.dev, self._unsure(
                    env, PlatformUnavailable(f"central could not record the request: "
                                             f"{type(exc).__name__}"), mutating=False))
                self._measure(env.type, ErrorCode.PLATFORM_UNAVAILABLE)
                return
        await self._call_platform(env)

    async def _call_platform(self, env: Envelope) -> None:
        mutating = env.type in MUTATING_OPERATIONS
        result: dict[str, Any] | None = None
        error: PlatformError | None = None
        try:
            guard = self._guard
            if guard is not None and guard.handles(env.type):
                result = await self.store.write(lambda: guard.call_local(env))
            else:
                # asyncio.timeout rather than wait_for: no extra task per request.
                async with asyncio.timeout(self.settings.call_timeout_s):
                    result = await self.adapter.call(
                        env.type, dict(env.body), idempotency_key=env.id
                    )
            reply = make_reply_ok(env, result, now=self._clock(), id=self._reply_id())
        except PlatformRejected as exc:
            error = exc
            reply = make_reply_error(
                env, ErrorCode.REJECTED, _clean(f"{exc.code}: {exc.reason}", "rejected"),
                _clean(exc.message_zh, "请求被拒绝"), False, now=self._clock(),
            )
            await self._finish(env, reply, self._clock(), "rejected", result=None, error=error)
            await self._observe(env, None, error)
            return
        except PlatformUnavailable as exc:
            error = exc
            reply = self._unsure(env, exc, mutating=False)
        except Exception as exc:
            # Outcome unknown, a timeout, an unreadable answer: for a mutating operation the
            # platform may have acted; for a read nothing happened that matters.
            error = exc if isinstance(exc, PlatformError) else PlatformOutcomeUnknown(
                f"{type(exc).__name__} from the platform"
            )
            log.warning("platform %s for %s %s", type(exc).__name__, env.type, env.id)
            reply = self._unsure(env, error, mutating=mutating)
        if error is None:
            await self._finish(env, reply, self._clock(), "ok", result=result, error=None)
            await self._observe(env, result, None)
            return
        # Not final: release the row so a resend asks the platform again (same key).
        now = self._clock()
        detail = {"id": env.id, "dev": env.dev, "type": env.type,
                  "code": str(reply.body.get("error", {}).get("code", ""))}
        err = error

        def release() -> None:
            self.store.release_request_in_tx(env.id)
            if mutating:
                self.store.mark_attempted_in_tx(env.id, env.dev, now)
            self.store.append_audit_in_tx(now, "forwarder", "request.unsure", detail)
            self._outcome_in_tx(env, None, err)

        await self.store.write(release)
        self._publish(env.dev, reply)
        self._measure(env.type, detail["code"])
        await self._observe(env, None, error)

    def _reply_id(self) -> str:
        return f"{self._boot}{next(self._reply_seq):010x}"

    def _measure(self, type_: str, outcome: object) -> None:
        if self._metrics is None:
            return
        started = _STARTED.get(None)
        try:
            self._metrics.request_done(
                type_, outcome, None if started is None else time.perf_counter() - started)
        except Exception:  # a metrics fault must not cost a reply
            log.exception("forwarder metrics hook failed")

    def _unsure(self, env: Envelope, exc: PlatformError, *, mutating: bool) -> Envelope:
        if mutating and not isinstance(exc, PlatformUnavailable):
            return make_reply_error(
                env, ErrorCode.OUTCOME_UNKNOWN, _clean(exc.message, "outcome unknown"),
                "结果确认中，请勿重复操作", False, now=self._clock(),
            )
        return make_reply_error(
            env, ErrorCode.PLATFORM_UNAVAILABLE, _clean(exc.message, "platform unavailable"),
            _clean(exc.message_zh, "医院系统暂时不可用"), True, now=self._clock(),
        )

    async def _observe(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        if self._observer is None:
            return
        try:
            res = self._observer(env, result, error)
            if res is not None:
                await res
        except Exception:
            log.exception("outcome observer failed for %s", env.id)

    def _reply_result(self, env: Envelope, result: dict[str, Any]) -> dict[str, Any]:
        if self._hooks is None:
            return result
        try:
            return self._hooks.reply_result(env, result)
        except Exception:
            log.exception("reply hook failed for %s", env.id)
            return result

    def _outcome_in_tx(
        self, env: Envelope, result: dict[str, Any] | None, error: PlatformError | None
    ) -> None:
        for hook in (self._hooks, self._guard):
            if hook is None:
                continue
            try:
                with self.store.atomic():  # a savepoint: a hook failure keeps the outcome
                    hook.outcome_in_tx(env, result, error)
            except Exception:
                log.exception("outcome hook failed for %s", env.id)

    async def _finish(
        self, env: Envelope, reply: Envelope, now: datetime, outcome: str, *,
        result: dict[str, Any] | None = None, error: PlatformError | None = None,
    ) -> None:
        detail = {"id": env.id, "dev": env.dev, "type": env.type, "outcome": outcome}
        called = outcome in ("ok", "rejected")
        sent = [encode(reply)]

        def finish() -> None:
            if outcome == "ok" and result is not None:
                # Decided in the same transaction as the outcome, so a payment the resolver
                # reversed can never be answered "approved" (central/payments.py).
                final = self._reply_result(env, result)
                if self._guard is not None:
                    # Only what this device shows or prints leaves central (docs/privacy.md);
                    # a failure here must not leak the platform's full answer.
                    final = self._guard.shape_in_tx(env, final)
                if final is not result:
                    sent[0] = encode(make_reply_ok(env, final, now=now, id=reply.id))
            self.store.finish_request_in_tx(env.id, sent[0], now, actor="forwarder",
                                            action="request.done", detail=detail)
            if called:
                self._outcome_in_tx(env, result, error)

        await self.store.write(finish)
        self._publish_bytes(env.dev, sent[0])  # only now: the outcome is committed
        self._measure(env.type, outcome)

    # -- state ---------------------------------------------------------------------------
    async def _handle_state(self, dev: str, msg: InboundMessage) -> None:
        if not msg.payload:
            return  # a cleared retained message
        data = _state_body(dev, msg.payload)
        if data is None:
            log.warning("bad state payload from %s", dev)
            return
        version = data.get("version") if isinstance(data.get("version"), str) else None
        now = self._clock()
        applied = await self.store.write(lambda: self.store.apply_state_in_tx(
            dev, online=data["online"], boot_seq=data["boot_seq"], version=version, now=now))
        if not applied:
            log.info("stale or unknown state from %s ignored (boot_seq %s)", dev, data["boot_seq"])
        elif data["online"] and self._fleet is not None:
            try:
                await self._fleet.on_birth(dev)
            except Exception:
                log.exception("fleet birth hook failed for %s", dev)
        if applied and data["online"] and self._history is not None and not msg.retain:
            self._history.note_birth(dev)  # a reconnect (a retained copy is an old one)

    # -- publishing ----------------------------------------------------------------------
    def _publish(self, dev: str, reply: Envelope) -> None:
        self._publish_bytes(dev, encode(reply))

    def _publish_bytes(self, dev: str, data: bytes) -> None:
        if self._session is None:
            return
        fut = self._session.publish_nowait(topics.down(dev, "resp"), data, qos=1)
        fut.add_done_callback(_consume)
        self.stats["replied"] += 1

    def _publish_error_raw(
        self, dev: str, req_id: str, code: str, exc: ProtocolError, now: datetime
    ) -> None:
        body = {
            "status": "error",
            "error": {
                "code": code, "message": _clean(exc.message, exc.code),
                "message_zh": _clean(exc.message_zh, "请求格式错误"), "retryable": False,
            },
        }
        env = new_envelope("resp", dev, body, now=now, corr=req_id, id=uuid.uuid4().hex)
        self._publish(dev, env)


class _Unauthorized(Exception):
    def __init__(self, dev: str) -> None:
        super().__init__(f"device {dev} not registered or disabled")
        self.message = str(self)
        self.message_zh = "设备未登记或已停用"


def _error_reply(
    env: Envelope, dev: str, code: str, exc: Exception, now: datetime
) -> Envelope:
    message = getattr(exc, "message", str(exc))
    body = {
        "status": "error",
        "error": {
            "code": code, "message": _clean(str(message), code),
            "message_zh": _clean(str(getattr(exc, "message_zh", "")), "未授权"),
            "retryable": False,
        },
    }
    return new_envelope("resp", dev, body, now=now, corr=env.id)


def _state_body(dev: str, payload: bytes) -> dict[str, Any] | None:
    """The body of a ``state`` message about ``dev``, or None if it is not one.

    The contract (docs/protocol.md §7) is a ``state`` envelope. Devices of earlier versions
    published the bare body; it is still read (retained births outlive upgrades).
    """
    try:
        env = decode(payload)
    except ProtocolError:
        env = None
    if env is not None:
        if env.dev != dev:
            return None
        try:
            return parse_state(env).model_dump()
        except ProtocolError:
            return None
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if (not isinstance(data, dict) or not isinstance(data.get("online"), bool)
            or type(data.get("boot_seq")) is not int):
        return None
    return data


def _consume(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # not connected: the stored reply is re-sent on the device's resend
