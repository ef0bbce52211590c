"""The simulated devices of ``ykt sim fleet``: many MQTT devices on one asyncio loop.

One worker process runs a share of the fleet (docs/performance.md, "Fleet"). Every device
is a paho client of its own — its own certificate (mutual TLS, as a real terminal connects,
docs/fleet-trust.md), its own Will and retained birth — but no device has a network thread:
paho's external-loop hooks (``on_socket_open`` / ``on_socket_register_write`` …,
``loop_read`` / ``loop_write`` / ``loop_misc``) put every socket on the process's one
asyncio selector. A thread per client (``loop_start``) costs a thread stack, a socket pair and
a scheduler slot per device; with the shared loop a device costs its socket and a few
objects. Only the blocking TCP + TLS handshake of ``connect`` runs in a small thread pool.

Each device sends telemetry at ``telemetry_s`` (QoS 0, random phase), a ``printer.status``
event every ``event_s``, the card/print events of its visits, answers ``config.desired`` with
a ``config.report`` (signature checked with central's key first), and — when the worker's
pacer gives it a turn — walks a visit: a kiosk identifies a patient by card and books, looks
at slots or prints lab reports; a cashier signs in (``staff.login``) and takes wallet top-ups
with the real payment semantics (``pay.create``, then ``pay.status`` until a pending payment
settles). Every reply is checked: correlation, envelope type and device, the reply body,
the result model of the request, and what the visit expects of it (the card it read, the
slot it booked, the payment state the payment code leads to). See docs/protocol.md for the
wire contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from yikatong.mqtt.session import state_payload
from yikatong.protocol import topics
from yikatong.protocol.envelope import Envelope, decode, encode, new_envelope
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import ConfigDesired
from yikatong.protocol.messages import (
    REPLY_TYPE,
    TELEMETRY_TYPE,
    Booking,
    CancelResult,
    DepartmentList,
    PatientInfo,
    PaymentResult,
    Report,
    ReportList,
    SlotList,
    StaffInfo,
    parse_reply,
    parse_result,
)
from yikatong.protocol.signing import public_key_from_pem, verify

__all__ = ["VISITS", "WALLET_DIGITS", "DeviceSpec", "PahoLoop", "Plan", "Stats", "run_worker",
           "worker_entry"]

#: Visit kinds and the device role that makes them.
VISITS: dict[str, str] = {"identify": "kiosk", "slots": "kiosk", "book": "kiosk",
                          "reports": "kiosk", "pay": "cashier"}
#: Last digit of a wallet payment code → what the reference platform does with it
#: (central/platform/sim/data.py WALLET_RULES): the state pay.create must answer.
WALLET_DIGITS: dict[str, str] = {"0": "approved", "1": "approved", "2": "approved",
                                 "3": "approved", "5": "pending", "6": "pending",
                                 "8": "declined", "9": "declined"}
_VERSION = "9.9.9-sim"


@dataclass(frozen=True)
class DeviceSpec:
    """One simulated device: its id, role and enrolled identity files."""

    dev: str
    role: str
    key: str
    cert: str
    broker: int = 0  # index into Plan.brokers


@dataclass
class Plan:
    """What every worker does (picklable: it crosses into the worker processes)."""

    brokers: list[tuple[str, int]]
    ca_file: str
    signing_pub_pem: bytes | None
    duration_s: float
    telemetry_s: float = 30.0
    event_s: float = 300.0
    rate: float = 0.0  # requests/s of this worker (its share of the fleet's rate)
    mix: dict[str, float] = field(default_factory=dict)
    patients: list[dict[str, str]] = field(default_factory=list)
    badge: str = "S1001"
    pin: str = ""
    reply_timeout_s: float = 30.0
    pay_settle_s: float = 60.0
    inject_mismatch: tuple[str, ...] = ()
    connect_concurrency: int = 64
    connect_threads: int = 8
    connect_timeout_s: float = 60.0
    keepalive_s: int = 60
    seed: int = 1
    requests: bool = True  # False: telemetry and births only (the raw broker baseline)


class Stats:
    """What one worker saw; merged by the parent (plain dicts and lists cross processes)."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        # What had been sent when the go came: telemetry and events start at connect, so a
        # receiver's count from the go on is to be compared with ``sent - sent_before_go``.
        self.sent_before_go: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()  # "type outcome"
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()  # expected, not errors (duplicates, rejections)
        self.connect_s: list[float] = []
        self.connected = 0
        self.connect_failed = 0
        self.visits: Counter[str] = Counter()
        self.received: Counter[str] = Counter()

    def error(self, what: str) -> None:
        """Count an unexpected outcome."""
        self.errors[what[:200]] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the parent."""
        return {"sent": dict(self.sent), "sent_before_go": dict(self.sent_before_go),
                "replies": dict(self.replies),
                "latency": {k: list(v) for k, v in self.latency.items()},
                "errors": dict(self.errors), "notes": dict(self.notes),
                "connect_s": list(self.connect_s), "connected": self.connected,
                "connect_failed": self.connect_failed, "visits": dict(self.visits),
                "received": dict(self.received)}


class PahoLoop:
    """Drive many paho clients from one asyncio loop (paho's documented external-loop hooks).

    Sockets are registered with the loop's selector; ``loop_read`` runs when one is
    readable (and again while TLS holds decrypted bytes: the selector cannot see those),
    ``loop_write`` while paho has bytes queued, ``loop_misc`` (keepalive pings) once a second
    for every connected client. Hooks called from the connect threads are handed to the
    loop with ``call_soon_threadsafe``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int = 8) -> None:
        self.loop = loop
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="connect")
        self._tid = threading.get_ident()
        self._fds: dict[int, int] = {}  # id(client) → fd
        self.live: dict[int, mqtt.Client] = {}  # clients past CONNACK (for loop_misc)
        self._misc_task: asyncio.Task[None] | None = None

    def attach(self, c: mqtt.Client) -> None:
        """Give ``c`` to this loop (before its first connect)."""
        c.on_socket_open = self._open
        c.on_socket_close = self._close
        c.on_socket_register_write = self._reg_write
        c.on_socket_unregister_write = self._unreg_write

    def start(self) -> None:
        """Start the once-a-second ``loop_misc`` sweep."""
        self._misc_task = self.loop.create_task(self._misc())

    async def close(self) -> None:
        """Stop the sweep and the connect threads."""
        if self._misc_task is not None:
            self._misc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._misc_task
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def connect(self, c: mqtt.Client, host: str, port: int, keepalive: int) -> None:
        """TCP + TLS handshake + CONNECT (blocking parts in the pool); CONNACK comes later."""
        await self.loop.run_in_executor(self.executor, c.connect, host, port, keepalive)

    async def reconnect(self, c: mqtt.Client) -> None:
        """Connect again with the same settings."""
        await self.loop.run_in_executor(self.executor, c.reconnect)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._tid:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _open(self, c: mqtt.Client, _ud: Any, sock: Any) -> None:
        fd = sock.fileno()
        self._fds[id(c)] = fd
        self._on_loop(self.loop.add_reader, fd, self._read, c, sock)

    def _close(self, c: mqtt.Client, _ud: Any, _sock: Any) -> None:
        fd = self._fds.pop(id(c), None)
        self.live.pop(id(c), None)
        if fd is not None:
            self._on_loop(self._forget, fd)

    def _forget(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)

    def _reg_write(self, c: mqtt.Client, _ud: Any, sock: Any) -> None:
        fd = self._fds.get(id(c))
        if fd is not None:
            self._on_loop(self.loop.add_writer, fd, c.loop_write)

    def _unreg_write(self, c: mqtt.Client, _ud: Any, _sock: Any) -> None:
        fd = self._fds.get(id(c))
        if fd is not None:
            self._on_loop(self.loop.remove_writer, fd)

    @staticmethod
    def _read(c: mqtt.Client, sock: Any) -> None:
        rc = c.loop_read()
        pending = getattr(sock, "pending", None)
        while rc == mqtt.MQTT_ERR_SUCCESS and pending is not None and c.socket() is sock \
                and pending():
            rc = c.loop_read()

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for c in list(self.live.values()):
                c.loop_misc()


