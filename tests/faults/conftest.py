"""Tier-3 fault rigs: real processes (``ykt platform-sim``, ``ykt central``) and a Mosquitto
the test supervises, so each can be SIGKILLed and restarted on the same ports and data.

Broker choice: central runs in **external broker mode** against a Mosquitto started here
with :class:`central.broker.Mosquitto`, reading central's own password and ACL files
(``{data_dir}/broker/passwd``, ``acl``). The broker can then be killed and restarted on its
own, and killing central never leaves an orphaned embedded broker holding the port. Devices
registered through central's REST API land in that password file; the test sends the broker
SIGHUP afterwards, as central itself does in embedded mode.

Several instances (``Stack(..., instances=2, store_url=...)``): every ``ykt central`` shares
one PostgreSQL store and one share group (``[forwarder] share_group``), with its own data_dir,
dashboard port, client id and broker accounts. The broker reads the first instance's files,
which hold every instance's accounts (each instance lists the others' in ``[broker]
other_central_users``, so the ACL it rewrites on a registration keeps them): devices are
registered through the first instance.

Fleet trust (``fleet=True``): every instance runs ``[fleet]`` with its own enrollment broker,
on the first instance's key material (CA, signing key, claim password, server certificate),
copied into the others' data_dir before their first start (docs/scaling.md, "Fleet trust
with several instances"). The broker gets the devices' mutual-TLS listener on that CA and
its CRL (``tls_port``), as central's embedded broker would have it; it starts after the
first instance has made the material.

Processes come from the shared ``procs`` rig and the broker from ``make_broker``
(tests/conftest.py, tests/support.py): every one is stopped at teardown, and the teardown
fails the test if any is still alive.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import PgServer
from support import Broker, Procs

from central.broker import (
    Listener,
    Mosquitto,
    TlsListener,
    free_port,
    mosquitto_passwd_set,
    render_acl,
)
from edge.uplink.config import UplinkConfig
from yikatong.site.demo import secret_file, wait_http
from yikatong.site.demo import toml_text as toml

REPO = Path(__file__).resolve().parents[2]
MUTATING = ("reg.book", "reg.cancel", "pay.create", "pay.reverse", "pay.refund",
            "report.printed")


@dataclass
class Central:
    """One ``ykt central`` of the stack: its data_dir, config, dashboard and process."""

    name: str  # also its forwarder's broker account; ``<name>-fleet`` is the hot list's
    data_dir: Path
    config: Path
    dashboard_port: int
    enroll_port: int  # its enrollment broker's (with fleet trust)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def username(self) -> str:
        return self.name

    @property
    def fleet_username(self) -> str:
        return f"{self.name}-fleet"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


class Stack:
    """Reference platform + external Mosquitto + ``ykt central`` (one or several), each
    restartable."""

    def __init__(self, workdir: Path, procs: Procs, make_broker: Callable[..., Broker], *,
                 wallet_pending_s: float = 3.0, read_timeout_s: float = 2.0,
                 instances: int = 1, store_url: str | None = None,
                 forwarder: dict[str, Any] | None = None,
                 cluster: dict[str, Any] | None = None, fleet: bool = False) -> None:
        if instances > 1 and store_url is None:
            raise ValueError("several central instances share one PostgreSQL store_url")
        self.workdir = workdir
        self.procs = procs
        self.store_url = store_url
        self.platform_port = free_port()
        # One instance keeps the single-site names; several are central-a, central-b, ...
        names = ["central"] if instances == 1 else [
            f"central-{chr(ord('a') + i)}" for i in range(instances)]
        self.centrals = [Central(n, workdir / n, workdir / f"{n}.toml", free_port(),
                                 free_port()) for n in names]
        self.fleet = fleet
        broker_dir = self.data_dir / "broker"  # the first instance's files: the broker's
        broker_dir.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_urlsafe(18)
        self.platform_db = workdir / "platform.db"
        # central's broker credentials and ACL, in the files its registry maintains
        self.passwd, self.acl = broker_dir / "passwd", broker_dir / "acl"
        # The broker binds client id to username: the hot-list publisher needs its own
        # account, as does every instance's forwarder.
        pw_files: dict[str, Path] = {}
        for c in self.centrals:
            for user in (c.username, c.fleet_username):
                pw = secrets.token_urlsafe(24)
                mosquitto_passwd_set(self.passwd, user, pw)
                pw_files[user] = secret_file(workdir / "secrets" / f"{user}.password", pw)
        self.central_pw_file = pw_files[self.centrals[0].username]
        users = [u for c in self.centrals for u in (c.username, c.fleet_username)]
        self.acl.write_text(render_acl(*users))
        listeners = [Listener(host="127.0.0.1", port=0)]
        if fleet:  # the first instance's fleet CA, server certificate and CRL
            made = self.data_dir / "fleet"
            listeners.append(Listener(host="127.0.0.1", port=free_port(), tls=TlsListener(
                cafile=made / "ca" / "chain.pem", certfile=made / "broker-server.pem",
                keyfile=made / "broker-server.key", crlfile=made / "ca" / "crl.pem",
                require_certificate=True, use_identity_as_username=True)))
        self.rig = make_broker(workdir / "mosquitto", start=False, passwd=self.passwd,
                               acl=self.acl, persistence_dir=workdir / "mosquitto" / "data",
                               listeners=listeners)
        token_file = secret_file(workdir / "admin.token", self.admin_token)
        self.platform_cfg = workdir / "platform-sim.toml"
        self.platform_cfg.write_text(toml({"platform_sim": {
            "db_path": str(self.platform_db), "seed": 20240601, "admin_enabled": True,
            "wallet_pending_s": wallet_pending_s, "fault_hang_s": 3.0}}))
        for i, c in enumerate(self.centrals):
            others = [u for o in self.centrals if o is not c
                      for u in (o.username, o.fleet_username)]
            cfg: dict[str, Any] = {
                "central": {"data_dir": str(c.data_dir)},
                "broker": {"mode": "external", "host": "127.0.0.1", "port": self.broker.port,
                           "username": c.username,
                           "password_file": str(pw_files[c.username]),
                           "fleet_username": c.fleet_username,
                           "fleet_password_file": str(pw_files[c.fleet_username]),
                           "legacy_passwords": True},  # devices registered by password
                "platform": {"base_url": self.platform_url, "connect_timeout_s": 1.0,
                             "read_timeout_s": read_timeout_s,
                             "breaker": {"failure_threshold": 10, "reset_timeout_s": 2.0}},
                "dashboard": {"host": "127.0.0.1", "port": c.dashboard_port,
                              "admin_token_file": str(token_file)},
                "forwarder": {"concurrency": 32},
                "log": {"level": "warning"},
            }
            if others:
                cfg["broker"]["other_central_users"] = others
                cfg["forwarder"].update({"client_id": c.name, "instance": i,
                                         **(forwarder or {})})
                cfg["cluster"] = dict(cluster or {})
            if store_url is not None:
                cfg["store"] = {"url": store_url}
            if fleet:
                cfg["fleet"] = {"enroll_host": "127.0.0.1", "enroll_port": c.enroll_port,
                                "server_names": ["127.0.0.1", "localhost"]}
            c.config.write_text(toml(cfg))
        self.platform: subprocess.Popen[bytes] | None = None

    @property
    def broker(self) -> Mosquitto:
        return self.rig.mosquitto

    @property
    def tls_port(self) -> int:
        """The devices' mutual-TLS listener (with fleet trust)."""
        return self.broker.cfg.listeners[1].port

    @property
    def platform_url(self) -> str:
        return f"http://127.0.0.1:{self.platform_port}"

    @property
    def data_dir(self) -> Path:
        """The first instance's data_dir (its broker files are the broker's)."""
        return self.centrals[0].data_dir

    @property
    def dashboard_url(self) -> str:
        """The first instance's dashboard (devices are registered there)."""
        return self.centrals[0].dashboard_url

    @property
    def central(self) -> subprocess.Popen[bytes] | None:
        return self.centrals[0].proc

    @property
    def store_target(self) -> Path | str:
        """Where central's store is: the shared PostgreSQL URL, or the one SQLite file."""
        return self.store_url or self.data_dir / "central.db"

    # -- processes ------------------------------------------------------------------------
    def start_platform(self) -> None:
        self.platform = self.procs.ykt(
            "platform", "platform-sim", "--config", str(self.platform_cfg), "--host",
            "127.0.0.1", "--port", str(self.platform_port), "--admin")
        wait_http(f"{self.platform_url}/openapi.json", 60, self.platform)

    def start_central(self, i: int = 0) -> None:
        c = self.centrals[i]
        c.starts += 1
        c.proc = self.procs.ykt(f"{c.name}-{c.starts}", "central", "--config", str(c.config))
        wait_http(f"{c.dashboard_url}/api/status", 60, c.proc)

    def kill_central(self, i: int = 0) -> None:
        proc = self.centrals[i].proc
        assert proc is not None
        Procs.kill9(proc)

    def stop_central(self, i: int = 0) -> None:
        proc = self.centrals[i].proc
        if proc is not None:
            Procs.terminate(proc)

    def start(self) -> None:
        if not self.fleet:
            self.broker.start()
        self.start_platform()
        self.start_central(0)
        if self.fleet:  # the broker's TLS files exist now; the others get the same keys
            for c in self.centrals[1:]:
                shutil.copytree(self.data_dir / "fleet", c.data_dir / "fleet")
            self.broker.start()
        for i in range(1, len(self.centrals)):
            self.start_central(i)

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

    def central_get(self, i: int, path: str, **kw: Any) -> Any:
        """``GET path`` on instance ``i``'s API, as the administrator."""
        r = httpx.get(f"{self.centrals[i].dashboard_url}{path}", timeout=10,
                      headers={"Authorization": f"Bearer {self.admin_token}"}, **kw)
        r.raise_for_status()
        return r.json()

    def central_status(self, i: int = 0) -> dict[str, Any]:
        """``/api/status`` of instance ``i``."""
        return dict(self.central_get(i, "/api/status"))

    def unresolved_payments(self, i: int = 0) -> list[dict[str, Any]]:
        return list(self.central_get(i, "/api/payments/unresolved")["payments"])


@pytest.fixture
def make_stack(tmp_path: Path, procs: Procs, make_broker: Callable[..., Broker]
               ) -> Iterator[Callable[..., Stack]]:
    """Factory: ``make_stack(**kw)`` is a started :class:`Stack` (``kw`` as its constructor
    takes them); everything is stopped afterwards and nothing may be left running."""
    made: list[Stack] = []

    def make(**kw: Any) -> Stack:
        s = Stack(tmp_path, procs, make_broker, **kw)
        made.append(s)
        s.start()
        return s

    try:
        yield make
    finally:
        left = [pid for s in made for pid in s.stop()]
        assert not left, f"processes left running: {left}"


@pytest.fixture
def cluster_db(postgres: PgServer) -> Iterator[str]:
    """A fresh PostgreSQL database for several instances; dropped after the test. Request it
    before ``make_stack``, so the stack using it has stopped by then."""
    url = postgres.new_database("cluster")
    yield url
    postgres.drop_database(url)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """A started single-instance stack (see ``make_stack``)."""
    return make_stack()
