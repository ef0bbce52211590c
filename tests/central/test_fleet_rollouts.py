"""Staged rollouts (docs/updates.md "Rollouts", central/fleet/rollouts.py) over simulated
devices on the real brokers.

Each simulated device is a paho client with its own certificate (the fleet rig,
tests/fleet_support.py). It answers a signed ``update.install`` the way a device does: checks
central's signature, fetches ``manifest.json`` from central's bundle API with the download
token from the command and checks it against ``manifest_sha256``, then reports
``cmd.result`` and a sequence of ``update.status`` on ``up/result`` through the forwarder —
ending ``committed``, or ``failed`` / ``rolled_back`` / a rejected command as each test
says. The scheduler's rounds are driven by the tests (``[fleet] rollout_scheduler = false``
and :meth:`RolloutService.tick`) so that which device starts when is exact; one test runs
the real background scheduler.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundle_support import small_bundle_tar
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import FleetRig, Identity, RawClient, start_fleet_rig, stop_fleet_rig
from pg_support import BOTH_ENGINES
from support import Broker, wait_until_async

from central.dashboard.app import create_dashboard
from central.dashboard.auth import StaffAccounts
from central.fleet import FleetError
from central.fleet.bundles import bundles_of
from yikatong.mqtt.session import state_payload
from yikatong.protocol.envelope import decode
from yikatong.protocol.fleet import Command
from yikatong.protocol.signing import public_key_from_pem, verify

PUBLIC_URL = "http://central.test:8800"
ADMIN_TOKEN = "rollout-admin-token-for-tests"
RELEASE_KEY = Ed25519PrivateKey.generate()

# The store-level guarantees (seqs, versions, states) on both engines.
pytestmark = BOTH_ENGINES

# -- bundle and rig ----------------------------------------------------------------------------


def bundle_tar(version: str, *, min_version: str = "1.0.0",
               models: tuple[str, ...] = ("*",)) -> bytes:
    """A small bundle signed with this test's release key."""
    return small_bundle_tar(version, RELEASE_KEY, min_version=min_version, models=models)


async def upload(rig: FleetRig, version: str, **kw: Any) -> str:
    """Store a bundle through central's bundle store; returns its manifest's SHA-256."""
    data = bundle_tar(version, **kw)

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    row = await bundles_of(rig.fleet).upload(version, chunks(), actor="admin-li")
    return str(row["manifest_sha256"])


@pytest.fixture(name="rig")
async def rollout_rig(tmp_path: Path, make_broker: Callable[..., Broker], central_db
                      ) -> AsyncIterator[FleetRig]:
    r = await start_fleet_rig(tmp_path, make_broker, public_url=PUBLIC_URL,
                              rollout_scheduler=False, db=central_db(tmp_path))
    try:
        yield r
    finally:
        await stop_fleet_rig(r)


