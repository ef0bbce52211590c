"""End to end on the real stacks: a virtual health card in a vpcd reader of a real pcscd →
``ykt edge`` (pyscard) → kiosk UI server → durable outbox → real Mosquitto → ``ykt central``
→ reference platform → reply → registration slip on the virtual ESC/POS printer.

Every process is real and started through the ``ykt`` command by the site-in-a-box
(``yikatong.site.demo.Site``), so this test also proves ``ykt demo`` works.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from support import wait_until

from yikatong.site.demo import DEMO_PATIENTS, Site

pytestmark = pytest.mark.stack


def wait_for(fn, timeout=20.0):
    """The shared wait (tests/support.py) at this test's pace."""
    return wait_until(fn, timeout, interval=0.1)


def find_open_slot(ui, depts):
    """Today's sessions may have closed (CI runs at any hour): look up to a week ahead."""
    today = date.fromisoformat(ui.get("/api/config").json()["ui"]["today"])
    for offset in range(8):
        day = (today + timedelta(days=offset)).isoformat()
        for d in depts:
            slots = ui.get("/api/slots", params={"dept": d["code"], "day": day}).json()["slots"]
            open_slots = [s for s in slots if s["remaining"] > 0]
            if open_slots:
                return open_slots[0], d
    raise AssertionError("the platform offered no open slot this week")


def test_card_to_printed_slip(site: Site):
    patient = DEMO_PATIENTS[0]  # 张三, 110101198001010037
    kiosk = site.terminal("kiosk-001")
    ui = httpx.Client(base_url=kiosk.ui_url, timeout=30)

    site.insert_card("kiosk-001", patient)

    def ready():
        s = ui.get("/api/state").json().get("session")
        return s if s and s.get("state") == "ready" else None

    session = wait_for(ready)
    ident = session["identity"]
    assert ident["name"] == "张*"
    assert ident["id_number"] == "110***********0037"
    assert patient["id_number"] not in str(session)

    identified = ui.post("/api/identify").json()["session"]
    assert identified["patient"]["name"] == "张*"

    depts = ui.get("/api/departments").json()["departments"]
    assert len(depts) >= 5
    slot, dept = find_open_slot(ui, depts)

    before = len(kiosk.printer.jobs)  # other tests share the site and its printer
    # Drive the registration flow the way the page does: actions in, views out.
    def act(action, **args):
        return ui.post("/api/action", json={"action": action, "args": args}).json()["view"]

    def view_where(pred):
        def check():
            v = ui.get("/api/state").json()["view"]
            return v if pred(v) else None
        return wait_for(check)

    def flow_in(*states):
        return view_where(lambda v: v["flow"] is not None and v["flow"]["state"] in states)

    view_where(lambda v: v["screen"] == "menu")
    act("start", flow="register")
    flow_in("depts")
    act("flow", do="dept", args={"code": dept["code"]})
    v = flow_in("slots")
    if v["flow"]["data"]["day"] != slot["date"]:
        act("flow", do="day", args={"day": slot["date"]})
        view_where(lambda v: v["flow"]["state"] == "slots"
                   and v["flow"]["data"]["day"] == slot["date"])
    act("flow", do="slot", args={"slot_id": slot["slot_id"]})
    flow_in("confirm")
    act("flow", do="confirm")
    flow_in("pay_method")
    act("flow", do="method", args={"method": "prepaid"})
    done = flow_in("done", "print_failed", "declined", "error")["flow"]
    assert done["state"] == "done", done
    booking = done["data"]["booking"]
    assert done["data"]["print"]["state"] == "printed", done
    assert booking["dept_name"] == dept["name"]

    job = kiosk.printer.wait_for_jobs(before + 1, timeout=10)[-1]
    text = "\n".join(job.lines)
    assert "张*" in text
    assert dept["name"] in text
    assert str(booking["queue_no"]) in text
    assert patient["id_number"] not in text
    assert patient["id_number"].encode() not in job.raw
    assert patient["id_number"].encode("gb18030") not in job.raw
    assert patient["name"] not in text

    site.remove_card("kiosk-001")
    wait_for(lambda: ui.get("/api/state").json().get("session") is None)


def test_no_personal_data_in_any_log(site: Site):
    # Runs after the registration above (module order): every process has logged by now.
    logs = list(Path(site.workdir, "logs").glob("*.log"))
    assert logs
    patient = DEMO_PATIENTS[0]
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace")
        assert patient["id_number"] not in text, log.name
        assert patient["name"] not in text, log.name
        assert patient["phone"] not in text, log.name
