"""The fleet simulator (``ykt sim fleet``, yikatong/site/simfleet.py) against two central
instances on one PostgreSQL store and one external Mosquitto.

Both instances run fleet trust on the same key material (docs/scaling.md, "Fleet trust with
several instances"; tests/faults/conftest.py ``fleet=True``), the broker has the devices'
mutual-TLS listener on that CA. The simulator enrolls its devices by claim on A's enrollment
broker, approved through A's technician API, connects them with their certificates and
sends its request mix; the share group hands each request to A or B. Every reply is checked
by the simulator; here, in addition: every request answered once, presence right on both
instances (they read one store), and both instances answered part of the fleet's requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from yikatong.site.simfleet import (
    FleetOptions,
    Target,
    device_ids,
    fetch_claim_bundle,
    run_fleet,
    summarize,
)

if TYPE_CHECKING:  # the fixtures' module: imported by pytest, never again at run time
    from faults.conftest import Stack

A, B = 0, 1
N = 12
BADGE, PIN = "S9002", "135792"


@pytest.fixture
def fleet_centrals(cluster_db: str, make_stack: Callable[..., Stack]) -> Stack:
    """Platform, broker (with its mutual-TLS listener) and centrals A and B with fleet trust
    on ``cluster_db``, started."""
    return make_stack(instances=2, store_url=cluster_db, fleet=True,
                      forwarder={"share_group": "fleet"})


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fleet_simulator_on_two_instances(fleet_centrals: Stack, tmp_path: Path) -> None:
    stack = fleet_centrals
    stack.platform_api("POST", "/admin/staff", json={
        "badge": BADGE, "name": "收费员模拟", "role": "cashier", "pin": PIN})
    sim = tmp_path / "sim"
    dashboard = stack.dashboard_url + "/"
    fetch_claim_bundle(dashboard, stack.admin_token, sim / "claim")
    target = Target(dashboard, stack.admin_token, [("127.0.0.1", stack.tls_port)],
                    ("127.0.0.1", stack.centrals[A].enroll_port), sim / "claim" / "ca.pem",
                    (sim / "claim" / "claim.password").read_text().strip(),
                    (sim / "claim" / "central-signing.pub").read_bytes(), stack.platform_url,
                    sim)
    before = [stack.central_status(i)["forwarder"]["replied"] for i in (A, B)]
    opts = FleetOptions(devices=N, duration_s=10, rate=6, telemetry_s=5, event_s=10,
                        cashier_share=0.25, badge=BADGE, pin=PIN, reply_timeout_s=15)
    s = summarize(run_fleet(target, opts, say=lambda _t: None))
    assert s["ok"], (s["problems"], s["errors"])
    d = s["devices"]
    assert (d["enrolled"], d["reused"], d["connected"]) == (N, 0, N)
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
    for t in ("patient.identify", "reg.book", "staff.login", "pay.create"):
        assert requests.get(t, 0) > 0, f"no {t} in {s}"
    # Both instances answered the fleet (the share group split its requests) and both see
    # the enrolled devices (one store).
    handled = [stack.central_status(i)["forwarder"]["replied"] - before[i] for i in (A, B)]
    assert min(handled) >= sum(requests.values()) // 5, (handled, requests)
    fleet = {dev for dev, _ in device_ids(N, opts.cashier_share)}
    for i in (A, B):
        r = stack.central_get(i, "/api/devices", params={"prefix": "sim"})
        assert {dev["id"] for dev in r["devices"]} == fleet, (i, r["devices"])
    print(f"\nfleet on two instances: {N} devices, requests {requests}, handled A/B {handled}, "
          f"enroll {d['enroll_s']} s")
