"""Central's tables, declared once; :func:`bind_models` gives each store its own bound copy.

Every model names its table explicitly (``Meta.table_name``): these are the names peewee
derived from the class names when the store was first written (``requestlog``,
``auditrecord``, ``deviceaudit`` …), so databases created by earlier versions open
unchanged, and renaming a class can never rename a table.

The declarations are bound to no database. peewee binds a model class to one database
(``Meta.database``, ``DatabaseProxy``, ``Model.bind``); a ``DatabaseProxy`` or
``bind_ctx`` would be one process-wide binding, but a process may hold several stores at
once (a second forwarder instance on the same file in the tests, a tool beside a running
central) and each store's writer thread queries concurrently with its callers. So each
:class:`~central.store.Store` binds subclasses of these declarations to its own
``SqliteDatabase`` — same fields, same table names — via :func:`bind_models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee as pw

__all__ = [
    "Attempted",
    "AuditRecord",
    "Device",
    "DeviceAudit",
    "DeviceEvent",
    "DeviceHealthRow",
    "Models",
    "Payment",
    "RequestLog",
    "bind_models",
]


class _Declared(pw.Model):
    """Base of the declarations (unbound: see :func:`bind_models`)."""


class Device(_Declared):
    """A registered terminal (central/registry.py) and its last known state."""

    id = pw.CharField(primary_key=True, max_length=64)
    role = pw.CharField(max_length=16)
    enabled = pw.BooleanField(default=True)
    created_at = pw.DoubleField()
    last_seen = pw.DoubleField(null=True)
    last_boot_seq = pw.IntegerField(null=True)
    online = pw.BooleanField(default=False)
    version = pw.CharField(max_length=64, null=True)

    class Meta:
        table_name = "device"


class RequestLog(_Declared):
    """One device request by id: the dedup record and, once done, the stored reply."""

    id = pw.CharField(primary_key=True, max_length=128)
    dev = pw.CharField(max_length=64, index=True)
    type = pw.CharField(max_length=64)
    body_hash = pw.CharField(max_length=64)
    state = pw.CharField(max_length=16)  # received | done
    reply = pw.BlobField(null=True)
    received_at = pw.DoubleField()
    done_at = pw.DoubleField(null=True)
    # "<client_id>/<boot nonce>" of the forwarder working on it (see begin_request).
    owner = pw.CharField(max_length=100, null=True)
    # 1 once retention replaced a personal reply by its minimised form.
    purged = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

    class Meta:
        table_name = "requestlog"


class Attempted(_Declared):
    """A request central sent to the platform without learning the outcome.

    A resend of one is asked again (same idempotency key), never answered "expired".
    """

    id = pw.TextField(primary_key=True)
    dev = pw.TextField()
    at = pw.DoubleField()

    class Meta:
        table_name = "attempted"


class AuditRecord(_Declared):
    """Central's own hash-chained audit record (yikatong/protocol/audit.py)."""

    seq = pw.IntegerField(primary_key=True)
    ts = pw.DoubleField()
    actor = pw.CharField(max_length=64)
    action = pw.CharField(max_length=64)
    detail = pw.TextField()
    prev_hash = pw.CharField(max_length=64)
    hash = pw.CharField(max_length=64)

    class Meta:
        table_name = "auditrecord"


class DeviceAudit(_Declared):
    """The devices' own hash-chained audit records (``audit`` events), one per (dev, seq).

    ``status`` is the check made on arrival: ok | gap | bad_hash | broken_link | conflict
    (a second, different record under the same seq).
    """

    dev = pw.CharField(max_length=64)
    seq = pw.IntegerField()
    ts = pw.CharField(max_length=32)
    actor = pw.CharField(max_length=64)
    action = pw.CharField(max_length=64)
    detail = pw.TextField()
    prev_hash = pw.CharField(max_length=64)
    hash = pw.CharField(max_length=64)
    status = pw.CharField(max_length=16)
    received_at = pw.DoubleField()

    class Meta:
        table_name = "deviceaudit"
        primary_key = pw.CompositeKey("dev", "seq")


class DeviceEvent(_Declared):
    """A recent event of a device (a bounded ring per device)."""

    dev = pw.CharField(max_length=64, index=True)
    kind = pw.CharField(max_length=16)
    type = pw.CharField(max_length=64)
    ts = pw.DoubleField()
    body = pw.TextField()

    class Meta:
        table_name = "deviceevent"


class DeviceHealthRow(_Declared):
    """One row per device, overwritten: its health view (central/fleet_health.py)."""

    dev = pw.CharField(primary_key=True, max_length=64)
    updated_at = pw.DoubleField()
    body = pw.TextField()

    class Meta:
        table_name = "devicehealthrow"


class Payment(_Declared):
    """A payment central tracks until its outcome is final (central/payments.py)."""

    # Keyed by the pay.create request id: an unknown outcome has no payment_id yet.
    request_id = pw.CharField(primary_key=True, max_length=128)
    payment_id = pw.CharField(max_length=128, null=True, index=True)
    dev = pw.CharField(max_length=64, index=True)
    patient_id = pw.CharField(max_length=64)
    amount_fen = pw.IntegerField()
    method = pw.CharField(max_length=16)
    state = pw.CharField(max_length=16, index=True)
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()
    deadline = pw.DoubleField()
    checks = pw.IntegerField(default=0)
    reason = pw.CharField(max_length=200, null=True)
    # The request body for re-asking with the same key; None when it held a wallet
    # payment code, which is never stored (those are resolved by the device's resend).
    request_body = pw.TextField(null=True)
    # 1 once central sent the device a final answer (approved/declined/reversed) for
    # this payment; an approved payment the device never heard of is not resolved.
    told = pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])

    class Meta:
        table_name = "payment"


@dataclass(frozen=True, slots=True)
class Models:
    """One store's models, bound to its database (peewee model classes)."""

    Device: Any
    RequestLog: Any
    Attempted: Any
    AuditRecord: Any
    DeviceAudit: Any
    DeviceEvent: Any
    DeviceHealthRow: Any
    Payment: Any

    def all(self) -> list[Any]:
        """Every model, in creation order."""
        return [self.Device, self.RequestLog, self.Attempted, self.AuditRecord,
                self.DeviceEvent, self.Payment, self.DeviceHealthRow, self.DeviceAudit]


_DECLARED = (Device, RequestLog, Attempted, AuditRecord, DeviceAudit, DeviceEvent,
             DeviceHealthRow, Payment)


def bind(model: type[pw.Model], db: pw.Database) -> Any:
    """A subclass of ``model`` bound to ``db``, under the same table name."""
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": model.__module__,
                                           "__doc__": model.__doc__})


def bind_models(db: pw.Database) -> Models:
    """This store's copies of every model, bound to ``db``."""
    return Models(**{m.__name__: bind(m, db) for m in _DECLARED})
