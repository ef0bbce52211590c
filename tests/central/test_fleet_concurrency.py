"""Several central instances on one database: the fleet's guarantees under racing writers.

Two (or three) :class:`~central.fleet.service.FleetService` objects, each on its own
:class:`~central.store.Store` of one database — two connections, as two ``ykt central``
processes have — run the same step at the same moment, round after round
(``pg_support.race``: a barrier per round). On SQLite the file's write lock serializes them;
on PostgreSQL they really overlap in READ COMMITTED transactions (central/fleet/store.py).
Nothing here starts a broker: central's publisher is a stand-in that records what it was
given, the enrollment broker is never started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bundle_support import small_bundle_tar
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_support import csr_envelope, make_csr
from pg_support import BOTH_ENGINES, race
from support import wait_until

from central.fleet import FleetError
from central.fleet.bundles import BundleStore, BundleStoreError, bundles_of
from central.fleet.service import FleetService
from central.fleet.settings import FleetSection
from central.registry import Registry
from central.store import Store, open_store
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import decode
from yikatong.site.demo import free_port

pytestmark = BOTH_ENGINES

T0 = datetime(2026, 5, 4, 8, 30, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
DEV = "kiosk-001"


@dataclass
class Publisher:
    """Central's device-broker session, standing in: connected, keeps what it publishes."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)
    connected: bool = True

    async def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))


@dataclass
class Instance:
    store: Store
    fleet: FleetService
    publisher: Publisher


@pytest.fixture
def instances(tmp_path: Path, central_db) -> Iterator[list[Instance]]:
    """Two instances on one database, with one shared data folder (signing key and bundles
    on a volume both mount); the clock stands still at T0."""
    target = central_db(tmp_path)
    out = []
    for k in range(2):
        # a CA folder each: two processes issuing at once would share no CA files either
        section = FleetSection(enroll_port=free_port(), public_url="http://central.test:8800",
                               ca_dir=tmp_path / f"ca-{k}")
        store = open_store(target)
        registry = Registry(store, tmp_path / f"broker-{k}", legacy_passwords=False)
        publisher = Publisher()
        fleet = FleetService(store, registry, section, data_dir=tmp_path / "data",
                             publisher=publisher, clock=lambda: T0)
        out.append(Instance(store, fleet, publisher))
    out[0].store.add_device(DEV, "kiosk", T0)
    yield out
    for i in out:
        i.store.close()


def run(instances: list[Instance], op: Any, rounds: int) -> list[list[Any]]:
    """``op(instance, round)`` on both instances at once, ``rounds`` times (its results)."""
    return race([i.store for i in instances],
                lambda k, _store, r: asyncio.run(op(instances[k], r)), rounds)


def signed_seqs(instances: list[Instance], dev: str, kind: str) -> list[int]:
    """The seq of every envelope both instances signed and published on ``dev``'s
    ``down/<kind>`` (``config`` or ``cmd``)."""
    return [decode(payload).seq or 0 for i in instances for topic, payload in
            i.publisher.sent if topic.endswith(f"/dev/{dev}/down/{kind}")]


def test_a_device_never_gets_one_seq_twice(instances: list[Instance]) -> None:
    """Commands and configs share one counter per device: each of 80 signed at once by two
    instances gets its own seq — and with the clock standing still, the next one, no gap."""
    async def step(i: Instance, r: int) -> None:
        if r % 2:
            await i.fleet.push_config("device", DEV, actor="tech")
        else:
            await i.fleet.send_command(DEV, "printer.test", {}, actor="tech")

    run(instances, step, rounds=40)
    assert sorted(signed_seqs(instances, DEV, "config") + signed_seqs(instances, DEV, "cmd")
                  ) == list(range(T0_MS, T0_MS + 80))
    K, S = instances[0].fleet.tables.FleetCommand, instances[0].fleet.tables.SeqCounter
    assert sorted(r.seq for r in K.select(K.seq)) == sorted(signed_seqs(instances, DEV, "cmd"))
    assert S.get(S.dev == DEV).last_seq == T0_MS + 79


def test_config_versions_are_never_reused_and_every_layer_is_merged(
        instances: list[Instance]) -> None:
    """One instance sets the role layer while the other sets the device's own, 20 rounds:
    each change is one new version (1…40, none twice), and the device's desired settings
    hold the last value of both layers."""
    async def step(i: Instance, r: int) -> int:
        if i is instances[0]:
            done = await i.fleet.set_config("role", "kiosk",
                                            {"log_level": ("debug", "info")[r % 2]},
                                            actor="tech-a")
        else:
            done = await i.fleet.set_config("device", DEV, {"telemetry_interval_s": 30 + r},
                                            actor="tech-b")
        (dev,) = done["devices"]
        return int(dev["version"])

    versions = [v for pair in run(instances, step, rounds=20) for v in pair]
    assert sorted(versions) == list(range(1, 41))
    detail = instances[1].fleet.device_detail(DEV)
    assert detail["desired"]["settings"] == {"log_level": "info", "telemetry_interval_s": 49}
    assert detail["desired"]["version"] == 40


