"""Is the daemon on a slot on trial healthy? (docs/updates.md, "Health check").

Run by :class:`edge.update.service.UpdateService` once the daemon has started every part:
"daemon up" is reaching that point (API served, pumps running). Then, until the deadline,
every configured probe must pass at the same time:

``uplink``   the MQTT session to the broker is connected;
``reader``   the patient card reader is present (pcscd lists it);
``sam``      the SAM opens (:meth:`CardService.probe_sam`, the probe ``reader.selftest`` uses);
``printer``  the printer answers a status query (:meth:`PrinterService.status`, what the idle
             poll reads; paper out still counts as answered — it is no software fault).

A part the config switches off (``[card] enabled = false``, ``[printer] enabled = false``)
is not probed. The probes are the daemon's own objects; nothing here opens hardware itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["CHECKS", "HealthProbes", "probe_once", "wait_healthy"]

log = logging.getLogger(__name__)

CHECKS: Final = ("uplink", "reader", "sam", "printer")


@dataclass
class HealthProbes:
    """The daemon's parts the health check asks (None: the part is not there)."""

    uplink: Any = None
    cards: Any = None
    printer: Any = None
    card_enabled: bool = True
    printer_enabled: bool = True


async def _one(name: str, p: HealthProbes, timeout_s: float) -> str | None:
    """None if the probe passes, else what is wrong."""
    if name == "uplink":
        if p.uplink is None:
            return "no uplink"
        return None if bool(getattr(p.uplink, "connected", False)) else "broker not connected"
    if name in ("reader", "sam") and not p.card_enabled:
        return None
    if name == "printer" and not p.printer_enabled:
        return None
    if name == "reader":
        if p.cards is None:
            return "no card service"
        return None if p.cards.reader_present else "card reader missing"
    if name == "sam":
        if p.cards is None:
            return "no card service"
        async with asyncio.timeout(timeout_s):
            sam = await p.cards.probe_sam()
        state = sam.get("state")
        return None if state == "ok" else f"SAM {state}"
    if name == "printer":
        if p.printer is None:
            return "no printer service"
        try:
            async with asyncio.timeout(timeout_s):
                await p.printer.status()
        except Exception as exc:
            return f"printer not answering ({getattr(exc, 'reason', None) or type(exc).__name__})"
        return None
    return f"unknown check {name}"


async def probe_once(p: HealthProbes, checks: Iterable[str], *,
                     timeout_s: float = 10.0) -> dict[str, str | None]:
    """Every check once: name → None (passed) or the problem."""
    out: dict[str, str | None] = {}
    for name in checks:
        try:
            out[name] = await _one(name, p, timeout_s)
        except Exception as exc:  # a probe that crashes is a failed probe
            out[name] = f"{name} probe failed: {type(exc).__name__}"
    return out


async def wait_healthy(p: HealthProbes, checks: Iterable[str], deadline: datetime, *,
                       clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                       interval_s: float = 1.0) -> dict[str, str | None]:
    """Probe until every check passes at once or ``deadline``; the last results.

    Healthy = every value None.
    """
    names = list(checks)
    while True:
        remaining = (deadline - clock()).total_seconds()
        result = await probe_once(p, names, timeout_s=max(1.0, min(10.0, remaining)))
        if all(v is None for v in result.values()):
            return result
        if clock() >= deadline:
            return result
        log.info("update health check waiting: %s",
                 ", ".join(v for v in result.values() if v is not None))
        await asyncio.sleep(min(interval_s, max(0.05, remaining)))
