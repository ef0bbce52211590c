"""Signed desired config (docs/fleet-trust.md "Signed desired config (the shadow)"): layers
merged per device, versioned, signed with central's key, retained on ``down/config``; what
devices report back and whether they run what central wants."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fleet_support import FleetRig, RawClient, rig_fixture  # noqa: F401
from pg_support import BOTH_ENGINES
from support import wait_until_async

from central.fleet import FleetError
from yikatong.protocol.envelope import Envelope
from yikatong.protocol.fleet import ConfigDesired
from yikatong.protocol.signing import public_key_from_pem, verify

# The store-level guarantees (seqs, versions, states) on both engines.
pytestmark = BOTH_ENGINES


def check(rig: FleetRig, env: Envelope, dev: str) -> ConfigDesired:
    """What a device checks first: central's signature, its own id, seq and exp present."""
    verify(env, public_key_from_pem(rig.fleet.signer.public_pem))
    assert env.type == "config.desired" and env.dev == dev
    assert env.seq is not None and env.exp is not None
    return ConfigDesired.model_validate(env.body)


async def config_v(rig: FleetRig, c: RawClient, dev: str, version: int) -> Envelope:
    """The next ``config.desired`` of ``version`` that ``c`` gets (earlier copies skipped)."""
    while True:
        env = await rig.next_on(c, "/down/config")
        if check(rig, env, dev).version == version:
            return env


async def report(rig: FleetRig, c: RawClient, dev: str, cfg: ConfigDesired,
                 status: str = "applied", **kw: Any) -> None:
    body = {"version": cfg.version, "hash": cfg.hash, "status": status,
            "running_version": cfg.version if status == "applied" else cfg.version - 1,
            **kw}
    if status == "applied":
        body["running_hash"] = cfg.hash
    await rig.send(c, dev, "result", "config.report", body)


async def test_layers_are_merged_signed_and_published_retained(rig: FleetRig) -> None:
    ident = await rig.enroll("SN-CFG-1", "kiosk-c01", site="门诊楼")
    c = await rig.online(ident)
    first = check(rig, await rig.next_on(c, "/down/config"), "kiosk-c01")
    assert first.version == 1 and first.settings.model_dump(exclude_none=True) == {}

    out = await rig.fleet.set_config("site", "门诊楼", {
        "telemetry_interval_s": 60, "ui": {"language": "zh", "voice": True}},
        actor="tech-wang")
    assert out["settings"] == {"telemetry_interval_s": 60, "ui": {"language": "zh",
                                                                   "voice": True}}
    [d] = out["devices"]
    assert d["id"] == "kiosk-c01" and d["version"] == 2
    env = await config_v(rig, c, "kiosk-c01", 2)
    cfg = check(rig, env, "kiosk-c01")
    assert (cfg.version, cfg.hash) == (2, d["hash"])
    seqs = [env.seq]

    # Role defaults, then the device's own, each section merged key by key.
    await rig.fleet.set_config("role", "kiosk", {"ui": {"idle_timeout_s": 90},
                                                 "telemetry_interval_s": 45},
                               actor="tech-wang")
    env = await config_v(rig, c, "kiosk-c01", 3)
    seqs.append(env.seq)
    await rig.fleet.set_config("device", "kiosk-c01", {"ui": {"language": "en"}},
                               actor="tech-li")
    env = await config_v(rig, c, "kiosk-c01", 4)
    seqs.append(env.seq)
    cfg = check(rig, env, "kiosk-c01")
    assert cfg.version == 4
    assert cfg.settings.model_dump(exclude_none=True) == {
        "telemetry_interval_s": 45, "ui": {"language": "en", "voice": True,
                                           "idle_timeout_s": 90}}
    assert seqs == sorted(seqs) and len(set(seqs)) == 3  # one counter, always growing

    # The same value again changes nothing: no new version, nothing sent.
    again = await rig.fleet.set_config("device", "kiosk-c01", {"ui": {"language": "en"}},
                                       actor="tech-li")
    assert again["devices"][0]["version"] == 4
    assert await asyncio.to_thread(c.get, 0.5) is None
    # None removes a setting from the layer; replace swaps the whole layer.
    out = await rig.fleet.set_config("device", "kiosk-c01", {"ui": {"language": None}},
                                     actor="tech-li")
    assert out["settings"] == {} and out["devices"][0]["version"] == 5
    out = await rig.fleet.set_config("site", "门诊楼", {"log_level": "debug"},
                                     actor="tech-wang", replace=True)
    assert out["settings"] == {"log_level": "debug"}
    assert rig.fleet.get_config("site", "门诊楼")["settings"] == {"log_level": "debug"}
    assert rig.fleet.get_config("site", "急诊楼")["settings"] == {}

    # A device connecting later gets the current one, retained.
    late = rig.device(ident, client_id="kiosk-c01")
    assert await asyncio.to_thread(late.connect)
    await asyncio.to_thread(late.subscribe, "ykt/v1/dev/kiosk-c01/down/config")
    msg = await asyncio.to_thread(late.get, 5)
    assert msg is not None and msg.retain
    assert rig.fleet.device_detail("kiosk-c01")["desired"]["version"] == 6
    actions = [e.action for e in rig.store.audit_entries()]
    assert actions.count("fleet.config_set") == 6
    assert rig.audits("fleet.config_set")[0]["actor"] == "tech-wang"


