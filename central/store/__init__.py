"""Central's store: devices, request dedup log, hash-chained audit, recent events, payments.

peewee on SQLite (WAL, ``synchronous=FULL``) for a single site; the same models on
PostgreSQL (``[store] url``) when several ``ykt central`` instances share the load —
central/store/engine.py says what differs, central/store/migrations.py brings a database of
any earlier version up to date on either engine, and docs/scaling.md how the dedup, payment
and audit-chain guarantees hold between instances.

Layout: ``models.py`` declares every table once (explicit table names, kept from the first
release so existing databases open unchanged); ``core.py`` opens the database and runs
write transactions; one module per concern extends it — ``devices.py``, ``requests.py``
(dedup), ``audit.py`` (central's chain and the devices' chains), ``events.py`` (events and
fleet health), ``payments.py`` (what authorization asks about payment rows); :class:`Store`
below is their sum. ``sql.py`` holds every raw SQL statement on the store's tables:
everything else goes through the models (the rule is written there).

Two ways to write, one transaction. :meth:`Store.atomic` is the write transaction
(``BEGIN IMMEDIATE`` plus an in-process lock; nested, a savepoint). The forwarder's hot path
uses :meth:`Store.write`: one writer thread owns the write connection, runs up to
``MAX_BATCH`` queued operations in one transaction (group commit: one fsync for many
requests) and resolves each caller's future with ``call_soon_threadsafe`` only after that
commit — so nothing is published before the commit holding it. Each public write has an
``*_in_tx`` twin (``begin_request_in_tx``, ``finish_request_in_tx``,
``append_audit_in_tx`` …) for use inside a transaction the caller holds — an operation given
to :meth:`Store.write`, or an ``atomic()`` block; called outside one it raises
:class:`StoreError`. :meth:`Store.connection` gives the ``sqlite3`` connection of that
transaction to modules with tables of their own (central/authz.py, central/staff.py).

``last_seen`` touches are buffered and flushed by the writer once a second, and the
devices' enabled flags and roles are cached (dropped on every registry write, and after
``DEVICE_CACHE_S`` for writes made by other processes). See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from central.store.core import DEVICE_CACHE_S, MAX_BATCH, TOUCH_FLUSH_S
from central.store.devices import DeviceOps
from central.store.events import EventOps
from central.store.payments import PaymentOps
from central.store.requests import RequestOps
from central.store.values import AuditEntry, Begin, DeviceInfo, StoreError

__all__ = [
    "DEVICE_CACHE_S",
    "MAX_BATCH",
    "TOUCH_FLUSH_S",
    "AuditEntry",
    "Begin",
    "DeviceInfo",
    "Store",
    "StoreError",
    "open_store",
]


class Store(DeviceOps, RequestOps, EventOps, PaymentOps):
    """Central's database; open with :func:`open_store`."""


def open_store(target: Path | str, **kwargs: Any) -> Store:
    """Open (creating if needed, migrating) central's store.

    ``target``: a SQLite file, or a ``postgresql://`` URL (central/store/engine.py); the
    PostgreSQL password, if any, as ``password=``.
    """
    return Store(target, **kwargs)
