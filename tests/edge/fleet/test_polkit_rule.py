"""systemd/50-yikatong.rules, evaluated as polkit would (JavaScript, here in Chromium's engine):
the daemon's user may restart its two units and reboot, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from support import REPO

pytestmark = pytest.mark.stack

RULE = (REPO / "systemd" / "50-yikatong.rules").read_text()

HARNESS = """([rule, cases]) => {
  const rules = [];
  const polkit = {Result: {YES: "yes", NO: "no", NOT_HANDLED: null}, addRule: f => rules.push(f)};
  new Function("polkit", rule)(polkit);
  return cases.map(([user, id, details]) => {
    const action = {id, lookup: k => details[k]};
    for (const f of rules) { const r = f(action, {user}); if (r !== null) return r; }
    return "not_handled";
  });
}"""


def test_the_daemon_user_may_restart_its_units_and_reboot_only(browser: Any) -> None:
    units = "org.freedesktop.systemd1.manage-units"
    cases = [
        ("ykt", units, {"unit": "ykt-edge.service", "verb": "restart"}),
        ("ykt", units, {"unit": "ykt-kiosk.service", "verb": "restart"}),
        ("ykt", "org.freedesktop.login1.reboot", {}),
        ("ykt", units, {"unit": "ykt-edge.service", "verb": "stop"}),
        ("ykt", units, {"unit": "ssh.service", "verb": "restart"}),
        ("ykt", units, {"unit": "ykt-central.service", "verb": "restart"}),
        ("ykt", "org.freedesktop.login1.power-off", {}),
        ("ykt", "org.freedesktop.systemd1.manage-unit-files", {}),
        ("nobody", units, {"unit": "ykt-edge.service", "verb": "restart"}),
        ("nobody", "org.freedesktop.login1.reboot", {}),
    ]
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        got = page.evaluate(HARNESS, [RULE, cases])
    finally:
        ctx.close()
    assert got == ["yes"] * 3 + ["not_handled"] * 7
