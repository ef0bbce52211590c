"""``/api/status``'s audit chain check: incremental, with a periodic full pass.

Each status call checks only the records appended since the last call (its cost does not
grow with the chain: counted in records read), a pass over the whole chain starts again
every ``AUDIT_FULL_EVERY_S`` (an old record altered after it was checked is found then), and
an administrator can ask for the whole chain at once (``?full=1``). On SQLite and
PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import BOTH_ENGINES

from central.dashboard.app import AUDIT_FULL_EVERY_S, AuditChainCheck, create_dashboard
from central.dashboard.auth import StaffAccounts
from central.registry import Registry
from central.store import Store, open_store
from yikatong.protocol.audit import GENESIS_HASH

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ADMIN = "status-audit-admin-token"
BOOT = {"Authorization": f"Bearer {ADMIN}"}
CSRF = {"X-Requested-With": "ykt"}

pytestmark = BOTH_ENGINES


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path, central_db):
    s = open_store(central_db(tmp_path))
    yield s
    s.close()


def append(store: Store, n: int) -> None:
    for i in range(n):
        store.audit(T0 + timedelta(seconds=i), "forwarder", "request.done", {"n": i, "名": "张"})


def tamper(store: Store, seq: int) -> None:
    store.connection().execute("UPDATE auditrecord SET detail = ? WHERE seq = ?",
                               ('{"n":99}', seq))


@pytest.fixture
async def env(tmp_path: Path, store: Store):
    clock = Clock()
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试医院", accounts=StaffAccounts(store, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        yield client, clock, app.state.audit_check


async def status(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/status", headers=BOOT, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_verify_since_reads_the_new_records_and_the_one_it_started_from(store) -> None:
    append(store, 6)
    assert store.verify_chain_since(0, GENESIS_HASH, 100)[0] is None
    bad, seq, h, read = store.verify_chain_since(0, GENESIS_HASH, 4)
    assert (bad, seq, read) == (None, 4, 4)
    assert store.verify_chain_since(seq, h, 100)[:2] == (None, 6)
    assert store.verify_chain_since(seq, h, 100)[3] == 3  # record 4 again, then 5 and 6
    head = store.verify_chain_since(seq, h, 100)[2]
    assert store.verify_chain_since(6, head, 100) == (None, 6, head, 1)
    # An altered new record, the start record changed or gone: each is the bad seq.
    append(store, 2)
    tamper(store, 8)
    assert store.verify_chain_since(6, head, 100)[:2] == (8, 7)
    assert store.verify_chain_since(6, "0" * 64, 100)[:2] == (6, 6)
    store.connection().execute("DELETE FROM auditrecord WHERE seq >= 6")
    assert store.verify_chain_since(6, head, 100)[:2] == (6, 6)


async def test_a_status_call_reads_only_what_was_appended_whatever_the_chain_length(
        env, store) -> None:
    client, _clock, check = env
    per_call = {}
    for length in (40, 400):
        append(store, length - (await status(client))["audit_check"]["checked_seq"])
        st = await status(client)  # this call catches up with the records just appended
        assert st["audit_chain"] == {"ok": True, "broken_at": None}
        assert st["audit_check"]["checked_seq"] == length
        append(store, 3)
        before = check.rows_read
        st = await status(client)
        per_call[length] = check.rows_read - before
        assert st["audit_check"]["checked_seq"] == length + 3
        before = check.rows_read
        await status(client)
        assert check.rows_read - before == 1  # nothing new: the last record, read again
    assert per_call == {40: 4, 400: 4}  # the three new records and the one before them


async def test_an_old_record_altered_is_found_by_the_next_full_pass(env, store) -> None:
    client, clock, _check = env
    append(store, 30)
    first = await status(client)
    assert first["audit_chain"]["ok"] is True
    assert first["audit_check"]["full_at"] == T0.isoformat()  # the first pass: all of it
    tamper(store, 5)
    clock.now += timedelta(seconds=AUDIT_FULL_EVERY_S - 1)
    # Before the next pass the check only looks at new records: record 5 is not read again.
    assert (await status(client))["audit_chain"] == {"ok": True, "broken_at": None}
    clock.now += timedelta(seconds=1)
    st = await status(client)
    assert st["audit_chain"] == {"ok": False, "broken_at": 5}
    assert st["audit_check"]["full_at"] == T0.isoformat()  # that pass did not get through
    append(store, 2)  # stays reported, whatever is appended after
    assert (await status(client))["audit_chain"] == {"ok": False, "broken_at": 5}


async def test_a_pass_walks_a_long_chain_a_batch_per_call(store) -> None:
    append(store, 25)
    clock = Clock()
    check = AuditChainCheck(store, clock, batch=10)
    steps = [check.step() for _ in range(4)]
    assert [s[1]["checked_seq"] for s in steps] == [10, 20, 25, 25]
    assert [s[1]["full_pass"] for s in steps] == [True, True, False, False]
    assert steps[1][1]["full_at"] is None and steps[2][1]["full_at"] == T0.isoformat()
    assert all(s[0]["ok"] for s in steps)
    assert check.step(full=True)[1] == {"checked_seq": 25, "full_pass": False,
                                        "full_at": T0.isoformat(),
                                        "full_every_s": AUDIT_FULL_EVERY_S}
    # The pass, the call that found nothing new, and the on-demand pass in one call.
    assert check.rows_read == (10 + 11 + 6) + 1 + (10 + 11 + 6)


async def test_an_administrator_can_ask_for_the_whole_chain_now(env, store) -> None:
    client, _clock, _check = env
    append(store, 12)
    assert (await status(client))["audit_chain"]["ok"] is True
    tamper(store, 3)
    assert (await status(client))["audit_chain"]["ok"] is True  # not due yet
    st = await status(client, full=1)
    assert st["audit_chain"] == {"ok": False, "broken_at": 3}
    # Other roles may not (the check is read-only, but it is the expensive kind).
    r = await client.post("/api/users", headers=BOOT, json={
        "username": "li.viewer", "name": "李", "role": "viewer",
        "password": "correct horse battery"})
    assert r.status_code == 201, r.text
    r = await client.post("/api/login", headers=CSRF, json={
        "username": "li.viewer", "password": "correct horse battery"})
    assert r.status_code == 200, r.text
    r = await client.get("/api/status", params={"full": 1})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert (await client.get("/api/status")).json()["signed_in"] is True
