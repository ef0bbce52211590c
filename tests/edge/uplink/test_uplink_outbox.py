"""The durable outbox: ordering, retries, expiry, the size policy, and kill -9 durability."""

from __future__ import annotations

import signal
import sqlite3
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import Procs

from edge.uplink.errors import OutboxFull
from edge.uplink.outbox import Outbox, Priority
from yikatong.protocol.envelope import decode, encode, new_envelope

T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)


class FakeClock:
    """A settable clock."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def env(type_: str = "reg.departments", *, id_: str | None = None, exp: datetime | None = None):
    return new_envelope(type_, "kiosk-001", {}, now=T0, id=id_, exp=exp)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock):
    ob = Outbox(tmp_path / "outbox.db", clock, max_entries=50, retry_interval_s=10)
    yield ob
    ob.close()


def test_uses_wal_and_full_sync(outbox: Outbox) -> None:
    con = outbox._connection()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    outbox.close()
    con = outbox._connection()  # reopened after close(): same settings again
    assert con.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_enqueue_returns_the_stored_row_and_keeps_the_callers_bytes(outbox, clock):
    e = env("pay.create", id_="bytes0001", exp=T0 + timedelta(seconds=60))
    payload = encode(e)
    got = outbox.enqueue(e, kind="req", payload=payload)
    assert got == outbox.get("bytes0001")  # built from the inputs, equal to a re-read
    assert got.payload == payload and got.priority == Priority.MONEY
    assert got.exp == T0 + timedelta(seconds=60) and got.attempts == 0


def test_a_send_recorded_before_a_crash_never_expires_as_not_taken(tmp_path, clock):
    # The pump marks a batch sent (fsynced), then publishes; kill -9 lands between the two
    # or just after, and no reply ever comes. After the restart, past exp, the entry must
    # read "outcome unknown", never "expired" (= definitely not taken).
    db = tmp_path / "crash.db"
    ob = Outbox(db, clock, retry_interval_s=10, give_up_after_exp_s=3600)
    ob.enqueue(env("pay.create", id_="crashpay1", exp=T0 + timedelta(seconds=30)), kind="req")
    ob.enqueue(env("pay.create", id_="neversent", exp=T0 + timedelta(seconds=30)), kind="req")
    assert ob.mark_sent_many(["crashpay1"], clock()) == {"crashpay1"}
    ob.close()  # the process dies here; only what was committed survives
    clock.advance(300)
    again = Outbox(db, clock, retry_interval_s=10, give_up_after_exp_s=3600)
    try:
        expired = again.expire(clock())
        assert [e.id for e in expired] == ["neversent"]  # the control: truly never sent
        assert expired[0].fail_reason == "expired"
        kept = again.get("crashpay1")
        assert kept.state == "pending" and kept.attempts == 1
        assert [e.id for e in again.due(clock(), 10)] == ["crashpay1"]  # resent: ask central
        clock.advance(3600)
        assert again.due(clock(), 10) == []
        assert again.get("crashpay1").fail_reason == "no_reply"  # unknown, never "expired"
    finally:
        again.close()


def test_enqueue_sent_stores_and_marks_in_one_commit(tmp_path, clock):
    # The uplink's direct send: on disk *and* marked sent before the first byte leaves, so a
    # kill -9 right after the publish leaves an entry that reads "maybe taken".
    db = tmp_path / "direct.db"
    ob = Outbox(db, clock, retry_interval_s=10)
    e = env("pay.create", id_="direct001", exp=T0 + timedelta(seconds=30))
    got = ob.enqueue_sent(e, encode(e), clock())
    assert got == ob.get("direct001")
    assert got.attempts == 1 and got.last_sent_at == clock()
    assert got.next_attempt_at == clock() + timedelta(seconds=10)  # resent after the interval
    assert ob.enqueue_sent(e, encode(e), clock()) is None  # a known id: left as stored
    assert ob.get("direct001").attempts == 1
    ob.enqueue(env(id_="waiting01"), kind="req")  # due now, waiting for the pump
    late = env("pay.create", id_="direct002")
    assert ob.enqueue_sent(late, encode(late), clock()) is None  # it may not overtake
    assert ob.get("direct002") is None
    ob.close()
    clock.advance(300)
    again = Outbox(db, clock, retry_interval_s=10)
    try:
        assert again.expire(clock()) == []  # past exp, but it may have been taken
        assert [x.id for x in again.due(clock(), 10)] == ["direct001", "waiting01"]
    finally:
        again.close()


def test_a_minimising_completion_is_durable_and_leaves_no_wal_behind(tmp_path, clock):
    db = tmp_path / "done.db"
    ob = Outbox(db, clock)
    e = new_envelope("patient.identify", "kiosk-001", {"by": "card", "value": "6222020200001234"},
                     now=T0, id="ident0001")
    ob.enqueue(e, kind="req")
    reply = encode(new_envelope("resp", "kiosk-001", {"status": "ok", "result": {
        "patient_id": "pr_1", "name": "李秀英", "card_no": "6222020200001234"}},
        now=T0, corr="ident0001"))
    assert ob.complete("ident0001", reply)
    # The commit ran at synchronous=NORMAL; the WAL truncation after it synced the WAL.
    assert ob._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    on_disk = db.read_bytes()
    assert b"6222020200001234" not in on_disk and "李秀英".encode() not in on_disk
    ob.close()
    again = Outbox(db, clock)
    try:
        assert again.get("ident0001").state == "done"
        assert not again.complete("ident0001", reply)  # a duplicate reply changes nothing
    finally:
        again.close()


def test_mark_sent_many_marks_only_pending_and_unmark_restores_unsent(outbox, clock):
    for i in range(3):
        outbox.enqueue(env(id_=f"batch{i:04d}", exp=T0 + timedelta(seconds=5)), kind="req")
    outbox.complete("batch0002", b"r")
    ids = ["batch0000", "batch0001", "batch0002"]
    assert outbox.mark_sent_many(ids, clock()) == {"batch0000", "batch0001"}
    assert outbox.get("batch0001").last_sent_at == clock()
    # batch0001 was never handed to MQTT (the link dropped first): unsent again
    assert outbox.unmark_sent(["batch0001", "batch0002"], clock()) == 1
    got = outbox.get("batch0001")
    assert got.attempts == 0 and got.last_sent_at is None
    clock.advance(6)
    assert {e.id: e.fail_reason for e in outbox.expire(clock())} == {"batch0001": "expired"}
    assert outbox.get("batch0000").state == "pending"


def test_size_policy_holds_when_another_connection_wrote_the_file(tmp_path, clock):
    # The row count is cached; a second writer (a probe, a restarted process) invalidates it.
    a = Outbox(tmp_path / "shared.db", clock, max_entries=10)
    b = Outbox(tmp_path / "shared.db", clock, max_entries=10)
    try:
        for i in range(5):
            a.enqueue(env("reg.book", id_=f"froma{i:04d}"), kind="req")
        for i in range(5):
            b.enqueue(env("reg.book", id_=f"fromb{i:04d}"), kind="req")
        with pytest.raises(OutboxFull):
            a.enqueue(env("reg.book", id_="onetoomany"), kind="req")
        assert a.count() == 10
        b.complete("fromb0000", b"r")
        a.enqueue(env("reg.book", id_="nowfits01"), kind="req")
        assert a.count() == 10 and a.get("fromb0000") is None
        seqs = [r[0] for r in a._connection().execute("SELECT seq FROM outbox ORDER BY seq")]
        assert len(set(seqs)) == len(seqs)  # no seq reused across the two writers
    finally:
        a.close()
        b.close()


OLD_SCHEMA = [
    'CREATE TABLE "outbox" ("id" VARCHAR(128) NOT NULL PRIMARY KEY, "seq" INTEGER NOT NULL, '
    '"kind" VARCHAR(16) NOT NULL, "type" VARCHAR(64) NOT NULL, "priority" INTEGER NOT NULL, '
    '"payload" BLOB NOT NULL, "state" VARCHAR(8) NOT NULL, "attempts" INTEGER NOT NULL, '
    '"created_at" REAL NOT NULL, "next_attempt_at" REAL NOT NULL, "exp" REAL, '
    '"last_sent_at" REAL, "reply" BLOB, "fail_reason" VARCHAR(200), "finished_at" REAL)',
    'CREATE INDEX "entry_seq" ON "outbox" ("seq")',
    'CREATE INDEX "entry_state" ON "outbox" ("state")',
    'CREATE INDEX "entry_state_priority_seq" ON "outbox" ("state", "priority", "seq")',
]


def test_an_outbox_file_of_the_previous_version_opens_and_keeps_its_entries(tmp_path, clock):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    for ddl in OLD_SCHEMA:
        con.execute(ddl)
    t = T0.timestamp()
    con.execute(
        "INSERT INTO outbox VALUES (?, 7, 'req', 'pay.create', 0, ?, 'pending', 2, ?, ?, NULL, "
        "?, NULL, NULL, NULL)", ("oldentry1", encode(env("pay.create", id_="oldentry1")), t, t, t),
    )
    con.commit()
    con.close()
    ob = Outbox(db, clock)
    try:
        old = ob.get("oldentry1")
        assert old.state == "pending" and old.attempts == 2 and old.last_sent_at == T0
        new = ob.enqueue(env(id_="newentry1"), kind="req")
        seqs = dict(ob._connection().execute("SELECT id, seq FROM outbox").fetchall())
        assert seqs == {"oldentry1": 7, "newentry1": 8} and new.state == "pending"
        indexes = {r[0] for r in ob._connection().execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        assert indexes == {"entry_seq", "entry_state_priority_seq"}  # redundant one dropped
    finally:
        ob.close()


def test_due_orders_money_and_results_before_requests_events_and_telemetry(outbox, clock):
    outbox.enqueue(env("telemetry", id_="tele00001"), kind="telemetry")
    outbox.enqueue(env("card.inserted", id_="event0001"), kind="event")
    outbox.enqueue(env("reg.slots", id_="lookup001"), kind="req")
    outbox.enqueue(env("cmd.result", id_="result001"), kind="result")
    outbox.enqueue(env("pay.create", id_="payment01"), kind="req")
    due = outbox.due(clock(), 10)
    assert [e.id for e in due] == ["payment01", "result001", "lookup001", "event0001", "tele00001"]
    assert due[0].priority == Priority.MONEY


def test_retry_uses_same_bytes_and_id_after_the_interval(outbox, clock):
    e = outbox.enqueue(env(id_="request01"), kind="req")
    outbox.mark_sent(e.id, clock())
    assert outbox.due(clock(), 10) == []
    clock.advance(10)
    again = outbox.due(clock(), 10)
    assert [x.id for x in again] == ["request01"]
    assert again[0].payload == e.payload and decode(again[0].payload).id == "request01"
    assert again[0].attempts == 1
    # enqueueing the same id again does not make a second entry
    assert outbox.enqueue(env(id_="request01"), kind="req").attempts == 1
    assert outbox.count() == 1


def test_entry_ends_only_on_complete_or_fail(outbox, clock):
    e = outbox.enqueue(env(id_="request02"), kind="req")
    outbox.mark_sent(e.id, clock())
    assert outbox.pending_count() == 1
    assert outbox.complete(e.id, b"reply") is True
    assert outbox.complete(e.id, b"other") is False  # already done: first reply kept
    got = outbox.get(e.id)
    assert got.state == "done" and got.reply == b"reply" and outbox.pending_count() == 0
    f = outbox.enqueue(env(id_="request03"), kind="req")
    assert outbox.fail(f.id, "gave up")
    assert outbox.get(f.id).fail_reason == "gave up"
    assert outbox.due(clock() + timedelta(hours=1), 10) == []


def test_expired_unsent_entry_fails_locally_and_is_never_due(outbox, clock):
    outbox.enqueue(env(id_="expiring1", exp=T0 + timedelta(seconds=5)), kind="req")
    clock.advance(6)
    assert outbox.due(clock(), 10) == []
    got = outbox.get("expiring1")
    assert got.state == "failed" and got.fail_reason == "expired" and got.attempts == 0


def test_sent_entry_is_resent_past_exp_until_the_give_up_horizon(tmp_path, clock):
    ob = Outbox(tmp_path / "o.db", clock, retry_interval_s=10, give_up_after_exp_s=60)
    try:
        ob.enqueue(env(id_="sentonce1", exp=T0 + timedelta(seconds=5)), kind="req")
        ob.mark_sent("sentonce1", clock())
        clock.advance(20)  # past exp: central answers from its dedup table or says expired
        assert [e.id for e in ob.due(clock(), 10)] == ["sentonce1"]
        clock.advance(60)
        assert ob.due(clock(), 10) == []
        assert ob.get("sentonce1").fail_reason == "no_reply"
    finally:
        ob.close()


def test_size_policy_drops_oldest_events_first_and_never_requests(tmp_path, clock):
    ob = Outbox(tmp_path / "small.db", clock, max_entries=10)
    try:
        for i in range(4):
            ob.enqueue(env("print.done", id_=f"event{i:04d}"), kind="event")
        for i in range(6):
            ob.enqueue(env("pay.create", id_=f"money{i:04d}"), kind="req")
        ob.enqueue(env("reg.book", id_="booking01"), kind="req")  # evicts the oldest event
        assert ob.get("event0000") is None and ob.get("event0001") is not None
        ob.enqueue(env("card.inserted", id_="eventnew1"), kind="event")
        assert ob.get("event0001") is None
        for i in range(3):
            ob.enqueue(env("reg.cancel", id_=f"cancel{i:03d}"), kind="req")
        assert ob.get("eventnew1") is None  # all events gone now
        with pytest.raises(OutboxFull) as info:
            ob.enqueue(env("pay.create", id_="money9999"), kind="req")
        assert info.value.message_zh
        assert all(ob.get(f"money{i:04d}") is not None for i in range(6))
        # finished entries are the first to go
        ob.complete("money0000", b"r")
        ob.enqueue(env("pay.create", id_="money9999"), kind="req")
        assert ob.get("money0000") is None and ob.get("money9999") is not None
    finally:
        ob.close()


def test_retry_all_now_after_reconnect(outbox, clock):
    for i in range(3):
        e = outbox.enqueue(env(id_=f"request{i:02d}"), kind="req")
        outbox.mark_sent(e.id, clock())
    assert outbox.due(clock(), 10) == []
    assert outbox.retry_all_now(clock()) == 3
    assert len(outbox.due(clock(), 10)) == 3


CHILD = textwrap.dedent(
    """
    import os, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from yikatong.protocol.envelope import new_envelope
    from edge.uplink.outbox import Outbox
    ob = Outbox(Path(sys.argv[1]), lambda: datetime.now(UTC))
    for i in range(20):
        e = new_envelope("pay.create", "kiosk-001", {"n": i}, now=datetime.now(UTC),
                         id=f"durable{i:04d}")
        ob.enqueue(e, kind="req")
        print(e.id, flush=True)   # reported only after enqueue returned (fsynced)
    print("DONE", flush=True)
    import time
    time.sleep(60)  # alive until the test's kill -9, the behaviour under test
    """
)


def test_enqueued_entries_survive_kill_9(tmp_path: Path, procs: Procs) -> None:
    db = tmp_path / "outbox.db"
    proc = procs.python("child", "-c", CHILD, str(db), pipe=True)
    acknowledged = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "DONE":
                break
            acknowledged.append(line.strip())
    finally:
        Procs.kill9(proc)
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) == 20
    ob = Outbox(db, lambda: datetime.now(UTC))
    try:
        assert ob.pending_count() == 20
        for i in acknowledged:
            entry = ob.get(i)
            assert entry is not None and entry.state == "pending"
            assert decode(entry.payload).id == i
    finally:
        ob.close()


def test_a_failed_entry_is_minimised_unless_it_may_be_reopened(outbox, clock):
    from yikatong.protocol.messages import make_request

    def login(id_: str):
        return make_request("staff.login", "kiosk-0001", {"badge": "B1", "pin": "918273"},
                            now=clock(), id=id_)

    withdrawn = outbox.enqueue(login("login00001"), kind="req")
    assert outbox.fail(withdrawn.id, "caller_timeout")
    assert b"918273" in outbox.get(withdrawn.id).payload  # reopen resends the same bytes
    lost = outbox.enqueue(login("login00002"), kind="req")
    assert outbox.fail(lost.id, "no_reply")
    stored = decode(outbox.get(lost.id).payload)
    assert stored.id == "login00002" and stored.type == "staff.login"
    assert stored.body == {"badge": "B1"}
    outbox.close()
    raw = b"".join(p.read_bytes() for p in outbox.path.parent.glob(outbox.path.name + "*"))
    assert raw.count(b"918273") == 1  # only the withdrawn entry's
