"""The store's recent events (a bounded ring per device) and fleet health rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from central import fleet_health
from central.store.core import StoreCore
from central.store.values import canon, from_ts, to_ts

__all__ = ["EventOps"]


class EventOps(StoreCore):
    """Events and health (part of :class:`~central.store.Store`)."""

    # -- events ----------------------------------------------------------------------------
    def add_event(
        self, dev: str, kind: str, type_: str, body: dict[str, Any], now: datetime
    ) -> None:
        """Keep an event/telemetry sample; only the newest ``events_per_device`` are kept."""
        with self.atomic():
            self.add_event_in_tx(dev, kind, type_, body, now)

    def add_event_in_tx(
        self, dev: str, kind: str, type_: str, body: dict[str, Any], now: datetime
    ) -> None:
        """:meth:`add_event` inside the caller's write transaction."""
        self._require_write()
        E = self.DeviceEvent
        E.create(dev=dev, kind=kind, type=type_, ts=to_ts(now), body=canon(body).decode())
        keep = E.select(E.id).where(E.dev == dev).order_by(E.id.desc()).limit(
            self.events_per_device
        )
        E.delete().where((E.dev == dev) & E.id.not_in(keep)).execute()

    def recent_events(self, dev: str, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first: ``{kind, type, ts, body}`` of ``dev``."""
        E = self.DeviceEvent
        rows = E.select().where(E.dev == dev).order_by(E.id.desc()).limit(limit)
        return [
            {"kind": r.kind, "type": r.type, "ts": from_ts(r.ts), "body": json.loads(r.body)}
            for r in rows
        ]

    def recent_events_all(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first across the fleet: ``{dev, kind, type, ts, body}``."""
        E = self.DeviceEvent
        rows = E.select().order_by(E.id.desc()).limit(limit)
        return [
            {"dev": r.dev, "kind": r.kind, "type": r.type, "ts": from_ts(r.ts),
             "body": json.loads(r.body)}
            for r in rows
        ]

    # -- fleet health (latest telemetry per device) ----------------------------------------
    def update_health(self, dev: str, type_: str, body: dict[str, Any], now: datetime) -> bool:
        """Merge a telemetry sample or event into ``dev``'s health row; True if it changed."""
        with self.atomic():
            return self.update_health_in_tx(dev, type_, body, now)

    def update_health_in_tx(
        self, dev: str, type_: str, body: dict[str, Any], now: datetime
    ) -> bool:
        """:meth:`update_health` inside the caller's write transaction."""
        self._require_write()
        H = self.DeviceHealthRow
        q = H.select().where(H.dev == dev)
        if self.dialect.postgres:  # two instances merging into one row: one after the other
            q = q.for_update()
        row = q.first()
        view = fleet_health.merge(
            None if row is None else fleet_health.DeviceHealth.from_json(row.body),
            type_, body, now)
        if view is None:
            return False
        H.insert(dev=dev, updated_at=to_ts(now), body=view.to_json()).on_conflict(
            conflict_target=[H.dev], preserve=[H.updated_at, H.body]).execute()
        return True

    def device_health(self, dev: str) -> fleet_health.DeviceHealth | None:
        """``dev``'s latest health view, or None before its first report."""
        H = self.DeviceHealthRow
        row = H.get_or_none(H.dev == dev)
        return None if row is None else fleet_health.DeviceHealth.from_json(row.body)

    def all_health(self, devs: Sequence[str] | None = None
                   ) -> dict[str, fleet_health.DeviceHealth]:
        """Every device's latest health view (or only ``devs``'), by device id; one query."""
        H = self.DeviceHealthRow
        q = H.select(H.dev, H.body)
        if devs is not None:
            if not devs:
                return {}
            q = q.where(H.dev.in_(list(devs)))
        return {dev: fleet_health.DeviceHealth.from_json(body) for dev, body in q.tuples()}
