"""Fault injection per operation: latency, 503 before effect, hang before effect,
and commit-then-no-reply.

"No reply" is implemented by holding the response for ``hang_s`` (default 30 s) after the
commit. It works the same under uvicorn and in-process transports, where aborting the TCP
connection from an ASGI app is not possible (uvicorn turns an app exception into a 500
reply, which the client would *see*). The client's read timeout fires long before the
reply is sent, so it observes exactly what a lost reply looks like.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from central.platform.sim.schemas import FaultSpec

__all__ = ["FaultInjector", "FaultPlan"]

Action = Literal["none", "error", "timeout", "drop"]


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to do to one request."""

    latency_s: float
    action: Action
    hang_s: float


class FaultInjector:
    """Holds the configured faults and draws from a seeded RNG per operation."""

    def __init__(self, default_hang_s: float) -> None:
        self._default_hang_s = default_hang_s
        self._specs: dict[str, FaultSpec] = {}
        self._rngs: dict[str, random.Random] = {}
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def set(self, spec: FaultSpec) -> None:
        """Configure (replace) the faults of one operation."""
        with self._lock:
            self._specs[spec.op] = spec
            self._rngs[spec.op] = random.Random(spec.seed)  # noqa: S311 — not crypto

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._specs.clear()
            self._rngs.clear()

    def specs(self) -> list[FaultSpec]:
        """The configured faults."""
        with self._lock:
            return list(self._specs.values())

    def plan(self, op: str) -> FaultPlan:
        """Decide the fate of one request of ``op`` (counts it, too)."""
        with self._lock:
            self.requests[op] += 1
            spec = self._specs.get(op)
            if spec is None:
                return FaultPlan(0.0, "none", 0.0)
            roll = self._rngs[op].random()
            action: Action = "none"
            edge = spec.error_rate
            if roll < edge:
                action = "error"
            elif roll < (edge := edge + spec.timeout_rate):
                action = "timeout"
            elif roll < edge + spec.drop_reply_after_commit_rate:
                action = "drop"
            if action != "none":
                self.injected[f"{op}:{action}"] += 1
            hang = spec.hang_ms / 1000 if spec.hang_ms else self._default_hang_s
            return FaultPlan(spec.latency_ms / 1000, action, hang)