@pytest.fixture(name="api")
async def api_client(rig: FleetRig) -> AsyncIterator[httpx.AsyncClient]:
    """Central's dashboard app in process: the bundle downloads and the rollout API."""
    app = create_dashboard(rig.store, rig.registry, ADMIN_TOKEN, site_name="测试医院",
                           fleet=rig.fleet, accounts=StaffAccounts(rig.store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url=PUBLIC_URL) as client:
        yield client


# -- simulated devices -------------------------------------------------------------------------

#: What a device does with an update.install: the statuses it reports, then its cmd.result.
PLANS: dict[str, tuple[list[tuple[str, dict[str, Any]]], tuple[str, dict[str, Any]] | None]] = {
    "commit": ([("downloading", {"bytes_done": 0, "bytes_total": 40}),
                ("downloaded", {"bytes_done": 40, "bytes_total": 40}), ("verified", {}),
                ("installing", {}), ("awaiting_health", {}),
                ("committed", {"running_version": "1.5.0"})], ("succeeded", {})),
    "fail": ([("downloading", {}),
              ("failed", {"code": "hash_mismatch", "message": "wheel hash differs",
                          "running_version": "1.4.0"})],
             ("failed", {"code": "hash_mismatch"})),
    "rollback": ([("downloading", {}), ("downloaded", {}), ("verified", {}), ("installing", {}),
                  ("awaiting_health", {}),
                  ("rolled_back", {"code": "health_failed", "message": "reader not found",
                                   "running_version": "1.4.0"})],
                 ("failed", {"code": "rolled_back"})),
    "reject": ([], ("rejected", {"code": "downgrade_refused"})),
    "silent": ([], None),
}


@dataclass
class SimDevice:
    """One simulated device answering ``update.install`` (module docstring)."""

    rig: FleetRig
    api: httpx.AsyncClient
    ident: Identity
    client: RawClient
    plan: str = "commit"
    installs: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[int] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def dev(self) -> str:
        return self.ident.dev

    async def run(self) -> None:
        pub = public_key_from_pem(self.rig.fleet.signer.public_pem)
        while True:
            msg = await asyncio.to_thread(self.client.get, 0.2)
            if msg is None or not msg.topic.endswith("/down/cmd"):
                continue
            env = decode(bytes(msg.payload))
            verify(env, pub)  # central's signature, as the device checks it
            cmd = Command.model_validate(env.body)
            if cmd.name != "update.install":
                continue
            self.installs.append(dict(cmd.args))
            await self.answer(cmd)

    async def answer(self, cmd: Command) -> None:
        args = cmd.args
        statuses, final = PLANS[self.plan]
        if self.plan != "reject":
            # The URL and token of the command fetch the manifest the command names.
            path = str(args["url"]).removeprefix(PUBLIC_URL) + "/manifest.json"
            r = await self.api.get(path, headers={"Authorization": f"Bearer {args['token']}"})
            self.downloads.append(r.status_code)
            assert r.status_code == 200, r.text
            assert hashlib.sha256(r.content).hexdigest() == args["manifest_sha256"]
        if final is None:
            return
        await self.result(cmd.command_id, "delivered")
        for state, extra in statuses:
            await self.status(str(args["rollout"]), state, command_id=cmd.command_id, **extra)
        await self.result(cmd.command_id, final[0], **final[1])

    async def result(self, command_id: str, state: str, **kw: Any) -> None:
        await self.rig.send(self.client, self.dev, "result", "cmd.result",
                            {"command_id": command_id, "state": state, **kw})

    async def status(self, rollout_id: str, state: str, *, version: str = "1.5.0",
                     **kw: Any) -> None:
        await self.rig.send(self.client, self.dev, "result", "update.status",
                            {"rollout_id": rollout_id, "version": version, "state": state,
                             **kw})

    def start(self) -> SimDevice:
        self.task = asyncio.create_task(self.run(), name=f"sim-{self.dev}")
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task


async def fleet_of(rig: FleetRig, api: httpx.AsyncClient, plans: dict[str, str], *,
                   site: str = "门诊楼", online: bool = True) -> dict[str, SimDevice]:
    """Enroll one device per name (serial SN-<name>) and, if ``online``, connect it."""
    out = {}
    for name, plan in plans.items():
        ident = await rig.enroll(f"SN-{name}", name, site=site)
        client = await rig.online(ident) if online else rig.device(ident)
        out[name] = SimDevice(rig, api, ident, client, plan)
        if online:
            out[name].start()
    return out


async def stop_all(devices: dict[str, SimDevice]) -> None:
    for d in devices.values():
        await d.stop()


def rows(rig: FleetRig, rollout_id: str) -> dict[str, dict[str, Any]]:
    return {r["dev"]: r for r in rig.fleet.rollouts.detail(rollout_id)["device_rows"]}


async def states(rig: FleetRig, rollout_id: str, want: dict[str, str],
                 timeout: float = 15.0) -> dict[str, dict[str, Any]]:  # noqa: ASYNC109
    def ok() -> bool:
        now = rows(rig, rollout_id)
        return all(now[d]["state"] == s for d, s in want.items())

    await wait_until_async(ok, timeout, what=f"rollout states {want}")
    return rows(rig, rollout_id)


def sent_to(rig: FleetRig) -> list[str]:
    """Devices sent an update.install, oldest first."""
    return [c["dev"] for c in reversed(rig.fleet.commands(limit=1000))
            if c["name"] == "update.install"]


# -- tests -------------------------------------------------------------------------------------

async def test_a_staged_rollout_pauses_at_its_failure_threshold_and_resume_goes_on(
        rig: FleetRig, api: httpx.AsyncClient) -> None:
    digest = await upload(rig, "1.5.0")
    devs = await fleet_of(rig, api, {"kiosk-r01": "commit", "kiosk-r02": "fail",
                                     "kiosk-r03": "rollback", "kiosk-r04": "commit",
                                     "kiosk-r05": "commit", "kiosk-r06": "commit"})
    svc = rig.fleet.rollouts
    ro = await svc.create({"version": "1.5.0", "site": "门诊楼", "max_per_minute": 100,
                           "max_in_flight": 2, "failure_threshold": 2},
                          actor="admin-li")
    rid = ro["rollout_id"]
    assert ro["state"] == "running" and ro["manifest_sha256"] == digest
    assert ro["counts"]["queued"] == 6 and ro["created_by"] == "admin-li"
    assert rig.audits("rollout.create")[0]["actor"] == "admin-li"

    # Round 1: two in flight at most.
    assert await svc.tick() == 2
    assert sent_to(rig) == ["kiosk-r01", "kiosk-r02"]
    assert await svc.tick() == 0  # both still in flight
    now = await states(rig, rid, {"kiosk-r01": "committed", "kiosk-r02": "failed"})
    assert now["kiosk-r02"]["code"] == "hash_mismatch"
    assert now["kiosk-r01"]["running_version"] == "1.5.0"
    assert now["kiosk-r01"]["from_version"] == "1.4.0"
    assert svc.detail(rid)["state"] == "running"  # one failure of two allowed

    # Round 2: the second failure (a rollback) pauses it, with the reason.
    assert await svc.tick() == 2
    assert sent_to(rig)[2:] == ["kiosk-r03", "kiosk-r04"]
    now = await states(rig, rid, {"kiosk-r03": "rolled_back", "kiosk-r04": "committed"})
    assert now["kiosk-r03"]["code"] == "health_failed"
    paused = svc.detail(rid)
    assert paused["state"] == "paused" and paused["reason_code"] == "failure_threshold"
    assert "2 device(s) failed" in paused["reason"]
    assert rig.audits("rollout.paused")[0]["actor"] == "rollout"
    # Paused: no more commands, however many rounds pass.
    for _ in range(3):
        assert await svc.tick() == 0
    rig.clock.advance(120)
    assert await svc.tick() == 0
    assert len(sent_to(rig)) == 4
    assert devs["kiosk-r05"].installs == [] and devs["kiosk-r06"].installs == []
    assert {d: r["state"] for d, r in rows(rig, rid).items()
            if d in ("kiosk-r05", "kiosk-r06")} == {"kiosk-r05": "queued",
                                                    "kiosk-r06": "queued"}

    # Resume (failures counted afresh): the rest go, and it completes.
    resumed = await svc.resume(rid, actor="admin-li")
    assert resumed["state"] == "running" and resumed["reason"] is None
    assert await svc.tick() == 2
    await states(rig, rid, {"kiosk-r05": "committed", "kiosk-r06": "committed"})
    await svc.tick()
    done = svc.detail(rid)
    assert done["state"] == "completed" and done["finished_at"] is not None
    assert done["counts"]["committed"] == 4 and done["failed"] == 2
    # Every device was chosen once; every install carried its own device's token.
    assert sorted(sent_to(rig)) == sorted(devs)
    for d in devs.values():
        assert len(d.installs) == 1 and d.downloads == [200]
        args = d.installs[0]
        assert args["rollout"] == rid and args["version"] == "1.5.0"
        assert args["url"] == f"{PUBLIC_URL}/api/fleet/bundles/1.5.0"
        assert args["manifest_sha256"] == digest and args["allow_downgrade"] == 0
        assert f".{d.dev}." in str(args["token"])
    # The token is a credential: central's command list and audit never show it.
    assert all(c["args"]["token"] == "(token)" for c in rig.fleet.commands(limit=100))
    assert not any(str(devs["kiosk-r01"].installs[0]["token"]) in json.dumps(e.detail)
                   for e in rig.store.audit_entries())
    assert [a["actor"] for a in rig.audits("rollout.resume")] == ["admin-li"]
    await stop_all(devs)


async def test_rate_limits_offline_devices_and_the_ratio_threshold(
        rig: FleetRig, api: httpx.AsyncClient) -> None:
    await upload(rig, "1.5.0")
    devs = await fleet_of(rig, api, {f"kiosk-q0{i}": "commit" for i in range(1, 6)})
    late = await fleet_of(rig, api, {"kiosk-q09": "commit"}, online=False)
    svc = rig.fleet.rollouts
    rid = (await svc.create({"version": "1.5.0", "max_per_minute": 3, "max_in_flight": 10,
                             "failure_ratio": 0.5, "min_finished": 2},
                            actor="admin-li"))["rollout_id"]
    # At most 3 started in any 60 s, even once they are done.
    assert await svc.tick() == 3
    await states(rig, rid, {d: "committed" for d in sent_to(rig)})
    assert await svc.tick() == 0
    rig.clock.advance(30)
    assert await svc.tick() == 0
    rig.clock.advance(31)
    assert await svc.tick() == 2  # the other two online ones; kiosk-q09 is offline
    assert "kiosk-q09" not in sent_to(rig)
    await states(rig, rid, {d: "committed" for d in devs})
    rig.clock.advance(61)
    assert await svc.tick() == 0
    assert rows(rig, rid)["kiosk-q09"]["state"] == "queued"  # tried again later
    assert svc.detail(rid)["state"] == "running"

    # It comes online: started on the next round; its failure is 1 of 6 (< 50 %).
    sim = late["kiosk-q09"]
    assert await asyncio.to_thread(sim.client.connect)
    assert await asyncio.to_thread(sim.client.subscribe, "ykt/v1/dev/kiosk-q09/down/#") == 1
    await asyncio.to_thread(sim.client.publish, "ykt/v1/dev/kiosk-q09/state", state_payload(
        dev="kiosk-q09", online=True, boot_seq=1, now=datetime.now(UTC), version="1.4.0",
        role="kiosk"), retain=True)
    await wait_until_async(lambda: rig.store.device("kiosk-q09").online, 10)  # type: ignore[union-attr]
    sim.plan = "fail"
    sim.start()
    assert await svc.tick() == 1
    await states(rig, rid, {"kiosk-q09": "failed"})
    await svc.tick()
    assert svc.detail(rid)["state"] == "completed"  # 1/6 failed: under the ratio
    await stop_all({**devs, **late})


async def test_the_ratio_pauses_once_enough_have_finished(rig: FleetRig,
                                                          api: httpx.AsyncClient) -> None:
    await upload(rig, "1.5.0")
    devs = await fleet_of(rig, api, {"kiosk-p01": "fail", "kiosk-p02": "commit",
                                     "kiosk-p03": "commit", "kiosk-p04": "commit"})
    svc = rig.fleet.rollouts
    rid = (await svc.create({"version": "1.5.0", "max_per_minute": 100, "max_in_flight": 1,
                             "failure_ratio": 0.5, "min_finished": 2},
                            actor="admin-li"))["rollout_id"]
    assert await svc.tick() == 1
    await states(rig, rid, {"kiosk-p01": "failed"})
    assert svc.detail(rid)["state"] == "running"  # 1 finished: fewer than min_finished
    assert await svc.tick() == 1
    await states(rig, rid, {"kiosk-p02": "committed"})
    paused = svc.detail(rid)  # 1 of 2 = 50 %
    assert paused["state"] == "paused" and "1 of 2 finished" in paused["reason"]
    assert await svc.tick() == 0
    await stop_all(devs)


async def test_commands_that_end_badly_fail_their_device(rig: FleetRig,
                                                         api: httpx.AsyncClient) -> None:
    await upload(rig, "1.5.0")
    devs = await fleet_of(rig, api, {"kiosk-c01": "reject", "kiosk-c02": "silent"})
    svc = rig.fleet.rollouts
    rid = (await svc.create({"version": "1.5.0", "max_per_minute": 100,
                             "failure_threshold": 5}, actor="admin-li"))["rollout_id"]
    assert await svc.tick() == 2
    await wait_until_async(lambda: (rig.fleet.commands("kiosk-c01")[0]["state"]
                                    == "rejected"), 10)
    # The device's own status may be a moment behind its command: a grace period first.
    await svc.tick()
    assert rows(rig, rid)["kiosk-c01"]["state"] == "sent"
    rig.clock.advance(11)
    await svc.tick()
    now = rows(rig, rid)
    assert now["kiosk-c01"]["state"] == "failed"
    assert now["kiosk-c01"]["code"] == "downgrade_refused"
    assert now["kiosk-c02"]["state"] == "sent"
    # The silent one's command expires: that fails it too.
    rig.clock.advance(rig.fleet.section.rollout_command_exp_s + 1)
    assert await rig.fleet.expire_due() == 1
    await svc.tick()
    now = rows(rig, rid)
    assert now["kiosk-c02"]["state"] == "failed" and now["kiosk-c02"]["code"] == "expired"
    assert svc.detail(rid)["state"] == "completed"
    assert {a["dev"] for a in rig.audits("rollout.device_failed")} == {"kiosk-c01",
                                                                       "kiosk-c02"}
    await stop_all(devs)


async def test_statuses_are_refused_from_outsiders_and_never_go_back(
        rig: FleetRig, api: httpx.AsyncClient) -> None:
    await upload(rig, "1.5.0")
    devs = await fleet_of(rig, api, {"kiosk-s01": "silent", "kiosk-s02": "silent",
                                     "kiosk-s03": "silent"}, site="住院部")
    outsider = (await fleet_of(rig, api, {"kiosk-s09": "silent"}, site="门诊楼"))["kiosk-s09"]
    svc = rig.fleet.rollouts
    rid = (await svc.create({"version": "1.5.0", "site": "住院部", "max_in_flight": 1,
                             "failure_threshold": 3}, actor="admin-li"))["rollout_id"]
    assert await svc.tick() == 1
    first = devs["kiosk-s01"]
    await wait_until_async(lambda: first.installs, 10)
    cid = rig.fleet.commands("kiosk-s01")[0]["command_id"]

    # A device outside the rollout, one queued and not sent, a wrong version, another
    # command id: each refused and audited, nothing moves.
    await outsider.status(rid, "committed")
    await devs["kiosk-s02"].status(rid, "committed")
    await first.status(rid, "committed", version="1.6.0")
    await first.status(rid, "committed", command_id="f" * 32)
    await first.status("0" * 32, "committed")
    await wait_until_async(lambda: len(rig.audits("rollout.status_refused")) == 5, 10)
    why = {(a["dev"], a["why"]) for a in rig.audits("rollout.status_refused")}
    assert why == {("kiosk-s09", "not_in_rollout"), ("kiosk-s02", "not_started"),
                   ("kiosk-s01", "wrong_version"), ("kiosk-s01", "wrong_command"),
                   ("kiosk-s01", "not_in_rollout")}
    assert rows(rig, rid)["kiosk-s01"]["state"] == "sent"
    assert rows(rig, rid)["kiosk-s02"]["state"] == "queued"

    # Forward only: a late "downloading" after "installing" changes nothing…
    await first.status(rid, "downloading", command_id=cid, bytes_done=10, bytes_total=40)
    await states(rig, rid, {"kiosk-s01": "downloading"})
    await first.status(rid, "installing", command_id=cid)
    await states(rig, rid, {"kiosk-s01": "installing"})
    await first.status(rid, "downloaded")
    await first.status(rid, "committed", running_version="1.5.0")
    await states(rig, rid, {"kiosk-s01": "committed"})
    # …and never out of a final state.
    await first.status(rid, "failed", code="late")
    await first.status(rid, "rolled_back")
    await outsider.status(rid, "failed")  # marks the end of the batch
    await wait_until_async(lambda: len(rig.audits("rollout.status_refused")) == 6, 10)
    row = rows(rig, rid)["kiosk-s01"]
    assert row["state"] == "committed" and row["code"] is None
    assert row["bytes_done"] == 10 and row["bytes_total"] == 40
    assert [a["dev"] for a in rig.audits("rollout.device_committed")] == ["kiosk-s01"]
    await stop_all({**devs, "kiosk-s09": outsider})


async def test_creation_checks_and_skips(rig: FleetRig, api: httpx.AsyncClient) -> None:
    svc = rig.fleet.rollouts
    await fleet_of(rig, api, {"kiosk-k01": "silent", "kiosk-k02": "silent",
                              "kiosk-k03": "silent", "kiosk-k04": "silent"})
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"version": "1.5.0"}, 404, "unknown_bundle"),
        ({"version": "not-a-version"}, 422, "invalid_rollout"),
        ({"version": "1.5.0", "max_in_flight": 0}, 422, "invalid_rollout"),
        ({"version": "1.5.0", "devices": ["kiosk-none"]}, 404, "unknown_device"),
        ({"version": "1.5.0", "devices": ["kiosk-k01", "kiosk-k01"]}, 422, "invalid_rollout"),
        ({"version": "1.5.0", "start_at": "tomorrow"}, 422, "invalid_rollout"),
    ]
    for spec, status, code in cases:
        if code != "unknown_bundle" and not bundles_of(rig.fleet).get("1.5.0"):
            await upload(rig, "1.5.0")
        with pytest.raises(FleetError) as e:
            await svc.create(spec, actor="admin-li")
        assert (e.value.status, e.value.code) == (status, code), spec
    await upload(rig, "1.4.0", min_version="1.0.0")
    await upload(rig, "2.0.0", min_version="1.4.5")
    await upload(rig, "1.6.0", models=("YKT-C9",))
    # kiosk-k02 runs 1.5.0 already; kiosk-k03 runs 1.6.0; kiosk-k04 is disabled.
    for dev, version in (("kiosk-k02", "1.5.0"), ("kiosk-k03", "1.6.0")):
        c = rig.clients[[x.client_id for x in rig.clients].index(dev)]
        await asyncio.to_thread(c.publish, f"ykt/v1/dev/{dev}/state", state_payload(
            dev=dev, online=True, boot_seq=2, now=datetime.now(UTC), version=version,
            role="kiosk"), retain=True)
        await wait_until_async(lambda d=dev, v=version: rig.store.device(d).version == v, 10)  # type: ignore[union-attr,misc]
    await rig.fleet.disable("kiosk-k04", actor="tech-wang")
    ro = await svc.create({"version": "1.5.0"}, actor="admin-li")
    skipped = {d: r["code"] for d, r in rows(rig, ro["rollout_id"]).items()
               if r["state"] == "skipped"}
    assert skipped == {"kiosk-k02": "already_current", "kiosk-k03": "newer_version",
                       "kiosk-k04": "device_disabled"}
    assert ro["failure_threshold"] == 1  # no threshold given: pause at the first failure
    # A device queued in an open rollout is not chosen by another.
    with pytest.raises(FleetError) as e:
        await svc.create({"version": "1.4.0", "devices": ["kiosk-k01"],
                          "allow_downgrade": True}, actor="admin-li")
    assert (e.value.status, e.value.code) == (422, "no_devices")
    down = await svc.create({"version": "1.4.0", "devices": ["kiosk-k03"],
                             "allow_downgrade": True}, actor="admin-li")
    assert rows(rig, down["rollout_id"])["kiosk-k03"]["state"] == "queued"
    await svc.cancel(down["rollout_id"], actor="admin-li", reason="wrong plan")
    # Too old for 2.0.0's minimum; another model for 1.6.0.
    await svc.cancel(ro["rollout_id"], actor="admin-li")
    with pytest.raises(FleetError) as e:
        await svc.create({"version": "2.0.0", "devices": ["kiosk-k01"]}, actor="admin-li")
    assert e.value.code == "no_devices"
    with pytest.raises(FleetError) as e:
        await svc.create({"version": "1.6.0", "devices": ["kiosk-k01"]}, actor="admin-li")
    assert e.value.code == "no_devices"
    # Cancelled: queued devices skipped; a cancelled rollout cannot be resumed or paused.
    over = svc.detail(ro["rollout_id"])
    assert over["state"] == "cancelled" and over["counts"]["queued"] == 0
    assert rows(rig, ro["rollout_id"])["kiosk-k01"]["code"] == "cancelled"
    for action in (svc.resume, svc.pause, svc.cancel):
        with pytest.raises(FleetError) as e:
            await action(ro["rollout_id"], actor="admin-li")
        assert (e.value.status, e.value.code) == (409, "rollout_cancelled")
    # A scheduled rollout waits for its time.
    later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    sched = await svc.create({"version": "1.5.0", "devices": ["kiosk-k01"],
                              "start_at": later}, actor="admin-li")
    assert sched["state"] == "scheduled"
    assert await svc.tick() == 0
    rig.clock.advance(301)
    assert await svc.tick() == 1
    assert svc.detail(sched["rollout_id"])["state"] == "running"
    assert [a["rollout_id"] for a in rig.audits("rollout.start")] == [sched["rollout_id"]]


