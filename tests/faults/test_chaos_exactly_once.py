"""The acceptance test of exactly-once delivery under faults.

See docs/architecture.md, "Delivery rules".

1,000 mixed requests — bookings (prepaid/cash/later), payments (prepaid, cash and WeChat/
Alipay codes including ones that go pending/unknown/declined), report.printed and lookups —
from several devices, each an in-process Uplink with its own durable outbox, through a real
Mosquitto, a real ``ykt central`` process and the real reference platform process with
``drop_reply_after_commit`` at 10 % on every mutating operation. Meanwhile the broker is
SIGKILLed and restarted 5 times and central twice (same data_dir).

The devices are cashier desks playing by central's rules (central/authz.py): each signs a
cashier in (every request carries that staff session) and identifies the patients it serves
by card first, so its requests name patients by the opaque references central handed it and
only reports it listed. The platform's own ids appear only in this test's bookkeeping.

Then: every request has a definitive outcome; the platform counted exactly one effect per
request (effects == successful requests, every id bound to one idempotency record, distinct
booking and payment ids); every payment that was not final is resolved by central's payment
resolver (approved/declined/reversed), and every reversal it made is counted once.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support import wait_until_async

from central.platform.sim.ids import id_check_digit
from edge.uplink.client import Uplink
from edge.uplink.errors import OutcomeUnknown, PlatformUnavailable, Rejected
from yikatong.protocol.messages import dump_body

TOTAL = 1000
STAFF_BADGE, STAFF_PIN = "S9001", "246813"
DEVICES = 6
PER_DEVICE = 6  # jobs in flight per device
RATE = 22.0  # requests started per second overall: spreads the run over the fault schedule
# (fraction of requests finished, what to kill): 5 broker kills, 2 central kills. Central is
# killed early on purpose: a request central was calling the platform for when it died stays
# "received" in its dedup table; the restarted central (same client id, new boot nonce) takes
# its own earlier boot's rows over on the device's resend, without waiting out lease_s.
CHAOS = [(0.03, "central"), (0.06, "broker"), (0.10, "central"), (0.18, "broker"),
         (0.32, "broker"), (0.48, "broker"), (0.64, "broker")]


@dataclass
class Outcome:
    id: str
    type: str
    body: dict[str, Any]
    status: str  # ok | rejected
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
    device's own background follow-up must then learn the outcome (checked at the end).
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


def build_workload(stack: Any, rng: random.Random
                   ) -> tuple[list[list[tuple[str, Any]]], dict[str, str], dict[str, str]]:
    """Jobs (lists of steps) adding up to exactly TOTAL requests; patient id -> card number;
    report number -> patient id."""
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

    def book(pay_method: str, k: int) -> dict[str, Any]:
        patient_id, slot_id = next(pair_iter)
        return {"patient_id": patient_id, "slot_id": slot_id, "pay_method": pay_method,
                "insured": False}

    jobs: list[list[tuple[str, Any]]] = []
    k = 0
    for _ in range(80):  # book, then pay the fee from the prepaid balance
        k += 1
        jobs.append([("reg.book", book("later", k)), ("pay.registration", None)])
    for i in range(120):
        k += 1
        jobs.append([("reg.book", book(("prepaid", "cash", "later")[i % 3], k))])
    for i in range(250):
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
    for no in reports[:100]:
        jobs.append([("report.printed", {"report_no": no})])
    used = sum(len(j) for j in jobs)
    lookups = []
    for i in range(TOTAL - used):
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
    assert sum(len(j) for j in jobs) == TOTAL
    return jobs, cards, report_owner


async def open_desk(desk: Desk, run: Run, jobs: list[list[tuple[str, Any]]],
                    cards: dict[str, str], report_owner: dict[str, str]) -> None:
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


async def device_worker(desk: Desk, run: Run, pacer: Pacer,
                        jobs: list[list[tuple[str, Any]]]) -> None:
    queue: asyncio.Queue[list[tuple[str, Any]]] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)

    async def lane() -> None:
        while not queue.empty():
            await run_job(desk, run, pacer, queue.get_nowait())

    await asyncio.gather(*(lane() for _ in range(PER_DEVICE)))


async def chaos(stack: Any, run: Run, t0: float) -> None:
    for frac, what in CHAOS:
        await wait_until_async(lambda n=frac * TOTAL: run.done >= n, 240, interval=0.05,
                               what=f"{frac:.0%} of the requests done before the {what} fault")
        if what == "broker":
            await asyncio.to_thread(stack.broker.kill9)
            await asyncio.sleep(0.5)  # the outage itself: devices and central see it down
            await asyncio.to_thread(stack.broker.start)
        else:
            await asyncio.to_thread(stack.kill_central)
            await asyncio.sleep(0.3)  # the outage itself: requests arrive while it is down
            await asyncio.to_thread(stack.start_central)
        run.chaos_log.append((round(time.monotonic() - t0, 1), what))


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(con.execute(sql))
    finally:
        con.close()


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_chaos_exactly_once(stack: Any, tmp_path: Path) -> None:
    t_setup = time.monotonic()
    rng = random.Random(20240601)
    jobs, cards, report_owner = await asyncio.to_thread(build_workload, stack, rng)
    await asyncio.to_thread(stack.platform_api, "POST", "/admin/staff", json={
        "badge": STAFF_BADGE, "name": "收费员测试", "role": "cashier", "pin": STAFF_PIN})
    before = (await asyncio.to_thread(stack.stats))["effects"]
    await asyncio.to_thread(stack.set_faults, drop_reply_after_commit_rate=0.10, hang_ms=3000)

    uplinks = []
    for d in range(DEVICES):
        cfg = await asyncio.to_thread(stack.register, f"chaos-{d:02d}", tmp_path,
                                      role="cashier", follow_up_interval_s=1.0)
        up = Uplink(cfg, f"chaos-{d:02d}", role="cashier", version="1.0.0",
                    rng=random.Random(d))
        uplinks.append(up)
    desks = [Desk(up) for up in uplinks]
    run = Run()
    pacer = Pacer(RATE)
    t0 = time.monotonic()
    try:
        for up in uplinks:
            await up.start()
        await asyncio.gather(*(open_desk(desk, run, jobs[i::DEVICES], cards, report_owner)
                               for i, desk in enumerate(desks)))
        t0 = time.monotonic()
        chaos_task = asyncio.create_task(chaos(stack, run, t0))
        await asyncio.gather(*(
            device_worker(desk, run, pacer, jobs[i::DEVICES]) for i, desk in enumerate(desks)))
        t_work = time.monotonic() - t0
        await asyncio.wait_for(chaos_task, 60)

        # Every patient who walked away from an unknown outcome: the device learnt it later,
        # by itself (its follow-up resends the same id; central asks the platform again).
        walked = [o for o in run.outcomes if o.status == "walked"]
        # ~10 % of 80 prepaid payments lose their reply after commit: some patients left.
        assert walked, "no patient walked away: the fault schedule missed this path"
        by_dev = {d.uplink.device_id: d for d in desks}
        deadline = time.monotonic() + 90
        for o in walked:
            desk = next(d for d in by_dev.values() if d.uplink.outbox.get(o.id) is not None)
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
        # Every payment not final yet is resolved by central's resolver (status / reversal).
        await wait_until_async(
            lambda: asyncio.to_thread(lambda: not stack.unresolved_payments()), 90, interval=1,
            what="central's resolver to settle every payment")
        t_resolved = time.monotonic() - t0
        stats = await asyncio.to_thread(stack.stats)
    finally:
        for up in uplinks:
            await up.stop()

    # 1. Nothing lost: every request has a definitive outcome.
    outcomes = run.outcomes
    assert len(outcomes) == TOTAL
    assert len({o.id for o in outcomes}) == TOTAL
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
    assert [w for _, w in run.chaos_log].count("broker") == 5
    assert [w for _, w in run.chaos_log].count("central") == 2

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
    ours = sorted({o.body["patient_id"] for o in outcomes
                   if o.type in ("pay.create", "reg.book")})
    marks = ",".join("?" * len(ours))
    con = sqlite3.connect(f"file:{stack.platform_db}?mode=ro", uri=True, timeout=10)
    try:
        (pay_rows,) = con.execute(
            f"SELECT count(*) FROM payment_row WHERE patient_id IN ({marks})", ours
        ).fetchone()
    finally:
        con.close()
    prepaid_books = sum(1 for o in outcomes if o.type == "reg.book" and o.status == "ok"
                        and o.body["pay_method"] == "prepaid")
    assert pay_rows == ok["pay.create"] + prepaid_books

    # 3. Payments that were pending/unknown ended resolved by central's resolver.
    central_db = stack.data_dir / "central.db"
    states = dict(_rows(central_db, "SELECT request_id, state FROM payment"))
    unsure = [o.id for o in outcomes if o.type == "pay.create" and o.status == "ok"
              and o.result["state"] in ("pending", "unknown")]
    assert unsure, "the workload should include payments that go pending/unknown"
    for rid in unsure:
        assert states.get(rid) in ("approved", "declined", "reversed"), (rid, states.get(rid))
    reversed_ = sum(1 for s in states.values() if s == "reversed")
    assert effects.get("pay.reverse", 0) == reversed_

    tries = Counter(o.tries for o in outcomes)
    print(f"\nchaos: {TOTAL} requests in {t_work:.1f}s, payments resolved at {t_resolved:.1f}s, "
          f"setup {t0 - t_setup:.1f}s; events {run.chaos_log}; ok {dict(ok)}; "
          f"rejected {Counter(o.result for o in outcomes if o.status == 'rejected')}; "
          f"effects {effects}; faults {stats['faults_injected']}; unsure {len(unsure)}, "
          f"reversed {reversed_}; tries {dict(sorted(tries.items()))}")
