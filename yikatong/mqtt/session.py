"""The MQTT session of a device (or of central) on paho-mqtt 2.x.

Threads: paho runs in one network thread owned by this class. Its callbacks do only three
things: convert paho values to our frozen :class:`InboundMessage`, subscribe/publish the
birth on CONNACK (so they go out before anything else on the new connection), and hand
everything else to asyncio with ``loop.call_soon_threadsafe`` — the one door.

Reconnect: our own loop with exponential backoff and full jitter from an injected
``random.Random``, so a site's 200 kiosks do not reconnect in lock step after a broker restart.

Redelivery belongs to the application alone. paho keeps its own out-queue of unacknowledged
QoS 1 messages and re-sends it after a reconnect even with a clean session; the outbox also
re-sends every pending entry then, so each would go out twice. With a clean session the
queue is therefore dropped (``Client.drop_out_messages``) when the link goes down and again
just before the next CONNECT, and :attr:`MqttSession.free_slots` tells the caller how many
messages paho can put on the wire at once, so nothing waits in paho's FIFO behind the
caller's priorities. ``max_queued`` bounds paho's queue for callers that want a hard limit.
TCP_NODELAY is set on every socket: request/reply traffic is small packets, and Nagle plus
the peer's delayed ACK cost ~40 ms per hop (bench/uplink.py (d)).

Clean session, deliberately: ``clean_session=True`` (3.1.1) / ``clean_start=True`` with no
session expiry (5). Requests are redelivered from the device's durable outbox and central
re-publishes the stored reply for a repeated id, so a broker-side session adds nothing for
requests; it would make the broker hold queues for devices that may never return (stolen,
decommissioned) and is lost anyway when an unpersisted broker restarts. Config and the hot
list are retained; commands carry ``exp``/``seq`` and are re-sent by central after a birth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from yikatong.mqtt.config import TlsConfig
from yikatong.mqtt.errors import UplinkClosed, UplinkError
from yikatong.protocol.envelope import encode, new_envelope
from yikatong.protocol.messages import STATE_TYPE

__all__ = [
    "InboundMessage",
    "MqttSession",
    "NotConnected",
    "SendQueueFull",
    "Will",
    "backoff_delay",
    "next_boot_seq",
    "state_payload",
]

log = logging.getLogger(__name__)


class NotConnected(UplinkError):
    """A publish needed a connection and there was none (or it dropped before PUBACK)."""

    def __init__(self, detail: str = "not connected") -> None:
        super().__init__(f"mqtt: {detail}", "与中心的连接已断开")


class SendQueueFull(UplinkError):
    """paho's bounded out-queue is full: the message was not taken; try again after a PUBACK."""

    def __init__(self) -> None:
        super().__init__("mqtt: send queue full", "发送队列已满，稍后重试")


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A received MQTT message, converted from paho at the boundary."""

    topic: str
    payload: bytes
    qos: int
    retain: bool

    def __post_init__(self) -> None:
        if not isinstance(self.topic, str) or not isinstance(self.payload, bytes):
            raise TypeError("InboundMessage needs str topic and bytes payload")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"bad qos {self.qos}")


@dataclass(frozen=True, slots=True)
class Will:
    """Last Will: published by the broker if the connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def state_payload(*, dev: str, online: bool, boot_seq: int, now: datetime,
                  **extra: Any) -> bytes:
    """A ``state`` envelope (docs/protocol.md §7): birth (``online`` true) or Will (false).

    The Will is registered at CONNECT, so its ``ts`` is the connect time: receivers order
    births and wills by ``boot_seq``.
    """
    return encode(new_envelope(STATE_TYPE, dev, {"online": online, "boot_seq": boot_seq,
                                                 **extra}, now=now))


def next_boot_seq(path: Path) -> int:
    """Increment and persist the boot counter in ``path`` (fsynced); return the new value."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = 0
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("boot_seq"), int):
            current = data["boot_seq"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        # A torn write cannot happen (rename below), but a hand-edited file can: start over
        # from a value above anything plausible seen so far would need memory we lack, so
        # we log loudly; central only compares boot_seq values of the same device.
        log.error("unreadable boot counter %s; restarting at 1", path)
    value = current + 1
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"boot_seq": value}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return value


def backoff_delay(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [lo, min(hi, lo * 2**attempt)]."""
    cap = min(hi, lo * (2 ** min(attempt, 30)))
    return float(lo + (cap - lo) * rng.random())


