"""Peewee models of the reference platform and its migrations.

The model classes here are unbound; ``open_database`` binds private subclasses to one
SQLite file, so several platforms (tests, a site-in-a-box) can live in one process.
Foreign keys are plain columns: the platform's own ids are strings like ``P000001``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import peewee as pw

__all__ = ["MIGRATIONS", "Schema", "migrate", "open_database"]


class _Base(pw.Model):
    class Meta:
        legacy_table_names = False


class SchemaVersion(_Base):
    """Applied migrations."""

    version = pw.IntegerField(primary_key=True)
    applied_at = pw.CharField()


class Setting(_Base):
    """Key/value facts about the generated data (seed, counters)."""

    key = pw.CharField(primary_key=True)
    value = pw.TextField()


class DepartmentRow(_Base):
    """An outpatient department."""

    code = pw.CharField(primary_key=True)
    name = pw.CharField()
    name_en = pw.CharField()
    location = pw.CharField()
    floor = pw.CharField()
    position = pw.IntegerField()


class DoctorRow(_Base):
    """A doctor; works some half-day sessions per week."""

    doctor_id = pw.CharField(primary_key=True)
    name = pw.CharField()
    sex = pw.CharField()
    dept_code = pw.CharField(index=True)
    title = pw.CharField()
    specialty = pw.CharField()
    fee_fen = pw.IntegerField()
    capacity = pw.IntegerField()
    weekdays_am = pw.CharField()  # weekday digits 0–6 (Monday = 0) with a morning clinic
    weekdays_pm = pw.CharField()


class ScheduleDay(_Base):
    """Marks a date whose slots have been generated."""

    date = pw.CharField(primary_key=True)


class SlotRow(_Base):
    """One doctor's half-day session with its remaining numbers."""

    slot_id = pw.CharField(primary_key=True)
    doctor_id = pw.CharField()
    dept_code = pw.CharField()
    date = pw.CharField()
    period = pw.CharField()
    start = pw.CharField()
    end = pw.CharField()
    closes_at = pw.CharField()
    capacity = pw.IntegerField()
    booked = pw.IntegerField()
    next_queue_no = pw.IntegerField()
    fee_fen = pw.IntegerField()

    class Meta:
        indexes = ((("dept_code", "date"), False),)


class PatientRow(_Base):
    """A registered patient with a prepaid account."""

    patient_id = pw.CharField(primary_key=True)
    card_no = pw.CharField(unique=True)
    id_number = pw.CharField(unique=True)
    ehc_id = pw.CharField(unique=True)  # 64 hex: the e-health card identifier
    name = pw.CharField()
    sex = pw.CharField()
    birth_date = pw.CharField()
    phone = pw.CharField(null=True)
    balance_fen = pw.IntegerField()
    insured = pw.BooleanField()


class BookingRow(_Base):
    """A registration (挂号)."""

    booking_id = pw.CharField(primary_key=True)
    visit_no = pw.CharField(unique=True)
    patient_id = pw.CharField(index=True)
    slot_id = pw.CharField(index=True)
    queue_no = pw.IntegerField()
    pay_method = pw.CharField()
    insured = pw.BooleanField()
    fee_fen = pw.IntegerField()
    status = pw.CharField()  # booked | paid | cancelled
    payment_id = pw.CharField(null=True)
    created_at = pw.CharField()
    # migration 2: check-in (预约取号), slip printed, insurance's part of the fee
    checked_in_at = pw.CharField(null=True)
    slip_printed = pw.BooleanField(default=False)
    insurance_fen = pw.IntegerField(default=0)


class BillRow(_Base):
    """An outpatient bill (处方/检查单) awaiting payment."""

    bill_id = pw.CharField(primary_key=True)
    patient_id = pw.CharField(index=True)
    date = pw.CharField()
    dept_name = pw.CharField()
    total_fen = pw.IntegerField()
    status = pw.CharField()  # unpaid | paid
    payment_id = pw.CharField(null=True)


class BillItemRow(_Base):
    """A line of a bill."""

    bill_id = pw.CharField(index=True)
    position = pw.IntegerField()
    name = pw.CharField()
    qty = pw.IntegerField()
    unit_price_fen = pw.IntegerField()
    amount_fen = pw.IntegerField()


class PaymentRow(_Base):
    """A payment and its state machine."""

    payment_id = pw.CharField(primary_key=True)
    patient_id = pw.CharField(index=True)
    purpose = pw.CharField()
    refs = pw.TextField()  # JSON list
    amount_fen = pw.IntegerField()
    method = pw.CharField()
    state = pw.CharField()  # approved | declined | pending | unknown | reversed
    resolves_to = pw.CharField(null=True)
    resolves_at = pw.CharField(null=True)
    reason = pw.CharField(null=True)
    txn_id = pw.CharField(null=True)
    auth_code_masked = pw.CharField(null=True)  # never the code in clear
    refunded_fen = pw.IntegerField(default=0)
    created_at = pw.CharField()
    local_date = pw.CharField()  # settlement day (platform time zone)


class RefundRow(_Base):
    """A refund against an approved payment."""

    refund_id = pw.CharField(primary_key=True)
    payment_id = pw.CharField(index=True)
    amount_fen = pw.IntegerField()
    reason = pw.CharField()
    created_at = pw.CharField()


class ReportRow(_Base):
    """A lab report."""

    report_no = pw.CharField(primary_key=True)
    patient_id = pw.CharField(index=True)
    specimen_barcode = pw.CharField(unique=True)
    title = pw.CharField()
    specimen = pw.CharField()
    dept_name = pw.CharField()
    doctor = pw.CharField()
    sampled_at = pw.CharField()
    reported_at = pw.CharField(null=True)
    printed = pw.BooleanField(default=False)
    verify_token = pw.CharField()


