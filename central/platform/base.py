"""The interface every hospital-platform adapter implements."""

from __future__ import annotations

import abc
from typing import Any

__all__ = ["MUTATING_OPERATIONS", "OPERATIONS", "PlatformAdapter"]

#: The request types of docs/message-catalogue.md that a platform adapter implements.
OPERATIONS: frozenset[str] = frozenset(
    {
        "patient.identify",
        "reg.departments",
        "reg.slots",
        "reg.book",
        "reg.cancel",
        "reg.bookings",
        "reg.checkin",
        "reg.printed",
        "bill.list",
        "pay.create",
        "pay.status",
        "pay.reverse",
        "pay.refund",
        "report.list",
        "report.fetch",
        "report.printed",
        "hotlist.delta",
        "staff.login",
    }
)

#: Operations that change state on the platform; the rest are safe to repeat freely.
MUTATING_OPERATIONS: frozenset[str] = frozenset(
    {
        "reg.book", "reg.cancel", "reg.checkin", "reg.printed", "pay.create", "pay.reverse",
        "pay.refund", "report.printed",
    }
)


class PlatformAdapter(abc.ABC):
    """Calls one hospital platform; results are dicts shaped as in the message catalogue."""

    @abc.abstractmethod
    async def call(
        self,
        op: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """Perform ``op`` with ``body``; raise a ``PlatformError`` subclass on failure."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections held by the adapter."""

    async def __aenter__(self) -> PlatformAdapter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
