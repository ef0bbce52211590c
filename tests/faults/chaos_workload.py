"""The workload and the checks of the exactly-once acceptance tests (one central instance:
test_chaos_exactly_once.py; two on PostgreSQL: test_chaos_two_instances.py).

See docs/architecture.md, "Delivery rules".

A mix of bookings (prepaid/cash/later), payments (prepaid, cash and WeChat/Alipay codes
including ones that go pending/unknown/declined), report.printed and lookups, from several
devices, each an in-process Uplink with its own durable outbox, against a :class:`Stack`
(tests/faults/conftest.py) whose platform drops replies after commit on every mutating
operation.

The devices are cashier desks playing by central's rules (central/authz.py): each signs a
cashier in (every request carries that staff session) and identifies the patients it serves
by card first, so its requests name patients by the opaque references central handed it and
only reports it listed. The platform's own ids appear only in the tests' bookkeeping.

:func:`check_exactly_once` then holds the outcomes against the platform's own records: every
request has a definitive outcome; the platform counted exactly one effect per request
(effects == successful requests, every id bound to one idempotency record, distinct booking
and payment ids); every payment that was not final was resolved by central's payment
resolver (approved/declined/reversed), and every reversal it made is counted once.

Not a test module (no ``test_`` prefix): the two tests import it.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from support import wait_until_async

from central.platform.sim.ids import id_check_digit
from central.store import open_store
from edge.uplink.client import Uplink
from edge.uplink.errors import OutcomeUnknown, PlatformUnavailable, Rejected
from yikatong.protocol.messages import dump_body

STAFF_BADGE, STAFF_PIN = "S9001", "246813"
PER_DEVICE = 6  # jobs in flight per device


@dataclass(frozen=True)
class Mix:
    """How many requests of each kind; lookups fill the rest up to ``total``."""

    total: int
    booked_then_paid: int  # a booking paid later, then its fee from the prepaid balance
    bookings: int  # prepaid / cash / later, in turn
    payments: int  # top-ups: cash, WeChat (2 in 5), Alipay (2 in 5)
    reports: int  # report.printed, at most as many as the platform has ready


#: The single-instance test's 1,000 requests.
FULL = Mix(total=1000, booked_then_paid=80, bookings=120, payments=250, reports=100)


@dataclass
class Outcome:
    id: str
    type: str
    body: dict[str, Any]
    status: str  # ok | rejected | walked
    result: Any
    tries: int


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    started: int = 0
    chaos_log: list[tuple[float, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.outcomes)


class Pacer:
    """Starts at most ``rate`` requests per second (all devices together)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
            self.next = max(self.next, now) + self.interval