class ReportItemRow(_Base):
    """One analyte result of a report."""

    report_no = pw.CharField(index=True)
    position = pw.IntegerField()
    code = pw.CharField()
    name = pw.CharField()
    value = pw.CharField()
    unit = pw.CharField()
    ref_range = pw.CharField()
    flag = pw.CharField()


class HotlistChange(_Base):
    """A versioned change of the lost-card list."""

    version = pw.IntegerField(primary_key=True)
    card_no = pw.CharField(index=True)
    action = pw.CharField()  # add | remove
    reason = pw.CharField()
    created_at = pw.CharField()


class StaffRow(_Base):
    """A staff account; the PIN is stored as a salted scrypt hash."""

    staff_id = pw.CharField(primary_key=True)
    badge = pw.CharField(unique=True)
    name = pw.CharField()
    role = pw.CharField()
    pin_hash = pw.CharField()
    failures = pw.IntegerField(default=0)
    #: Unix time until which sign-in is refused after too many failures (a timed lock, as
    #: hospital systems do: a permanent one would let anyone lock a cashier out).
    locked_until = pw.FloatField(null=True)


class IdempotencyRow(_Base):
    """The stored outcome of a mutating request, by its idempotency key."""

    key = pw.CharField(primary_key=True)
    op = pw.CharField()
    body_hash = pw.CharField()
    status_code = pw.IntegerField()
    response = pw.TextField()
    created_at = pw.CharField()


class EffectCounter(_Base):
    """How many times each operation's effect was committed (exactly-once evidence)."""

    op = pw.CharField(primary_key=True)
    count = pw.IntegerField()


@dataclass(frozen=True)
class Schema:
    """The model classes bound to one database."""

    db: pw.SqliteDatabase
    SchemaVersion: type[SchemaVersion]
    Setting: type[Setting]
    DepartmentRow: type[DepartmentRow]
    DoctorRow: type[DoctorRow]
    ScheduleDay: type[ScheduleDay]
    SlotRow: type[SlotRow]
    PatientRow: type[PatientRow]
    BookingRow: type[BookingRow]
    BillRow: type[BillRow]
    BillItemRow: type[BillItemRow]
    PaymentRow: type[PaymentRow]
    RefundRow: type[RefundRow]
    ReportRow: type[ReportRow]
    ReportItemRow: type[ReportItemRow]
    HotlistChange: type[HotlistChange]
    StaffRow: type[StaffRow]
    IdempotencyRow: type[IdempotencyRow]
    EffectCounter: type[EffectCounter]

    def tables(self) -> list[type[pw.Model]]:
        """All bound model classes except the migration bookkeeping."""
        return [
            getattr(self, f.name)
            for f in fields(self)
            if f.name not in {"db", "SchemaVersion"}
        ]


def open_database(path: Path) -> Schema:
    """Open (creating if needed) the SQLite file and bind the models to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = pw.SqliteDatabase(
        str(path),
        pragmas={
            "journal_mode": "wal",
            "synchronous": "full",  # money lives here: durable commits
            "foreign_keys": 1,
            "busy_timeout": 5000,
        },
        timeout=5,
    )
    bound: dict[str, Any] = {"db": db}
    for f in fields(Schema):
        if f.name == "db":
            continue
        base = globals()[f.name]
        meta = type("Meta", (), {"database": db, "table_name": base._meta.table_name})
        bound[f.name] = type(f.name, (base,), {"Meta": meta, "__module__": __name__})
    return Schema(**bound)


def _initial(schema: Schema) -> None:
    schema.db.create_tables(schema.tables())


def _booking_checkin(schema: Schema) -> None:
    """Bookings learn check-in time, slip printed and the insurance's part of the fee."""
    from playhouse.migrate import SqliteMigrator
    from playhouse.migrate import migrate as run

    b = schema.BookingRow
    table = b._meta.table_name
    have = {c.name for c in schema.db.get_columns(table)}
    # A database made by _initial with today's models already has them.
    ops = [SqliteMigrator(schema.db).add_column(table, name, getattr(b, name))
           for name in ("checked_in_at", "slip_printed", "insurance_fen") if name not in have]
    if ops:
        run(*ops)


def _staff_timed_lock(schema: Schema) -> None:
    """Staff accounts lock for a while after repeated failures instead of for good."""
    from playhouse.migrate import SqliteMigrator
    from playhouse.migrate import migrate as run

    s = schema.StaffRow
    table = s._meta.table_name
    if not schema.db.table_exists(table):
        schema.db.create_tables([s])
    elif "locked_until" not in {c.name for c in schema.db.get_columns(table)}:
        run(SqliteMigrator(schema.db).add_column(table, "locked_until", s.locked_until))


#: Ordered migrations; each runs once in its own transaction. Append, never edit.
MIGRATIONS: tuple[tuple[int, Callable[[Schema], None]], ...] = (
    (1, _initial), (2, _booking_checkin), (3, _staff_timed_lock),
)


def migrate(schema: Schema, now_iso: str) -> int:
    """Apply pending migrations; return the schema version afterwards."""
    db = schema.db
    with db.connection_context():
        db.create_tables([schema.SchemaVersion])
        done = {row.version for row in schema.SchemaVersion.select()}
        for version, step in MIGRATIONS:
            if version in done:
                continue
            with db.atomic("IMMEDIATE"):
                step(schema)
                schema.SchemaVersion.create(version=version, applied_at=now_iso)
        return max([v for v, _ in MIGRATIONS] + list(done))
