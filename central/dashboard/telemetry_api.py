"""The telemetry history API: one device's metrics over a time range, for the charts.

``GET /api/devices/{dev}/telemetry`` (role viewer and above, central/dashboard/auth.py)

* ``metric`` — comma-separated names of :data:`central.telemetry_history.METRICS` (default:
  all of them: paper, backlog, disk, temp, load, reconnects);
* ``range=6h|2d|30d`` (any ``<n>h`` / ``<n>d``) ending now, or ``from`` / ``to`` as ISO 8601
  or epoch seconds (``to`` defaults to now);
* ``tier=raw|minute|hour`` to force a tier; by default the finest one that still holds
  ``from`` and gives a chartable number of points (up to 12 h raw samples, up to 7 days
  minute aggregates, beyond that hour aggregates — docs/architecture.md, "Telemetry
  history"). Aggregates are merged into wider buckets so a series has at most 720 points.

The answer: ``{"dev", "tier", "step_s", "from", "to", "metrics": [{"name", "label",
"label_zh", "unit", "kind", "points": [[t_ms, value, min, max], …]}]}`` — value is the
average of a gauge and the total of a counter (reconnects) per bucket; ``step_s`` 0 means
raw samples. A device without history (or not registered) gets empty series: history outlives
a device's removal until retention. Errors are ``{"error": code, "message", "message_zh"}``
with status 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from central.dashboard.auth import ApiError, Viewer
from central.store import Store
from central.telemetry_history import (
    METRICS,
    TelemetryQueryError,
    TelemetrySettings,
    bucket_step,
    ensure_schema,
    pick_tier,
    query,
)

__all__ = ["parse_range", "parse_time", "telemetry_router"]

_RANGE = re.compile(r"^(\d{1,4})([hd])$")
#: Longest range one query may ask for.
MAX_SPAN_S = 3660 * 86_400


def parse_time(text: str, what: str) -> float:
    """Epoch seconds from ISO 8601 (no zone = UTC) or a number of epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "bad_time", f"{what} must be ISO 8601 or epoch seconds",
                       f"{what} 须为 ISO 8601 时间或秒数") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def parse_range(text: str) -> float:
    """``6h`` / ``2d`` → seconds."""
    m = _RANGE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise ApiError(400, "bad_range", "range is <n>h or <n>d, e.g. 6h, 2d, 30d",
                       "时间范围格式为 <n>h 或 <n>d，例如 6h、2d、30d")
    return int(m.group(1)) * (3600 if m.group(2) == "h" else 86_400)


def telemetry_router(store: Store, settings: TelemetrySettings | None = None, *,
                     clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> APIRouter:
    """The history endpoint on ``store`` (its tables are made if missing)."""
    s = settings or TelemetrySettings()
    ensure_schema(store)
    router = APIRouter(prefix="/api")

    @router.get("/devices/{dev}/telemetry")
    async def telemetry(
        dev: str, _: Viewer, *,
        metric: str | None = None,
        range_: Annotated[str | None, Query(alias="range")] = None,
        from_: Annotated[str | None, Query(alias="from")] = None,
        to: str | None = None,
        tier: Literal["raw", "minute", "hour"] | None = None,
    ) -> dict[str, object]:
        now = clock().timestamp()
        names = [n for n in (metric or "").split(",") if n] or [m.name for m in METRICS]
        end = parse_time(to, "to") if to else now
        if from_ is not None:
            if range_ is not None:
                raise ApiError(400, "bad_range", "give range or from, not both",
                               "range 与 from 只能给一个")
            start = parse_time(from_, "from")
        else:
            start = end - parse_range(range_ or "6h")
        if not 0 < end - start <= MAX_SPAN_S:
            raise ApiError(400, "bad_range", "from must be before to, at most 3660 days",
                           "开始时间须早于结束时间，跨度不超过 3660 天")
        chosen = tier or pick_tier(start, end, now, s)
        step = bucket_step(chosen, end - start)
        try:
            series = query(store, dev, names, start, end, tier=chosen, step=step)
        except TelemetryQueryError as exc:
            raise ApiError(400, exc.reason, exc.message, exc.message_zh) from None
        return {
            "dev": dev, "tier": chosen, "step_s": step,
            "from": datetime.fromtimestamp(start, UTC).isoformat(),
            "to": datetime.fromtimestamp(end, UTC).isoformat(),
            "metrics": [{"name": x.metric.name, "label": x.metric.label,
                         "label_zh": x.metric.label_zh, "unit": x.metric.unit,
                         "kind": x.metric.kind,
                         "points": [[t, round(v, 3), round(lo, 3), round(hi, 3)]
                                    for t, v, lo, hi in x.points]}
                        for x in series],
        }

    return router
