"""``update.install`` end to end: the real ``ykt edge`` of each slot, under a small stand-in
for systemd, against Mosquitto, pcscd with a simulated SAM and a network printer
simulator (docs/updates.md, "On the device").

The supervisor does what ykt-edge.service does: ``ExecStartPre`` = the committed slot's
``ykt update guard``, ``ExecStart`` = ``current/bin/ykt edge``, restart whenever it exits.
``systemctl`` on the daemon's PATH is a script that, like ``systemctl restart ykt-edge``,
sends SIGTERM to the daemon (which the supervisor then starts again).

The test plays central: it signs ``update.install`` with its signing key, publishes it on
``down/cmd`` and reads ``cmd.result`` / ``update.status`` on ``up/result``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.devices.printer.sim.server import VirtualPrinter
from edge.update.slots import Layout
from yikatong.protocol import topics
from yikatong.protocol.envelope import decode, encode, new_envelope
from yikatong.protocol.fleet import TYPE_CMD
from yikatong.protocol.signing import public_key_to_pem, sign

pytestmark = pytest.mark.stack

DEV = "kiosk-upd-01"
TOKEN = "test-download-token-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Supervisor:
    """A stand-in for systemd running ykt-edge.service from an A/B root (see module doc)."""

    def __init__(self, root: Path, config: Path, env: dict[str, str], log: Path) -> None:
        self.root, self.config, self.env, self.log = root, config, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[str] = []  # the slot each start ran
        self.exits: list[int] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="supervisor")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with open(self.log, "ab") as out:
                guard = subprocess.run(
                    [str(self.root / "committed" / "bin" / "ykt"), "update", "guard",
                     "--root", str(self.root)], stdout=out, stderr=subprocess.STDOUT,
                    env=self.env, check=False, timeout=60)
                if guard.returncode != 0:
                    self.exits.append(-1000)
                    time.sleep(0.5)
                    continue
                self.starts.append(os.readlink(self.root / "current"))
                self.proc = subprocess.Popen(
                    [str(self.root / "current" / "bin" / "ykt"), "edge", "--config",
                     str(self.config)], stdout=out, stderr=subprocess.STDOUT, env=self.env,
                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.log.parent)
            self.exits.append(self.proc.wait())
            time.sleep(0.3)  # RestartSec

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self._thread.join(30)
        if self.proc is not None and self.proc.poll() is None:  # started while stopping
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Central:
    """Central's side on the broker: sign and send commands, collect what comes up."""

    def __init__(self, port: int, password: str, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.seq = 0
        self.results: list[dict[str, Any]] = []  # {"type": …, "body": …}
        self.online = threading.Event()
        self._q: queue.Queue[Any] = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="central-upd-test",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.username_pw_set("central", password)
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(topics.up(DEV, "result"), 1)
        c.subscribe(topics.state(DEV), 1)
        self.c = c

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        env = decode(bytes(msg.payload))
        if msg.topic == topics.state(DEV):
            if env.body.get("online"):
                self.online.set()
            else:
                self.online.clear()
            return
        self.results.append({"type": env.type, "body": env.body, "corr": env.corr})

    def send(self, name: str, args: dict[str, Any]) -> str:
        self.seq += 1
        cid = secrets.token_hex(16)
        now = datetime.now(UTC)
        env = new_envelope(TYPE_CMD, DEV, {"command_id": cid, "name": name, "args": args},
                           now=now, seq=self.seq, exp=now + timedelta(minutes=10))
        info = self.c.publish(topics.down(DEV, "cmd"), encode(sign(env, self.key)), qos=1)
        info.wait_for_publish(5)
        return cid

    def statuses(self, cid: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.results
                if r["type"] == "update.status" and r["body"].get("command_id") == cid]

    def cmd_states(self, cid: str) -> list[str]:
        return [r["body"]["state"] for r in self.results
                if r["type"] == "cmd.result" and r["body"].get("command_id") == cid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             log: Path | None = None) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-6000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n--- daemon log tail ---\n{tail}")


@pytest.fixture
def rig(tmp_path: Path, bundles: Any, kit: Any, server: Any, make_broker: Any, pcscd: Any,
        sam_slot: Any, sam_pin_file: Path) -> Iterator[dict[str, Any]]:
    broker = make_broker()
    uplink = broker.add_device(DEV, tmp_path)
    printer = VirtualPrinter().start()
    key = Ed25519PrivateKey.generate()
    signing_pub = tmp_path / "central-signing.pub"
    signing_pub.write_bytes(public_key_to_pem(key.public_key()))
    root = kit.install_base(bundles, tmp_path / "opt")
    token_file = tmp_path / "api.token"
    token_file.write_text(secrets.token_urlsafe(24))
    data = tmp_path / "data"
    cfg = tmp_path / "edge.toml"
    cfg.write_text(tomli_w.dumps({
        "device": {"id": DEV, "role": "kiosk", "hospital_name": "测试医院",
                   "data_dir": str(data)},
        "api": {"port": free_port(), "token_file": str(token_file)},
        "card": {"patient_reader": pcscd.patient_reader, "sam_reader": pcscd.sam_reader,
                 "sam_pin_file": str(sam_pin_file), "hotlist_path": str(data / "hotlist.db")},
        "printer": {"kind": "network", "host": "127.0.0.1", "port": printer.port,
                    "profile": "xprinter_xp80"},
        "uplink": {"host": "127.0.0.1", "port": broker.port, "username": DEV,
                   "password_file": str(uplink.password_file),
                   "outbox_path": str(data / "outbox.db"),
                   "state_path": str(data / "uplink-state.json"),
                   "retry_interval_s": 0.5, "backoff_min_s": 0.05, "backoff_max_s": 0.5},
        "remote": {"signing_public_key": str(signing_pub), "idle_poll_s": 0.2},
        "update": {"root": str(root), "release_keys": str(bundles.pub),
                   "health_deadline_s": 15, "max_attempts": 2},
    }))
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    calls = tmp_path / "systemctl.calls"
    (fakebin / "systemctl").write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM "$PPID"\nexit 0\n')
    (fakebin / "systemctl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{fakebin}:{env['PATH']}"
    env["YKT_EDGE_API_TOKEN"] = token_file.read_text()
    log = tmp_path / "edge.log"
    sup = Supervisor(root, cfg, env, log)
    central = Central(broker.port, broker.central_password, key)
    sup.start()
    try:
        yield {"sup": sup, "central": central, "root": root, "log": log, "printer": printer,
               "calls": calls, "server": server, "bundles": bundles, "kit": kit}
    finally:
        sup.stop()
        central.close()
        printer.stop()


def install_args(rig: dict[str, Any], name: str, version: str, **extra: Any) -> dict[str, Any]:
    bundle = rig["bundles"][name]
    url = rig["server"].add(name.replace(".", "-"), bundle)
    sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    return {"rollout": secrets.token_hex(16), "version": version, "url": url, "token": TOKEN,
            "manifest_sha256": sha, **extra}


def final_status(central: Central, cid: str) -> Callable[[], dict[str, Any] | None]:
    def get() -> dict[str, Any] | None:
        done = [s for s in central.statuses(cid)
                if s["state"] in ("committed", "rolled_back", "failed")]
        return done[-1] if done else None
    return get


def test_update_commits_refuses_a_downgrade_and_rolls_back_by_itself(
        rig: dict[str, Any]) -> None:
    central: Central = rig["central"]
    sup: Supervisor = rig["sup"]
    log: Path = rig["log"]
    lay = Layout(rig["root"])
    wait_for(central.online.is_set, 60, "the 1.5.0 daemon online", log)

    # 1. A good update: downloaded and verified, installed into b, restarted, committed.
    cid = central.send("update.install", install_args(rig, "1.6.0", "1.6.0"))
    end = wait_for(final_status(central, cid), 180, "1.6.0 committed", log)
    assert end["state"] == "committed" and end["running_version"] == "1.6.0", end
    states = [s["state"] for s in central.statuses(cid)]
    # ``downloading`` once, then again with progress every few seconds of a slow download.
    last = max(i for i, st in enumerate(states) if st == "downloading")
    assert states[0] == "downloading" and set(states[:last + 1]) == {"downloading"}, states
    assert states[last + 1:] == ["downloaded", "verified", "installing", "awaiting_health",
                                 "awaiting_health", "committed"], states
    wait_for(lambda: central.cmd_states(cid)[-1:] == ["succeeded"], 30, "cmd succeeded", log)
    cs = central.cmd_states(cid)  # in_progress again with the output, unless the restart
    assert cs[:2] == ["delivered", "in_progress"] and cs[-1] == "succeeded", cs  # came first
    assert set(cs[2:-1]) <= {"in_progress"}, cs
    assert lay.current_slot() == lay.committed_slot() == "b"
    assert lay.marker("b").version == "1.6.0"  # type: ignore[union-attr]
    wait_for(lambda: lay.trial() is None and not lay.downloads.exists(), 10,
             "record cleared and download removed after the commit", log)
    assert sup.starts[-2:] == ["slots/a", "slots/b"]
    assert "--no-block restart ykt-edge.service" in rig["calls"].read_text()

    # 2. A downgrade without the signed permission: refused before any file is fetched.
    cid = central.send("update.install", install_args(rig, "1.5.0", "1.5.0"))
    end = wait_for(final_status(central, cid), 60, "downgrade refused", log)
    assert end["state"] == "failed" and end["code"] == "downgrade", end
    wait_for(lambda: central.cmd_states(cid)[-1:] == ["failed"], 30, "cmd failed", log)
    assert lay.current_slot() == "b" and lay.marker("a").version == "1.5.0"  # type: ignore[union-attr]

    # 3. A version whose daemon crashes at start: the guard counts its starts and goes back;
    #    the old daemon reports why.
    starts = len(sup.starts)
    cid = central.send("update.install", install_args(rig, "1.7.0", "1.7.0"))
    end = wait_for(final_status(central, cid), 180, "1.7.0 rolled back", log)
    assert end["state"] == "rolled_back" and end["code"] == "start_failed", end
    assert end["running_version"] == "1.6.0" and "2 attempt" in end["message"]
    wait_for(lambda: central.cmd_states(cid)[-1:] == ["failed"], 30, "cmd failed", log)
    res = [r["body"] for r in central.results if r["type"] == "cmd.result"
           and r["body"]["command_id"] == cid][-1]
    assert res["code"] == "start_failed"
    assert sup.starts[starts:] == ["slots/a", "slots/a", "slots/b"]  # 1.7.0 twice, back
    assert sup.exits[-2:] == [1, 1]  # the crashing 1.7.0 starts
    assert lay.current_slot() == lay.committed_slot() == "b" and lay.trial() is None

    # 4. A version that starts but is not healthy (the printer does not answer): it rolls
    #    itself back at the deadline. A downgrade, allowed by the signed command.
    rig["printer"].stop()
    cid = central.send("update.install", install_args(rig, "1.5.0", "1.5.0",
                                                      allow_downgrade=1))
    end = wait_for(final_status(central, cid), 180, "1.5.0 rolled back", log)
    assert end["state"] == "rolled_back" and end["code"] == "unhealthy", end
    assert "printer not answering" in end["message"] and end["running_version"] == "1.6.0"
    assert lay.current_slot() == lay.committed_slot() == "b" and lay.trial() is None