async def test_without_public_url_no_rollout_is_created(tmp_path: Path,
                                                        make_broker: Callable[..., Broker],
                                                        central_db) -> None:
    rig = await start_fleet_rig(tmp_path, make_broker, rollout_scheduler=False,
                                db=central_db(tmp_path))
    try:
        await upload(rig, "1.5.0")
        await rig.enroll("SN-U01", "kiosk-u01")
        with pytest.raises(FleetError) as e:
            await rig.fleet.rollouts.create({"version": "1.5.0"}, actor="admin-li")
        assert (e.value.status, e.value.code) == (409, "no_public_url")
    finally:
        await stop_fleet_rig(rig)


async def test_the_background_scheduler_runs_a_rollout_to_its_end(
        tmp_path: Path, make_broker: Callable[..., Broker], central_db) -> None:
    rig = await start_fleet_rig(tmp_path, make_broker, public_url=PUBLIC_URL,
                                db=central_db(tmp_path))
    app = create_dashboard(rig.store, rig.registry, ADMIN_TOKEN, site_name="测试医院",
                           fleet=rig.fleet, accounts=StaffAccounts(rig.store))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=PUBLIC_URL) as api:
            await upload(rig, "1.5.0")
            devs = await fleet_of(rig, api, {"kiosk-b01": "commit", "kiosk-b02": "commit",
                                             "kiosk-b03": "commit"})
            r = await api.post("/api/rollouts", headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}"}, json={
                "version": "1.5.0", "max_in_flight": 1, "notes": "夜间升级"})
            assert r.status_code == 201, r.text
            rid = r.json()["rollout"]["rollout_id"]
            await wait_until_async(
                lambda: rig.fleet.rollouts.detail(rid)["state"] == "completed", 30,
                what="rollout completed by the scheduler")
            assert rig.fleet.rollouts.detail(rid)["counts"]["committed"] == 3
            assert rig.fleet.status()["rollouts"]["rounds"] > 0
            await stop_all(devs)
    finally:
        await stop_fleet_rig(rig)


