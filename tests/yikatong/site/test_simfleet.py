"""``ykt sim fleet`` against a real central: its own Mosquitto (mutual TLS), the fleet CA and
enrollment broker, and the reference platform — started as real processes in a temporary
site directory (``CentralSite``: the site-in-a-box's layout without terminals).

The first run enrolls 20 devices through the claim broker and the technician API, sends a
request mix and checks every reply; central must show exactly the fleet online while it runs
and none after. The second run, through the ``ykt`` command, reuses the cached identities and
treats every ``reg.slots`` reply as wrong: the checker must report it and exit 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from yikatong.site.data import DEMO_BADGE, DEMO_STAFF_PIN
from yikatong.site.simfleet import (
    CentralSite,
    FleetOptions,
    Target,
    add_sim_fleet_arguments,
    run_fleet,
    summarize,
)

pytestmark = pytest.mark.stack

N = 20


@pytest.fixture(scope="module")
def central_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralSite]:
    site = CentralSite(tmp_path_factory.mktemp("simfleet"))
    site.start()
    try:
        yield site
    finally:
        site.stop()
        left = [name for name, proc in site.site.procs if proc.poll() is None]
        assert not left, f"processes left running: {left}"


def _target(site: CentralSite) -> Target:
    import argparse

    p = argparse.ArgumentParser()
    add_sim_fleet_arguments(p)
    return Target.from_args(p.parse_args(["--workdir", str(site.workdir)]))


def test_every_request_answered_and_presence_right(central_site: CentralSite) -> None:
    target = _target(central_site)
    opts = FleetOptions(devices=N, duration_s=12, rate=6, telemetry_s=5, event_s=10,
                        cashier_share=0.25, badge=DEMO_BADGE, pin=DEMO_STAFF_PIN,
                        reply_timeout_s=15)
    run = run_fleet(target, opts, say=lambda _t: None)
    s = summarize(run)
    assert s["ok"], (s["problems"], s["errors"])
    d = s["devices"]
    assert (d["enrolled"], d["reused"], d["connected"]) == (N, 0, N)
    # central saw every device with its certificate, and each one's Will/offline state
    assert s["presence"]["online_while_up"]["online"] == N
    assert s["presence"]["online_after_stop"]["online"] == 0
    # every request got exactly one answer of the expected kind, and every kind was tried
    requests = {k.removeprefix("req "): v for k, v in s["sent"].items() if k.startswith("req ")}
    answered: dict[str, int] = {}
    for key, n in s["replies"].items():
        type_, outcome = key.rsplit(" ", 1)
        assert outcome in ("ok", "rejected"), (key, s)
        answered[type_] = answered.get(type_, 0) + n
    assert answered == requests, s
    for t in ("patient.identify", "reg.slots", "reg.book", "report.list", "staff.login",
              "pay.create"):
        assert requests.get(t, 0) > 0, f"no {t} in {s}"
    assert 4.0 < s["requests_per_s"] < 8.0, s
    assert s["sent"]["telemetry"] >= N  # one each at least (5 s interval, 12 s of traffic)
    assert s["sent"]["state birth"] == N and s["sent"]["state offline"] == N
    assert s["sent"]["result config.report"] >= N  # every device applied its config
    # Births come before the go, requests and offline states only after it.
    before = s["sent_before_go"]
    assert before["state birth"] == N and "state offline" not in before
    assert not any(k.startswith("req ") for k in before)
    assert all(n <= s["sent"][k] for k, n in before.items())
    assert s["received"]["resp"] == sum(requests.values())
    # central's own view of the fleet: the devices' telemetry reached their health rows
    r = httpx.get(f"{target.dashboard_url}api/devices", headers=target.headers(), timeout=30)
    rows = {row["id"]: row for row in r.json()["devices"] if row["id"].startswith("sim")}
    assert len(rows) == N and not any(row["online"] for row in rows.values())


def test_second_run_reuses_identities_and_reports_a_mismatch(central_site: CentralSite
                                                             ) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "yikatong.cli", "sim", "fleet", "--workdir",
         str(central_site.workdir), "--devices", str(N), "--duration", "6", "--rate", "5",
         "--cashiers", "0.25", "--mix", "slots=1", "--inject-mismatch", "reg.slots", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    s = json.loads(proc.stdout)
    assert s["devices"]["reused"] == N and s["devices"]["enrolled"] == 0
    assert s["devices"]["connected"] == N
    slots_sent = s["sent"]["req reg.slots"]
    assert slots_sent > 0
    assert s["replies"].get("reg.slots mismatch") == slots_sent
    assert any(k.startswith("reg.slots: ok reply, expected error:never") for k in s["errors"])
    assert not s["ok"] and "unexpected replies" in " ".join(s["problems"])
    # the rest of the run was right: presence as before
    assert s["presence"]["online_while_up"]["online"] == N


def test_cli_refuses_a_directory_without_a_site(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "yikatong.cli", "sim", "fleet", "--workdir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2
    assert "central.toml" in proc.stderr and "站点目录" in proc.stderr
