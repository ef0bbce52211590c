"""Deterministic data generation: the same seed (and day) always yields the same hospital."""

from __future__ import annotations

import hashlib
import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from central.platform.sim import data
from central.platform.sim.ids import id_check_digit
from central.platform.sim.models import Schema
from central.platform.sim.security import hash_pin
from yikatong.protocol.envelope import format_ts

__all__ = ["ensure_schedule", "iso_utc", "seed_database"]

PATIENT_COUNT = 50
#: Patients whose cards are on the lost-card list (the last ones, so demos start clean).
BLOCKED_PATIENTS = 2


def iso_utc(moment: datetime) -> str:
    """RFC 3339 UTC with ``Z`` and milliseconds: the wire contract's timestamp form."""
    return format_ts(moment)


def _rng(seed: int, *parts: object) -> random.Random:
    # A separate stream per purpose keeps one section's data stable when another changes.
    text = ":".join([str(seed), *map(str, parts)])
    number = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return random.Random(number)  # noqa: S311 — simulated data, not secrets


def _name(rng: random.Random, sex: str) -> str:
    given = data.GIVEN_MALE if sex == "M" else data.GIVEN_FEMALE
    return rng.choice(data.SURNAMES) + rng.choice(given)


def _id_number(rng: random.Random, birth: date, sex: str) -> str:
    seq = rng.randrange(0, 500) * 2 + (1 if sex == "M" else 0)  # odd = male (GB 11643)
    body = f"{rng.choice(data.AREA_CODES)}{birth:%Y%m%d}{seq:03d}"
    return body + id_check_digit(body)


def seed_database(
    schema: Schema, *, seed: int, now: datetime, zone: ZoneInfo, demo_pin: str | None
) -> None:
    """Fill an empty, migrated database; does nothing if it was seeded before."""
    s = schema
    if s.Setting.get_or_none(s.Setting.key == "seed") is not None:
        return
    today = now.astimezone(zone).date()
    _seed_departments(s, seed)
    _seed_patients(s, seed, today, now, zone)
    _seed_hotlist(s, seed, now)
    _seed_staff(s, seed, demo_pin)
    for key, value in {"seed": str(seed), "seeded_on": today.isoformat()}.items():
        s.Setting.create(key=key, value=value)


def _seed_departments(s: Schema, seed: int) -> None:
    rng = _rng(seed, "doctors")
    n = 0
    for position, dept in enumerate(data.DEPARTMENTS):
        s.DepartmentRow.create(
            code=dept.code, name=dept.name, name_en=dept.name_en,
            location=dept.location, floor=dept.floor, position=position,
        )
        # One of each senior title, then attending/resident doctors.
        titles = [data.TITLES[0], data.TITLES[1], rng.choice(data.TITLES[2:])]
        if position % 3 == 0:
            titles.append(data.TITLES[3])
        weekdays = [(d, p) for d in range(5) for p in ("am", "pm")]
        for index, title in enumerate(titles):
            n += 1
            sex = rng.choice("MF")
            if index == 2:
                # The attending doctor keeps every morning open, weekends included, and the
                # afternoons too unless a resident takes them: no session goes unstaffed.
                slots = [(d, "am") for d in range(7)]
                if len(titles) == 3:
                    slots += [(d, "pm") for d in range(5)]
            elif index == 3:
                slots = [(d, "pm") for d in range(5)]
            else:
                # Senior doctors hold a few specialist half-days a week.
                slots = rng.sample(weekdays, 2 if index == 0 else 4)
            s.DoctorRow.create(
                doctor_id=f"D{n:04d}",
                name=_name(rng, sex),
                sex=sex,
                dept_code=dept.code,
                title=title.name,
                specialty=rng.choice(dept.specialties),
                fee_fen=title.fee_fen,
                capacity=title.capacity,
                weekdays_am="".join(sorted(str(d) for d, p in slots if p == "am")),
                weekdays_pm="".join(sorted(str(d) for d, p in slots if p == "pm")),
            )


