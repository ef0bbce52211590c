"""The store's devices: registry rows, cached enabled/role checks, ``last_seen``, birth/Will.

The device list reads the fleet in one query (a page of it with ``after``/``limit``), never
one query per device (docs/performance.md, "Device list at fleet scale").
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import peewee as pw

from central.store import sql
from central.store.core import DEVICE_CACHE_S, StoreCore
from central.store.values import DeviceInfo, StoreError, from_ts, to_ts

__all__ = ["DEVICE_STATES", "DeviceOps", "DeviceState"]

DeviceState = Literal["online", "offline", "disabled"]
DEVICE_STATES: frozenset[str] = frozenset({"online", "offline", "disabled"})


def _columns(D: Any) -> tuple[Any, ...]:
    """The columns a :class:`DeviceInfo` is made of, in its field order."""
    return (D.id, D.role, D.enabled, D.online, D.last_seen, D.last_boot_seq, D.version)


def _state_condition(D: Any, state: DeviceState | None) -> Any:
    if state is None:
        return None
    if state == "disabled":
        return D.enabled == False  # noqa: E712 - a peewee expression
    return (D.enabled == True) & (D.online == (state == "online"))  # noqa: E712


class DeviceOps(StoreCore):
    """Devices (part of :class:`~central.store.Store`)."""

    def add_device(self, dev: str, role: str, now: datetime) -> DeviceInfo:
        """Insert a device (enabled) or re-enable it with ``role``."""
        D = self.Device
        with self.atomic():  # one statement: two instances registering at once both succeed
            D.insert(id=dev, role=role, enabled=True, created_at=to_ts(now)).on_conflict(
                conflict_target=[D.id], update={D.role: role, D.enabled: True}).execute()
        self._enabled.pop(dev, None)
        self._roles.pop(dev, None)
        info = self.device(dev)
        if info is None:  # pragma: no cover - just inserted in the same process
            raise StoreError(f"device {dev} vanished", "设备记录丢失")
        return info

    def set_enabled(self, dev: str, enabled: bool) -> bool:
        """Enable/disable a device; False when it is not registered."""
        with self.atomic():
            done = bool(
                self.Device.update(enabled=enabled).where(self.Device.id == dev).execute()
            )
        self._enabled.pop(dev, None)
        return done

    def device_enabled(self, dev: str) -> bool:
        """True when ``dev`` is registered and enabled (cached: the forwarder asks per message)."""
        hit = self._enabled.get(dev)
        now = time.monotonic()
        if hit is not None and now - hit[1] < DEVICE_CACHE_S:
            return hit[0]
        row = self.Device.select(self.Device.enabled).where(self.Device.id == dev).first()
        ok = row is not None and bool(row.enabled)
        self._enabled[dev] = (ok, now)
        return ok

    def device_role(self, dev: str) -> str | None:
        """The registered role of ``dev`` (cached like :meth:`device_enabled`), or None."""
        hit = self._roles.get(dev)
        now = time.monotonic()
        if hit is not None and now - hit[1] < DEVICE_CACHE_S:
            return hit[0]
        row = self.connection().execute(sql.DEVICE_ROLE, (dev,)).fetchone()
        role = None if row is None else str(row[0])
        self._roles[dev] = (role, now)
        return role

    def device(self, dev: str) -> DeviceInfo | None:
        """The device ``dev`` or None."""
        D = self.Device
        row = D.select(*_columns(D)).where(D.id == dev).tuples().first()
        return None if row is None else self._info(row, self._touches)

    def devices(self, *, after: str | None = None, limit: int | None = None,
                state: DeviceState | None = None, prefix: str | None = None
                ) -> list[DeviceInfo]:
        """Devices by id, in one query: all of them, or a page.

        ``after`` (an id) and ``limit`` page through the fleet in id order; ``state`` keeps
        only ``online`` / ``offline`` (enabled ones) or ``disabled`` devices; ``prefix`` the
        ids that start with it (an index range from ``prefix`` on, checked by SUBSTR: where
        the matches end depends on the collation on PostgreSQL, so there is no upper bound).
        """
        D = self.Device
        q = D.select(*_columns(D))
        cond = _state_condition(D, state)
        if after is not None:
            q = q.where(D.id > after)
        if prefix:
            q = q.where((D.id >= prefix) & (pw.fn.SUBSTR(D.id, 1, len(prefix)) == prefix))
        if cond is not None:
            q = q.where(cond)
        q = q.order_by(D.id)
        if limit is not None:
            q = q.limit(limit)
        touches = self._touches  # the writer swaps the dict; this one stays whole
        return [self._info(row, touches) for row in q.tuples()]

    def device_counts(self) -> dict[str, int]:
        """``{total, online, offline, disabled}`` over the whole fleet (one query)."""
        D = self.Device
        enabled = pw.Case(None, [(D.enabled == True, 1)], 0)  # noqa: E712 - SQL, not Python
        online = pw.Case(None, [((D.enabled == True) & (D.online == True), 1)], 0)  # noqa: E712
        total, on, en = D.select(pw.fn.COUNT(D.id), pw.fn.SUM(online),
                                 pw.fn.SUM(enabled)).tuples().get()
        total, on, en = int(total or 0), int(on or 0), int(en or 0)
        return {"total": total, "online": on, "offline": en - on, "disabled": total - en}

    @staticmethod
    def _info(row: tuple[Any, ...], touches: dict[str, float]) -> DeviceInfo:
        dev, role, enabled, online, last_seen, boot_seq, version = row
        buffered = touches.get(dev)
        if buffered is not None and (last_seen is None or buffered > last_seen):
            last_seen = buffered  # heard from, not flushed yet
        return DeviceInfo(dev, role, bool(enabled), bool(online), from_ts(last_seen), boot_seq,
                          version)

    def touch(self, dev: str, now: datetime) -> None:
        """Record that ``dev`` was heard from at ``now`` (written within ``TOUCH_FLUSH_S``)."""
        t = to_ts(now)
        with self._touch_lock:
            if t > self._touches.get(dev, 0.0):
                self._touches[dev] = t
        self._ensure_writer()

    def apply_state(
        self, dev: str, *, online: bool, boot_seq: int, version: str | None, now: datetime
    ) -> bool:
        """Apply a birth/Will; a Will older than the last birth is ignored (returns False)."""
        with self.atomic():
            return self.apply_state_in_tx(dev, online=online, boot_seq=boot_seq,
                                          version=version, now=now)

    def apply_state_in_tx(
        self, dev: str, *, online: bool, boot_seq: int, version: str | None, now: datetime
    ) -> bool:
        """:meth:`apply_state` inside the caller's write transaction."""
        self._require_write()
        D = self.Device
        r = D.get_or_none(D.id == dev)
        if r is None:
            return False
        last = r.last_boot_seq
        if online:
            if last is not None and boot_seq < last:
                return False  # a stale retained birth of an earlier boot
            D.update(
                online=True, last_boot_seq=boot_seq, last_seen=to_ts(now),
                version=version if version is not None else r.version,
            ).where(D.id == dev).execute()
            return True
        # The Will of boot N arrives after the birth of boot N+1 when the broker notices
        # the dead TCP connection late: that device is online, keep it so.
        if last is not None and boot_seq < last:
            return False
        D.update(online=False, last_boot_seq=boot_seq).where(D.id == dev).execute()
        return True
