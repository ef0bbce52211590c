"""The store's schema, as named steps applied once each, on SQLite and PostgreSQL alike.

``store_migration`` records each step applied (name, time). Every step is also safe on a
database made before that table existed — a step adding a column first looks whether the
column is there (playhouse.migrate's ``SchemaMigrator`` does the ALTER on either engine) —
so a store of any earlier version opens and is brought up to date in one transaction.
Modules with tables of their own (authz, staff, dashboard users, fleet, telemetry history)
create them on open with ``CREATE TABLE IF NOT EXISTS`` in the SQL both engines take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import peewee as pw
from playhouse.migrate import SchemaMigrator, migrate

from central.store import sql
from central.store.models import bind

__all__ = ["STEPS", "applied", "apply"]


class _Migration(pw.Model):
    name = pw.CharField(primary_key=True, max_length=100)
    applied_at = pw.DoubleField()

    class Meta:
        table_name = "store_migration"


def _tables(db: pw.Database, m: Any) -> None:
    db.create_tables(m.all())  # IF NOT EXISTS: an existing database is kept as is
    db.execute_sql(sql.AUDIT_ACTION_INDEX)


def _add_column(model_attr: str, column: str, field: pw.Field) -> Callable[[pw.Database, Any],
                                                                           None]:
    def step(db: pw.Database, m: Any) -> None:
        table = getattr(m, model_attr)._meta.table_name
        if column not in {c.name for c in db.get_columns(table)}:
            migrate(SchemaMigrator.from_database(db).add_column(table, column, field))
    return step


def _to_bigint(model_attr: str, column: str) -> Callable[[pw.Database, Any], None]:
    """Widen an INTEGER column to BIGINT on PostgreSQL, where INTEGER is 32-bit (every store,
    new ones too: the model keeps ``IntegerField`` so SQLite's DDL stays the first release's,
    and SQLite's INTEGER holds 64 bits already)."""
    def step(db: pw.Database, m: Any) -> None:
        if isinstance(db, pw.PostgresqlDatabase):
            table = getattr(m, model_attr)._meta.table_name
            db.execute_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE BIGINT')
    return step


def _zero() -> pw.IntegerField:
    # A database-side DEFAULT as well: the hot path's INSERTs leave the column out.
    return pw.IntegerField(default=0, constraints=[pw.SQL("DEFAULT 0")])


#: In order; a name is never reused or renumbered once released.
STEPS: list[tuple[str, Callable[[pw.Database, Any], None]]] = [
    ("0001_tables", _tables),
    # A store made before owners were recorded.
    ("0002_requestlog_owner", _add_column("RequestLog", "owner",
                                          pw.CharField(max_length=100, null=True))),
    ("0003_payment_told", _add_column("Payment", "told", _zero())),
    # A store made before replies were minimised on retention.
    ("0004_requestlog_purged", _add_column("RequestLog", "purged", _zero())),
    # boot_seq is a protocol Count, beyond 32 bits on a device that counts in epoch ms.
    ("0005_device_boot_seq_bigint", _to_bigint("Device", "last_boot_seq")),
]

#: Held (PostgreSQL advisory lock) while the schema changes: here, and in the modules that
#: create tables of their own on open, so two instances starting at once on an empty database
#: never race on CREATE TABLE IF NOT EXISTS (which PostgreSQL does not make atomic).
SCHEMA_LOCK = 0x796B7401  # "ykt" 01


def apply(db: pw.Database, models: Any) -> list[str]:
    """Apply every step not yet recorded; returns the names applied now."""
    M = bind(_Migration, db)
    done_now: list[str] = []
    with db.atomic():
        if isinstance(db, pw.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        db.create_tables([M])
        have = {r.name for r in M.select(M.name)}
        for name, step in STEPS:
            if name in have:
                continue
            step(db, models)
            M.create(name=name, applied_at=time.time())
            done_now.append(name)
    return done_now


def applied(db: pw.Database) -> list[str]:
    """The steps recorded in ``db``, in order (tests, ``ykt central`` status)."""
    M = bind(_Migration, db)
    return [r.name for r in M.select(M.name).order_by(M.name)]
