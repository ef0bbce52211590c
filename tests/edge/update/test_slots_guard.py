"""The A/B layout and the start guard on hand-made slots (no bundle, no pip): every half
state a power cut can leave is turned into one whose ``current`` starts (docs/updates.md).

The slots here are folders with a marker and stand-in ``bin/python``/``bin/ykt`` files; the
tests with real bundles and real interpreters are in test_install.py.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.update.slots import (
    Layout,
    TrialRecord,
    UpdateError,
    abort_trial,
    commit_trial,
    guard,
    rollback,
    running_slot,
)

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def make_slot(lay: Layout, name: str, version: str, *, marker: bool = True) -> None:
    d = lay.slot(name) / "bin"
    d.mkdir(parents=True, exist_ok=True)
    (d / "python").write_text("")
    (d / "ykt").write_text("")
    if marker:
        lay.write_marker(name, version, "0" * 64, now=NOW)


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    lay = Layout(tmp_path / "root")
    make_slot(lay, "a", "1.4.0")
    lay.switch(lay.committed, "a")
    lay.switch(lay.current, "a")
    return lay


def trial(lay: Layout, *, attempts: int = 0, deadline_s: float = 600,
          max_attempts: int = 3) -> TrialRecord:
    make_slot(lay, "b", "1.5.0")
    rec = TrialRecord(slot="b", version="1.5.0", from_slot="a", from_version="1.4.0",
                      rollout_id="1" * 32, command_id="2" * 32,
                      deadline=(NOW + timedelta(seconds=deadline_s)).isoformat(),
                      attempts=attempts, max_attempts=max_attempts)
    lay.write_trial(rec)
    return rec


def test_links_are_relative_and_switched_atomically(lay: Layout) -> None:
    assert os.readlink(lay.current) == "slots/a"
    lay.switch(lay.current, "b")
    assert os.readlink(lay.current) == "slots/b"
    assert lay.current_slot() == "b" and lay.committed_slot() == "a"
    assert not list(lay.root.glob(".*.tmp"))


def test_a_slot_without_its_marker_is_not_usable(lay: Layout) -> None:
    make_slot(lay, "b", "1.5.0", marker=False)
    assert lay.usable("a") and not lay.usable("b")
    lay.write_marker("b", "1.5.0", "1" * 64)
    assert lay.usable("b") and lay.marker("b").version == "1.5.0"  # type: ignore[union-attr]
    lay.wipe("b")
    assert not lay.slot("b").exists() and not lay.usable("b")


def test_guard_counts_the_starts_of_a_trial_then_rolls_back(lay: Layout) -> None:
    trial(lay, max_attempts=2)
    lay.switch(lay.current, "b")
    for n in (1, 2):
        rep = guard(lay.root, now=NOW)
        assert rep.current == "b" and lay.trial().attempts == n  # type: ignore[union-attr]
    rep = guard(lay.root, now=NOW)
    assert rep.current == "a" and lay.current_slot() == "a"
    rec = lay.trial()
    assert rec is not None and rec.state == "rolled_back" and rec.code == "start_failed"
    assert "2 attempt" in (rec.reason or "")
    # Later starts stay on the committed slot and leave the record for the daemon to report.
    assert guard(lay.root, now=NOW).current == "a"
    assert lay.trial().state == "rolled_back"  # type: ignore[union-attr]


def test_guard_rolls_back_a_trial_past_its_deadline(lay: Layout) -> None:
    trial(lay, deadline_s=60)
    lay.switch(lay.current, "b")
    rep = guard(lay.root, now=NOW + timedelta(seconds=61))
    assert rep.current == "a" and lay.trial().code == "health_deadline"  # type: ignore[union-attr]


def test_guard_a_record_without_the_switch_is_a_failed_install(lay: Layout) -> None:
    trial(lay)  # the record was written, the cut came before ``current`` moved
    rep = guard(lay.root, now=NOW)
    assert rep.current == "a"
    rec = lay.trial()
    assert rec is not None and rec.state == "failed" and rec.code == "interrupted"


def test_guard_a_trial_of_an_incomplete_slot_goes_back(lay: Layout) -> None:
    trial(lay)
    lay.switch(lay.current, "b")
    lay.drop_marker("b")
    rep = guard(lay.root, now=NOW)
    assert rep.current == "a" and lay.trial().code == "incomplete_install"  # type: ignore[union-attr]


def test_guard_current_on_an_uncommitted_slot_without_a_trial_goes_back(lay: Layout) -> None:
    make_slot(lay, "b", "1.5.0")
    lay.switch(lay.current, "b")
    assert guard(lay.root, now=NOW).current == "a"
    assert lay.current_slot() == "a"


def test_guard_repairs_a_broken_committed_link_and_temp_links(lay: Layout) -> None:
    lay.committed.unlink()
    os.symlink("slots/b", lay.root / ".current.tmp")  # a cut switch
    rep = guard(lay.root, now=NOW)
    assert rep.ok and rep.committed == "a" and lay.committed_slot() == "a"
    assert not (lay.root / ".current.tmp").exists() and not (lay.root / ".current.tmp").is_symlink()


def test_guard_never_adopts_the_slot_on_trial_as_committed(lay: Layout) -> None:
    trial(lay)
    lay.switch(lay.current, "b")
    lay.committed.unlink()
    rep = guard(lay.root, now=NOW)
    assert rep.committed == "a"
    assert rep.current == "b" and lay.trial().attempts == 1  # type: ignore[union-attr]


def test_guard_without_any_usable_slot_says_so(tmp_path: Path) -> None:
    lay = Layout(tmp_path / "empty")
    make_slot(lay, "a", "1.0.0", marker=False)
    rep = guard(lay.root, now=NOW)
    assert not rep.ok and "no usable slot" in rep.actions[0]


def test_commit_then_guard_leaves_the_record_for_the_report(lay: Layout) -> None:
    rec = trial(lay)
    lay.switch(lay.current, "b")
    commit_trial(lay, rec)  # cut before the daemon reported and cleared it
    rep = guard(lay.root, now=NOW)
    assert rep.current == "b" and rep.committed == "b"
    assert lay.trial() is not None and lay.trial().attempts == 0  # type: ignore[union-attr]


def test_abort_trial_records_why_before_switching(lay: Layout) -> None:
    rec = trial(lay)
    lay.switch(lay.current, "b")
    abort_trial(lay, rec, "unhealthy", "health check failed: SAM missing", "健康检查未通过")
    assert lay.current_slot() == "a"
    stored = json.loads(lay.state_path.read_text())
    assert stored["state"] == "rolled_back" and stored["reason"].endswith("SAM missing")


def test_rollback_by_hand(lay: Layout) -> None:
    with pytest.raises(UpdateError) as e:
        rollback(lay.root)
    assert e.value.code == "no_previous"
    make_slot(lay, "b", "1.3.0")
    assert rollback(lay.root) == "b"
    assert lay.current_slot() == lay.committed_slot() == "b"
    trial(lay)  # b is re-made as 1.5.0 on trial over... a committed again:
    lay.switch(lay.committed, "a")
    lay.switch(lay.current, "b")
    assert rollback(lay.root) == "a"
    assert lay.trial().code == "manual"  # type: ignore[union-attr]


def test_running_slot_from_the_interpreter_prefix(lay: Layout) -> None:
    assert running_slot(lay, str(lay.slot("a"))) == "a"
    assert running_slot(lay, str(lay.current)) == "a"  # through the link
    assert running_slot(lay, "/usr") is None
