"""``ykt fw rollout`` against a running dashboard (uvicorn on loopback) over a real fleet
service and rollout service: create, list, show (counts per state, every device with its
code), pause, resume, cancel; tables in the site's time zone and ``--json``; a unique start of
the id names a rollout; refusals in both languages and exit 1.

The fleet service is not started (no brokers): its publisher is a recorder, the scheduler's
rounds are run by the test and the devices' ``update.status`` are handed to the service as
the forwarder would.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from bundle_support import small_bundle_tar
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central.broker import free_port
from central.dashboard.app import create_dashboard
from central.fleet import FleetSection
from central.fleet.bundles import bundles_of
from central.fleet.service import FleetService
from central.registry import Registry
from central.store import open_store
from yikatong.cli import main as ykt
from yikatong.protocol.envelope import decode
from yikatong.protocol.update import UpdateStatus

ADMIN = "boot-token-for-rollout-cli"
NOW = datetime(2026, 3, 9, 23, 5, 7, tzinfo=UTC)


class Recorder:
    """Central's publisher on the device broker, recording instead of sending."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.sent.append((topic, payload))


def bundle_tar(version: str) -> bytes:
    return small_bundle_tar(version, Ed25519PrivateKey.generate())


@dataclass
class Site:
    url: str
    fleet: FleetService
    publisher: Recorder
    capsys: Any

    def fw(self, *args: str) -> tuple[int, str, str]:
        rc = ykt(["fw", *args, "--central", self.url])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def installs(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for topic, payload in self.publisher.sent:
            env = decode(payload)
            if topic.endswith("/down/cmd") and env.body["name"] == "update.install":
                out.append((env.dev, env.body))
        return out


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Iterator[Site]:
    monkeypatch.setenv("YKT_FW_SESSION", str(tmp_path / "fw-session"))
    monkeypatch.setenv("YKT_CENTRAL_ADMIN_TOKEN", ADMIN)
    store = open_store(tmp_path / "central.db")
    registry = Registry(store, tmp_path / "broker", legacy_passwords=False)
    fleet = FleetService(store, registry, FleetSection(
        public_url="http://10.0.0.5:8800", rollout_scheduler=False, enroll_port=free_port()),
        data_dir=tmp_path)
    publisher = Recorder()
    fleet.publisher = publisher
    F = fleet.tables.FleetDevice
    for dev, where in (("kiosk-001", "门诊楼"), ("kiosk-002", "门诊楼"), ("kiosk-003", "门诊楼"),
                       ("kiosk-101", "住院部")):
        store.add_device(dev, "kiosk", NOW)
        F.create(dev=dev, site=where, facts=json.dumps({"model": "YKT-K1"}))
        store.apply_state(dev, online=True, boot_seq=1, version="1.4.0", now=NOW)

    async def chunks() -> AsyncIterator[bytes]:
        yield bundle_tar("1.5.0")

    asyncio.run(bundles_of(fleet).upload("1.5.0", chunks(), actor="chen.jie"))
    app = create_dashboard(store, registry, ADMIN, site_name="测试医院",
                           timezone="Asia/Shanghai", fleet=fleet)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{url}/api/status", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield Site(url, fleet, publisher, capsys)
    finally:
        server.should_exit = True
        thread.join(5)
        store.close()


def test_create_show_and_steer_a_rollout(site: Site) -> None:
    rc, out, err = site.fw("rollout", "create", "1.5.0", "--site", "门诊楼", "--rate", "2",
                           "--in-flight", "2", "--max-failures", "2", "--notes", "夜间升级")
    assert rc == 0, err
    rid = out.split()[1].rstrip(":")
    assert len(rid) == 32 and "3 device(s) queued, 0 skipped" in out
    assert "at most 2 started a minute and 2 at once; pauses at 2 failed" in out

    # One scheduler round starts two devices; they report.
    assert site.run(site.fleet.rollouts.tick()) == 2
    started = [dev for dev, _ in site.installs()]
    assert started == ["kiosk-001", "kiosk-002"]
    args = site.installs()[0][1]["args"]
    assert args["url"] == "http://10.0.0.5:8800/api/fleet/bundles/1.5.0"

    async def report() -> None:
        svc = site.fleet.rollouts
        await svc.on_status("kiosk-001", UpdateStatus(
            rollout_id=rid, version="1.5.0", state="committed", running_version="1.5.0"))
        await svc.on_status("kiosk-002", UpdateStatus(
            rollout_id=rid, version="1.5.0", state="downloading", bytes_done=1024,
            bytes_total=4096))

    site.run(report())
    rc, out, err = site.fw("rollout", "show", rid[:6])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"rollout {rid}  1.5.0  running") and "Asia/Shanghai" in lines[0]
    assert "target       site 门诊楼" in out
    assert "1 of 3 done, 1 in flight, 0 failed: queued=1 downloading=1 committed=1" in out
    row = {ln.split()[0]: ln for ln in lines if ln.startswith("kiosk-")}
    assert row["kiosk-001"].split()[1:4] == ["committed", "1.4.0", "1.5.0"]
    assert row["kiosk-002"].split()[1] == "downloading" and "1024/4096" in row["kiosk-002"]
    assert row["kiosk-003"].split()[1] == "queued"
    assert "kiosk-101" not in row  # another site
    # Times in the site's zone, to the second.
    updated = row["kiosk-001"].split()[5:7]  # after BYTES, "-" here
    datetime.strptime(" ".join(updated), "%Y-%m-%d %H:%M:%S")

    rc, out, err = site.fw("rollout", "list")
    assert rc == 0, err
    (listed,) = [ln for ln in out.splitlines() if ln.startswith(rid[:8])]
    assert "running" in listed and "1/3" in listed and "admin-token" in listed

    rc, out, err = site.fw("rollout", "pause", rid[:8], "--reason", "打印机故障")
    assert rc == 0, err
    assert "paused" in out and "no new device starts until resume" in out
    rc, out, _ = site.fw("rollout", "show", rid, "--json")
    shown = json.loads(out)
    assert shown["state"] == "paused" and shown["reason"] == "打印机故障"
    assert shown["counts"]["committed"] == 1
    assert {d["dev"] for d in shown["device_rows"]} == {"kiosk-001", "kiosk-002", "kiosk-003"}

    rc, out, err = site.fw("rollout", "pause", rid[:8])
    assert rc == 1 and "a paused rollout cannot be paused" in err and "不能暂停" in err
    rc, out, err = site.fw("rollout", "resume", rid[:8], "--json")
    assert rc == 0 and json.loads(out)["state"] == "running"
    rc, out, err = site.fw("rollout", "cancel", rid[:8], "--reason", "改天再升级")
    assert rc == 0 and "cancelled" in out
    rc, out, _ = site.fw("rollout", "list", "--state", "cancelled", "--json")
    (gone,) = json.loads(out)
    assert gone["rollout_id"] == rid and gone["counts"]["skipped"] == 1
    assert gone["reason"] == "改天再升级"