async def test_invalid_settings_and_targets_are_refused(rig: FleetRig) -> None:
    await rig.enroll("SN-CFG-2", "kiosk-c02")
    bad: list[Any] = [{"telemetry_interval_s": 1}, {"printer": {"bogus": 1}},
                      {"broker": {"host": "evil.example"}}, {"ui": {"language": "fr"}},
                      ["not", "a", "dict"], {"log_level": 3}]
    for settings in bad:
        with pytest.raises(FleetError) as e:
            await rig.fleet.set_config("device", "kiosk-c02", settings, actor="tech")
        assert (e.value.status, e.value.code) == (422, "invalid_settings"), settings
    with pytest.raises(FleetError) as e:
        await rig.fleet.set_config("fleet", "x", {}, actor="tech")
    assert e.value.status == 422
    with pytest.raises(FleetError) as e:
        await rig.fleet.set_config("role", "robot", {}, actor="tech")
    assert e.value.status == 422
    with pytest.raises(FleetError) as e:
        await rig.fleet.set_config("device", "kiosk-nope", {}, actor="tech")
    assert e.value.status == 404
    with pytest.raises(FleetError) as e:
        rig.fleet.get_config("device", "kiosk-nope")
    assert e.value.status == 404
    # Nothing was stored or audited.
    assert rig.fleet.get_config("device", "kiosk-c02")["settings"] == {}
    assert rig.audits("fleet.config_set") == []


async def test_reports_decide_in_sync_pending_and_failed(rig: FleetRig) -> None:
    ident = await rig.enroll("SN-CFG-3", "kiosk-c03", site="急诊楼")
    c = await rig.online(ident)
    cfg = check(rig, await rig.next_on(c, "/down/config"), "kiosk-c03")
    assert rig.fleet.device_detail("kiosk-c03")["reported"] is None
    assert rig.fleet.devices_overview()[0]["config_state"] == "pending"

    await report(rig, c, "kiosk-c03", cfg)
    await wait_until_async(lambda: rig.fleet.device_detail("kiosk-c03")["in_sync"], 10)
    d = rig.fleet.device_detail("kiosk-c03")
    assert d["reported"]["status"] == "applied" and d["reported"]["hash"] == cfg.hash
    assert d["reported"]["version"] == 1 and d["reported"]["at"].endswith("Z")
    [row] = rig.fleet.devices_overview()
    assert (row["desired_version"], row["reported_version"], row["config_state"]) == (
        1, 1, "in_sync")
    assert rig.fleet.sites_overview() == [{"site": "急诊楼", "devices": 1, "in_sync": 1,
                                           "pending": 0, "failed": 0}]

    await rig.fleet.set_config("device", "kiosk-c03", {"card": {"poll_interval_s": 0.5}},
                               actor="tech")
    new = check(rig, await config_v(rig, c, "kiosk-c03", 2), "kiosk-c03")
    assert rig.fleet.devices_overview()[0]["config_state"] == "pending"
    await report(rig, c, "kiosk-c03", new, "failed", code="card_busy",
                 message="reader refused the poll interval", running_hash=cfg.hash)
    await wait_until_async(
        lambda: rig.fleet.devices_overview()[0]["config_state"] == "failed", 10)
    d = rig.fleet.device_detail("kiosk-c03")
    assert d["reported"]["code"] == "card_busy" and not d["in_sync"]
    assert rig.fleet.sites_overview()[0]["failed"] == 1
    assert rig.audits("fleet.config_failed")[0]["code"] == "card_busy"

    # An invalid report is audited and dropped.
    await rig.send(c, "kiosk-c03", "result", "config.report", {"version": -1})
    await wait_until_async(lambda: rig.audits("fleet.result_invalid"), 10)
    assert rig.fleet.device_detail("kiosk-c03")["reported"]["code"] == "card_busy"


async def test_a_device_coming_online_out_of_sync_gets_a_freshly_signed_config(
        rig: FleetRig) -> None:
    ident = await rig.enroll("SN-CFG-4", "kiosk-c04")
    c = await rig.online(ident)
    first = await rig.next_on(c, "/down/config")
    cfg = check(rig, first, "kiosk-c04")
    # The birth found no report yet: a newer copy of the same config went out.
    resent = await rig.next_on(c, "/down/config")
    assert resent.seq is not None and first.seq is not None and resent.seq > first.seq
    assert check(rig, resent, "kiosk-c04").hash == cfg.hash
    await report(rig, c, "kiosk-c04", cfg)
    await wait_until_async(lambda: rig.fleet.device_detail("kiosk-c04")["in_sync"], 10)
    await asyncio.to_thread(c.close)

    # In sync: a new birth sends nothing new (the retained copy comes with the subscription).
    c2 = await rig.online(ident, boot_seq=2)
    retained = await rig.next_on(c2, "/down/config")
    assert retained.seq == resent.seq
    assert await asyncio.to_thread(c2.get, 0.5) is None
    await asyncio.to_thread(c2.close)

    # Out of sync (it reports running an older hash): re-signed on its next birth.
    await rig.fleet.set_config("device", "kiosk-c04", {"log_level": "warning"}, actor="tech")
    desired = rig.fleet.device_detail("kiosk-c04")["desired"]
    c3 = await rig.online(ident, boot_seq=3)
    seen = [await rig.next_on(c3, "/down/config"), await rig.next_on(c3, "/down/config")]
    assert [e.body["hash"] for e in seen] == [desired["hash"]] * 2
    assert seen[1].seq is not None and seen[0].seq is not None and seen[1].seq > seen[0].seq

    # push re-signs and re-publishes without a new version.
    pushed = await rig.fleet.push_config("role", "kiosk", actor="tech")
    assert pushed["devices"] == [{"id": "kiosk-c04", "version": desired["version"],
                                  "hash": desired["hash"]}]
    env = await rig.next_on(c3, "/down/config")
    assert env.seq is not None and env.seq > seen[1].seq
    assert rig.audits("fleet.config_push")[0]["actor"] == "tech"
