"""Who this terminal is: its id, role, hospital and time zone (shared by the runtime's parts)."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

__all__ = ["Terminal"]


@dataclass
class Terminal:
    """One terminal's identity; mutable so a test may turn a kiosk into a desk."""

    device_id: str
    role: str  # "kiosk" | "cashier"
    hospital_name: str
    tz: ZoneInfo

    @property
    def is_desk(self) -> bool:
        """A staffed cashier's desk (cash, refunds, reprints, reports)."""
        return self.role == "cashier"