def test_refusals_in_both_languages(site: Site, tmp_path: Path) -> None:
    rc, _out, err = site.fw("rollout", "create", "9.9.9")
    assert rc == 1 and "no bundle 9.9.9" in err and "中心没有 9.9.9 版本的更新包" in err
    rc, _out, err = site.fw("rollout", "create", "1.5.0", "--device", "kiosk-404")
    assert rc == 1 and "kiosk-404" in err and "未登记的设备" in err
    rc, _out, err = site.fw("rollout", "show", "zz")
    assert rc == 1 and "not a rollout id" in err and "不是发布任务编号" in err
    rc, _out, err = site.fw("rollout", "show", "abcd")
    assert rc == 1 and "no rollout starts with abcd" in err
    rc, out, err = site.fw("rollout", "list")
    assert rc == 0 and "no rollouts / 没有发布任务" in out
    # A viewer reads but may not start one.
    r = httpx.post(f"{site.url}/api/users", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"username": "zhao.min", "name": "赵敏", "role": "viewer",
                         "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    r = httpx.post(f"{site.url}/api/login", headers={"X-Requested-With": "ykt"}, json={
        "username": "zhao.min", "password": "correct horse battery", "want_token": True})
    token_file = tmp_path / "viewer.token"
    token_file.write_text(r.json()["token"])
    token_file.chmod(0o600)
    rc = ykt(["fw", "rollout", "create", "1.5.0", "--central", site.url, "--token-file",
              str(token_file)])
    err = site.capsys.readouterr().err
    assert rc == 1 and "central refused" in err and "administrator" in err
