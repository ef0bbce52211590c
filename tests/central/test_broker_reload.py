"""Registering devices never knocks connected clients off the broker (central/broker.py).

Each registration edits the broker's password file and asks for a reload (SIGHUP). On a
reload Mosquitto re-reads the file and disconnects every client whose account it does not
find. ``mosquitto_passwd`` rewrites the file it edits in place, so a reload landing during
the next registration's edit read half a file and dropped the forwarder, the fleet client
and every terminal together. Now the file is edited as a private copy and renamed into
place, and the registry's reloads are coalesced. Against the real supervised Mosquitto.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from support import Site, wait_until

from central.broker import write_atomic

EXISTING = 6000  # accounts already in the file: a site with a fleet, and a longer rewrite


class Client:
    """A paho connection that records every disconnect (none was asked for)."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.name = username
        self.disconnects = 0
        self.connected = threading.Event()
        self.got: list[bytes] = []
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username)
        c.username_pw_set(username, password)
        c.on_connect = self._up
        c.on_disconnect = self._lost
        c.on_message = lambda _c, _u, m: self.got.append(m.payload)
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.c = c

    def _up(self, _c: object, _u: object, _f: object, rc: mqtt.ReasonCode, _p: object) -> None:
        if not rc.is_failure:
            self.connected.set()

    def _lost(self, *_a: object) -> None:
        self.disconnects += 1
        self.connected.clear()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _fleet_of_accounts(site: Site) -> None:
    """``EXISTING`` device accounts in the password file (one real hash, cloned)."""
    pw = site.registry.password_file
    scratch = pw.with_name("scratch")
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(scratch), "x", "secret-x"],
                   check=True, capture_output=True)
    digest = scratch.read_text().split(":", 1)[1].strip()
    scratch.unlink()
    lines = [f"old-{i:05d}:{digest}" for i in range(EXISTING)]
    write_atomic(pw, pw.read_text() + "\n".join(lines) + "\n")
    site.broker.reload()


def _connected_site(site: Site, tmp: Path) -> list[Client]:
    """The forwarder's and the fleet client's accounts and three terminals, connected."""
    _fleet_of_accounts(site)
    port = site.broker.port
    clients = [Client(port, **site.login("fwd")), Client(port, **site.login("fwd-fleet"))]
    for dev in ("kiosk-001", "kiosk-002", "cashier-001"):
        creds = site.registry.register(dev, "kiosk")
        clients.append(Client(port, creds.username, creds.password))
    wait_until(lambda: all(c.connected.is_set() for c in clients), 10,
               what="every client connected")
    return clients


def _reloads_logged(site: Site) -> int:
    return site.broker.log_path.read_text().count("Reloading config.")


def _drain_reloads(site: Site) -> None:
    """Wait until the broker has acted on every reload asked for.

    Mosquitto merges SIGHUPs that arrive before it gets to the first one, so the log's count
    is not the number sent: one more reload after a pause, seen in the log, comes after all.
    """
    wait_until(lambda: not site.broker.reload_pending(), 5, what="the coalesced reload sent")
    time.sleep(0.5)
    seen = _reloads_logged(site)
    site.broker.reload()
    wait_until(lambda: _reloads_logged(site) > seen, 10, what="a last reload in the log")
    time.sleep(0.3)  # a disconnect decided by a reload has reached the client


def _still_talking(site: Site, clients: list[Client]) -> None:
    """Each client still publishes and receives (its own echo on a topic it may use)."""
    fwd = clients[0]
    fwd.c.subscribe("ykt/v1/dev/+/up/event", 1)
    time.sleep(0.2)
    dev = clients[2]
    dev.c.publish("ykt/v1/dev/kiosk-001/up/event", b"still-here", qos=1)
    wait_until(lambda: b"still-here" in fwd.got, 5, what="the forwarder account receives")


def test_a_batch_of_registrations_with_a_reload_each_drops_no_client(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    """The worst case: every registration's change is a SIGHUP of its own, at once."""
    site = make_site(accounts=("fwd", "fwd-fleet"))
    clients = _connected_site(site, tmp_path)
    site.registry._on_change = site.broker.reload  # no coalescing: one SIGHUP per change
    try:
        before = site.broker.reloads
        for i in range(80):
            site.registry.register(f"new-{i:04d}", "kiosk" if i % 2 else "cashier")
        assert site.broker.reloads - before == 80
        _drain_reloads(site)
        dropped = {c.name: c.disconnects for c in clients if c.disconnects}
        assert not dropped, f"clients disconnected by the reloads: {dropped}"
        _still_talking(site, clients)
        # The last registration took effect: that device connects.
        creds = site.registry.register("last-0001", "kiosk")
        site.broker.reload()
        late = Client(site.broker.port, creds.username, creds.password)
        clients.append(late)
        assert late.connected.wait(10)
    finally:
        for c in clients:
            c.close()
    # Nothing left behind by the edits: only the broker's own files.
    assert not [p.name for p in site.registry.password_file.parent.glob(".passwd*")]


def test_registrations_through_central_share_a_few_reloads(
        make_site: Callable[..., Site], tmp_path: Path) -> None:
    """What ``ykt central`` wires: the registry asks, the broker coalesces."""
    site = make_site(accounts=("fwd", "fwd-fleet"))
    clients = _connected_site(site, tmp_path)
    site.registry._on_change = site.broker.request_reload
    site.broker.reload_delay_s = 1.0  # a registration takes far less: several share one
    try:
        before, shared = site.broker.reloads, site.broker.reloads_coalesced
        n = 60
        for i in range(n):
            site.registry.register(f"batch-{i:04d}", "kiosk")
        wait_until(lambda: not site.broker.reload_pending(), 5, what="the last reload sent")
        sent = site.broker.reloads - before
        assert sent + site.broker.reloads_coalesced - shared == n
        assert 1 <= sent <= n // 2, f"{sent} reloads for {n} registrations"
        _drain_reloads(site)
        assert not {c.name: c.disconnects for c in clients if c.disconnects}
        # The last change is in the broker: the last device registered connects.
        creds = site.registry.register("batch-last", "kiosk")
        _drain_reloads(site)
        late = Client(site.broker.port, creds.username, creds.password)
        clients.append(late)
        assert late.connected.wait(10)
        _still_talking(site, clients)
    finally:
        for c in clients:
            c.close()
