"""The lost-card hot list on central: poll the platform, announce the version to the fleet.

Flow (docs/healthcard.md "Lost cards"; docs/protocol.md §7): :class:`HotlistSync` asks the
platform's ``hotlist.delta`` every ``interval_s`` (since the version it last saw), keeps the
current version in central's database, and publishes the retained ``hotlist.notice
{version}`` on ``ykt/v1/fleet/hotlist`` (QoS 1) when the version changes. Devices that hold
an older list ask ``hotlist.delta`` themselves through the forwarder and keep a local copy.

Why the notice is re-published on every (re)connect of the publisher: Mosquitto keeps
retained messages only as durably as its autosave, so a broker that was killed may come back
without the notice; re-publishing the same version is harmless (devices ignore a version they
already hold).

The notice is signed with central's Ed25519 signing key when one is given (``signing_key``).
Central has no signing key configured yet, so ``ykt central`` publishes it unsigned. That is
safe because the notice is only a hint: the list itself reaches the device as the reply to its
own ``hotlist.delta`` request on its authenticated ``down/resp`` topic; a forged notice can at
most make devices ask once more (which the device's backoff bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import peewee as pw
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.platform.base import PlatformAdapter
from central.platform.errors import PlatformError
from central.store import Store
from central.store.migrations import SCHEMA_LOCK
from central.store.models import bind
from yikatong.mqtt.errors import UplinkError
from yikatong.mqtt.session import MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import encode, new_envelope
from yikatong.protocol.messages import HOTLIST_NOTICE_TYPE, HotlistDelta, HotlistNotice
from yikatong.protocol.signing import sign

__all__ = ["FLEET_DEV", "FleetPublisher", "HotlistSync", "NoticePublisher", "notice_payload"]

log = logging.getLogger(__name__)

#: ``dev`` of envelopes on ``fleet/hotlist`` (docs/protocol.md §2).
FLEET_DEV = "fleet"

Clock = Callable[[], datetime]


class NoticePublisher(Protocol):
    """Publishes one retained QoS 1 message and waits for the broker's PUBACK."""

    def publish(self, topic: str, payload: bytes) -> Awaitable[None]:
        """Publish ``payload`` on ``topic`` (QoS 1, retained); raise if not delivered."""


def notice_payload(
    version: int, now: datetime, signing_key: Ed25519PrivateKey | None = None
) -> bytes:
    """Canonical bytes of a ``hotlist.notice`` envelope for ``version`` (signed if a key)."""
    body = HotlistNotice(version=version)
    env = new_envelope(HOTLIST_NOTICE_TYPE, FLEET_DEV, body, now=now, id=uuid.uuid4().hex)
    if signing_key is not None:
        env = sign(env, signing_key)
    return encode(env)


class HotlistState(pw.Model):
    """The hot-list version: a small table of its own in central's database (unbound).

    Bound to a store's database with :func:`central.store.models.bind`, like the store's own
    models (several stores may be open in one process). The column types are the ones both
    engines keep exactly (a platform's version may be a large number; times are 8-byte floats).
    """

    key = pw.CharField(primary_key=True, max_length=32)
    version = pw.BigIntegerField()
    published_version = pw.BigIntegerField(null=True)
    updated_at = pw.DoubleField()

    class Meta:
        table_name = "hotlist_state"