class Pacer:
    """Hands out request turns at ``rate`` per second; starts visits when none is waiting.

    A visit asks for a turn before each request; if no visit is waiting when a turn is due,
    the pacer starts a new visit (``start_visit``), which takes the turn at once. So the
    worker sends its share of the fleet's rate as long as it has idle devices.
    """

    def __init__(self, rate: float, start_visit: Callable[[], bool], stats: Stats) -> None:
        self.rate = rate
        self._start_visit = start_visit
        self._stats = stats
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._credit = 0
        self.closed = False

    async def turn(self) -> None:
        """Wait for this visit's next request turn (CancelledError once the run is over)."""
        if self.closed:
            raise asyncio.CancelledError
        if self._credit > 0:
            self._credit -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        await fut

    async def run(self, duration_s: float) -> None:
        """Release turns for ``duration_s``; then every waiting visit is cancelled."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        try:
            while self.rate > 0:
                n += 1
                due = start + n / self.rate
                if due - start > duration_s:
                    break
                await asyncio.sleep(max(0.0, due - loop.time()))
                while self._waiting and self._waiting[0].done():
                    self._waiting.popleft()
                if self._waiting:
                    self._waiting.popleft().set_result(None)
                elif self._credit == 0 and self._start_visit():
                    self._credit = 1
                else:
                    self._stats.notes["turn without an idle device"] += 1
        finally:
            self.closed = True
            while self._waiting:
                self._waiting.popleft().cancel()


class Mismatch(Exception):
    """A reply that is not what the visit expects."""


@dataclass
class _Pending:
    type: str
    t0: float
    fut: asyncio.Future[Envelope]


class SimDevice:
    """One simulated terminal (see the module docstring)."""

    def __init__(self, spec: DeviceSpec, plan: Plan, worker: Worker) -> None:
        self.spec = spec
        self.dev = spec.dev
        self.role = spec.role
        self.plan = plan
        self.w = worker
        self.stats = worker.stats
        self.boot_seq = int(time.time() * 1000)  # grows across runs without a file
        self.pending: dict[str, _Pending] = {}
        self.answered: deque[str] = deque(maxlen=64)
        self.connected = False
        self.stopping = False
        self.busy = False
        self.token: str | None = None  # cashier's staff session
        self.config_seq = -1
        self.started = time.monotonic()
        self._connack: asyncio.Future[int] | None = None
        self._gone: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.dev,
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.tls_set(ca_certs=plan.ca_file, certfile=spec.cert, keyfile=spec.key,
                  cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.will_set(topics.state(spec.dev), self._state(False), qos=1, retain=True)
        c.max_inflight_messages_set(50)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        worker.paho.attach(c)
        self.c = c

    # -- connection -----------------------------------------------------------------------

    def _state(self, online: bool) -> bytes:
        extra = {"version": _VERSION, "role": self.role} if online else {}
        return state_payload(dev=self.dev, online=online, boot_seq=self.boot_seq,
                             now=datetime.now(UTC), **extra)

    async def connect(self) -> bool:
        """Connect, subscribe and publish the birth; False (counted) if it did not work."""
        host, port = self.plan.brokers[self.spec.broker % len(self.plan.brokers)]
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        t0 = time.monotonic()
        try:
            await self.w.paho.connect(self.c, host, port, self.plan.keepalive_s)
            rc = await asyncio.wait_for(self._connack, self.plan.connect_timeout_s)
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            self.stats.connect_failed += 1
            self.stats.error(f"connect: {type(exc).__name__}: {exc}"[:120])
            return False
        if rc != 0:
            self.stats.connect_failed += 1
            self.stats.error(f"connect refused (CONNACK {rc})")
            return False
        self.stats.connect_s.append(time.monotonic() - t0)
        self.stats.connected += 1
        self._tasks.append(loop.create_task(self._telemetry()))
        if self.plan.event_s > 0:
            self._tasks.append(loop.create_task(self._printer_events()))
        return True

    def _on_connect(self, c: mqtt.Client, _ud: Any, _flags: Any, rc: Any, _p: Any = None) -> None:
        code = int(getattr(rc, "value", rc))
        if code == 0:
            self.connected = True
            self.w.paho.live[id(c)] = c
            c.subscribe([(f, 1) for f in topics.device_filters(self.dev)])
            c.publish(topics.state(self.dev), self._state(True), qos=1, retain=True)
            self.stats.sent["state birth"] += 1
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, rc: Any,
                       _p: Any = None) -> None:
        was = self.connected
        self.connected = False
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)
        if was and not self.stopping:
            self.stats.error(f"connection lost ({rc})")
            self.w.spawn(self._reconnect())

    async def _reconnect(self) -> None:
        for delay in (1, 2, 4, 8, 16):
            await asyncio.sleep(delay * (0.5 + self.w.rng.random()))
            if self.stopping:
                return
            self._connack = asyncio.get_running_loop().create_future()
            try:
                await self.w.paho.reconnect(self.c)
                if await asyncio.wait_for(self._connack, self.plan.connect_timeout_s) == 0:
                    self.stats.notes["reconnected"] += 1
                    return
            except (OSError, ssl.SSLError, TimeoutError, ValueError):
                continue
        self.stats.error("could not reconnect")

    async def stop(self) -> None:
        """Publish the offline state (as ``ykt edge`` does on a clean stop) and disconnect."""
        self.stopping = True
        for t in self._tasks:
            t.cancel()
        if not self.connected:
            return
        self._gone = asyncio.get_running_loop().create_future()
        self.c.publish(topics.state(self.dev), self._state(False), qos=1, retain=True)
        self.stats.sent["state offline"] += 1
        self.c.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._gone, 10)

    # -- periodic traffic -----------------------------------------------------------------

    async def _telemetry(self) -> None:
        await asyncio.sleep(self.w.rng.random() * self.plan.telemetry_s)
        while True:
            body = {"uptime_s": int(time.monotonic() - self.started), "cpu_temp_c": 48.5,
                    "disk_free_mb": 12_000, "outbox_depth": len(self.pending),
                    "printer": {"online": True, "paper": "ok", "cover_open": False,
                                "cutter_error": False},
                    "reader_present": True, "sam_state": "ok", "load_1m": 0.3}
            env = new_envelope(TELEMETRY_TYPE, self.dev, body, now=datetime.now(UTC))
            self.c.publish(topics.up(self.dev, "telemetry"), encode(env), qos=0)
            self.stats.sent["telemetry"] += 1
            await asyncio.sleep(self.plan.telemetry_s)

    async def _printer_events(self) -> None:
        await asyncio.sleep(self.w.rng.random() * self.plan.event_s)
        while True:
            self.event("printer.status", {"online": True, "paper": "ok", "cover_open": False,
                                          "cutter_error": False})
            await asyncio.sleep(self.plan.event_s)

    def event(self, type_: str, body: dict[str, Any]) -> None:
        """Publish one event (QoS 1)."""
        env = new_envelope(type_, self.dev, body, now=datetime.now(UTC))
        self.c.publish(topics.up(self.dev, "event"), encode(env), qos=1)
        self.stats.sent[f"event {type_}"] += 1

    # -- inbound --------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        self.stats.received[kind] += 1
        try:
            env = decode(bytes(msg.payload))
        except ProtocolError as exc:
            self.stats.error(f"undecodable message on {kind}: {exc.message}")
            return
        if kind == "resp":
            self._on_reply(env)
        elif kind == "config":
            self._on_config(env)

    def _on_reply(self, env: Envelope) -> None:
        p = self.pending.pop(env.corr or "", None)
        if p is None:
            if env.corr in self.answered:
                self.stats.notes["duplicate reply (QoS 1 redelivery)"] += 1
            else:
                self.stats.error("reply to no request of this device (corr unknown)")
            return
        self.answered.append(env.corr or "")
        self.stats.latency[p.type].append(time.monotonic() - p.t0)
        if not p.fut.done():
            p.fut.set_result(env)

    def _on_config(self, env: Envelope) -> None:
        if env.type != "config.desired":
            self.stats.error(f"{env.type} on down/config")
            return
        try:
            if self.w.signing_key is not None:
                verify(env, self.w.signing_key)
            desired = ConfigDesired.model_validate(env.body)
        except (ProtocolError, ValueError) as exc:
            self.stats.error(f"config.desired refused: {exc}"[:160])
            return
        if env.dev != self.dev:
            self.stats.error("config.desired for another device")
            return
        seq = env.seq or 0
        if seq <= self.config_seq:
            self.stats.notes["config.desired seen again"] += 1
            return
        self.config_seq = seq
        report = {"version": desired.version, "hash": desired.hash, "status": "applied",
                  "running_version": desired.version, "running_hash": desired.hash}
        out = new_envelope("config.report", self.dev, report, now=datetime.now(UTC))
        self.c.publish(topics.up(self.dev, "result"), encode(out), qos=1)
        self.stats.sent["result config.report"] += 1

    # -- requests -------------------------------------------------------------------------

    async def call(self, type_: str, body: dict[str, Any], *, expect: tuple[str, ...] = ("ok",),
                   staff: bool = False) -> BaseModel | str | None:
        """One request through the pacer; the checked result model, an expected error code,
        or None (timeout or mismatch, counted as errors)."""
        await self.w.pacer.turn()
        now = datetime.now(UTC)
        env = new_envelope(type_, self.dev, body, now=now, exp=now + timedelta(minutes=5),
                           auth=self.token if staff else None)
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self.pending[env.id] = _Pending(type_, time.monotonic(), fut)
        self.c.publish(topics.up(self.dev, "req"), encode(env), qos=1)
        self.stats.sent[f"req {type_}"] += 1
        try:
            reply = await asyncio.wait_for(fut, self.plan.reply_timeout_s)
        except TimeoutError:
            self.pending.pop(env.id, None)
            self.stats.replies[f"{type_} timeout"] += 1
            self.stats.error(f"{type_}: no reply within {self.plan.reply_timeout_s:g} s")
            return None
        if type_ in self.plan.inject_mismatch:  # the checker's self-test: expect the impossible
            expect = ("error:never",)
        try:
            out = self._check(env, reply, expect)
        except Mismatch as exc:
            self.stats.replies[f"{type_} mismatch"] += 1
            self.stats.error(f"{type_}: {exc}")
            return None
        self.stats.replies[f"{type_} {out if isinstance(out, str) else 'ok'}"] += 1
        return out

    def _check(self, req: Envelope, reply: Envelope, expect: tuple[str, ...]
               ) -> BaseModel | str:
        if reply.type != REPLY_TYPE or reply.corr != req.id or reply.dev != self.dev:
            raise Mismatch(f"reply envelope type={reply.type} corr={reply.corr} dev={reply.dev}")
        try:
            parsed = parse_reply(reply)
        except ProtocolError as exc:
            raise Mismatch(f"invalid reply body: {exc.message}") from None
        if parsed.status == "error":
            code = str(parsed.error.code)
            if f"error:{code}" in expect:
                return code
            raise Mismatch(f"error {code} ({parsed.error.message}), expected {'/'.join(expect)}")
        if "ok" not in expect:
            raise Mismatch(f"ok reply, expected {'/'.join(expect)}")
        try:
            return parse_result(req.type, parsed)
        except ProtocolError as exc:
            raise Mismatch(f"result does not match its model: {exc.message}"[:200]) from None


# -- visits -------------------------------------------------------------------------------


def _tomorrow() -> str:
    return (date.today() + timedelta(days=1)).isoformat()


async def _identify(d: SimDevice, staff: bool = False) -> tuple[str, dict[str, str]] | None:
    patient = d.w.rng.choice(d.plan.patients)
    res = await d.call("patient.identify", {"by": "card", "value": patient["card_no"]},
                       staff=staff)
    if not isinstance(res, PatientInfo):
        return None
    card = patient["card_no"]
    if res.card_no[-4:] != card[-4:] or not res.patient_id.startswith("pr_"):
        d.stats.error("patient.identify: the reply names another card or no patient reference")
        return None
    return res.patient_id, patient


async def visit_identify(d: SimDevice) -> None:
    """A patient inserts a card; the kiosk identifies them and shows the menu."""
    d.event("card.inserted", {"reader": "patient", "atr": "3B8F8001804F0CA000000306"})
    await _identify(d)
    d.event("card.removed", {"reader": "patient"})


async def _slots(d: SimDevice) -> tuple[str, list[Any]] | None:
    depts = d.w.departments
    if not depts:
        res = await d.call("reg.departments", {})
        if not isinstance(res, DepartmentList):
            return None
        if not res.departments:
            d.stats.error("reg.departments: no department")
            return None
        depts = d.w.departments = [x.code for x in res.departments]
    day = _tomorrow()
    res2 = await d.call("reg.slots", {"dept_code": d.w.rng.choice(depts), "date": day})
    if not isinstance(res2, SlotList):
        return None
    if any(s.date != day for s in res2.slots):
        d.stats.error("reg.slots: a slot of another date")
        return None
    return day, list(res2.slots)


async def visit_slots(d: SimDevice) -> None:
    """Someone looks at a department's numbers without a card."""
    await _slots(d)