def ensure_schedule(s: Schema, seed: int, day: date) -> None:
    """Generate the slots of ``day`` once (pre-booked numbers drawn from seed and date)."""
    key = day.isoformat()
    if s.ScheduleDay.get_or_none(s.ScheduleDay.date == key) is not None:
        return
    rng = _rng(seed, "schedule", key)
    rows = []
    for doctor in s.DoctorRow.select().order_by(s.DoctorRow.doctor_id):
        for session in data.SESSIONS:
            days = doctor.weekdays_am if session.period == "am" else doctor.weekdays_pm
            if str(day.weekday()) not in days:
                continue
            # Nearer days are busier; now and then a popular doctor is fully booked.
            load = rng.uniform(0.0, 0.8) if rng.random() > 0.08 else 1.0
            booked = min(doctor.capacity, int(doctor.capacity * load))
            rows.append({
                "slot_id": f"{day:%Y%m%d}-{doctor.doctor_id}-{session.period}",
                "doctor_id": doctor.doctor_id,
                "dept_code": doctor.dept_code,
                "date": key,
                "period": session.period,
                "start": session.start,
                "end": session.end,
                "closes_at": session.closes,
                "capacity": doctor.capacity,
                "booked": booked,
                "next_queue_no": booked + 1,
                "fee_fen": doctor.fee_fen,
            })
    if rows:
        s.SlotRow.insert_many(rows).execute()
    s.ScheduleDay.create(date=key)


def _seed_patients(s: Schema, seed: int, today: date, now: datetime, zone: ZoneInfo) -> None:
    rng = _rng(seed, "patients")
    bill_seq = report_seq = 0
    barcodes: set[str] = set()
    for i in range(1, PATIENT_COUNT + 1):
        sex = rng.choice("MF")
        birth = today - timedelta(days=rng.randrange(2 * 365, 88 * 365))
        patient_id = f"P{i:06d}"
        s.PatientRow.create(
            patient_id=patient_id,
            card_no=data.CARD_PREFIX + f"{rng.randrange(10**11, 10**12):012d}",
            id_number=_id_number(rng, birth, sex),
            ehc_id=hashlib.sha256(f"ehc:{seed}:{i}".encode()).hexdigest(),
            name=_name(rng, sex),
            sex=sex,
            birth_date=birth.isoformat(),
            phone=(rng.choice(data.PHONE_PREFIXES) + f"{rng.randrange(10**8):08d}")
            if rng.random() < 0.9 else None,
            balance_fen=rng.choice((0, 2000, 5000, 10000, 20000, 50000, 100000)),
            insured=rng.random() < 0.8,
        )
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            bill_seq += 1
            _seed_bill(s, rng, patient_id, f"B{today:%Y%m%d}{bill_seq:05d}", today)
        for panel in rng.sample(data.LAB_PANELS, rng.choice((0, 1, 1, 2, 3))):
            report_seq += 1
            barcode = f"8{rng.randrange(10**10, 10**11)}"
            while barcode in barcodes:
                barcode = f"8{rng.randrange(10**10, 10**11)}"
            barcodes.add(barcode)
            _seed_report(
                s, rng, seed=seed, patient_id=patient_id, sex=sex, panel=panel,
                report_no=f"R{today:%Y%m%d}{report_seq:05d}", barcode=barcode, now=now,
                zone=zone,
            )


def _seed_bill(s: Schema, rng: random.Random, patient_id: str, bill_id: str,
               today: date) -> None:
    dept = rng.choice(data.DEPARTMENTS)
    total = 0
    for position, item in enumerate(rng.sample(data.BILL_ITEMS, rng.randrange(1, 5))):
        qty = rng.randrange(1, item.max_qty + 1)
        amount = qty * item.unit_price_fen
        total += amount
        s.BillItemRow.create(bill_id=bill_id, position=position, name=item.name, qty=qty,
                             unit_price_fen=item.unit_price_fen, amount_fen=amount)
    s.BillRow.create(bill_id=bill_id, patient_id=patient_id,
                     date=(today - timedelta(days=rng.randrange(0, 3))).isoformat(),
                     dept_name=dept.name, total_fen=total, status="unpaid")


