"""The single path every operation takes: faults, then the service in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from central.platform.sim.errors import SimError
from central.platform.sim.faults import FaultInjector
from central.platform.sim.schemas import ErrorOut
from central.platform.sim.service import Outcome, PlatformService

__all__ = ["ERRORS", "IdempotencyKey", "OpRunner"]

#: OpenAPI error responses shared by every operation.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid request"},
    404: {"model": ErrorOut, "description": "unknown patient, slot, payment …"},
    409: {"model": ErrorOut, "description": "idempotency key reused with another body"},
    422: {"model": ErrorOut, "description": "business refusal; nothing happened"},
    503: {"model": ErrorOut, "description": "unavailable; nothing happened"},
}

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=128,
           description="Required on mutating operations; replays return the stored outcome"),
]


class OpRunner:
    """Applies the configured fault plan around one service call."""

    def __init__(self, service: PlatformService, faults: FaultInjector) -> None:
        self.service = service
        self.faults = faults

    async def run(
        self,
        op: str,
        fn: Callable[[], Outcome],
        *,
        key: str | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> JSONResponse:
        """Run ``fn`` as operation ``op`` and render its outcome as JSON."""
        plan = self.faults.plan(op)
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        if plan.action == "error":
            return _error(SimError(503, "unavailable", f"{op} unavailable (injected fault)",
                                   "平台暂时不可用（故障注入）"))
        if plan.action == "timeout":
            # Hold the request past any client timeout, and then do nothing at all.
            await asyncio.sleep(plan.hang_s)
            return _error(SimError(503, "unavailable", f"{op} timed out (injected fault)",
                                   "平台处理超时（故障注入）"))
        try:
            status, payload = await run_in_threadpool(
                self.service.execute, op, fn, key=key, fingerprint=fingerprint)
        except SimError as exc:
            status, payload = exc.status, exc.body()
        if plan.action == "drop":
            # Committed; now withhold the reply until the client has given up.
            await asyncio.sleep(plan.hang_s)
        return JSONResponse(payload, status_code=status)


def _error(exc: SimError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers={"Retry-After": "1"})