async def visit_book(d: SimDevice) -> None:
    """Card in, identify, pick a slot, book (pay later); most people cancel again."""
    d.event("card.inserted", {"reader": "patient", "atr": "3B8F8001804F0CA000000306"})
    try:
        who = await _identify(d)
        got = await _slots(d) if who else None
        if not who or not got:
            return
        day, slots = got
        free = [s for s in slots if s.remaining > 0]
        if not free:
            d.stats.notes["no free slot to book"] += 1
            return
        slot = d.w.rng.choice(free)
        res = await d.call("reg.book", {"patient_id": who[0], "slot_id": slot.slot_id,
                                        "pay_method": "later", "insured": False},
                           expect=("ok", "error:rejected"))
        if isinstance(res, str):
            d.stats.notes["reg.book rejected by the platform (full, closed, already booked)"] \
                += 1
            return
        if not isinstance(res, Booking):
            return
        if res.date != day or res.status != "booked" or res.doctor_name != slot.doctor_name:
            d.stats.error("reg.book: the booking is not the slot that was booked")
            return
        d.event("print.done", {"job_id": f"j{res.booking_id}"[:64], "doc_kind": "reg_slip",
                               "copy": False})
        if d.w.rng.random() < 0.7:  # keeps the simulated hospital's numbers free
            res2 = await d.call("reg.cancel", {"booking_id": res.booking_id})
            if isinstance(res2, CancelResult) and res2.booking_id != res.booking_id:
                d.stats.error("reg.cancel: another booking cancelled")
    finally:
        d.event("card.removed", {"reader": "patient"})


