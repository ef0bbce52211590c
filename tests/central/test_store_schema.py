"""Central store schema: databases made by earlier versions open unchanged; tables named once."""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from central.store import Begin, StoreError, models, open_store, sql
from yikatong.common.errors import LocalizedError

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.sql"
T0 = datetime(2026, 3, 1, 9, 0, 0, 123000, tzinfo=UTC)
V1_TABLES = {"attempted", "auditrecord", "device", "deviceaudit", "deviceevent",
             "devicehealthrow", "payment", "requestlog"}


def _v1_db(path: Path, *, drop: tuple[tuple[str, str], ...] = ()) -> Path:
    con = sqlite3.connect(path)
    try:
        con.executescript(FIXTURE.read_text())
        for table, column in drop:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        con.commit()
    finally:
        con.close()
    return path


def _schema(path: Path) -> dict[str, str]:
    """Every table and index but the migrations' own record (central/store/migrations.py)."""
    con = sqlite3.connect(path)
    try:
        return {name: ddl for name, ddl in con.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
            if name != "store_migration"}
    finally:
        con.close()


def test_models_name_the_tables_of_the_first_release() -> None:
    declared = {m._meta.table_name for m in models.bind_models(None).all()}
    assert declared == V1_TABLES


def test_a_store_made_by_the_previous_version_opens_unchanged(tmp_path: Path) -> None:
    db = _v1_db(tmp_path / "central.db")
    before = _schema(db)
    store = open_store(db)
    try:
        assert _schema(db) == before  # no table, column or index added or renamed
        assert store.verify_chain() == (True, None)
        assert [e.action for e in store.audit_entries()] == [
            "device.register", "request.done", "device_audit.flagged", "payment.created"]
        d = store.device("kiosk-001")
        assert d is not None and d.role == "kiosk" and d.online and d.last_boot_seq == 4
        assert store.device_role("kiosk-001") == "kiosk" and store.device_enabled("kiosk-001")
        # the dedup log answers a resend with the stored reply
        done = store.begin_request("req-000001", "kiosk-001", "patient.identify", "h" * 64, T0,
                                   120)
        assert done == Begin("done", b"stored reply")
        assert store.was_attempted("req-000002")
        assert store.device_audit_state("kiosk-001")["first_bad_seq"] == 1
        assert store.recent_events("kiosk-001")[0]["body"] == {"doc": "slip"}
        h = store.device_health("kiosk-001")
        assert h is not None and h.disk_free_mb == 8000
        assert store.Payment.get(store.Payment.request_id == "req-000002").amount_fen == 1500
        # and new records link to the old chain
        store.audit(T0 + timedelta(seconds=5), "registry", "device.disable", {"dev": "kiosk-001"})
        assert store.verify_chain() == (True, None)
        assert store.audit_entries()[-1].seq == 5
    finally:
        store.close()


def test_a_store_from_before_owners_purges_and_told_gets_the_columns(tmp_path: Path) -> None:
    db = _v1_db(tmp_path / "central.db", drop=(("requestlog", "owner"),
                                               ("requestlog", "purged"), ("payment", "told")))
    store = open_store(db)
    try:
        cols = {c.name for c in store.db.get_columns("requestlog")}
        assert {"owner", "purged"} <= cols
        assert "told" in {c.name for c in store.db.get_columns("payment")}
        later = T0 + timedelta(seconds=1)
        assert store.begin_request("req-000003", "kiosk-001", "reg.book", "b" * 64, later, 120,
                                   owner="central-a/boot2").status == "new"
    finally:
        store.close()


def test_a_new_store_has_the_same_tables_and_indexes(tmp_path: Path) -> None:
    old = _schema(_v1_db(tmp_path / "old.db"))
    store = open_store(tmp_path / "new.db")
    store.close()
    new = _schema(tmp_path / "new.db")
    assert new.keys() == old.keys()
    # identical DDL, except `attempted`, now a model (same columns, id NOT NULL)
    assert {k for k in old if old[k] != new[k]} == {"attempted"}


def test_no_sql_in_central_names_a_store_table_literally() -> None:
    names = "|".join(sorted(V1_TABLES))
    literal = re.compile(rf"\b(FROM|INTO|UPDATE|TABLE|ON|JOIN)\s+\"?({names})\b")
    central = Path(sql.__file__).parents[1]
    hits = [f"{p.relative_to(central)}:{n}" for p in sorted(central.rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert hits == []  # table names come from Model._meta.table_name (central/store/sql.py)


def test_in_tx_methods_refuse_to_run_outside_a_write(tmp_path: Path) -> None:
    store = open_store(tmp_path / "central.db")
    try:
        with pytest.raises(StoreError, match="outside a write transaction"):
            store.append_audit_in_tx(T0, "t", "x", {})
        with store.atomic():
            assert store.in_write()
            store.append_audit_in_tx(T0, "t", "x", {})
        assert not store.in_write()
        assert store.verify_chain() == (True, None)
    finally:
        store.close()


def test_store_error_is_a_localized_error() -> None:
    err = StoreError("naive datetime given to the store", "时间缺少时区")
    assert isinstance(err, LocalizedError)
    assert (err.code, err.message, err.message_zh) == (
        "store_error", "naive datetime given to the store", "时间缺少时区")


def test_two_stores_in_one_process_keep_their_own_databases(tmp_path: Path) -> None:
    a, b = open_store(tmp_path / "a.db"), open_store(tmp_path / "b.db")
    try:
        a.add_device("kiosk-001", "kiosk", T0)
        b.add_device("desk-001", "desk", T0)
        assert [d.id for d in a.devices()] == ["kiosk-001"]
        assert [d.id for d in b.devices()] == ["desk-001"]
        assert a.Device is not b.Device
    finally:
        a.close()
        b.close()