class HotlistSync:
    """Keeps central's hot-list version in step with the platform and tells the fleet.

    ``publish`` is a :class:`NoticePublisher` (``FleetPublisher`` in ``ykt central``) or an
    async callable ``(topic, payload) -> None``. ``store`` (optional) persists the version so
    a restarted central neither re-announces from 0 nor forgets a version it has seen.
    """

    def __init__(
        self,
        adapter: PlatformAdapter,
        publish: NoticePublisher | Callable[[str, bytes], Awaitable[None]],
        store: Store | None = None,
        *,
        interval_s: float = 5.0,
        clock: Clock = lambda: datetime.now(UTC),
        signing_key: Ed25519PrivateKey | None = None,
        call_timeout_s: float = 30.0,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.adapter = adapter
        self._publish: Callable[[str, bytes], Awaitable[None]] = (
            publish.publish if hasattr(publish, "publish") else publish
        )
        self.store = store
        self.interval_s = interval_s
        self._clock = clock
        self._signing_key = signing_key
        self._call_timeout_s = call_timeout_s
        self._State: Any = None
        self.version = 0
        self.published_version: int | None = None
        if store is not None:
            self._State = bind(HotlistState, store.db)
            with store.atomic():
                store.lock_in_tx(SCHEMA_LOCK)
                store.db.create_tables([self._State], safe=True)
            row = self._State.get_or_none(self._State.key == "hotlist")
            if row is not None:
                self.version = int(row.version)
                # Not trusted across restarts: the broker may have lost the retained notice.
                self.published_version = None
        self._wake = asyncio.Event()
        self.stats: dict[str, int] = {"polls": 0, "poll_errors": 0, "published": 0,
                                      "publish_errors": 0}

    # -- triggers ----------------------------------------------------------------------
    def republish(self) -> None:
        """Publish the current version again soon (e.g. the broker connection came back)."""
        self.published_version = None
        self._wake.set()

    def poll_now(self) -> None:
        """Ask the platform now instead of at the next interval."""
        self._wake.set()

    # -- one round ---------------------------------------------------------------------
    async def poll_once(self) -> int:
        """Ask the platform for changes since our version; returns the current version."""
        self.stats["polls"] += 1
        raw = await asyncio.wait_for(
            self.adapter.call(
                "hotlist.delta", {"since_version": self.version},
                # A read: the key only satisfies the adapter contract (no effect to dedup).
                idempotency_key=uuid.uuid4().hex,
            ),
            self._call_timeout_s,
        )
        delta = HotlistDelta.model_validate(raw)
        if delta.version != self.version:
            # Normally newer; lower only after the platform's list was reset, which the
            # platform answers with a full list — devices then start over from it too.
            if delta.version < self.version:
                log.warning("platform hot list went back from %d to %d", self.version,
                            delta.version)
            self._set_version(delta.version)
            log.info("hot list version %d (%d added, %d removed, full=%s)", delta.version,
                     len(delta.added), len(delta.removed), delta.full)
        return self.version

    async def publish_if_needed(self) -> bool:
        """Publish the notice when the version was not yet published; True if it was sent."""
        if self.published_version == self.version:
            return False
        version = self.version
        payload = notice_payload(version, self._clock(), self._signing_key)
        await self._publish(topics.hotlist(), payload)
        self.published_version = version
        self.stats["published"] += 1
        self._persist(published=version)
        return True

    def _set_version(self, version: int) -> None:
        self.version = version
        self._persist()

    def _persist(self, published: int | None = None) -> None:
        if self.store is None:
            return
        S = self._State
        now = self._clock().timestamp()
        # One upsert: the first write of two instances starting on a new database at once
        # must not fail on the other's row. Without ``published`` the stored one is kept.
        update: dict[Any, Any] = {S.version: self.version, S.updated_at: now}
        if published is not None:
            update[S.published_version] = published
        with self.store.atomic():
            S.insert(key="hotlist", version=self.version, published_version=published,
                     updated_at=now).on_conflict(conflict_target=[S.key],
                                                 update=update).execute()

    # -- the loop ----------------------------------------------------------------------
    async def run(self) -> None:
        """Poll and publish until cancelled; errors are logged and retried next round."""
        while True:
            self._wake.clear()
            try:
                await self.poll_once()
            except (PlatformError, TimeoutError, ValueError) as exc:
                self.stats["poll_errors"] += 1
                log.info("hot list poll failed: %s", getattr(exc, "message", repr(exc)))
            try:
                await self.publish_if_needed()
            except (UplinkError, TimeoutError, OSError) as exc:
                self.stats["publish_errors"] += 1
                log.info("hot list notice not published yet: %s",
                         getattr(exc, "message", repr(exc)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)


class FleetPublisher:
    """Central's MQTT session for fleet-wide retained notices (its own client id).

    Kept apart from the forwarder's session so a forwarder busy with thousands of requests
    never delays, and is never delayed by, a notice. ``on_connected`` runs after every
    (re)connect — :meth:`HotlistSync.republish` — because a restarted broker may have lost
    the retained notice.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str | None,
        client_id: str = "central-fleet",
        tls: Any = None,
        keepalive: int = 30,
        on_connected: Callable[[], None] | None = None,
        publish_timeout_s: float = 10.0,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.on_connected = on_connected
        self._timeout = publish_timeout_s
        self._session = MqttSession(
            client_id, host=host, port=port, username=username, password=password, tls=tls,
            keepalive=keepalive, clean_session=True, subscriptions=[],
            backoff_min_s=min(0.5, backoff_max_s), backoff_max_s=backoff_max_s,
            on_message=lambda _m: None, on_connected=self._connected,
        )

    @classmethod
    def from_forwarder_settings(
        cls, settings: Any, *, username: str | None = None, password: str | None = None,
        **kw: Any,
    ) -> FleetPublisher:
        """Same broker as the forwarder, client id ``{client_id}-fleet``, its own account.

        Pass ``username``/``password``: a broker that binds the client id to the username
        (central's Mosquitto does) would otherwise see both sessions under the forwarder's
        username, and each connect would disconnect the other.
        """
        if username is None:
            username, password = settings.username, settings.read_password()
        return cls(host=settings.host, port=settings.port, username=username,
                   password=password, tls=settings.tls,
                   client_id=f"{settings.client_id}-fleet"[:64],
                   keepalive=settings.keepalive, **kw)

    @property
    def connected(self) -> bool:
        """True while the session is up."""
        return self._session.connected

    def _connected(self) -> None:
        if self.on_connected is not None:
            self.on_connected()

    async def start(self) -> None:
        """Connect in the background."""
        await self._session.start()

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait until connected; False on timeout."""
        return await self._session.wait_connected(timeout_s)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish retained, QoS 1 (the hot-list options); wait for PUBACK."""
        qos, retain = topics.publish_options(topic)
        await self._session.publish(topic, payload, qos=qos, retain=retain,
                                    timeout_s=self._timeout)

    async def stop(self) -> None:
        """Disconnect."""
        await self._session.stop()
