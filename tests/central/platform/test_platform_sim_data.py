"""Fresh databases: real migrations, deterministic seeding, WAL journal."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from central.platform.sim.app import create_app
from central.platform.sim.config import PlatformSimSettings
from central.platform.sim.models import MIGRATIONS, migrate, open_database


def _snapshot(db: Path, seed: int, clock: Any) -> list[Any]:
    app = create_app(PlatformSimSettings(db_path=db, seed=seed, admin_enabled=True),
                     clock=clock)
    with TestClient(app) as c:
        return [c.get("/admin/patients").json(),
                c.get("/api/v1/slots", params={"dept_code": "XNK", "date": "2025-03-12"}).json()]


def test_same_seed_same_hospital_other_seed_other_hospital(tmp_path: Path, clock: Any) -> None:
    a = _snapshot(tmp_path / "a.db", 11, clock)
    b = _snapshot(tmp_path / "b.db", 11, clock)
    c = _snapshot(tmp_path / "c.db", 12, clock)
    assert a == b
    assert a[0] != c[0]


def test_migrations_run_once_and_the_journal_is_wal(tmp_path: Path, clock: Any) -> None:
    db = tmp_path / "m.db"
    create_app(PlatformSimSettings(db_path=db), clock=clock)
    schema = open_database(db)
    assert migrate(schema, "2025-03-10T00:00:00Z") == MIGRATIONS[-1][0]
    with schema.db.connection_context():
        assert schema.SchemaVersion.select().count() == len(MIGRATIONS)
        assert schema.PatientRow.select().count() == 50
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    # Re-opening an existing database neither re-seeds nor fails.
    create_app(PlatformSimSettings(db_path=db), clock=clock)
    with schema.db.connection_context():
        assert schema.PatientRow.select().count() == 50
