"""Shared test rig.

- A private pcscd with two vpcd slots for the whole session (``pcscd_daemon``). It sets
  PCSCLITE_CSOCK_NAME before pyscard first talks to pcscd — the client library caches the
  socket path per process — so every test in the session that uses pyscard goes through
  this one daemon. Tests that kill it get it restarted by ``pcscd`` on the same ports.
- The site-in-a-box (real pcscd+vpcd, Mosquitto, central, platform, edge and kiosk
  processes) and headless Chromium.
- Mosquitto and the reference platform rigs live in tests/central/conftest.py,
  tests/edge/uplink/conftest.py and tests/central/platform/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from smartcard import scard as s  # importing does not contact pcscd; the first call does

from central.broker import (
    Listener,
    Mosquitto,
    MosquittoConfig,
    mosquitto_passwd_set,
    render_acl,
)
from edge.devices.card.sim.pcscd import PcscDaemon, free_port_pair
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot
from edge.uplink.config import UplinkConfig

SAM_PIN = "123456"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    # Without these Chromium keeps dialling out to Google, which this network refuses.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--disable-features=Translate,MediaRouter",
]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One whole site for the session: two terminals, central, Mosquitto, platform."""
    from yikatong.site.demo import Site

    s = Site(tmp_path_factory.mktemp("site"))
    s.start()
    try:
        yield s
    finally:
        s.stop()
        leftovers = [name for name, proc in s.procs if proc.poll() is None]
        assert not leftovers, f"processes left running: {leftovers}"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (no browser download).

    Module-scoped on purpose: Playwright's sync API keeps an event loop running in the main
    thread while it is open, which would break every pytest-asyncio test that runs later.
    """
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/install.sh")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def screens_dir() -> Path:
    """Where UI screenshots are kept for people to look at (docs/screens)."""
    d = Path(__file__).resolve().parent.parent / "docs" / "screens"
    d.mkdir(parents=True, exist_ok=True)
    return d

@pytest.fixture(scope="session")
def pcscd_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PcscDaemon]:
    """One private pcscd (patient slot 00 00, SAM slot 00 01) for the test session."""
    daemon = PcscDaemon(tmp_path_factory.mktemp("pcscd"), free_port_pair())
    daemon.start()
    old = os.environ.get("PCSCLITE_CSOCK_NAME")
    os.environ.update(daemon.env)
    yield daemon
    daemon.stop()
    if old is None:
        os.environ.pop("PCSCLITE_CSOCK_NAME", None)
    else:
        os.environ["PCSCLITE_CSOCK_NAME"] = old


@pytest.fixture
def pcscd(pcscd_daemon: PcscDaemon) -> PcscDaemon:
    """The session daemon, running (restarted if a previous test killed it)."""
    if not pcscd_daemon.running:
        pcscd_daemon.start()
    return pcscd_daemon


def _reader_has_card(reader: str) -> bool | None:
    hr, ctx = s.SCardEstablishContext(s.SCARD_SCOPE_USER)
    if hr != s.SCARD_S_SUCCESS:
        return None
    try:
        hr, res = s.SCardGetStatusChange(ctx, 0, [(reader, s.SCARD_STATE_UNAWARE)])
        if hr != s.SCARD_S_SUCCESS:
            return None
        return bool(res[0][1] & s.SCARD_STATE_PRESENT)
    finally:
        s.SCardReleaseContext(ctx)


@pytest.fixture
def wait_card() -> Callable[[str, bool], None]:
    """Wait until pcscd reports the reader with (or without) a card."""
    def wait(reader: str, present: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while _reader_has_card(reader) is not present:
            if time.monotonic() > deadline:
                raise AssertionError(f"{reader}: card present != {present} after {timeout}s")
            time.sleep(0.02)
    return wait


@pytest.fixture
def patient_slot(pcscd: PcscDaemon, wait_card: Callable[..., None]
                 ) -> Iterator[VirtualCardSlot]:
    """The patient slot; emptied (and seen empty by pcscd) after the test."""
    slot = VirtualCardSlot(pcscd.patient_port)
    yield slot
    slot.remove()
    if pcscd.running:
        wait_card(pcscd.patient_reader, False)


@pytest.fixture
def sam_slot(pcscd: PcscDaemon, wait_card: Callable[..., None]) -> Iterator[VirtualCardSlot]:
    """The SAM slot holding a fresh SamSim (PIN ``SAM_PIN``) for the test."""
    slot = VirtualCardSlot(pcscd.sam_port)
    slot.insert(SamSim(SAM_PIN))
    wait_card(pcscd.sam_reader, True)
    yield slot
    slot.remove()
    if pcscd.running:
        wait_card(pcscd.sam_reader, False)


@pytest.fixture
def sam_pin_file(tmp_path: Path) -> Path:
    """A PIN file as a site would deploy it."""
    p = tmp_path / "sam.pin"
    p.write_text(SAM_PIN + "\n")
    p.chmod(0o600)
    return p


# --- Mosquitto -------------------------------------------------------------------------


@dataclass
class Broker:
    """A running broker and a way to add device credentials to it."""

    mosquitto: Mosquitto
    passwd: Path
    central_password: str

    @property
    def port(self) -> int:
        return self.mosquitto.port

    def add_device(self, dev: str, tmp: Path, **kw: object) -> UplinkConfig:
        """Create credentials for ``dev`` and return an UplinkConfig using them."""
        password = secrets.token_urlsafe(18)
        mosquitto_passwd_set(self.passwd, dev, password)
        self.mosquitto.reload()
        pw = tmp / f"{dev}.password"
        pw.write_text(password + "\n")
        opts: dict[str, object] = {
            "retry_interval_s": 0.5, "backoff_min_s": 0.05, "backoff_max_s": 0.5, **kw,
        }
        return UplinkConfig(
            host="127.0.0.1", port=self.port, username=dev, password_file=pw,
            outbox_path=tmp / f"{dev}.outbox.db", state_path=tmp / f"{dev}.state.json",
            **opts,  # type: ignore[arg-type]
        )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto on a free loopback port; stopped after the test."""
    yield from _broker(tmp_path)


@pytest.fixture
def logged_broker(tmp_path: Path) -> Iterator[Broker]:
    """Like ``broker``, logging every packet (``log_type debug``) to count what it received."""
    yield from _broker(tmp_path, ("error", "warning", "notice", "information", "debug"))


def _broker(tmp_path: Path, log_types: tuple[str, ...] | None = None) -> Iterator[Broker]:
    wd = tmp_path / "broker"
    wd.mkdir()
    passwd, acl = wd / "passwd", wd / "acl"
    central_password = secrets.token_urlsafe(18)
    mosquitto_passwd_set(passwd, "central", central_password)
    acl.write_text(render_acl("central"))
    cfg = MosquittoConfig(
        listeners=[Listener(host="127.0.0.1", port=0)], persistence=False,
        password_file=passwd, acl_file=acl,
        **({} if log_types is None else {"log_types": log_types}),
    )
    m = Mosquitto(wd, cfg)
    m.start()
    try:
        yield Broker(m, passwd, central_password)
    finally:
        m.stop()
        left = m.leftovers()
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"mosquitto processes left running: {left}"
