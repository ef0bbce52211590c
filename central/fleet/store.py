"""Fleet state in central's database: its own tables, bound like the store's models.

The declarations here are unbound (see central/store/models.py for why); :class:`FleetTables`
binds copies to one store's database and creates the tables if they do not exist. Writes
run inside the store's write transactions (``store.write`` / ``store.atomic``).

SQLite or PostgreSQL (central/store/engine.py): times are ``DoubleField`` (PostgreSQL's REAL
is 4 bytes and would ruin them), seqs and byte counts ``BigIntegerField`` (seqs are epoch
milliseconds; INTEGER is 32 bits there). Several central instances may write these tables
at once on PostgreSQL, in READ COMMITTED transactions: a read that decides a write holds its
rows (:func:`for_update`), a counter moves in one upsert, a state moves by compare-and-set
(``UPDATE … WHERE state = …``), and what reads many rows to decide (the config layers, the
enrollment list, the devices busy in rollouts) is written under one advisory lock each
(:data:`CONFIG_LOCK`, :data:`ENROLL_LOCK`, :data:`ROLLOUT_LOCK`; ``store.lock_in_tx``).

Tables::

    fleet_enrollment   one request per serial + public key (pairing code, decision)
    fleet_device       site, hardware serial and facts of an enrolled device
    fleet_cert         every certificate issued to a device, and its revocation
    fleet_layer        desired-config layers: (site|role|device, target) → settings
    fleet_desired      per device: effective settings, version, hash, last signed envelope
    fleet_seq          per device: the last seq used (config and cmd share it; never reused)
    fleet_reported     per device: the last config.report
    fleet_bundle       stored update bundles (central/fleet/bundles.py)
    fleet_command      signed commands and their states
    fleet_rollout      staged rollouts of an update bundle (central/fleet/rollouts.py)
    fleet_rollout_device  per rollout and device: the update's state, command, versions
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee as pw

from central.store import Store
from central.store.migrations import SCHEMA_LOCK
from central.store.models import bind

__all__ = ["CONFIG_LOCK", "ENROLL_LOCK", "ROLLOUT_LOCK", "FleetTables", "for_update"]

#: Held by every write that reads config layers or signs a config: versions never repeat and
#: a device's desired settings always merge every committed layer.
CONFIG_LOCK = 0x796B7420
#: Held by every write that records or decides an enrollment request (caps, codes, approval).
ENROLL_LOCK = 0x796B7421
#: Held by every write that creates a rollout (a device is queued in one open rollout only).
ROLLOUT_LOCK = 0x796B7422


def for_update(store: Store, query: Any) -> Any:
    """``query`` holding the rows it reads until the write ends (PostgreSQL's ``FOR UPDATE``;
    SQLite refuses the clause, and its write transaction already excludes other writers)."""
    return query.for_update() if store.dialect.postgres else query


class _Declared(pw.Model):
    """Base of the fleet declarations (unbound)."""


class Enrollment(_Declared):
    """An enrollment request: one per serial and public key."""

    request_id = pw.CharField(primary_key=True, max_length=32)
    serial = pw.CharField(max_length=64, index=True)
    key_fp = pw.CharField(max_length=64)
    csr = pw.TextField()
    facts = pw.TextField()
    code = pw.CharField(max_length=9, index=True)
    status = pw.CharField(max_length=10)  # pending | approved | rejected | expired
    duplicate = pw.BooleanField(default=False)
    reenroll_of = pw.CharField(max_length=64, null=True)
    created_at = pw.DoubleField()
    expires_at = pw.DoubleField()
    decided_by = pw.CharField(max_length=64, null=True)
    decided_at = pw.DoubleField(null=True)
    reason = pw.CharField(max_length=400, null=True)
    device_id = pw.CharField(max_length=64, null=True)
    role = pw.CharField(max_length=16, null=True)
    site = pw.CharField(max_length=64, null=True)
    #: The ``approved`` answer body (JSON) sent again when the device asks again.
    answer = pw.TextField(null=True)

    class Meta:
        table_name = "fleet_enrollment"
        indexes = ((("serial", "key_fp"), False),)


class FleetDevice(_Declared):
    """What enrollment knows about a device beside the registry row."""

    dev = pw.CharField(primary_key=True, max_length=64)
    site = pw.CharField(max_length=64, null=True)
    serial = pw.CharField(max_length=64, null=True, index=True)
    facts = pw.TextField(null=True)
    cert_serial = pw.CharField(max_length=64, null=True)
    cert_not_after = pw.DoubleField(null=True)
    enrolled_at = pw.DoubleField(null=True)
    #: Old certificates wait for the device to confirm it runs the renewed one: the
    #: ``cert.rotate`` command id (its ``succeeded`` is the confirmation).
    renew_confirm = pw.CharField(max_length=32, null=True)

    class Meta:
        table_name = "fleet_device"


class FleetCert(_Declared):
    """One certificate issued to a device."""

    serial = pw.CharField(primary_key=True, max_length=64)
    dev = pw.CharField(max_length=64, index=True)
    not_after = pw.DoubleField()
    issued_at = pw.DoubleField()
    source = pw.CharField(max_length=16)  # enroll | renew
    revoked_at = pw.DoubleField(null=True)
    #: A renewal: the ``cert.rotate`` it answered (one certificate per command) and the
    #: certificate itself, handed out again if the same key asks again (a lost reply).
    command_id = pw.CharField(max_length=32, null=True, unique=True)
    pem = pw.TextField(null=True)

    class Meta:
        table_name = "fleet_cert"


class ConfigLayer(_Declared):
    """One layer of desired settings: site defaults, role defaults or one device's own."""

    kind = pw.CharField(max_length=8)
    target = pw.CharField(max_length=64)
    settings = pw.TextField()
    updated_at = pw.DoubleField()
    updated_by = pw.CharField(max_length=64)

    class Meta:
        table_name = "fleet_layer"
        primary_key = pw.CompositeKey("kind", "target")


