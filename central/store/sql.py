"""Every raw SQL statement on the store's tables, naming each table by its model.

The rule (one data-access style): store code queries through the peewee models, except the
statements below, run on the plain DB-API connection (:meth:`Store.connection`). Each is
written once in the SQL that both SQLite and PostgreSQL take (``?`` placeholders, which the
connection turns into psycopg's ``%s``; ``ON CONFLICT``; no two-argument MIN/MAX — see
central/store/engine.py). They
are the forwarder's hot path — dedup, reply, audit append, ``last_seen`` — where peewee's
query building cost more CPU per request than SQLite itself (docs/performance.md, "Uplink"),
the device audit checks that run per ``audit`` event, a few multi-row statements, and the
schema steps peewee does not express (a named index, columns added to older databases).
Nothing else in the store writes SQL text, and no statement names a table literally: table
names come from ``Model._meta.table_name`` (central/store/models.py), so a table is named in
exactly one place. Modules that own tables of their own in central's database (authz,
staff) keep their own statements on those tables only.
"""

# ruff: noqa: S608 — the f-strings below interpolate table names from the models, never input

from __future__ import annotations

from central.store.models import (
    Attempted,
    AuditRecord,
    Device,
    DeviceAudit,
    Payment,
    RequestLog,
)

_DEVICE = Device._meta.table_name
_REQ = RequestLog._meta.table_name
_ATTEMPTED = Attempted._meta.table_name
_AUDIT = AuditRecord._meta.table_name
_DEV_AUDIT = DeviceAudit._meta.table_name
_PAYMENT = Payment._meta.table_name

# -- devices -------------------------------------------------------------------------------
# Never backwards: a birth (apply_state) may have written a newer last_seen meanwhile.
# Parameters: (t, dev, t).
TOUCH = (f"UPDATE {_DEVICE} SET last_seen = ? WHERE id = ? AND "
         "(last_seen IS NULL OR last_seen < ?)")
DEVICE_ROLE = f"SELECT role FROM {_DEVICE} WHERE id = ?"

# -- request dedup -------------------------------------------------------------------------
REQ_GET = (f"SELECT dev, type, body_hash, state, reply, received_at, owner FROM {_REQ} "
           "WHERE id = ?")


def req_get_locked(for_update: str) -> str:
    """:data:`REQ_GET` holding the row until the write ends (PostgreSQL: ``FOR UPDATE``)."""
    return REQ_GET + for_update

# A new id is claimed by this INSERT alone (rowcount 1); a known one is then read, locked.
REQ_NEW = (f"INSERT INTO {_REQ} (id, dev, type, body_hash, state, received_at, owner) "
           "VALUES (?, ?, ?, ?, 'received', ?, ?) ON CONFLICT (id) DO NOTHING")
REQ_TAKE = f"UPDATE {_REQ} SET received_at = ?, owner = ? WHERE id = ?"
REQ_DONE = f"UPDATE {_REQ} SET state = 'done', reply = ?, done_at = ? WHERE id = ?"
REQ_SET_REPLY = f"UPDATE {_REQ} SET reply = ? WHERE id = ?"
ATTEMPTED_ADD = (f"INSERT INTO {_ATTEMPTED} (id, dev, at) VALUES (?, ?, ?) "
                 "ON CONFLICT (id) DO NOTHING")
ATTEMPTED_GET = f"SELECT 1 FROM {_ATTEMPTED} WHERE id = ?"

# -- retention -----------------------------------------------------------------------------
REQ_REDACT = f"UPDATE {_REQ} SET reply = ?, purged = 1 WHERE id = ?"
REQ_DELETE_OLD = f"DELETE FROM {_REQ} WHERE received_at < ?"
ATTEMPTED_DELETE_OLD = f"DELETE FROM {_ATTEMPTED} WHERE at < ?"


def req_personal_done(n_types: int) -> str:
    """Done, not yet minimised requests of ``n_types`` types finished before a time."""
    marks = ",".join("?" * n_types)
    return (f"SELECT id, reply FROM {_REQ} WHERE state = 'done' AND type IN ({marks}) AND "
            "done_at < ? AND reply IS NOT NULL AND purged = 0")


# -- central's audit chain -----------------------------------------------------------------
AUDIT_ADD = (f"INSERT INTO {_AUDIT} (seq, ts, actor, action, detail, prev_hash, hash) "
             "VALUES (?, ?, ?, ?, ?, ?, ?)")

# -- device audit chains -------------------------------------------------------------------
DEV_AUDIT_HASH = f"SELECT hash FROM {_DEV_AUDIT} WHERE dev = ? AND seq = ?"
DEV_AUDIT_CONFLICT = f"UPDATE {_DEV_AUDIT} SET status = 'conflict' WHERE dev = ? AND seq = ?"
# Two instances may store the same record at once (a resend after a lost PUBACK reaching
# the other one): the second INSERT does nothing and is then read as a duplicate.
DEV_AUDIT_ADD = (f"INSERT INTO {_DEV_AUDIT} (dev, seq, ts, actor, action, detail, prev_hash, "
                 "hash, status, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT (dev, seq) DO NOTHING")
DEV_AUDIT_GAP_LINK = (f"SELECT prev_hash FROM {_DEV_AUDIT} WHERE dev = ? AND seq = ? AND "
                      "status = 'gap'")
DEV_AUDIT_SET_STATUS = f"UPDATE {_DEV_AUDIT} SET status = ? WHERE dev = ? AND seq = ?"
DEV_AUDIT_SUMMARY = ("SELECT COUNT(*), MAX(seq), MIN(CASE WHEN status != 'ok' THEN seq END) "
                     f"FROM {_DEV_AUDIT} WHERE dev = ?")
DEV_AUDIT_SEQS = f"SELECT seq FROM {_DEV_AUDIT} WHERE dev = ? ORDER BY seq"

# -- payments (read by authorization on the hot path) ---------------------------------------
PAYMENT_OWNER = f"SELECT dev, patient_id FROM {_PAYMENT} WHERE payment_id = ?"

# -- schema steps peewee's create_tables does not take -------------------------------------
# The dashboard's security events are audit records picked by action (name kept as created).
AUDIT_ACTION_INDEX = f"CREATE INDEX IF NOT EXISTS auditrecord_action ON {_AUDIT} (action, seq)"
# (Columns added after the first release: central/store/migrations.py.)
