"""Central's broker supervision with real processes: ``ykt central`` (embedded broker) as a
subprocess, ``kill -9``, a leftover Mosquitto from an earlier run, and a disabled device.

What must hold: the broker dies with central (PR_SET_PDEATHSIG); a broker left over by an
earlier run of the same data dir is stopped, so afterwards exactly one broker runs and it is
central's child; password reloads reach that broker, so a disabled device is refused.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_until

from central.broker import BrokerError, Listener, Mosquitto, MosquittoConfig, free_port
from central.broker import _brokers_using as brokers_using
from yikatong.site.demo import secret_file, toml_text, wait_http

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])


class CentralRig:
    """One data dir, ``ykt central`` started and killed as a real process."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker_port = free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_urlsafe(18)
        self.data = tmp / "central"
        self.cfg = tmp / "central.toml"
        self.cfg.write_text(toml_text({
            "central": {"data_dir": str(self.data)},
            # devices log in with passwords here ([broker] legacy_passwords)
            "broker": {"mode": "embedded", "host": "127.0.0.1", "port": self.broker_port,
                       "legacy_passwords": True},
            # nothing listens there: the platform is not needed for these checks
            "platform": {"base_url": f"http://127.0.0.1:{free_port()}"},
            "dashboard": {"host": "127.0.0.1", "port": self.dashboard_port,
                          "admin_token_file": str(secret_file(tmp / "admin.token",
                                                              self.token))},
            "forwarder": {"client_id": "central-test"},
            "log": {"level": "info"},
        }))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.others: list[int] = []

    @property
    def conf_path(self) -> Path:
        return self.data / "broker" / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}/api"

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        with (self.tmp / f"central-{n}.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "yikatong.cli", "central", "--config", str(self.cfg)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True)
        self.procs.append(proc)
        wait_http(f"{self.url}/status", 60, proc)
        return proc

    def status(self) -> dict:
        # the broker's state is for signed-in staff (the admin token signs in as administrator)
        return httpx.get(f"{self.url}/status", timeout=5,
                         headers={"Authorization": f"Bearer {self.token}"}).json()["broker"]

    def brokers(self) -> list[int]:
        return brokers_using(self.conf_path, self.data / "broker" / "mosquitto.pid")

    def admin(self, path: str, **kw: object) -> dict:
        r = httpx.post(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                       timeout=10, **kw)
        r.raise_for_status()
        return r.json()

    def cleanup(self) -> list[int]:
        left = []
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    left.append(p.pid)
                    p.kill()
                    p.wait(5)
        for pid in [*self.brokers(), *self.others]:
            if _alive(pid):
                left.append(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return left


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[CentralRig]:
    r = CentralRig(tmp_path)
    try:
        yield r
    finally:
        left = r.cleanup()
        assert not left, f"processes left running: {left}"


def _connects(port: int, user: str, password: str) -> bool:
    """A real paho connect: True on CONNACK accepted, False on refusal."""
    got: queue.Queue[bool] = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user)
    c.username_pw_set(user, password)
    c.on_connect = lambda _c, _u, _f, rc, _p: got.put(not rc.is_failure)
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    try:
        return got.get(timeout=10)
    finally:
        c.disconnect()
        c.loop_stop()


def test_the_broker_dies_with_central_on_kill9(rig: CentralRig) -> None:
    central = rig.start()
    [broker] = rig.brokers()
    assert _ppid(broker) == central.pid
    st = rig.status()
    assert st["running"] is True and st["pid"] == broker and st["last_error"] is None
    os.kill(central.pid, signal.SIGKILL)  # central only, not its process group
    central.wait(10)
    wait_until(lambda: not _alive(broker), 10, what="mosquitto gone with its supervisor")
    assert rig.brokers() == []


def test_a_leftover_broker_is_replaced_and_reloads_reach_the_new_one(rig: CentralRig) -> None:
    first = rig.start()  # writes the data dir's broker config, accounts and ACL
    os.kill(first.pid, signal.SIGTERM)
    first.wait(15)
    wait_until(lambda: rig.brokers() == [], 10, what="no broker left")
    # A broker from an "earlier run" of this data dir, not central's child: the test's.
    with (rig.tmp / "leftover.log").open("ab") as out:
        leftover = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(rig.conf_path)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    rig.others.append(leftover.pid)
    try:
        wait_until(lambda: _port_open(rig.broker_port), 10, what="the leftover broker listening")
        central = rig.start()
        leftover.wait(10)  # stopped by central (SIGTERM) before it started its own
        [broker] = rig.brokers()
        assert broker != leftover.pid and _ppid(broker) == central.pid
        st = rig.status()
        assert st == {"mode": "embedded", "running": True, "pid": broker, "restarts": 0,
                      "last_error": None}
        log = "".join(p.read_text() for p in rig.tmp.glob("central-*.log"))
        assert f"leftover mosquitto pid={leftover.pid}" in log
        # register, disable: the old password no longer gets in (central's SIGHUP reached
        # the broker it runs, not one it lost track of)
        creds = rig.admin("/devices", json={"id": "kiosk-077", "role": "kiosk"})
        wait_until(lambda: _connects(rig.broker_port, "kiosk-077", creds["password"]), 10)
        rig.admin("/devices/kiosk-077/disable")
        wait_until(lambda: not _connects(rig.broker_port, "kiosk-077", creds["password"]), 10)
        assert _connects(rig.broker_port, "kiosk-077", creds["password"]) is False
    finally:
        if leftover.poll() is None:
            leftover.kill()
        leftover.wait(5)


def _port_open(port: int) -> bool:
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_start_fails_truthfully_when_someone_else_holds_the_port(tmp_path: Path) -> None:
    """A foreign process on the port: start() raises with the log tail, never 'started'."""
    import socket
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        passwd = tmp_path / "passwd"
        passwd.touch()
        broker = Mosquitto(tmp_path / "b", MosquittoConfig(
            listeners=[Listener(host="127.0.0.1", port=port)], persistence=False,
            password_file=passwd), start_timeout_s=5)
        with pytest.raises(BrokerError, match="in use"):
            broker.start()
        assert not broker.running() and broker.pid is None
        assert broker.status()["last_error"] and "in use" in broker.status()["last_error"]
        assert broker.leftovers() == []
        assert not (tmp_path / "b" / "mosquitto.pid").exists()