async def visit_reports(d: SimDevice) -> None:
    """Card in, identify, list the lab reports, fetch a ready one."""
    d.event("card.inserted", {"reader": "patient", "atr": "3B8F8001804F0CA000000306"})
    try:
        who = await _identify(d)
        if not who:
            return
        res = await d.call("report.list", {"patient_id": who[0]})
        if not isinstance(res, ReportList):
            return
        ready = [r for r in res.reports if r.status == "ready"]
        if not ready:
            return
        pick = d.w.rng.choice(ready)
        rep = await d.call("report.fetch", {"report_no": pick.report_no})
        if isinstance(rep, Report):
            if rep.report_no != pick.report_no:
                d.stats.error("report.fetch: another report came back")
                return
            d.event("print.done", {"job_id": f"j{rep.report_no}"[:64], "doc_kind": "lab_report",
                                   "copy": False})
    finally:
        d.event("card.removed", {"reader": "patient"})


def wallet_code(digit: str, rng: random.Random) -> str:
    """A WeChat Pay payment code (18 digits, ``1[0-5]…``) ending in ``digit``."""
    return f"13{rng.randrange(10**15):015d}{digit}"


async def _login(d: SimDevice) -> bool:
    if d.token is not None:
        return True
    res = await d.call("staff.login", {"badge": d.plan.badge, "pin": d.plan.pin})
    if isinstance(res, StaffInfo):
        if not res.session_token:
            d.stats.error("staff.login: no session token in the reply")
            return False
        d.token = res.session_token
        return True
    return False