class Desired(_Declared):
    """A device's desired (effective) settings and the last signed envelope of them."""

    dev = pw.CharField(primary_key=True, max_length=64)
    version = pw.IntegerField()
    hash = pw.CharField(max_length=64)
    settings = pw.TextField()
    seq = pw.BigIntegerField(null=True)
    envelope = pw.BlobField(null=True)
    exp = pw.DoubleField(null=True)
    updated_at = pw.DoubleField()

    class Meta:
        table_name = "fleet_desired"


class SeqCounter(_Declared):
    """The last seq central signed for a device (both streams, never reused)."""

    dev = pw.CharField(primary_key=True, max_length=64)
    last_seq = pw.BigIntegerField()

    class Meta:
        table_name = "fleet_seq"


class Reported(_Declared):
    """The device's last ``config.report``."""

    dev = pw.CharField(primary_key=True, max_length=64)
    for_version = pw.IntegerField()
    status = pw.CharField(max_length=10)
    version = pw.IntegerField()
    hash = pw.CharField(max_length=64, null=True)
    code = pw.CharField(max_length=64, null=True)
    message = pw.CharField(max_length=400, null=True)
    at = pw.DoubleField()

    class Meta:
        table_name = "fleet_reported"


class FleetBundle(_Declared):
    """An update bundle stored under ``data_dir/bundles/<version>/`` (central/fleet/bundles.py)."""

    version = pw.CharField(primary_key=True, max_length=40)
    manifest_sha256 = pw.CharField(max_length=64)
    #: Key id of the signature (``manifest.sig``) and whether central checked it.
    kid = pw.CharField(max_length=16, null=True)
    signature_checked = pw.BooleanField(default=False)
    min_version = pw.CharField(max_length=40)
    #: JSON lists.
    architectures = pw.TextField()
    models = pw.TextField()
    files = pw.IntegerField()
    size = pw.BigIntegerField()  # bytes: up to MAX_UPLOAD_BYTES (2 GiB)
    notes = pw.CharField(max_length=400, null=True)
    uploaded_by = pw.CharField(max_length=64)
    uploaded_at = pw.DoubleField()

    class Meta:
        table_name = "fleet_bundle"


