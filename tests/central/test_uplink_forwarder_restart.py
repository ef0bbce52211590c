"""The edge daemon is killed with SIGKILL mid-payment; after restart the outcome is recovered.

Central's store on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from pg_support import BOTH_ENGINES
from support import wait_until_async

from edge.uplink.client import Uplink
from edge.uplink.outbox import Outbox

pytestmark = BOTH_ENGINES

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
            await wait_until_async(
                lambda: (e := seen.get("edgecrash1")) is not None and e.attempts >= 1, 4,
                what="the child's first send of edgecrash1")
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
    assert result.state == "approved" and result.amount_fen == 5000
    assert fake_platform.effects["edgecrash1"] == 1
    assert up.boot_seq == 2


async def test_central_restarted_during_the_platform_call_lists_then_resolves_the_payment(
    broker_site, fake_platform, tmp_path, central_db
) -> None:
    from central.forwarder import Forwarder
    from central.payments import Payments
    from central.store import open_store

    body = {"patient_id": "P001", "purpose": "topup", "refs": [], "amount_fen": 5000,
            "method": "wechat", "auth_code": "134567890123456789"}
    pay1 = Payments(broker_site.store, fake_platform)
    settings = broker_site.forwarder_settings(client_id="central-r")  # lease_s stays 120 s
    fwd1 = Forwarder(settings, broker_site.store, fake_platform, hooks=pay1)
    fake_platform._pending_next = True  # the payer has not confirmed on the phone yet
    fake_platform.script("pay.create", "commit_then_hang")  # charged; central dies now
    up = broker_site.device("kiosk-202", tmp_path)
    await fwd1.start()
    await up.start()
    store2 = fwd2 = None
    try:
        assert await fwd1.wait_connected(10) and await up.wait_connected(10)
        asked = asyncio.create_task(up.request("pay.create", body, timeout=60, id="restart001"))
        await wait_until_async(lambda: fake_platform.effects["restart001"] == 1, 4,
                               what="the payment committed at the platform")
        await fwd1.stop()  # central gone mid-call: nothing answered, nothing stored
        assert broker_site.store.request_state("restart001") == "received"

        store2 = open_store(central_db(tmp_path))  # the restarted central
        pay2 = Payments(store2, fake_platform)
        [row] = pay2.unresolved()
        assert (row.request_id, row.state, row.payment_id) == ("restart001", "created", None)
        fwd2 = Forwarder(settings, store2, fake_platform, hooks=pay2)
        await fwd2.start()
        t0 = asyncio.get_running_loop().time()
        result = await asyncio.wait_for(asked, 20)
        # its own earlier boot's row is taken over at once, not after the 120 s lease
        assert asyncio.get_running_loop().time() - t0 < 15
        assert result.state == "pending"
        assert pay2.get("restart001").payment_id == result.payment_id
        fake_platform.payments[result.payment_id]["state"] = "approved"
        assert await pay2.resolve_once() == 0
        assert pay2.get("restart001").state == "approved"
        assert fake_platform.effects["restart001"] == 1  # charged once
        assert store2.verify_chain() == (True, None)
    finally:
        await up.stop()
        await fwd1.stop()
        if fwd2 is not None:
            await fwd2.stop()
        if store2 is not None:
            store2.close()
