"""The device side of the lost-card hot list: follow central's notice, fetch deltas.

Central announces the current version as the retained ``hotlist.notice`` on
``ykt/v1/fleet/hotlist``. :class:`HotlistSync` remembers the highest version announced and,
whenever it is above the local :class:`~edge.devices.card.hotlist.HotList` version (and once
at start-up, and every ``poll_interval_s`` as a safety net against a lost notice), asks
``hotlist.delta {since_version}`` through :meth:`Uplink.request` and applies the answer to
the same SQLite file the card service reads. So:

* the card module keeps enforcing the last copy when the link is down (it never waits for us);
* repeated, stale or out-of-order notices are harmless (``apply_delta`` ignores anything not
  newer, and a notice only raises the target version);
* failures are retried with exponential backoff and full jitter (injected ``rng``), so a
  fleet that reconnects after a broker restart does not ask in lock step;
* a device that was offline gets the retained notice again on reconnect and catches up.

Signatures: when ``public_keys`` are given, a notice must carry a valid Ed25519 signature by
one of them, else it is ignored. Without keys the notice is accepted unsigned — it is only a
hint; the list itself arrives as the reply to our own request on ``down/resp``.

Threads: paho hands the notice to asyncio before we see it (yikatong.mqtt.session), so the
handler runs on the event loop; the blocking SQLite write runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterable
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from edge.uplink.errors import UplinkError
from yikatong.common.tasks import BackgroundTask
from yikatong.mqtt.session import InboundMessage, backoff_delay
from yikatong.protocol.envelope import decode
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.messages import HOTLIST_NOTICE_TYPE, HotlistDelta, HotlistNotice
from yikatong.protocol.signing import verify_any

__all__ = ["HotlistStore", "HotlistSync", "RequestLink"]

log = logging.getLogger(__name__)

FLEET_DEV = "fleet"


class HotlistStore(Protocol):
    """What we need of :class:`edge.devices.card.hotlist.HotList`."""

    @property
    def version(self) -> int:
        """Local version (0 = never received)."""

    def apply_delta(self, version: int, added: Iterable[str] = (),
                    removed: Iterable[str] = (), full: bool = False) -> bool:
        """Apply a delta or a full list; False when not newer."""


class RequestLink(Protocol):
    """What we need of :class:`edge.uplink.client.Uplink`."""

    @property
    def connected(self) -> bool:
        """True while the MQTT session is up."""

    def on_message(self, kind: str, handler: Any) -> None:
        """Register an inbound handler."""

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        """Wait for the connection; False on timeout."""

    async def request(self, type: str, body: dict[str, Any], *,
                      timeout: float | None = None) -> BaseModel:  # noqa: ASYNC109
        """Send a request and return its validated result model."""


class HotlistSync:
    """Keeps the device's local hot list at the version central announces."""

    def __init__(
        self,
        uplink: RequestLink,
        hotlist: HotlistStore,
        *,
        poll_interval_s: float = 600.0,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        request_timeout_s: float = 15.0,
        public_keys: Iterable[Ed25519PublicKey] = (),
        rng: random.Random | None = None,
    ) -> None:
        if poll_interval_s <= 0 or backoff_min_s <= 0 or backoff_max_s < backoff_min_s:
            raise ValueError("poll_interval_s, backoff_min_s must be > 0 and min <= max")
        self.uplink = uplink
        self.hotlist = hotlist
        self.poll_interval_s = poll_interval_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.request_timeout_s = request_timeout_s
        self._keys = list(public_keys)
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        #: Highest version central announced (0 until a notice arrives).
        self.announced = 0
        self._wake = asyncio.Event()
        self._loop = BackgroundTask(self._run, name="hotlist-sync")
        self._synced = asyncio.Event()
        self.stats: dict[str, int] = {"notices": 0, "ignored": 0, "fetches": 0, "applied": 0,
                                      "failures": 0}
        # Registered at once, before the uplink connects, so the retained notice that the
        # broker sends right after SUBSCRIBE is not missed.
        uplink.on_message("hotlist", self._on_notice)

    # -- inbound -------------------------------------------------------------------------
    def _on_notice(self, msg: InboundMessage) -> None:
        try:
            env = decode(msg.payload)
            if env.type != HOTLIST_NOTICE_TYPE or env.dev != FLEET_DEV:
                raise ValueError(f"unexpected {env.type!r} for {env.dev!r}")
            if self._keys:
                verify_any(env, self._keys)
            notice = HotlistNotice.model_validate(env.body)
        except (ProtocolError, ValidationError, ValueError) as exc:
            self.stats["ignored"] += 1
            log.warning("hot list notice ignored: %s", getattr(exc, "code", type(exc).__name__))
            return
        self.stats["notices"] += 1
        self.announced = max(self.announced, notice.version)
        if self.announced > self.hotlist.version:
            self._wake.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background sync (first fetch at once)."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop the background sync; the local list stays as it is."""
        await self._loop.stop()

    async def wait_version(self, version: int, timeout_s: float) -> bool:
        """Wait until the local list is at ``version`` or newer; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.hotlist.version < version:
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._synced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), min(left, 0.5))
        return True

    # -- fetching ------------------------------------------------------------------------
    async def sync_once(self) -> bool:
        """Ask for the changes since the local version and apply them; True if applied."""
        since = self.hotlist.version
        self.stats["fetches"] += 1
        delta = await self.uplink.request("hotlist.delta", {"since_version": since},
                                          timeout=self.request_timeout_s)
        if not isinstance(delta, HotlistDelta):  # the uplink validated it as this model
            raise TypeError(f"hotlist.delta answered with {type(delta).__name__}")
        applied = await asyncio.to_thread(
            self.hotlist.apply_delta, delta.version, delta.added, delta.removed, delta.full)
        if applied:
            self.stats["applied"] += 1
            log.info("hot list now at version %d (%s: +%d -%d)", delta.version,
                     "full" if delta.full else "delta", len(delta.added), len(delta.removed))
        if delta.version < self.announced and not applied:
            # Central announced more than the platform gives us (e.g. its list was reset):
            # do not ask in a loop; the next notice or poll tries again.
            self.announced = delta.version
        self._synced.set()
        return applied

    def _behind(self) -> bool:
        return self.announced > self.hotlist.version

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        due = loop.time()  # at start-up: fetch once
        while True:
            if loop.time() >= due or self._behind():
                if not self.uplink.connected:
                    # Offline: do not fill the outbox with lookups; the card module keeps
                    # using the last copy. The retained notice arrives on reconnect.
                    await self.uplink.wait_connected(self.poll_interval_s)
                    continue
                try:
                    await self.sync_once()
                    failures = 0
                    due = loop.time() + self.poll_interval_s
                except Exception as exc:
                    # Uplink errors (offline, timeout, refused) and bad replies are expected;
                    # anything else is a bug, but must not end the sync: log it and back off.
                    if not isinstance(exc, UplinkError | ValidationError | ValueError):
                        log.exception("hot list sync error")
                    failures += 1
                    self.stats["failures"] += 1
                    delay = backoff_delay(failures, self.backoff_min_s, self.backoff_max_s,
                                          self._rng)
                    log.info("hot list fetch failed (%s); retry in %.1fs",
                             getattr(exc, "message", type(exc).__name__), delay)
                    await asyncio.sleep(delay)
                    continue
            self._wake.clear()
            if self._behind():
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - loop.time()))
