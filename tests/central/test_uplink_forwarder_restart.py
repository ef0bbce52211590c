"""The edge daemon is killed with SIGKILL mid-payment; after restart the outcome is recovered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from edge.uplink.client import Uplink
from edge.uplink.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from edge.uplink.client import Uplink
    from edge.uplink.config import UplinkConfig
    async def main():
        cfg = UplinkConfig.model_validate_json(sys.argv[1])
        up = Uplink(cfg, "kiosk-201", role="kiosk", version="1")
        await up.start()
        await up.wait_connected(10)
        body = {"patient_id": "P001", "purpose": "topup", "refs": [], "amount_fen": 5000,
                "method": "cash"}
        await up.request("pay.create", body, timeout=60, id="edgecrash1")
    asyncio.run(main())
    """
)


async def test_edge_killed_after_publish_recovers_the_stored_outcome(
    broker_site, forwarder, fake_platform, tmp_path
) -> None:
    fake_platform.script("pay.create", "slow")  # the reply comes after the device is dead
    probe = broker_site.device("kiosk-201", tmp_path)  # registers; built to get the config
    cfg = probe.config
    probe.outbox.close()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, cfg.model_dump_json(), cwd=ROOT
    )
    try:
        seen = Outbox(cfg.outbox_path)
        try:
            for _ in range(200):
                e = seen.get("edgecrash1")
                if e is not None and e.attempts >= 1:
                    break
                await asyncio.sleep(0.02)
            assert e is not None and e.attempts >= 1
        finally:
            seen.close()
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # the daemon comes back: the pending entry is resent with the same id
    up = Uplink(cfg, "kiosk-201", role="kiosk", version="1")
    await up.start()
    try:
        result = await up.result_of("edgecrash1", wait_s=15)
    finally:
        await up.stop()
    assert result["state"] == "approved" and result["amount_fen"] == 5000
    assert fake_platform.effects["edgecrash1"] == 1
    assert up.boot_seq == 2