class FleetCommand(_Declared):
    """A signed command and its state (queued → … → succeeded/failed/expired/rejected)."""

    command_id = pw.CharField(primary_key=True, max_length=32)
    dev = pw.CharField(max_length=64, index=True)
    name = pw.CharField(max_length=32)
    args = pw.TextField()
    seq = pw.BigIntegerField()
    state = pw.CharField(max_length=12, index=True)
    created_by = pw.CharField(max_length=64)
    created_at = pw.DoubleField(index=True)
    updated_at = pw.DoubleField()
    exp = pw.DoubleField()
    code = pw.CharField(max_length=64, null=True)
    message = pw.CharField(max_length=400, null=True)
    output = pw.TextField(default="{}")
    #: ``logs.collect``: the bundle the device uploaded (JSON: size, sha256, path).
    bundle = pw.TextField(null=True)

    class Meta:
        table_name = "fleet_command"


class Rollout(_Declared):
    """A staged rollout of one bundle version (central/fleet/rollouts.py, docs/updates.md)."""

    rollout_id = pw.CharField(primary_key=True, max_length=32)
    version = pw.CharField(max_length=40)
    manifest_sha256 = pw.CharField(max_length=64)
    #: JSON: {site, role, from_versions, devices} as given.
    target = pw.TextField()
    allow_downgrade = pw.BooleanField(default=False)
    max_per_minute = pw.IntegerField()
    max_in_flight = pw.IntegerField()
    failure_threshold = pw.IntegerField(null=True)
    failure_ratio = pw.DoubleField(null=True)
    min_finished = pw.IntegerField()
    state = pw.CharField(max_length=10, index=True)  # scheduled|running|paused|completed|cancelled
    reason_code = pw.CharField(max_length=64, null=True)
    reason = pw.CharField(max_length=400, null=True)
    notes = pw.CharField(max_length=200, null=True)
    created_by = pw.CharField(max_length=64)
    created_at = pw.DoubleField(index=True)
    updated_at = pw.DoubleField()
    start_at = pw.DoubleField(null=True)
    started_at = pw.DoubleField(null=True)
    finished_at = pw.DoubleField(null=True)
    #: Failures are counted among devices finished since this time (the last resume).
    counted_since = pw.DoubleField()

    class Meta:
        table_name = "fleet_rollout"


class RolloutDevice(_Declared):
    """One device of a rollout: queued → sent → update states → final, or skipped."""

    rollout_id = pw.CharField(max_length=32)
    dev = pw.CharField(max_length=64, index=True)
    ord = pw.IntegerField()
    state = pw.CharField(max_length=16, index=True)
    command_id = pw.CharField(max_length=32, null=True, index=True)
    from_version = pw.CharField(max_length=64, null=True)
    running_version = pw.CharField(max_length=64, null=True)
    code = pw.CharField(max_length=64, null=True)
    message = pw.CharField(max_length=400, null=True)
    bytes_done = pw.BigIntegerField(null=True)
    bytes_total = pw.BigIntegerField(null=True)
    queued_at = pw.DoubleField()
    started_at = pw.DoubleField(null=True)
    updated_at = pw.DoubleField()
    finished_at = pw.DoubleField(null=True)

    class Meta:
        table_name = "fleet_rollout_device"
        primary_key = pw.CompositeKey("rollout_id", "dev")


_DECLARED = (Enrollment, FleetDevice, FleetCert, ConfigLayer, Desired, SeqCounter, Reported,
             FleetBundle, FleetCommand, Rollout, RolloutDevice)


@dataclass(frozen=True, slots=True)
class FleetTables:
    """The fleet models bound to one store's database."""

    Enrollment: Any
    FleetDevice: Any
    FleetCert: Any
    ConfigLayer: Any
    Desired: Any
    SeqCounter: Any
    Reported: Any
    FleetBundle: Any
    FleetCommand: Any
    Rollout: Any
    RolloutDevice: Any

    @classmethod
    def open(cls, store: Store) -> FleetTables:
        """Bind the models to ``store.db`` and create missing tables (an existing one is kept)."""
        tables = cls(**{m.__name__: bind(m, store.db) for m in _DECLARED})
        with store.atomic():
            store.lock_in_tx(SCHEMA_LOCK)  # two instances starting at once: one after the other
            store.db.create_tables(tables.all(), safe=True)
        return tables

    def all(self) -> list[Any]:
        """Every model, in creation order."""
        return [self.Enrollment, self.FleetDevice, self.FleetCert, self.ConfigLayer,
                self.Desired, self.SeqCounter, self.Reported, self.FleetBundle,
                self.FleetCommand,
                self.Rollout, self.RolloutDevice]