async def visit_pay(d: SimDevice) -> None:
    """At a desk: sign in if needed, identify, take a wallet top-up, follow it to its end."""
    if not await _login(d):
        return
    who = await _identify(d, staff=True)
    if not who:
        return
    digit = d.w.rng.choice(list(WALLET_DIGITS))
    amount = d.w.rng.choice((1000, 2000, 5000))
    body = {"patient_id": who[0], "purpose": "topup", "refs": [], "amount_fen": amount,
            "method": "wechat", "auth_code": wallet_code(digit, d.w.rng)}
    res = await d.call("pay.create", body, staff=True, expect=("ok", "error:session_expired"))
    if res == "session_expired":
        d.token = None
        return
    if not isinstance(res, PaymentResult):
        return
    want = WALLET_DIGITS[digit]
    if res.state != want or res.amount_fen != amount or res.method != "wechat":
        d.stats.error(f"pay.create: state {res.state} for a code ending in {digit} "
                      f"(expected {want}) or another amount/method")
        return
    deadline = time.monotonic() + d.plan.pay_settle_s
    state = res.state
    while state == "pending":
        if time.monotonic() > deadline:
            d.stats.error(f"pay.status: still pending after {d.plan.pay_settle_s:g} s")
            return
        await asyncio.sleep(3.0)
        st = await d.call("pay.status", {"payment_id": res.payment_id})
        if not isinstance(st, PaymentResult):
            return
        if st.payment_id != res.payment_id or st.state not in ("pending", "approved"):
            d.stats.error(f"pay.status: {st.state} for a payment that must settle as approved")
            return
        state = st.state
    d.stats.notes[f"payment {state}"] += 1


