"""Tier-3 fault rigs: real processes (``ykt platform-sim``, ``ykt central``) and a Mosquitto
the test supervises, so each can be SIGKILLed and restarted on the same ports and data.

Broker choice: central runs in **external broker mode** against a Mosquitto started here
with :class:`central.broker.Mosquitto`, reading central's own password and ACL files
(``{data_dir}/broker/passwd``, ``acl``). The broker can then be killed and restarted on its
own, and killing central never leaves an orphaned embedded broker holding the port. Devices
registered through central's REST API land in that password file; the test sends the broker
SIGHUP afterwards, as central itself does in embedded mode.

Processes come from the shared ``procs`` rig and the broker from ``make_broker``
(tests/conftest.py, tests/support.py): every one is stopped at teardown, and the teardown
fails the test if any is still alive.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Broker, Procs

from central.broker import Mosquitto, free_port, mosquitto_passwd_set, render_acl
from edge.uplink.config import UplinkConfig
from yikatong.site.demo import secret_file, wait_http
from yikatong.site.demo import toml_text as toml

REPO = Path(__file__).resolve().parents[2]
MUTATING = ("reg.book", "reg.cancel", "pay.create", "pay.reverse", "pay.refund",
            "report.printed")


class Stack:
    """Reference platform + external Mosquitto + ``ykt central``, each restartable."""

    def __init__(self, workdir: Path, procs: Procs, make_broker: Callable[..., Broker], *,
                 wallet_pending_s: float = 3.0, read_timeout_s: float = 2.0) -> None:
        self.workdir = workdir
        self.procs = procs
        self.platform_port = free_port()
        self.dashboard_port = free_port()
        self.data_dir = workdir / "central"
        broker_dir = self.data_dir / "broker"
        broker_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_urlsafe(18)
        self.platform_db = workdir / "platform.db"
        # central's broker credentials and ACL, in the files its registry maintains
        self.passwd, self.acl = broker_dir / "passwd", broker_dir / "acl"
        central_pw = secrets.token_urlsafe(24)
        mosquitto_passwd_set(self.passwd, "central", central_pw)
        self.central_pw_file = secret_file(broker_dir / "central.password", central_pw)
        # The broker binds client id to username: the hot-list publisher needs its own account.
        fleet_pw = secrets.token_urlsafe(24)
        mosquitto_passwd_set(self.passwd, "central-fleet", fleet_pw)
        fleet_pw_file = secret_file(workdir / "central-fleet.password", fleet_pw)
        self.acl.write_text(render_acl("central", "central-fleet"))
        self.rig = make_broker(workdir / "mosquitto", start=False, passwd=self.passwd,
                               acl=self.acl, persistence_dir=workdir / "mosquitto" / "data")
        token_file = secret_file(workdir / "admin.token", self.admin_token)
        self.platform_cfg = workdir / "platform-sim.toml"
        self.platform_cfg.write_text(toml({"platform_sim": {
            "db_path": str(self.platform_db), "seed": 20240601, "admin_enabled": True,
            "wallet_pending_s": wallet_pending_s, "fault_hang_s": 3.0}}))
        self.central_cfg = workdir / "central.toml"
        self.central_cfg.write_text(toml({
            "central": {"data_dir": str(self.data_dir)},
            "broker": {"mode": "external", "host": "127.0.0.1", "port": self.broker.port,
                       "username": "central", "password_file": str(self.central_pw_file),
                       "fleet_username": "central-fleet",
                       "fleet_password_file": str(fleet_pw_file),
                       "legacy_passwords": True},  # devices registered by password
            "platform": {"base_url": self.platform_url, "connect_timeout_s": 1.0,
                         "read_timeout_s": read_timeout_s,
                         "breaker": {"failure_threshold": 10, "reset_timeout_s": 2.0}},
            "dashboard": {"host": "127.0.0.1", "port": self.dashboard_port,
                          "admin_token_file": str(token_file)},
            "forwarder": {"concurrency": 32},
            "log": {"level": "warning"},
        }))
        self.platform: subprocess.Popen[bytes] | None = None
        self.central: subprocess.Popen[bytes] | None = None
        self.central_starts = 0

    @property
    def broker(self) -> Mosquitto:
        return self.rig.mosquitto

    @property
    def platform_url(self) -> str:
        return f"http://127.0.0.1:{self.platform_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- processes ------------------------------------------------------------------------
    def start_platform(self) -> None:
        self.platform = self.procs.ykt(
            "platform", "platform-sim", "--config", str(self.platform_cfg), "--host",
            "127.0.0.1", "--port", str(self.platform_port), "--admin")
        wait_http(f"{self.platform_url}/openapi.json", 60, self.platform)

    def start_central(self) -> None:
        self.central_starts += 1
        self.central = self.procs.ykt(f"central-{self.central_starts}", "central",
                                      "--config", str(self.central_cfg))
        wait_http(f"{self.dashboard_url}/api/status", 60, self.central)

    def kill_central(self) -> None:
        assert self.central is not None
        Procs.kill9(self.central)

    def stop_central(self) -> None:
        if self.central is not None:
            Procs.terminate(self.central)

    def start(self) -> None:
        self.broker.start()
        self.start_platform()
        self.start_central()

    def stop(self) -> list[int]:
        left = self.procs.stop_all()  # central first, then its broker
        return left + self.rig.stop()

    # -- helpers --------------------------------------------------------------------------
    def register(self, dev: str, tmp: Path, *, role: str = "kiosk", **kw: Any) -> UplinkConfig:
        r = httpx.post(f"{self.dashboard_url}/api/devices", json={"id": dev, "role": role},
                       headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=10)
        r.raise_for_status()
        pw = secret_file(tmp / f"{dev}.password", r.json()["password"])
        self.broker.reload()  # Mosquitto re-reads the password file central just wrote
        opts: dict[str, Any] = {"retry_interval_s": 2.0, "backoff_min_s": 0.1,
                                "backoff_max_s": 1.0, "max_inflight": 100, **kw}
        return UplinkConfig(host="127.0.0.1", port=self.broker.port, username=dev,
                            password_file=pw, outbox_path=tmp / f"{dev}.outbox.db",
                            state_path=tmp / f"{dev}.state.json", **opts)

    def platform_api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, f"{self.platform_url}{path}", timeout=15,
                          headers={"Idempotency-Key": secrets.token_hex(16)}, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    def set_faults(self, **spec: Any) -> None:
        for i, op in enumerate(MUTATING):
            self.platform_api("POST", "/admin/faults", json={"op": op, "seed": i, **spec})

    def stats(self) -> dict[str, Any]:
        return dict(self.platform_api("GET", "/admin/stats"))

    def unresolved_payments(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.dashboard_url}/api/payments/unresolved", timeout=10,
                      headers={"Authorization": f"Bearer {self.admin_token}"})
        r.raise_for_status()
        return list(r.json()["payments"])


@pytest.fixture
def stack(tmp_path: Path, procs: Procs, make_broker: Callable[..., Broker]) -> Iterator[Stack]:
    """A started stack; everything is stopped afterwards and nothing may be left running."""
    s = Stack(tmp_path, procs, make_broker)
    try:
        s.start()
        yield s
    finally:
        left = s.stop()
        assert not left, f"processes left running: {left}"
