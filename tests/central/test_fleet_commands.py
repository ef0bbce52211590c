"""Signed commands (docs/fleet-trust.md "Signed commands"): stored, signed, published on
``down/cmd``; results from ``up/result`` move them on through the forwarder, never back out
of a final state and never from another device; past ``exp`` they expire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fleet_support import FleetRig, RawClient, rig_fixture  # noqa: F401
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.fleet import FleetError
from yikatong.protocol.envelope import parse_ts
from yikatong.protocol.fleet import Command
from yikatong.protocol.signing import public_key_from_pem, verify

# The store-level guarantees (seqs, versions, states) on both engines.
pytestmark = BOTH_ENGINES


async def result(rig: FleetRig, c: RawClient, dev: str, command_id: str | None, state: str,
                 **kw: Any) -> None:
    body: dict[str, Any] = {"state": state, **kw}
    if command_id is not None:
        body["command_id"] = command_id
    await rig.send(c, dev, "result", "cmd.result", body)


async def state_of(rig: FleetRig, command_id: str, state: str) -> dict[str, Any]:
    await wait_until_async(lambda: (rig.fleet.command(command_id) or {}).get("state") == state,
                           10, what=f"command {state}")
    found = rig.fleet.command(command_id)
    assert found is not None
    return found


async def test_a_command_is_signed_sent_and_followed_to_its_end(rig: FleetRig) -> None:
    ident = await rig.enroll("SN-CMD-1", "kiosk-m01")
    c = await rig.online(ident)
    config = await rig.next_on(c, "/down/config")
    sent = await rig.fleet.send_command("kiosk-m01", "service.restart", {"service": "edge"},
                                        actor="tech-wang")
    assert sent["state"] == "queued" and sent["created_by"] == "tech-wang"
    assert sent["args"] == {"service": "edge"} and sent["output"] == {}
    env = await rig.next_on(c, "/down/cmd")
    verify(env, public_key_from_pem(rig.fleet.signer.public_pem))
    assert env.type == "cmd" and env.dev == "kiosk-m01"
    assert env.seq is not None and config.seq is not None and env.seq > config.seq
    assert env.exp is not None
    left = parse_ts(env.exp) - datetime.now(UTC)
    assert timedelta(seconds=590) < left <= timedelta(seconds=600)
    cmd = Command.model_validate(env.body)
    assert cmd.command_id == sent["command_id"] and cmd.name == "service.restart"
    cid = cmd.command_id

    waiter = asyncio.create_task(rig.fleet.wait_command(cid, 20))
    await result(rig, c, "kiosk-m01", cid, "delivered", seq=env.seq)
    await state_of(rig, cid, "delivered")
    await result(rig, c, "kiosk-m01", cid, "waiting", message="a card session is open")
    await state_of(rig, cid, "waiting")
    await result(rig, c, "kiosk-m01", cid, "in_progress")
    await state_of(rig, cid, "in_progress")
    assert not waiter.done()
    await result(rig, c, "kiosk-m01", cid, "succeeded", output={"restarted": "edge"})
    done = await asyncio.wait_for(waiter, 10)
    assert done["state"] == "succeeded" and done["output"] == {"restarted": "edge"}
    # Late or repeated results never move it back.
    await result(rig, c, "kiosk-m01", cid, "delivered")
    await result(rig, c, "kiosk-m01", cid, "failed", code="late")
    await result(rig, c, "kiosk-m01", "f" * 32, "succeeded")  # marks the end of the batch
    await wait_until_async(lambda: rig.audits("fleet.cmd_result_unknown"), 10)
    assert rig.fleet.command(cid)["state"] == "succeeded"  # type: ignore[index]
    assert [x["command_id"] for x in rig.fleet.commands("kiosk-m01")] == [cid]
    assert rig.fleet.device_detail("kiosk-m01")["commands"][0]["state"] == "succeeded"
    assert rig.audits("fleet.cmd_send")[0]["actor"] == "tech-wang"
    assert rig.audits("fleet.cmd_succeeded")[0]["command_id"] == cid


async def test_results_from_another_device_are_refused_and_audited(rig: FleetRig) -> None:
    a = await rig.online(await rig.enroll("SN-CMD-A", "kiosk-ma1"))
    b = await rig.online(await rig.enroll("SN-CMD-B", "kiosk-mb1"))
    sent = await rig.fleet.send_command("kiosk-ma1", "reboot", {}, actor="tech")
    cid = sent["command_id"]
    # B claims A's command succeeded, on its own topic (the broker lets it publish there).
    await result(rig, b, "kiosk-mb1", cid, "succeeded")
    await wait_until_async(lambda: rig.audits("fleet.cmd_result_wrong_device"), 10)
    [audit] = rig.audits("fleet.cmd_result_wrong_device")
    assert (audit["dev"], audit["owner"], audit["command_id"]) == ("kiosk-mb1", "kiosk-ma1", cid)
    assert rig.fleet.command(cid)["state"] == "queued"  # type: ignore[index]
    # A result the device could not tie to a command is audited too.
    await result(rig, b, "kiosk-mb1", None, "rejected", code="bad_signature")
    await wait_until_async(lambda: rig.audits("fleet.cmd_result_unreadable"), 10)
    # A's own result counts.
    await result(rig, a, "kiosk-ma1", cid, "rejected", code="replay")
    done = await state_of(rig, cid, "rejected")
    assert done["code"] == "replay"


async def test_commands_expire_without_a_final_state(rig: FleetRig) -> None:
    c = await rig.online(await rig.enroll("SN-CMD-E", "kiosk-me1"))
    sent = await rig.fleet.send_command("kiosk-me1", "printer.test", {}, actor="tech",
                                        exp_s=10)
    cid = sent["command_id"]
    await result(rig, c, "kiosk-me1", cid, "waiting")
    await state_of(rig, cid, "waiting")
    # Not final after a short wait: returned as it stands.
    assert (await rig.fleet.wait_command(cid, 0.3))["state"] == "waiting"
    rig.clock.advance(11)
    done = await rig.fleet.wait_command(cid, 10)
    assert done["state"] == "expired" and done["code"] == "expired"
    await result(rig, c, "kiosk-me1", cid, "succeeded")
    await result(rig, c, "kiosk-me1", "e" * 32, "succeeded")
    await wait_until_async(lambda: rig.audits("fleet.cmd_result_unknown"), 10)
    assert rig.fleet.command(cid)["state"] == "expired"  # type: ignore[index]
    assert rig.audits("fleet.cmd_expired")[0]["command_id"] == cid


async def test_invalid_commands_and_targets_are_refused(rig: FleetRig) -> None:
    await rig.enroll("SN-CMD-V", "kiosk-mv1")
    cases: list[tuple[str, str, Any, float | None, int]] = [
        ("kiosk-mv1", "format.disk", {}, None, 422),
        ("kiosk-mv1", "service.restart", {}, None, 422),
        ("kiosk-mv1", "service.restart", {"service": "sshd"}, None, 422),
        ("kiosk-mv1", "logs.collect", {"lines": 0}, None, 422),
        ("kiosk-mv1", "reboot", {"now": 1}, None, 422),
        ("kiosk-mv1", "reboot", "x", None, 422),
        ("kiosk-mv1", "reboot", {}, 5, 422),
        ("kiosk-none", "reboot", {}, None, 404),
    ]
    for dev, name, args, exp_s, status in cases:
        with pytest.raises(FleetError) as e:
            await rig.fleet.send_command(dev, name, args, actor="tech", exp_s=exp_s)
        assert e.value.status == status, (name, args)
    assert rig.fleet.commands() == []
    with pytest.raises(FleetError) as e:
        await rig.fleet.wait_command("0" * 32, 1)
    assert e.value.status == 404
    assert rig.fleet.command("0" * 32) is None

    await rig.fleet.disable("kiosk-mv1", actor="tech")
    with pytest.raises(FleetError) as e:
        await rig.fleet.send_command("kiosk-mv1", "reboot", {}, actor="tech")
    assert (e.value.status, e.value.code) == (409, "device_disabled")
    assert rig.audits("fleet.disable")[0]["actor"] == "tech"

    await rig.enroll("SN-CMD-W", "kiosk-mw1")
    assert rig.fleet.publisher is not None
    await rig.fleet.publisher.stop()  # central lost the device broker
    with pytest.raises(FleetError) as e:
        await rig.fleet.send_command("kiosk-mw1", "reboot", {}, actor="tech")
    assert (e.value.status, e.value.code) == (503, "broker_unavailable")
    assert rig.fleet.commands() == []
