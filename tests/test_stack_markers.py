"""The ``stack`` marker comes from the fixtures a test uses (tests/conftest.py), not by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# None of these modules marks anything ``stack`` by hand.
FILES = [
    "tests/central/test_uplink_forwarder_restart.py",  # broker_site → make_site → make_broker
    "tests/edge/uplink/test_uplink_tls.py",  # make_broker directly
    "tests/central/test_broker_tls.py",  # make_tls_site → make_site; plus two config checks
    "tests/edge/uplink/test_uplink_outbox.py",  # procs only: no real stack component
]


def _collected(*args: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         *args, *FILES], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: nothing selected
    return {line for line in out.stdout.splitlines() if "::" in line}


def test_tests_using_real_stack_fixtures_are_marked_stack_and_no_others() -> None:
    stack = _collected("-m", "stack")
    base = {t.split("[", 1)[0] for t in stack}  # a test run on both store engines: [sqlite]…
    assert {
        "tests/central/test_uplink_forwarder_restart.py::"
        "test_edge_killed_after_publish_recovers_the_stored_outcome",
        "tests/edge/uplink/test_uplink_tls.py::test_mutual_tls_with_identity_as_username",
        "tests/central/test_broker_tls.py::test_device_refuses_a_certificate_for_another_name",
    } <= base
    assert not [t for t in stack if "test_uplink_outbox.py" in t]
    assert "tests/central/test_broker_tls.py::test_shipped_configs_agree" not in stack
    rest = _collected("-m", "not stack")
    assert "tests/central/test_broker_tls.py::test_shipped_configs_agree" in rest
    assert not stack & rest
