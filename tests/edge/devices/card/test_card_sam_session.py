"""SamSession on its own against the SAM simulator, in process (tier 1): the PIN ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.devices.card import errors as E
from edge.devices.card.pinstate import SamPinLedger
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

PIN = "123456"


def _sam_session(sam: SamSim, pin: str, state: Path) -> SamSession:
    return SamSession(InProcessTransport(sam, "sam"), pin, ledger=SamPinLedger(state))


def test_wrong_pin_spends_one_try_across_restarts(tmp_path: Path) -> None:
    sam, state = SamSim(PIN), tmp_path / "state" / "sam-pin.json"
    with pytest.raises(E.SamPinError) as e:
        _sam_session(sam, "654321", state).open()
    assert e.value.retries_left == 2 and sam.pin_tries_left == 2
    assert "654321" not in state.read_text()
    # "restart": a new process, a new session, the same wrong PIN file → nothing spent
    for _ in range(3):
        with pytest.raises(E.SamPinError) as e:
            _sam_session(sam, "654321", state).open()
        assert e.value.retries_left == 2
    assert (sam.verify_count, sam.pin_tries_left) == (1, 2)
    # another SAM (another serial) is not affected by this SAM's record
    other = SamSim(PIN, serial=bytes(14))
    _sam_session(other, PIN, state).open()
    # the PIN file was fixed: the new PIN gets its try, succeeds, the record goes
    fixed = _sam_session(sam, PIN, state)
    fixed.open()
    assert fixed.opened and sam.pin_tries_left == 3 and sam.verify_count == 2
    assert fixed.serial.hex().upper() not in state.read_text()


def test_changed_but_still_wrong_pin_gets_one_try(tmp_path: Path) -> None:
    sam, state = SamSim(PIN), tmp_path / "sam-pin.json"
    with pytest.raises(E.SamPinError):
        _sam_session(sam, "111111", state).open()
    with pytest.raises(E.SamPinError) as e:  # another wrong PIN: its own single try
        _sam_session(sam, "222222", state).open()
    assert e.value.retries_left == 1
    with pytest.raises(E.SamPinTriesLow):  # one try left: nothing more is presented
        _sam_session(sam, "333333", state).open()
    assert (sam.verify_count, sam.pin_tries_left) == (2, 1)


def test_damaged_pin_state_file_refuses_without_presenting(tmp_path: Path) -> None:
    sam, state = SamSim(PIN), tmp_path / "sam-pin.json"
    state.write_text("{not json")
    with pytest.raises(E.SamError) as e:
        _sam_session(sam, PIN, state).open()
    assert str(state) in e.value.message and sam.verify_count == 0


def test_sam_already_verified_is_not_verified_again() -> None:
    sam = SamSim(PIN)
    first = SamSession(InProcessTransport(sam, "sam"), PIN)
    first.open()
    second = SamSession(InProcessTransport(sam, "sam"), "000000")  # no reset in between
    second.open()
    assert second.opened and sam.verify_count == 1