def test_one_enrollment_request_and_one_approval(instances: list[Instance]) -> None:
    """The same request reaching both instances at once is recorded once (one code); two
    technicians approving it on both at once: one approves, the other is told it is
    decided."""
    serial = "SN-RACE-0001"
    csr, _ = make_csr(serial)
    msg = InboundMessage(f"ykt/v1/enroll/{serial}/csr", csr_envelope(serial, csr), 1, False)

    async def ask(i: Instance, _r: int) -> None:
        await i.fleet.handle_enroll_message(msg)

    run(instances, ask, rounds=3)
    (req,) = instances[0].fleet.enrollments()
    assert req["status"] == "pending" and not req["duplicate"]

    async def approve(i: Instance, _r: int) -> str:
        try:
            done = await i.fleet.approve(req["code"], device_id="kiosk-e01", role="kiosk",
                                         site="门诊楼", actor="tech")
        except FleetError as exc:
            return exc.code
        return str(done["status"])

    (outcomes,) = run(instances, approve, rounds=1)
    assert sorted(outcomes) == ["already_decided", "approved"]
    C = instances[0].fleet.tables.FleetCert
    assert C.select().where(C.dev == "kiosk-e01").count() == 1
    assert [e.action for e in instances[0].store.audit_entries()].count(
        "fleet.enroll_approve") == 1


RELEASE_KEY = Ed25519PrivateKey.generate()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_two_schedulers_send_each_device_one_update(instances: list[Instance]) -> None:
    """Both instances run the rollout scheduler at once (a lease handed over mid-round): each
    device of the rollout is sent one ``update.install``, and its row moves once."""
    a = instances[0]
    devs = [f"kiosk-r{n:02d}" for n in range(12)]
    for dev in devs:
        a.store.add_device(dev, "kiosk", T0)
        a.store.apply_state(dev, online=True, boot_seq=1, version="1.4.0", now=T0)
    asyncio.run(bundles_of(a.fleet).upload(
        "1.5.0", _chunks(small_bundle_tar("1.5.0", RELEASE_KEY)), actor="admin"))
    ro = asyncio.run(a.fleet.rollouts.create(
        {"version": "1.5.0", "devices": devs, "max_per_minute": 100, "max_in_flight": 100},
        actor="admin"))

    async def tick(i: Instance, _r: int) -> int:
        return await i.fleet.rollouts.tick()

    sent = run(instances, tick, rounds=3)
    assert sum(map(sum, sent)) == len(devs)
    K = a.fleet.tables.FleetCommand
    installs = [(r.dev, r.command_id) for r in K.select().where(K.name == "update.install")]
    assert sorted(d for d, _ in installs) == devs  # one each
    rows = a.fleet.rollouts.detail(ro["rollout_id"])["device_rows"]
    assert {r["state"] for r in rows} == {"sent"}
    assert {(r["dev"], r["command_id"]) for r in rows} == set(installs)
    published = [t for i in instances for t, _ in i.publisher.sent if t.endswith("/down/cmd")]
    assert len(published) == len(devs)


def test_an_upload_racing_another_of_its_version_is_told_it_exists(
        tmp_path: Path, instances: list[Instance], store_engine: str) -> None:
    """Instance A is inside its upload's write (its ``fleet_bundle`` row inserted, not yet
    committed) when instance B, with a bundle folder of its own, uploads another bundle of
    the same version: B checks and places its files, its insert meets A's row, and B answers
    409 ``bundle_exists`` once A commits — never a database error — and keeps no files that
    differ from the stored bundle."""
    a, b = instances
    B = a.fleet.tables.FleetBundle
    mine = BundleStore(b.store, b.fleet.tables, tmp_path / "bundles-b")
    placed = tmp_path / "bundles-b" / "2.0.0"

    async def upload() -> str:
        try:
            await mine.upload("2.0.0", _chunks(small_bundle_tar("2.0.0", RELEASE_KEY)),
                              actor="admin-b")
        except BundleStoreError as exc:
            return exc.code
        return "stored"

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with a.store.atomic():
            B.create(version="2.0.0", manifest_sha256="a" * 64, min_version="1.0.0",
                     architectures="[]", models="[]", files=1, size=1, uploaded_by="admin-a",
                     uploaded_at=T0.timestamp())
            outcome = pool.submit(asyncio.run, upload())
            wait_until(placed.is_dir, 10, what="B's checked bundle in place")
            if store_engine == "postgresql":  # B's INSERT waits on A's uncommitted row
                wait_until(lambda: a.store.connection().execute(
                    "SELECT COUNT(*) FROM pg_locks WHERE NOT granted").fetchone()[0] == 1,
                    10, what="B's insert waiting for A's row")
        assert outcome.result(30) == "bundle_exists"
        pool.submit(b.store.db.close).result(10)
    (row,) = B.select()
    assert row.uploaded_by == "admin-a"
    assert not placed.exists()  # not the bundle A stored (another manifest): removed
