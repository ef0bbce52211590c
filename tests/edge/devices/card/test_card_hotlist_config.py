"""Hot list store and the card config."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge.devices.card.config import CardConfig, read_sam_pin
from edge.devices.card.errors import CardParameterError, SamPinError, SamUnavailable
from edge.devices.card.hotlist import HotList


def test_hotlist_deltas_and_snapshots(tmp_path: Path) -> None:
    hot = HotList(tmp_path / "h" / "hot.sqlite")
    assert hot.version == 0 and not hot.is_blocked("H1")
    assert hot.apply_delta(1, added=["h1", "H2 "])
    assert hot.is_blocked("H1") and hot.is_blocked(" h2")
    assert not hot.apply_delta(1, added=["H3"])  # not newer: ignored
    assert not hot.is_blocked("H3")
    assert hot.apply_delta(2, removed=["H1"])
    assert not hot.is_blocked("H1") and hot.version == 2
    assert hot.apply_delta(5, added=["H9"], full=True)
    assert len(hot) == 1 and hot.is_blocked("H9") and not hot.is_blocked("H2")
    hot.close()
    again = HotList(tmp_path / "h" / "hot.sqlite")  # persisted
    assert again.version == 5 and again.is_blocked("H9")
    with pytest.raises(CardParameterError):
        again.apply_delta(-1)


def test_hotlist_lookups_come_from_memory_and_follow_other_writers(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "hot.sqlite"
    reader = HotList(path, recheck_s=1.0, monotonic=lambda: now[0])
    writer = HotList(path)  # another connection, as a second process would be
    assert writer.apply_delta(1, added=["H1"])
    assert not reader.is_blocked("H1")  # snapshot: not re-checked within recheck_s
    now[0] = 1.0
    assert reader.is_blocked("H1")  # data_version moved: snapshot rebuilt
    # our own delta is visible at once; a foreign commit before it is not lost either
    assert writer.apply_delta(2, added=["H2"])
    assert reader.apply_delta(3, added=["H3"], removed=["H1"])
    assert [reader.is_blocked(c) for c in ("H1", "H2", "H3")] == [False, True, True]
    reader.close()
    # after close, lookups still answer from the snapshot (no database access)
    assert reader.is_blocked("H3")
    writer.close()


def test_config_defaults_and_strictness(tmp_path: Path) -> None:
    c = CardConfig()
    assert c.enabled and c.auth.to_scheme().cipher == "SM4"
    assert c.timeouts.to_timeouts().apdu_s == 5.0
    with pytest.raises(ValidationError):
        CardConfig.model_validate({"sam_pin": "123456"})  # no PIN literals in config
    with pytest.raises(ValidationError):
        CardConfig.model_validate({"patient_reader": "x", "sam_reader": "x"})
    with pytest.raises(ValidationError):
        CardConfig.model_validate({"timeouts": {"apdu_s": 10, "operation_s": 5}})
    with pytest.raises(ValidationError):
        CardConfig.model_validate({"auth": {"cipher": "DES"}})


def test_sam_pin_file(tmp_path: Path) -> None:
    p = tmp_path / "pin"
    p.write_text(" 123456\n")
    assert read_sam_pin(p) == "123456"
    p.write_text("12ab")
    with pytest.raises(SamPinError):
        read_sam_pin(p)
    with pytest.raises(SamUnavailable):
        read_sam_pin(tmp_path / "missing")
    with pytest.raises(SamUnavailable):
        read_sam_pin(None)
