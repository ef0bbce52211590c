"""Fixtures for the platform tests: a controllable clock and a seeded platform database."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.platform.sim.app import create_app
from central.platform.sim.config import PlatformSimSettings

#: Monday 2025-03-10 09:00 in Shanghai: morning sessions open, booking until 11:00.
START = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)
SEED = 424242
DEMO_PIN = "246810"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set_local(self, hhmm: str, tz_offset_h: int = 8) -> None:
        """Move to a wall time of the current local (UTC+8) day."""
        local = self.now + timedelta(hours=tz_offset_h)
        h, m = map(int, hhmm.split(":"))
        self.now = local.replace(hour=h, minute=m) - timedelta(hours=tz_offset_h)


@pytest.fixture
def demo_pin() -> str:
    return DEMO_PIN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seeded database (real migrations), copied per test to save the seeding time."""
    path = tmp_path_factory.mktemp("template") / "platform.db"
    create_app(PlatformSimSettings(db_path=path, seed=SEED, demo_staff_pin=DEMO_PIN),
               clock=FakeClock())
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


@pytest.fixture
def settings(tmp_path: Path, template_db: Path) -> PlatformSimSettings:
    db = tmp_path / "platform.db"
    shutil.copyfile(template_db, db)
    return PlatformSimSettings(db_path=db, seed=SEED, admin_enabled=True,
                               demo_staff_pin=DEMO_PIN, wallet_pending_s=10, fault_hang_s=2)


@pytest.fixture
def make_app(settings: PlatformSimSettings, clock: FakeClock) -> Callable[..., FastAPI]:
    def make(**changes: object) -> FastAPI:
        return create_app(settings.model_copy(update=changes), clock=clock)
    return make


@pytest.fixture
def client(make_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=True) as c:
        yield c