async def test_the_rest_api_roles_and_csrf(rig: FleetRig, api: httpx.AsyncClient) -> None:
    await upload(rig, "1.5.0")
    await rig.enroll("SN-A01", "kiosk-a01")
    boot = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    auth = {}
    for user, role in (("zhao.min", "viewer"), ("wang.li", "technician"),
                       ("chen.jie", "administrator")):
        r = await api.post("/api/users", headers=boot, json={
            "username": user, "name": user, "role": role, "password": "correct horse 1"})
        assert r.status_code == 201, r.text
        r = await api.post("/api/login", headers={"X-Requested-With": "ykt"}, json={
            "username": user, "password": "correct horse 1", "want_token": True})
        auth[role] = {"Authorization": f"Bearer {r.json()['token']}"}
    api.cookies.clear()
    body = {"version": "1.5.0", "devices": ["kiosk-a01"]}
    for role in ("viewer", "technician"):
        r = await api.post("/api/rollouts", headers=auth[role], json=body)
        assert r.status_code == 403, role
    r = await api.post("/api/rollouts", headers=auth["administrator"], json=body)
    assert r.status_code == 201, r.text
    rid = r.json()["rollout"]["rollout_id"]
    assert r.json()["rollout"]["created_by"] == "chen.jie"
    r = await api.get("/api/rollouts", headers=auth["viewer"])
    assert [x["rollout_id"] for x in r.json()["rollouts"]] == [rid]
    r = await api.get(f"/api/rollouts/{rid}", headers=auth["viewer"])
    assert r.json()["rollout"]["device_rows"][0]["dev"] == "kiosk-a01"
    assert (await api.get("/api/rollouts?state=bogus", headers=auth["viewer"])).status_code \
        == 400
    r = await api.get(f"/api/rollouts/{'0' * 32}", headers=auth["viewer"])
    assert (r.status_code, r.json()["error"]) == (404, "unknown_rollout")
    r = await api.post(f"/api/rollouts/{rid}/pause", headers=auth["viewer"])
    assert r.status_code == 403
    r = await api.post(f"/api/rollouts/{rid}/pause", headers=auth["technician"],
                       json={"reason": "printer trouble at 门诊楼"})
    assert r.status_code == 200 and r.json()["rollout"]["state"] == "paused"
    assert r.json()["rollout"]["reason"] == "printer trouble at 门诊楼"
    r = await api.post(f"/api/rollouts/{rid}/resume", headers=auth["technician"])
    assert r.status_code == 403
    r = await api.post(f"/api/rollouts/{rid}/cancel", headers=auth["technician"])
    assert r.status_code == 403
    r = await api.post(f"/api/rollouts/{rid}/pause", headers=auth["technician"])
    assert (r.status_code, r.json()["error"]) == (409, "rollout_paused")
    # A cookie session's write needs the CSRF header.
    r = await api.post("/api/login", headers={"X-Requested-With": "ykt"}, json={
        "username": "chen.jie", "password": "correct horse 1"})
    assert r.status_code == 200
    r = await api.post(f"/api/rollouts/{rid}/resume")
    assert (r.status_code, r.json()["error"]) == (403, "csrf")
    r = await api.post(f"/api/rollouts/{rid}/resume", headers={"X-Requested-With": "ykt"})
    assert r.status_code == 200 and r.json()["rollout"]["state"] == "running"
    assert [a["actor"] for a in rig.audits("rollout.pause")] == ["wang.li"]
    assert [a["actor"] for a in rig.audits("rollout.resume")] == ["chen.jie"]
    # Kept for the CLI test's shape: the answer carries the counts per state.
    assert set(r.json()["rollout"]["counts"]) >= {"queued", "sent", "committed", "skipped"}