VISIT_FUNCS: dict[str, Callable[[SimDevice], Coroutine[Any, Any, None]]] = {
    "identify": visit_identify, "slots": visit_slots, "book": visit_book,
    "reports": visit_reports, "pay": visit_pay}


# -- the worker ---------------------------------------------------------------------------


class Worker:
    """One process's devices, pacer and statistics."""

    def __init__(self, plan: Plan, specs: list[DeviceSpec]) -> None:
        self.plan = plan
        self.specs = specs
        self.stats = Stats()
        seed = f"{plan.seed}:{specs[0].dev if specs else ''}"
        self.rng = random.Random(seed)  # noqa: S311 — simulated traffic, not secrets
        self.loop = asyncio.get_running_loop()
        self.paho = PahoLoop(self.loop, plan.connect_threads)
        self.signing_key = (public_key_from_pem(plan.signing_pub_pem)
                            if plan.signing_pub_pem else None)
        self.devices: list[SimDevice] = []
        self.departments: list[str] = []
        self.pacer = Pacer(plan.rate, self._start_visit, self.stats)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.cost: dict[str, Any] = {}  # CPU and memory of the traffic phase
        weights = {k: v for k, v in plan.mix.items() if v > 0 and k in VISIT_FUNCS}
        self._kinds = list(weights)
        self._weights = [weights[k] for k in self._kinds]

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task the worker keeps a reference to until it ends."""
        t = self.loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def connect_all(self) -> None:
        """Create and connect every device, ``connect_concurrency`` at a time."""
        self.paho.start()
        sem = asyncio.Semaphore(self.plan.connect_concurrency)

        async def one(spec: DeviceSpec) -> None:
            async with sem:
                d = SimDevice(spec, self.plan, self)
                self.devices.append(d)
                await d.connect()

        await asyncio.gather(*(one(s) for s in self.specs))

    def _start_visit(self) -> bool:
        if not self._kinds or not self.plan.patients:
            return False
        for _ in range(4):
            kind = self.rng.choices(self._kinds, self._weights)[0]
            role = VISITS[kind]
            idle = [d for d in self.rng.sample(self.devices, min(len(self.devices), 32))
                    if d.role == role and d.connected and not d.busy]
            if idle:
                d = idle[0]
                d.busy = True
                self.stats.visits[kind] += 1
                self.spawn(self._visit(d, kind))
                return True
        return False

    async def _visit(self, d: SimDevice, kind: str) -> None:
        try:
            await VISIT_FUNCS[kind](d)
        except asyncio.CancelledError:
            pass  # the run ended while this visit waited for its turn
        except Exception as exc:  # a bug in a visit is a result, not a crash of the worker
            d.stats.error(f"visit {kind} failed: {type(exc).__name__}: {exc}"[:200])
        finally:
            d.busy = False

    async def traffic(self) -> None:
        """Requests for ``duration_s`` (telemetry runs all along), then let visits finish."""
        await self.pacer.run(self.plan.duration_s if self.plan.requests else 0)
        if not self.plan.requests:
            await asyncio.sleep(self.plan.duration_s)
        if self._tasks:  # visits in flight get their last replies (or time out)
            await asyncio.wait(set(self._tasks), timeout=self.plan.reply_timeout_s + 5)

    async def stop_all(self) -> None:
        """Every device says it goes offline and disconnects."""
        await asyncio.gather(*(d.stop() for d in self.devices))
        for t in list(self._tasks):
            t.cancel()
        await self.paho.close()


async def run_worker(plan: Plan, specs: list[DeviceSpec],
                     report: Callable[[str, dict[str, Any]], None],
                     wait_go: Callable[[], Coroutine[Any, Any, bool]]) -> dict[str, Any]:
    """Connect, report, wait for the go, run the traffic, disconnect; the stats as a dict."""
    w = Worker(plan, specs)
    t0 = time.monotonic()
    await w.connect_all()
    report("connected", {"connected": w.stats.connected, "failed": w.stats.connect_failed,
                         "seconds": time.monotonic() - t0})
    try:
        if await wait_go():
            w.stats.sent_before_go.update(w.stats.sent)
            cpu0, t1 = time.process_time(), time.monotonic()
            await w.traffic()
            cpu = {"cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - t1,
                   "rss_kb": _rss_kb(), "devices": w.stats.connected}
            report("traffic_done", cpu)
            w.cost = cpu
    finally:
        await w.stop_all()
    return {**w.stats.as_dict(), "cost": w.cost}


def _rss_kb() -> int:
    """This process's resident set size in kB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def worker_entry(index: int, plan: Plan, specs: list[DeviceSpec], out: Any, *, go: Any,
                 abort: Any) -> None:
    """Body of one worker process: ``out`` gets (index, event, data) tuples."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per device

    async def wait_go() -> bool:
        while not go.is_set():
            if abort.is_set():
                return False
            await asyncio.sleep(0.1)
        return not abort.is_set()

    try:
        stats = asyncio.run(run_worker(plan, specs,
                                       lambda ev, data: out.put((index, ev, data)), wait_go))
        out.put((index, "stats", stats))
    except BaseException as exc:
        out.put((index, "crashed", {"error": f"{type(exc).__name__}: {exc}"}))
        raise