@dataclass
class Desk:
    """One cashier desk: its uplink, staff session and the patient references it holds."""

    uplink: Uplink
    token: str = ""
    refs: dict[str, str] = field(default_factory=dict)  # platform patient id -> reference

    def wire(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body as this desk sends it: patients named by its own references."""
        if "patient_id" in body:
            return {**body, "patient_id": self.refs[body["patient_id"]]}
        return body


async def send(desk: Desk, run: Run, pacer: Pacer | None, type_: str, body: dict[str, Any],
               *, record: bool = True, walk_away: bool = False) -> Outcome:
    """One request until it has a definitive outcome; retries reuse the same id.

    ``walk_away``: at the first unknown outcome the patient leaves (status ``walked``): the
    device's own background follow-up must then learn the outcome (:func:`settle_walked`).
    """
    if pacer is not None:
        await pacer.wait()
    if record:
        run.started += 1
    rid = uuid.uuid4().hex
    exp = datetime.now(UTC) + timedelta(minutes=15)
    tries = 0
    while True:
        tries += 1
        try:
            res = await desk.uplink.request(type_, desk.wire(body), id=rid, exp=exp,
                                            timeout=20, auth=desk.token or None)
            out = Outcome(rid, type_, body, "ok", dump_body(res), tries)
            break
        except Rejected as exc:
            out = Outcome(rid, type_, body, "rejected", exc.code, tries)
            break
        except OutcomeUnknown:
            if walk_away:
                out = Outcome(rid, type_, body, "walked", None, tries)
                break
            # Not final: ask again under the same id (the idempotency key) — never a new one.
            await asyncio.sleep(0.5)
        except PlatformUnavailable:
            await asyncio.sleep(0.5)
    if record:
        run.outcomes.append(out)
    return out


# -- the workload ------------------------------------------------------------------------


def _wechat(n: int, last: int) -> str:
    return f"10{n:015d}{last}"


def _alipay(n: int, last: int) -> str:
    return f"25{n:013d}{last}"


Jobs = list[list[tuple[str, Any]]]


def build_workload(stack: Any, rng: random.Random, mix: Mix = FULL
                   ) -> tuple[Jobs, dict[str, str], dict[str, str]]:
    """Jobs (lists of steps) adding up to exactly ``mix.total`` requests; patient id -> card
    number; report number -> patient id."""
    patients = []
    for i in range(12):
        first17 = f"11010119800101{i:03d}"
        body = {"card_no": f"CHAOS{i:06d}", "id_number": first17 + id_check_digit(first17),
                "name": f"测试{i}", "sex": "M", "birth_date": "1980-01-01",
                "balance_fen": 100_000_000, "insured": False}
        patients.append(stack.platform_api("POST", "/admin/patients", json=body)["patient"])
    depts = [d["code"] for d in stack.platform_api("GET", "/api/v1/departments")["departments"]]
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    slots = []
    for day in range(1, 8):
        d = (today + timedelta(days=day)).isoformat()
        for code in depts:
            got = stack.platform_api("GET", "/api/v1/slots",
                                     params={"dept_code": code, "date": d})["slots"]
            slots += [s for s in got if s["remaining"] > 0]
    reports = []
    report_owner: dict[str, str] = {}
    cards = {p["patient_id"]: p["card_no"]
             for p in (a["patient"] for a in stack.platform_api("GET", "/admin/patients"))}
    # A patient whose card is reported lost cannot be identified at a desk, so no desk
    # could name their reports: leave those out.
    lost = set(stack.platform_api("GET", "/api/v1/hotlist", params={"since_version": 0})["added"])
    for n in range(1, 51):
        if cards[f"P{n:06d}"] in lost:
            continue
        got = stack.platform_api("GET", "/api/v1/reports", params={"patient_id": f"P{n:06d}"})
        for r in got["reports"]:
            if r["status"] == "ready" and not r["printed"]:
                reports.append(r["report_no"])
                report_owner[r["report_no"]] = f"P{n:06d}"
    # Distinct (patient, slot) pairs, within each session's remaining numbers.
    pairs = [(p["patient_id"], s["slot_id"]) for i, s in enumerate(slots)
             for p in (patients * 2)[i % 12:i % 12 + min(s["remaining"], 3)]]
    assert len(pairs) >= 200, f"only {len(pairs)} bookable numbers"
    rng.shuffle(pairs)
    pair_iter = iter(pairs)

    def book(pay_method: str) -> dict[str, Any]:
        patient_id, slot_id = next(pair_iter)
        return {"patient_id": patient_id, "slot_id": slot_id, "pay_method": pay_method,
                "insured": False}

    jobs: Jobs = []
    for _ in range(mix.booked_then_paid):  # book, then pay the fee from the prepaid balance
        jobs.append([("reg.book", book("later")), ("pay.registration", None)])
    for i in range(mix.bookings):
        jobs.append([("reg.book", book(("prepaid", "cash", "later")[i % 3]))])
    for i in range(mix.payments):
        p = patients[i % len(patients)]
        base = {"patient_id": p["patient_id"], "purpose": "topup", "refs": [],
                "amount_fen": 100 * (1 + i % 50)}
        if i % 5 == 0:
            jobs.append([("pay.create", {**base, "method": "cash"})])
        elif i % 5 in (1, 2):
            jobs.append([("pay.create", {**base, "method": "wechat",
                                         "auth_code": _wechat(i, i % 10)})])
        else:
            jobs.append([("pay.create", {**base, "method": "alipay",
                                         "auth_code": _alipay(i, (i * 7) % 10)})])
    for no in reports[:mix.reports]:
        jobs.append([("report.printed", {"report_no": no})])
    used = sum(len(j) for j in jobs)
    lookups = []
    for i in range(mix.total - used):
        p = patients[i % len(patients)]
        lookups.append([
            ("patient.identify", {"by": "card", "value": p["card_no"]}),
            ("reg.departments", {}),
            ("report.list", {"patient_id": p["patient_id"]}),
            ("bill.list", {"patient_id": p["patient_id"]}),
            ("reg.slots", {"dept_code": depts[i % len(depts)],
                           "date": (today + timedelta(days=1 + i % 5)).isoformat()}),
        ][i % 5])
    jobs += [[step] for step in lookups]
    rng.shuffle(jobs)
    assert sum(len(j) for j in jobs) == mix.total
    return jobs, cards, report_owner


async def open_desk(desk: Desk, run: Run, jobs: Jobs, cards: dict[str, str],
                    report_owner: dict[str, str]) -> None:
    """Sign the cashier in, then look up (by card) every patient and report the jobs name."""
    login = await send(desk, run, None, "staff.login", {"badge": STAFF_BADGE, "pin": STAFF_PIN},
                       record=False)
    assert login.status == "ok", login.result
    desk.token = login.result["session_token"]
    patients = {b["patient_id"] for j in jobs for _, b in j if b and "patient_id" in b}
    reports = [b["report_no"] for j in jobs for t, b in j if t == "report.printed"]
    patients |= {report_owner[r] for r in reports}
    for pid in sorted(patients):
        got = await send(desk, run, None, "patient.identify",
                         {"by": "card", "value": cards[pid]}, record=False)
        assert got.status == "ok", got.result
        ref = got.result["patient_id"]
        assert ref.startswith("pr_") and ref != pid  # the platform's id never reaches us
        desk.refs[pid] = ref
    for pid in sorted({report_owner[r] for r in reports}):
        listed = await send(desk, run, None, "report.list", {"patient_id": pid}, record=False)
        assert listed.status == "ok", listed.result


async def run_job(desk: Desk, run: Run, pacer: Pacer, job: list[tuple[str, Any]]) -> None:
    prev: Outcome | None = None
    for step, given in job:
        type_, body = step, given
        if step == "pay.registration":
            assert prev is not None
            type_ = "pay.create"
            if prev.status == "ok" and prev.result["status"] == "booked":
                b = prev.result
                body = {"patient_id": prev.body["patient_id"], "purpose": "registration",
                        "refs": [b["booking_id"]], "amount_fen": b["fee_fen"],
                        "method": "prepaid"}
                # The patient does not wait for an unknown outcome: the device follows up.
                prev = await send(desk, run, pacer, type_, body, walk_away=True)
                continue
            else:  # the booking was refused: the patient tops up in cash instead
                body = {"patient_id": prev.body["patient_id"], "purpose": "topup",
                        "refs": [], "amount_fen": 500, "method": "cash"}
        prev = await send(desk, run, pacer, type_, body)


async def device_worker(desk: Desk, run: Run, pacer: Pacer, jobs: Jobs) -> None:
    queue: asyncio.Queue[list[tuple[str, Any]]] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)

    async def lane() -> None:
        while not queue.empty():
            await run_job(desk, run, pacer, queue.get_nowait())

    await asyncio.gather(*(lane() for _ in range(PER_DEVICE)))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Setup:
    """A prepared run: the platform's patients, staff and faults; devices registered."""

    jobs: Jobs
    cards: dict[str, str]
    report_owner: dict[str, str]
    before: dict[str, int]  # the platform's effects counted before the run
    desks: list[Desk]

    @property
    def uplinks(self) -> list[Uplink]:
        return [d.uplink for d in self.desks]


async def prepare(stack: Any, tmp: Path, mix: Mix, devices: int) -> Setup:
    """Patients, slots and reports on the platform, a cashier, faults at 10 % on every
    mutating operation, and ``devices`` cashier desks registered at central (not started)."""
    rng = random.Random(20240601)
    jobs, cards, report_owner = await asyncio.to_thread(build_workload, stack, rng, mix)
    await asyncio.to_thread(stack.platform_api, "POST", "/admin/staff", json={
        "badge": STAFF_BADGE, "name": "收费员测试", "role": "cashier", "pin": STAFF_PIN})
    before = (await asyncio.to_thread(stack.stats))["effects"]
    await asyncio.to_thread(stack.set_faults, drop_reply_after_commit_rate=0.10, hang_ms=3000)
    desks = []
    for d in range(devices):
        cfg = await asyncio.to_thread(stack.register, f"chaos-{d:02d}", tmp,
                                      role="cashier", follow_up_interval_s=1.0)
        desks.append(Desk(Uplink(cfg, f"chaos-{d:02d}", role="cashier", version="1.0.0",
                                 rng=random.Random(d))))
    return Setup(jobs, cards, report_owner, before, desks)


async def open_desks(setup: Setup, run: Run) -> None:
    """Start every desk's uplink and open the desks (sign-in, patients identified)."""
    n = len(setup.desks)
    for desk in setup.desks:
        await desk.uplink.start()
    await asyncio.gather(*(open_desk(desk, run, setup.jobs[i::n], setup.cards,
                                     setup.report_owner)
                           for i, desk in enumerate(setup.desks)))


async def work(setup: Setup, run: Run, rate: float) -> None:
    """Every job, ``rate`` requests started per second over all desks."""
    pacer, n = Pacer(rate), len(setup.desks)
    await asyncio.gather(*(device_worker(desk, run, pacer, setup.jobs[i::n])
                           for i, desk in enumerate(setup.desks)))


async def settle_walked(run: Run, desks: list[Desk], within_s: float = 90) -> None:
    """Every patient who walked away from an unknown outcome: the device learns it later, by
    itself (its follow-up resends the same id; central asks the platform again)."""
    walked = [o for o in run.outcomes if o.status == "walked"]
    # ~10 % of the prepaid registration payments lose their reply after commit.
    assert walked, "no patient walked away: the fault schedule missed this path"
    deadline = time.monotonic() + within_s
    for o in walked:
        desk = next(d for d in desks if d.uplink.outbox.get(o.id) is not None)
        while True:
            try:
                o.result = dump_body(await desk.uplink.result_of(o.id))
                o.status = "ok"
                break
            except Rejected as exc:
                o.result, o.status = exc.code, "rejected"
                break
            except OutcomeUnknown:
                assert time.monotonic() < deadline, f"{o.id} never settled on the device"
                await asyncio.sleep(0.5)


async def wait_resolved(unresolved: Callable[[], list[Any]], within_s: float = 90) -> None:
    """Until central's payment resolver has settled every payment (``unresolved`` empty)."""
    await wait_until_async(lambda: asyncio.to_thread(lambda: not unresolved()), within_s,
                           interval=1, what="central's resolver to settle every payment")


# -- the checks --------------------------------------------------------------------------------


def _rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the reference platform's own SQLite database (read only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(con.execute(sql, params))
    finally:
        con.close()


def central_rows(target: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of central's store (SQLite file or PostgreSQL URL), through the store's own
    connection so the same SQL reads either engine."""
    store = open_store(target)
    try:
        return [tuple(r) for r in store.connection().execute(sql).fetchall()]
    finally:
        store.close()


@dataclass
class Verdict:
    """What the checks counted, for the test's summary line."""

    ok: Counter[str]
    effects: dict[str, int]
    unsure: int
    reversed: int


def check_exactly_once(stack: Any, run: Run, mix: Mix, before: dict[str, int],
                       stats: dict[str, Any]) -> Verdict:
    """The outcomes against the platform's records and central's payments (module doc)."""
    # 1. Nothing lost: every request has a definitive outcome.
    outcomes = run.outcomes
    assert len(outcomes) == mix.total
    assert len({o.id for o in outcomes}) == mix.total
    assert not [o for o in outcomes if o.status == "walked"], "a walked-away request unsettled"
    # Each outcome agrees with the platform's own record of that id: a mutating request
    # the device saw succeed is a 200 in the platform's idempotency table, one it saw
    # rejected is a 4xx there with the same error code — and the counts match per type.
    idem = {k: (op, code, json.loads(resp)) for k, op, code, resp in _rows(
        stack.platform_db, "SELECT key, op, status_code, response FROM idempotency_row")}
    mine: Counter[tuple[str, str]] = Counter()
    theirs: Counter[tuple[str, str]] = Counter()
    for o in outcomes:
        if o.type not in ("reg.book", "pay.create", "report.printed"):
            continue
        mine[(o.type, o.status)] += 1
        op, code, resp = idem[o.id]
        theirs[(op, "ok" if code == 200 else "rejected")] += 1
        if o.status == "rejected":
            assert 400 <= code < 500 and resp["code"] == o.result, (o.id, code, resp, o.result)
    assert mine == theirs, (mine, theirs)
    assert mine[("pay.create", "ok")] > 0 and mine[("reg.book", "ok")] > 0, mine
    # ... and every payment the devices saw is the platform's payment of that amount.
    platform_pays = {pid: amount for pid, amount in _rows(
        stack.platform_db, "SELECT payment_id, amount_fen FROM payment_row")}
    for o in outcomes:
        if o.type == "pay.create" and o.status == "ok":
            assert platform_pays.get(o.result["payment_id"]) == o.body["amount_fen"], o.id
    assert not [o for o in outcomes if o.result == "duplicate_mismatch"]

    # 2. Exactly one effect per request id.
    effects = {op: n - before.get(op, 0) for op, n in stats["effects"].items()}
    ok = Counter(o.type for o in outcomes if o.status == "ok")
    assert effects.get("reg.book", 0) == ok["reg.book"]
    assert effects.get("pay.create", 0) == ok["pay.create"]
    assert effects.get("report.printed", 0) == ok["report.printed"]
    assert effects.get("reg.cancel", 0) == 0 and effects.get("pay.refund", 0) == 0
    booking_ids = [o.result["booking_id"] for o in outcomes
                   if o.type == "reg.book" and o.status == "ok"]
    payment_ids = [o.result["payment_id"] for o in outcomes
                   if o.type == "pay.create" and o.status == "ok"]
    assert len(set(booking_ids)) == len(booking_ids)
    assert len(set(payment_ids)) == len(payment_ids)
    mutating = {o.id for o in outcomes if o.type in ("reg.book", "pay.create", "report.printed")}
    keys = {k for (k,) in _rows(stack.platform_db, "SELECT key FROM idempotency_row")}
    assert mutating <= keys, "a mutating request reached no idempotent record"
    # No payment charged twice: one platform payment row per successful request that makes
    # one (pay.create, and reg.book paid from the prepaid balance) for the test's patients.
    ours = tuple(sorted({o.body["patient_id"] for o in outcomes
                         if o.type in ("pay.create", "reg.book")}))
    marks = ",".join("?" * len(ours))
    ((pay_rows,),) = _rows(stack.platform_db,
                           f"SELECT count(*) FROM payment_row WHERE patient_id IN ({marks})",
                           ours)
    prepaid_books = sum(1 for o in outcomes if o.type == "reg.book" and o.status == "ok"
                        and o.body["pay_method"] == "prepaid")
    assert pay_rows == ok["pay.create"] + prepaid_books

    # 3. Payments that were pending/unknown ended resolved by central's resolver.
    states = dict(central_rows(stack.store_target, "SELECT request_id, state FROM payment"))
    unsure = [o.id for o in outcomes if o.type == "pay.create" and o.status == "ok"
              and o.result["state"] in ("pending", "unknown")]
    assert unsure, "the workload should include payments that go pending/unknown"
    for rid in unsure:
        assert states.get(rid) in ("approved", "declined", "reversed"), (rid, states.get(rid))
    reversed_ = sum(1 for s in states.values() if s == "reversed")
    assert effects.get("pay.reverse", 0) == reversed_
    return Verdict(ok, effects, len(unsure), reversed_)


def summary(run: Run, verdict: Verdict, stats: dict[str, Any]) -> str:
    """One line on what happened (printed with ``-s``)."""
    tries = Counter(o.tries for o in run.outcomes)
    return (f"events {run.chaos_log}; ok {dict(verdict.ok)}; rejected "
            f"{Counter(o.result for o in run.outcomes if o.status == 'rejected')}; effects "
            f"{verdict.effects}; faults {stats['faults_injected']}; unsure {verdict.unsure}, "
            f"reversed {verdict.reversed}; tries {dict(sorted(tries.items()))}")