class MqttSession:
    """One MQTT connection kept alive in a background thread; asyncio-facing API."""

    def __init__(
        self,
        client_id: str,
        *,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        tls: TlsConfig | None = None,
        keepalive: int = 30,
        protocol: str = "3.1.1",
        clean_session: bool = True,
        max_inflight: int = 20,
        max_queued: int = 0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rng: random.Random | None = None,
        will: Will | None = None,
        birth: Will | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: Callable[[InboundMessage], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self._host, self._port, self._keepalive = host, port, keepalive
        self._v5 = protocol == "5"
        self._clean = clean_session
        self._max_inflight = max_inflight
        self._backoff = (backoff_min_s, backoff_max_s)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._birth = birth
        self._subs = list(subscriptions)
        self._on_message_cb = on_message
        self._on_connected_cb = on_connected
        self._on_disconnected_cb = on_disconnected
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connected = False  # asyncio-side view
        self._connected_event: asyncio.Event | None = None
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._ack_since: dict[int, float] = {}  # mid -> monotonic time it was handed over
        self._attempt = 0  # network-thread only

        if self._v5:
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=clean_session,
            )
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set(
                ca_certs=str(tls.cafile),
                certfile=str(tls.certfile) if tls.certfile else None,
                keyfile=str(tls.keyfile) if tls.keyfile else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.max_inflight_messages_set(max_inflight)
        # 0 = unbounded (paho's meaning): central's forwarder relies on paho queueing replies.
        c.max_queued_messages_set(max_queued)
        c.on_socket_open = _t_on_socket_open
        # Only the network thread touches the socket. Without an "external loop" callback
        # paho writes a publish straight to the socket from the calling (asyncio) thread,
        # while the network thread may be reading it: on TLS that corrupts the stream
        # ("decryption failed or bad record mac"), and a write error there runs
        # on_disconnect under paho's out-message lock, which drop_out_messages then waits
        # for forever. With the callback set, a publish is queued and the network thread's
        # select (woken through paho's socket pair) writes it.
        c.on_socket_register_write = _t_noop
        c.on_socket_unregister_write = _t_noop
        c.on_pre_connect = self._t_on_pre_connect
        c.on_connect = self._t_on_connect
        c.on_disconnect = self._t_on_disconnect
        c.on_message = self._t_on_message
        c.on_publish = self._t_on_publish
        self._client = c

    # -- asyncio side --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between CONNACK (accepted) and the next disconnect."""
        return self._connected

    @property
    def free_slots(self) -> int:
        """How many more QoS 1 messages paho would send now (max_inflight minus unacked)."""
        return max(0, self._max_inflight - len(self._acks))

    @property
    def unacked(self) -> int:
        """QoS 1 messages handed to paho on this connection and not yet acknowledged."""
        return len(self._acks)

    async def start(self) -> None:
        """Start the network thread; it connects (and reconnects) in the background."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._connected_event = asyncio.Event()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._t_run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        if self._connected_event is None:
            raise UplinkClosed()
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> (
        asyncio.Future[None]
    ):
        """Hand a message to paho; the future resolves on PUBACK (QoS 0: at once)."""
        if self._loop is None:
            raise UplinkClosed()
        fut: asyncio.Future[None] = self._loop.create_future()
        if not self._connected:
            fut.set_exception(NotConnected())
            return fut
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            # Not taken at all (bounded queue, or paho's mid space exhausted).
            fut.set_exception(SendQueueFull())
            return fut
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            # NO_CONN: the socket died under us; the outbox resends after reconnect (paho's
            # copy is dropped before the next CONNECT, see the module docstring).
            fut.set_exception(NotConnected(mqtt.error_string(info.rc)))
            return fut
        if qos == 0:
            fut.set_result(None)
        else:
            # Registered before the PUBACK can be handled: _ack arrives via call_soon_threadsafe
            # and so runs only after this synchronous method has returned.
            self._acks[info.mid] = fut
            self._ack_since[info.mid] = time.monotonic()
        return fut

    def give_up_unacked(self, max_age_s: float) -> int:
        """Fail the waits for PUBACKs older than ``max_age_s``; returns how many.

        On a live connection a PUBACK takes milliseconds. One that never comes (paho dropped
        the message in a reconnect race, say) would hold its in-flight slot for as long as
        the connection lives, and enough of them stop the outbox pump for good. The outbox
        resends what matters, so a slot is never worth more than that.
        """
        cutoff = time.monotonic() - max_age_s
        stale = [mid for mid, t in self._ack_since.items() if t < cutoff]
        for mid in stale:
            self._ack_since.pop(mid, None)
            fut = self._acks.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_exception(NotConnected(f"no PUBACK within {max_age_s:.0f} s"))
        if stale:
            log.warning("gave up waiting for %d PUBACK(s); the outbox resends", len(stale))
        return len(stale)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Publish and wait for PUBACK (QoS 1); raises NotConnected if the link drops."""
        fut = self.publish_nowait(topic, payload, qos, retain)
        await asyncio.wait_for(fut, timeout_s)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Add a subscription now and on every future (re)connect."""
        self._subs.append((topic_filter, qos))
        if self._connected:
            self._client.subscribe(topic_filter, qos)

    async def stop(self, final: Will | None = None, timeout_s: float = 3.0) -> None:
        """Publish ``final`` (e.g. the offline state) if connected, DISCONNECT, join the thread."""
        if self._thread is None:
            return
        if final is not None and self._connected:
            with contextlib.suppress(UplinkError, TimeoutError):
                await self.publish(final.topic, final.payload, final.qos, final.retain, timeout_s)
        self._stop.set()
        # disconnect() only queues the DISCONNECT (see on_socket_register_write above): the
        # network thread's last loop() below writes it.
        with contextlib.suppress(Exception):
            self._client.disconnect()
        thread = self._thread
        await asyncio.to_thread(thread.join, 10)
        self._thread = None
        self._set_disconnected()

    def _set_connected(self) -> None:
        self._connected = True
        if self._connected_event is not None:
            self._connected_event.set()
        if self._on_connected_cb is not None:
            self._on_connected_cb()

    def _set_disconnected(self) -> None:
        was = self._connected
        self._connected = False
        if self._connected_event is not None:
            self._connected_event.clear()
        # Whatever waited for a PUBACK on the old connection will not get it from us.
        acks, self._acks = self._acks, {}
        self._ack_since.clear()
        for fut in acks.values():
            if not fut.done():
                fut.set_exception(NotConnected("connection lost before PUBACK"))
        if was and self._on_disconnected_cb is not None:
            self._on_disconnected_cb()

    def _ack(self, mid: int) -> None:
        # Unknown mids are QoS 0 publishes (paho reports those too) or the birth: ignored.
        fut = self._acks.pop(mid, None)
        self._ack_since.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _deliver(self, msg: InboundMessage) -> None:
        if self._on_message_cb is None:
            return
        try:
            self._on_message_cb(msg)
        except Exception:
            # A handler bug must not kill the session; it is logged with the topic only
            # (payloads can hold personal data).
            log.exception("message handler failed for %s", msg.topic)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(fn, *args)

    # -- network thread ------------------------------------------------------------------
    def _t_run(self) -> None:
        c = self._client
        socket_open = False
        while not self._stop.is_set():
            if not socket_open:
                try:
                    if self._v5:
                        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                        # v5 spelling of the same choice: a clean start with no session kept,
                        # or (central) a session that outlives a restart by a week.
                        props.SessionExpiryInterval = 0 if self._clean else 7 * 24 * 3600
                        c.connect(self._host, self._port, self._keepalive,
                                  clean_start=self._clean, properties=props)
                    else:
                        c.connect(self._host, self._port, self._keepalive)
                    socket_open = True
                except (OSError, ValueError, ssl.SSLError) as exc:
                    delay = backoff_delay(self._attempt, *self._backoff, self._rng)
                    self._attempt += 1
                    log.info("mqtt connect to %s:%s failed (%s); retry in %.1fs",
                             self._host, self._port, exc, delay)
                    self._stop.wait(delay)
                    continue
            rc = c.loop(timeout=0.2)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                socket_open = False
                if self._stop.is_set():
                    break
                delay = backoff_delay(self._attempt, *self._backoff, self._rng)
                self._attempt += 1
                self._stop.wait(delay)
        with contextlib.suppress(Exception):
            c.loop(timeout=0.1)  # flush a pending DISCONNECT
        with contextlib.suppress(Exception):
            if c.socket() is not None:
                c.disconnect()

    def _t_drop_out_messages(self, client: mqtt.Client) -> None:
        # Clean session: the broker forgot this connection's packet ids, and whoever handed
        # these messages over re-sends what still matters (the outbox, a re-published
        # birth). A persistent session (central) keeps paho's resend, as MQTT requires.
        if self._clean:
            dropped = client.drop_out_messages()
            if dropped:
                log.debug("dropped %d unacknowledged messages from paho's queue", len(dropped))

    def _t_on_pre_connect(self, client: mqtt.Client, _u: Any) -> None:
        # Publishes that met NO_CONN after the disconnect are still queued in paho.
        self._t_drop_out_messages(client)

    def _t_on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("mqtt connect refused: %s", rc)
            return
        self._attempt = 0
        for flt, qos in self._subs:
            client.subscribe(flt, qos)
        if self._birth is not None:
            b = self._birth
            client.publish(b.topic, b.payload, qos=b.qos, retain=b.retain)
        self._post(self._set_connected)

    def _t_on_disconnect(
        self, client: mqtt.Client, _u: Any, _flags: Any, _rc: Any, _p: Any
    ) -> None:
        self._t_drop_out_messages(client)
        self._post(self._set_disconnected)

    def _t_on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            m = InboundMessage(msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain))
        except (UnicodeDecodeError, TypeError, ValueError):
            log.warning("dropped a message with an undecodable topic")
            return
        self._post(self._deliver, m)

    def _t_on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._post(self._ack, mid)


def _t_noop(*_: Any) -> None:
    """A callback that does nothing (paho's external-loop write hooks, see MqttSession)."""


def _t_on_socket_open(_c: mqtt.Client, _u: Any, sock: Any) -> None:
    # Network thread, before CONNECT is written. TLS sockets pass setsockopt through;
    # anything without TCP options (a unix socket) just keeps its defaults.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
