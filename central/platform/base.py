"""The interface every hospital-platform adapter implements."""

from __future__ import annotations

import abc
from typing import Any

from central.platform.errors import PlatformUnsupported

__all__ = ["BY_KEY_OPERATIONS", "MUTATING_OPERATIONS", "OPERATIONS", "PlatformAdapter"]

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
        "pay.list",
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


#: Payment lookups by the pay.create idempotency key: adapter methods for central's
#: payment resolver, not catalogue operations (devices never send them).
BY_KEY_OPERATIONS: frozenset[str] = frozenset({"pay.status_by_key", "pay.reverse_by_key"})


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

    # Wallets let the merchant query and reverse a payment by its *own* order number
    # (WeChat Pay orderquery/reverse and Alipay trade.query/trade.cancel by out_trade_no);
    # ours is the pay.create idempotency key. That is the only way to resolve a payment
    # whose reply was lost before its payment_id reached us. Not abstract: an adapter for a
    # platform without it inherits a typed refusal and the resolver falls back to staff.
    async def pay_status_by_key(
        self,
        key: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """State of the payment created under idempotency ``key`` (``pay.status`` shape).

        Raises ``PaymentNotFound`` when the platform never took a payment under ``key``.
        """
        raise PlatformUnsupported("pay.status by idempotency key")

    async def pay_reverse_by_key(
        self,
        key: str,
        *,
        idempotency_key: str,
        timeout: float | None = None,  # noqa: ASYNC109 — part of the adapter contract
    ) -> dict[str, Any]:
        """Reverse the payment created under ``key`` and close ``key`` for good.

        Raises ``PaymentNotFound`` when no payment was taken under ``key``; the platform
        then refuses any later ``pay.create`` with that key, so "not charged" stays true.
        """
        raise PlatformUnsupported("pay.reverse by idempotency key")

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections held by the adapter."""

    async def __aenter__(self) -> PlatformAdapter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
