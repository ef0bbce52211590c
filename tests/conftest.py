"""Shared test rig.

- A private pcscd with two vpcd slots for the whole session (``pcscd_daemon``). It sets
  PCSCLITE_CSOCK_NAME before pyscard first talks to pcscd — the client library caches the
  socket path per process — so every test in the session that uses pyscard goes through
  this one daemon. Tests that kill it get it restarted by ``pcscd`` on the same ports.
- The site-in-a-box (real pcscd+vpcd, Mosquitto, central, platform, edge and kiosk
  processes) and headless Chromium.
- The one Mosquitto rig (``make_broker``, ``broker``, ``logged_broker``), central's site on
  it (``make_site``: store + registry whose files the broker reads), and the one process
  rig (``procs``), built on tests/support.py, which also holds the one wait helper
  (``wait_until`` / ``wait_until_async``). The reference platform is in
  tests/central/platform/.
- One PostgreSQL server for the session (``postgres``, tests/pg_support.py) and
  ``central_db``: where a test's central store lives — a SQLite file, or a fresh PostgreSQL
  database when the test is run for both engines (``pytest.mark.parametrize("store_engine",
  ENGINES, indirect=True)``, or ``pytestmark = BOTH_ENGINES`` for a whole module).
- ``pytest_collection_modifyitems`` marks every test using a real-stack fixture ``stack``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_support import PgServer
from smartcard import scard as s  # importing does not contact pcscd; the first call does
from support import Broker, Procs, Site, new_broker, wait_until

from central.registry import Registry
from central.store import Store, open_store
from edge.devices.card.sim.pcscd import PcscDaemon, free_port_pair
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot

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
        wait_until(lambda: _reader_has_card(reader) is present, timeout,
                   what=f"{reader}: card present == {present}")
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



@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs a process's ``main`` in-process (``setup_logging``) replaces the root
    logger's handlers with one writing to the test's captured stdout; restore them, so later
    tests do not log into a closed capture stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --- Mosquitto ---------------------------------------------------------------------------


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Factory of Mosquitto rigs: ``make_broker(workdir=None, *, start=True, **kw)``.

    ``kw`` goes to :func:`support.new_broker`. Every broker made is stopped after the test,
    and the test fails if any of its processes is still alive.
    """
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is required for these tests (apt install mosquitto)")
    made: list[Broker] = []

    def make(workdir: Path | None = None, *, start: bool = True, **kw: Any) -> Broker:
        wd = workdir or tmp_path / ("broker" if not made else f"broker{len(made)}")
        b = new_broker(wd, **kw)
        made.append(b)
        if start:
            b.mosquitto.start()
        return b

    yield make
    left = [pid for b in made for pid in b.stop()]
    assert not left, f"mosquitto processes left running: {left}"


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """Mosquitto on a free loopback port with a ``central`` account; stopped after the test."""
    return make_broker()


@pytest.fixture
def logged_broker(make_broker: Callable[..., Broker]) -> Broker:
    """Like ``broker``, logging every packet (``log_type debug``) to count what it received."""
    return make_broker(log_types=("error", "warning", "notice", "information", "debug"))


# --- central's store: SQLite, or PostgreSQL -----------------------------------------------------

@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """This session's own PostgreSQL server (initdb in a temporary directory, loopback)."""
    server = PgServer().start()
    yield server
    server.stop()


@pytest.fixture
def store_engine(request: pytest.FixtureRequest) -> str:
    """``sqlite`` (default) or ``postgresql`` (parametrized indirectly: ``BOTH_ENGINES``)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def central_db(store_engine: str, request: pytest.FixtureRequest
               ) -> Iterator[Callable[[Path], Path | str]]:
    """Factory: ``central_db(workdir)`` is where a central store for ``workdir`` lives.

    SQLite: ``workdir/central.db``. PostgreSQL: one fresh database per workdir (the same
    database again for the same workdir — a restarted central finds its state), dropped
    after the test.
    """
    made: dict[Path, str] = {}
    server: PgServer | None = (request.getfixturevalue("postgres")
                               if store_engine == "postgresql" else None)

    def target(workdir: Path) -> Path | str:
        if server is None:
            return workdir / "central.db"
        if workdir not in made:
            made[workdir] = server.new_database()
        return made[workdir]

    yield target
    if server is not None:
        for url in made.values():
            server.drop_database(url)


# --- central's site on the broker ------------------------------------------------------------


@pytest.fixture
def make_site(tmp_path: Path, make_broker: Callable[..., Broker],
              central_db: Callable[[Path], Path | str]) -> Iterator[Callable[..., Site]]:
    """Factory: ``make_site(workdir=None, *, accounts=(), **broker_cfg)`` starts a site.

    Store + registry in ``workdir`` (default ``tmp_path``) with central's default account and
    ``accounts`` (more central connections), and a started broker from ``make_broker`` on the
    registry's files (persistent in ``broker/data`` unless ``persistence=False``). Stores are
    closed, brokers stopped and checked for leftovers after the test.
    """
    stores: list[Store] = []

    def make(workdir: Path | None = None, *, accounts: tuple[str, ...] = (), **cfg: Any
             ) -> Site:
        wd = workdir or tmp_path
        store = open_store(central_db(wd))
        stores.append(store)
        registry = Registry(store, wd / "broker")
        creds = registry.central_credentials()
        for connection in accounts:
            registry.central_credentials(connection)
        if cfg.get("persistence", True):
            cfg.setdefault("persistence_dir", wd / "broker" / "data")
        rig = make_broker(wd / "broker", central=None, passwd=registry.password_file,
                          acl=registry.acl_file, **cfg)
        registry._on_change = rig.mosquitto.reload  # the registry has the broker re-read
        return Site(wd, store, registry, rig, creds.password, creds.username)

    yield make
    for store in stores:
        store.close()


# --- processes -------------------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Real processes for the test (logs in ``tmp_path/logs``); none may outlive it."""
    p = Procs(tmp_path / "logs")
    yield p
    left = p.stop_all()
    assert not left, f"processes left running: {left}"


# --- markers from fixtures -------------------------------------------------------------------

#: Fixtures that start a real pcscd, Mosquitto or Chromium. A test using any of them —
#: directly or through another fixture (``item.fixturenames`` is the whole closure) — is a
#: ``stack`` test; the roots (pcscd_daemon, make_broker, site, browser) would be enough, the
#: rest are listed so a reader finds them here.
STACK_FIXTURES = frozenset({
    "pcscd_daemon", "pcscd", "patient_slot", "sam_slot",
    "site", "browser",
    "make_broker", "broker", "logged_broker",
    "make_site", "broker_site", "forwarder", "stack", "postgres",
})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-stack fixture as ``stack``."""
    for item in items:
        if STACK_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
