"""Kiosk and cashier flows as explicit state machines (one module per flow)."""

from __future__ import annotations

from kiosk.flows.base import Context, Flow, IllegalTransition, Timing
from kiosk.flows.bills import BillsFlow
from kiosk.flows.cancel import CancelFlow
from kiosk.flows.pickup import PickupFlow
from kiosk.flows.receipts import ReceiptsFlow
from kiosk.flows.refund import RefundFlow
from kiosk.flows.register import RegisterFlow
from kiosk.flows.reports import ReportsFlow
from kiosk.flows.topup import TopupFlow

__all__ = ["FLOWS", "Context", "Flow", "IllegalTransition", "Timing"]

#: Flow name → class; ``roles`` says where each may run.
FLOWS: dict[str, tuple[type[Flow], frozenset[str]]] = {
    "register": (RegisterFlow, frozenset({"kiosk", "cashier"})),
    "pickup": (PickupFlow, frozenset({"kiosk", "cashier"})),
    "bills": (BillsFlow, frozenset({"kiosk", "cashier"})),
    "topup": (TopupFlow, frozenset({"kiosk", "cashier"})),
    "reports": (ReportsFlow, frozenset({"kiosk", "cashier"})),
    "cancel": (CancelFlow, frozenset({"kiosk", "cashier"})),
    "refund": (RefundFlow, frozenset({"cashier"})),
    "receipts": (ReceiptsFlow, frozenset({"cashier"})),
}
