"""The store's payment rows as other modules ask about them (central/payments.py owns them)."""

from __future__ import annotations

from central.store import sql
from central.store.core import StoreCore

__all__ = ["PaymentOps"]


class PaymentOps(StoreCore):
    """Payments (part of :class:`~central.store.Store`; the rows: ``Store.Payment``)."""

    def payment_owner(self, payment_id: str) -> tuple[str, str] | None:
        """``(dev, patient_id)`` of the payment ``payment_id``, or None when unknown.

        Asked by authorization inside its write transaction (it sees that transaction's rows).
        """
        row = self.connection().execute(sql.PAYMENT_OWNER, (payment_id,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))