def _seed_report(s: Schema, rng: random.Random, *, seed: int, patient_id: str, sex: str,
                 panel: data.LabPanel, report_no: str, barcode: str, now: datetime,
                 zone: ZoneInfo) -> None:
    sampled = now - timedelta(hours=rng.randrange(1, 72), minutes=rng.randrange(60))
    ready = rng.random() < 0.85
    reported = sampled + timedelta(hours=rng.randrange(1, 6))
    if reported > now:
        ready = False
    dept = next(d for d in data.DEPARTMENTS if d.code == panel.dept_code)
    doctors = s.DoctorRow.select().where(s.DoctorRow.dept_code == dept.code)
    s.ReportRow.create(
        report_no=report_no, patient_id=patient_id, specimen_barcode=barcode,
        title=panel.title, specimen=panel.specimen, dept_name=dept.name,
        doctor=rng.choice([d.name for d in doctors]),
        sampled_at=iso_utc(sampled), reported_at=iso_utc(reported) if ready else None,
        printed=ready and rng.random() < 0.2,
        verify_token=hashlib.sha256(f"verify:{seed}:{report_no}".encode()).hexdigest()[:16],
    )
    for position, item in enumerate(panel.items):
        low, high = item.low, item.high
        if item.code == "HGB" and sex == "M":
            low = 130  # male reference interval (WS/T 405)
        roll = rng.random()
        span = high - low
        if roll < 0.08:
            value = max(0.0, low - rng.uniform(0.05, 0.3) * span)
        elif roll < 0.18:
            value = high + rng.uniform(0.05, 0.5) * span
        else:
            value = rng.uniform(low, high)
        text = f"{value:.{item.decimals}f}"
        flag = "L" if float(text) < low else "H" if float(text) > high else ""
        ref = f"{low:.{item.decimals}f}-{high:.{item.decimals}f}"
        s.ReportItemRow.create(report_no=report_no, position=position, code=item.code,
                               name=item.name, value=text, unit=item.unit, ref_range=ref,
                               flag=flag)


def seed_demo_records(s: Schema, *, seed: int, patient_id: str, sex: str, now: datetime,
                      zone: ZoneInfo) -> None:
    """Give a site-in-a-box patient something to try: two unpaid bills, two ready lab
    reports and one still pending (the booking to pick up is made by the service)."""
    rng = _rng(seed, f"demo:{patient_id}")
    today = now.astimezone(zone).date()
    for k in (1, 2):
        _seed_bill(s, rng, patient_id, f"B{today:%Y%m%d}{patient_id}{k}", today)
    for k, panel in enumerate(data.LAB_PANELS[:3], start=1):
        report_no = f"R{today:%Y%m%d}{patient_id}{k}"
        barcode = f"89{int(patient_id[1:]):08d}{k}0"
        _seed_report(s, rng, seed=seed, patient_id=patient_id, sex=sex, panel=panel,
                     report_no=report_no, barcode=barcode, now=now, zone=zone)
        ready = k < 3
        reported = now - timedelta(hours=1) if ready else None
        s.ReportRow.update(reported_at=iso_utc(reported) if reported else None, printed=False,
                           sampled_at=iso_utc(now - timedelta(hours=3))).where(
            s.ReportRow.report_no == report_no).execute()


def _seed_hotlist(s: Schema, seed: int, now: datetime) -> None:
    rng = _rng(seed, "hotlist")
    patients = list(s.PatientRow.select().order_by(s.PatientRow.patient_id.desc())
                    .limit(BLOCKED_PATIENTS))
    strangers = [data.CARD_PREFIX + f"{rng.randrange(10**11, 10**12):012d}" for _ in range(3)]
    changes = [(p.card_no, "add", "lost") for p in patients]
    changes += [(c, "add", rng.choice(("lost", "stolen"))) for c in strangers]
    changes.append((strangers[0], "remove", "found"))
    for version, (card_no, action, reason) in enumerate(changes, start=1):
        s.HotlistChange.create(version=version, card_no=card_no, action=action,
                               reason=reason, created_at=iso_utc(now))


def _seed_staff(s: Schema, seed: int, demo_pin: str | None) -> None:
    rng = _rng(seed, "staff")
    for badge, name, role in data.STAFF:
        pin = demo_pin or f"{rng.randrange(10**6):06d}"
        salt = rng.randbytes(16)
        s.StaffRow.create(staff_id=f"ST{badge[1:]}", badge=badge, name=name, role=role,
                          pin_hash=hash_pin(pin, salt))
