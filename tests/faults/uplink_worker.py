"""A stand-in for ``ykt edge`` in kill -9 tests: the same config model and uplink, no hardware.

    python uplink_worker.py EDGE_TOML enqueue N PATIENT_ID
        start the Uplink exactly as ``edge.daemon.run`` does (EdgeConfig, Uplink(cfg.uplink,
        …)), submit N ``pay.create`` top-ups with fixed ids, print ``ENQUEUED N`` once all N
        are durable in the outbox, then keep running until killed.
    python uplink_worker.py EDGE_TOML drain N PATIENT_ID
        start again on the same outbox and wait for every one of the N ids to end; print one
        JSON line ``{"results": {id: state}}`` and exit 0.

Not a test module (no ``test_`` prefix); the tests start it as a real process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from edge.config import EdgeConfig
from edge.uplink.client import Uplink
from edge.uplink.errors import OutcomeUnknown, PlatformUnavailable
from yikatong.common.config import load_config


def request_id(i: int) -> str:
    """The fixed id of request ``i`` (the idempotency key at central and the platform)."""
    return f"edgekill{i:024d}"


def body(patient_id: str, i: int) -> dict[str, Any]:
    """Top-up ``i``: 1 yuan each, so the balance tells how often money moved."""
    return {"patient_id": patient_id, "purpose": "topup", "refs": [], "amount_fen": 100,
            "method": "cash"}


async def enqueue(uplink: Uplink, n: int, patient_id: str) -> None:
    tasks = [asyncio.create_task(uplink.request("pay.create", body(patient_id, i),
                                                id=request_id(i), timeout=300))
             for i in range(n)]
    # request() writes its entry before its first await; poll the outbox, not a task.
    while uplink.outbox.count() < n:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    print(f"ENQUEUED {n}", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(3600)  # the test kills us


async def drain(uplink: Uplink, n: int, patient_id: str) -> None:
    results: dict[str, Any] = {}

    async def one(i: int) -> None:
        rid = request_id(i)
        while True:
            try:
                if uplink.outbox.get(rid) is None:
                    raise RuntimeError(f"{rid} missing from the outbox after restart")
                res = await uplink.result_of(rid, wait_s=60)
                results[rid] = res.state
                return
            except (OutcomeUnknown, PlatformUnavailable):
                # Not final yet: ask again under the same id.
                try:
                    res = await uplink.request("pay.create", body(patient_id, i), id=rid,
                                               timeout=60)
                    results[rid] = res.state
                    return
                except (OutcomeUnknown, PlatformUnavailable):
                    await asyncio.sleep(0.5)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)
    print(json.dumps({"results": results}), flush=True)


async def main(argv: list[str]) -> int:
    path, mode, n, patient_id = argv[1], argv[2], int(argv[3]), argv[4]
    cfg = load_config(path, EdgeConfig)
    uplink = Uplink(cfg.uplink, cfg.device.id, role=cfg.device.role, version="0.0.0-test")
    await uplink.start()
    try:
        await (enqueue if mode == "enqueue" else drain)(uplink, n, patient_id)
    finally:
        await uplink.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))
