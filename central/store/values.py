"""The store's values and error, and the conversions every store module shares.

See docs/architecture.md ("Delivery rules") for what the request and audit records mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from yikatong.common.errors import LocalizedError

__all__ = ["AuditEntry", "Begin", "DeviceInfo", "StoreError"]


class StoreError(LocalizedError):
    """The store is unusable or an operation violated its rules."""

    code = "store_error"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A registered device as a value."""

    id: str
    role: str
    enabled: bool
    online: bool
    last_seen: datetime | None
    last_boot_seq: int | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Begin:
    """Outcome of :meth:`Store.begin_request`: new / done (with reply) / busy / mismatch."""

    status: str  # "new" | "done" | "busy" | "mismatch"
    reply: bytes | None = None
    #: "new" for a row another (dead) worker had claimed: the platform may have been asked.
    retaken: bool = False


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record as a value."""

    seq: int
    ts: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def to_ts(dt: datetime) -> float:
    """The stored form of an aware datetime (epoch seconds); a naive one is refused."""
    if dt.tzinfo is None:
        raise StoreError("naive datetime given to the store", "时间缺少时区")
    return dt.timestamp()


def from_ts(ts: float | None) -> datetime | None:
    """The datetime of a stored epoch value (UTC), None for None."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def canon(obj: Any) -> bytes:
    """Sorted-key compact JSON, as stored for event bodies and audit details."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
