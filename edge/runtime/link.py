"""Requests to the platform through the uplink, and the platform's up/down status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from edge.runtime.events import EventBus
from edge.runtime.ports import UplinkPort
from edge.uplink.errors import PlatformUnavailable, Rejected, UplinkClosed

__all__ = ["PlatformLink"]


class PlatformLink:
    """One uplink request at a time per caller; remembers whether the platform answered."""

    def __init__(self, uplink: UplinkPort, bus: EventBus, *,
                 staff: Callable[[], Any],
                 session_expired: Callable[[str], None],
                 on_result: Callable[[str, BaseModel], None]) -> None:
        self.uplink = uplink
        self.bus = bus
        self.ok: bool | None = None  # last request's verdict on the platform link
        self._staff = staff  # the signed-in cashier (StaffSession) or None
        self._session_expired = session_expired
        self._on_result = on_result

    async def call(self, type_: str, body: dict[str, Any], timeout_s: float | None = None,
                   request_id: str | None = None) -> BaseModel:
        """One uplink request; its result model is remembered for printing by reference."""
        kw: dict[str, Any] = {"timeout": timeout_s}
        if request_id is not None:
            kw["id"] = request_id
        staff = self._staff()
        if staff is not None and staff.session_token and type_ != "staff.login":
            # Central checks this session on every desk request (docs/security.md).
            kw["auth"] = staff.session_token
        try:
            result = await self.uplink.request(type_, body, **kw)
        except (PlatformUnavailable, UplinkClosed):
            self._platform(False)
            raise
        except Rejected as exc:
            self._platform(True)
            if exc.code == "session_expired" and staff is not None and self._staff() is staff:
                # Central ended the session (idle, shift over, reset): lock the desk.
                self._session_expired("expired")
            raise
        except Exception:
            self._platform(True)  # an answer (rejection) or an unknown outcome: link alive
            raise
        self._platform(True)
        self._on_result(type_, result)
        return result

    def _platform(self, ok: bool) -> None:
        if self.ok is not ok:
            self.ok = ok
            self.bus.publish("platform.status", {"ok": ok})
