"""``ykt sim card insert`` options → the simulator the child process would build."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge.devices.card import errors as E
from edge.devices.card.card_session import CardSession
from edge.devices.card.protocol.security import atr_historical_bytes
from edge.devices.card.sam_session import SamSession
from edge.devices.card.sim.cardos import (
    BANK_ATR,
    HEALTH_ATR,
    HEALTH_CONTACTLESS_ATR,
    BankCardSim,
    Faults,
    HealthCardSim,
    contactless_atr,
)
from edge.devices.card.sim.cli import add_sim_card_commands, build_card, card_spec, parse_fault
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.transport import InProcessTransport

PIN = "246810"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ykt")
    sim = parser.add_subparsers(dest="cmd", required=True).add_parser("sim")
    add_sim_card_commands(sim.add_subparsers(dest="sim_cmd", required=True))
    return parser.parse_args(["sim", "card", "insert", *argv])


def card_for(argv: list[str]) -> HealthCardSim:
    card = build_card(card_spec(parse(argv)))
    assert isinstance(card, HealthCardSim)
    return card


def session(card: object) -> CardSession:
    sam = SamSession(InProcessTransport(SamSim(PIN)), PIN)
    return CardSession(InProcessTransport(card), sam)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "fields"), [
    ("slow=200ms", {"delay_s": 0.2}),
    ("slow=1.5s", {"delay_s": 1.5}),
    ("disconnect-at=5", {"disconnect_at": 5}),
    ("wrong-sw=3:6a82", {"wrong_sw_at": [3, 0x6A82]}),
    ("stuck-sw=4:6110", {"stuck_sw_from": [4, 0x6110]}),
    ("corrupt-tlv=ddf1/ef06", {"corrupt_tlv": "DDF1/EF06"}),
    ("no-sfi", {"supports_sfi": False}),
    ("no-sfi=6986", {"supports_sfi": False, "sfi_refusal_sw": 0x6986}),
])
def test_fault_values_parse(text: str, fields: dict[str, object]) -> None:
    assert parse_fault(text) == fields


@pytest.mark.parametrize("text", [
    "slow=200", "slow=fast", "slow=-5ms", "slow=61s", "disconnect-at=0", "disconnect-at=x",
    "wrong-sw=3", "wrong-sw=3:6A8", "stuck-sw=x:6110", "stuck-sw=2:ZZZZ",
    "corrupt-tlv=DDF1/EF07", "corrupt-tlv=EF06", "no-sfi=1", "no-sfi=69", "explode", "",
])
def test_bad_fault_values_are_typed_errors(text: str) -> None:
    with pytest.raises(E.CardParameterError):
        parse_fault(text)


def test_cli_faults_reach_the_simulator() -> None:
    card = card_for(["--fault", "slow=200ms", "--fault", "disconnect-at=5",
                     "--fault", "stuck-sw=7:6110", "--fault", "corrupt-tlv=DDF1/EF06",
                     "--fault", "no-sfi", "--fault", "wrong-sw=2:6A82"])
    assert card.faults == Faults(delay_s=0.2, disconnect_at=5, wrong_sw_at=(2, 0x6A82),
                                 stuck_sw_from=(7, 0x6110), corrupt_tlv="DDF1/EF06",
                                 supports_sfi=False)
    assert card.atr == HEALTH_ATR
    assert card_for([]).faults == Faults()


def test_disconnect_at_pulls_the_card_at_that_apdu() -> None:
    card = card_for(["--fault", "disconnect-at=3"])
    with pytest.raises(E.CardRemoved):
        session(card).read_identity()
    assert card.apdu_count == 3 and card.removed


def test_slow_answers_use_the_simulators_sleep() -> None:
    card = card_for(["--fault", "slow=20ms"])
    slept: list[float] = []
    card._sleep = slept.append  # the injected clock of the simulator, not a mock
    session(card).read_identity()
    assert slept and set(slept) == {0.02}


def test_expired_and_blocked_auth_flags() -> None:
    expired = card_for(["--expired"])
    assert expired.faults.expired
    assert session(expired).read_identity().expiry == "20200101"  # readable: it is data
    with pytest.raises(E.CardExpired) as e:  # refused where the flow asks for validity
        session(expired).read_identity(reject_expired=True)
    assert e.value.expiry == "20200101"
    blocked = card_for(["--blocked-auth"])
    assert blocked.faults.auth_blocked
    with pytest.raises(E.CardAuthBlocked):
        session(blocked).read_identity()


def test_contactless_atr_follows_pcsc_part_3() -> None:
    hist = HEALTH_ATR[4:]
    atr = contactless_atr(hist)
    assert atr[:4] == bytes((0x3B, 0x80 | len(hist), 0x80, 0x01)) and atr[4:-1] == hist
    x = 0
    for b in atr[1:]:
        x ^= b
    assert x == 0  # TCK makes the XOR of T0…TCK zero
    assert atr_historical_bytes(atr) == hist
    assert contactless_atr(atr_historical_bytes(BANK_ATR)) == BANK_ATR
    with pytest.raises(E.CardParameterError):
        contactless_atr(bytes(16))


def test_contactless_health_card_reads_and_bank_card_is_refused() -> None:
    card = card_for(["--contactless", "--name", "王五"])
    assert card.atr == HEALTH_CONTACTLESS_ATR
    assert session(card).read_identity().name == "王五"
    bank = build_card(card_spec(parse(["--kind", "bank", "--contactless"])))
    assert isinstance(bank, BankCardSim) and bank.atr[:4] == bytes.fromhex("3B8E8001")
    with pytest.raises(E.NotAHealthCard):
        session(bank).read_identity()


def test_options_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    for argv in (["--kind", "bank", "--expired"], ["--kind", "blank", "--fault", "no-sfi"],
                 ["--kind", "sam", "--pin-file", str(pin), "--contactless"],
                 ["--kind", "sam"], ["--fault", "bogus"]):
        with pytest.raises(E.CardParameterError):
            build_card(card_spec(parse(argv)))


def test_photo_option_personalises_ef07(tmp_path: Path) -> None:
    img = tmp_path / "face.jpg"
    img.write_bytes(b"\xff\xd8\xff" + b"\x01" * 97)
    assert session(card_for(["--photo", str(img)])).read_photo().image == img.read_bytes()
    img.write_bytes(b"\x00" * 3071)
    with pytest.raises(E.CardParameterError):
        card_for(["--photo", str(img)])


def test_insert_reports_bad_options_with_exit_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(["--fault", "slow=soon", "--state-dir", str(tmp_path)])
    assert args.func(args) == 2
    assert "slow" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing started, nothing recorded
