"""Fleet-trust wire bodies (yikatong/protocol/fleet.py): strict, bounded, self-checking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from yikatong.protocol import fleet
from yikatong.protocol.envelope import new_envelope
from yikatong.protocol.errors import InvalidBody, SequenceReplay
from yikatong.protocol.messages import CENTRAL_REQUESTS, REQUESTS, dump_body
from yikatong.protocol.signing import SeqGuard, generate_private_key, sign, verify_command
from yikatong.protocol.topics import RESERVED_DEVICE_IDS

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def desired(**settings: object) -> fleet.ConfigDesired:
    s = fleet.RemoteSettings.model_validate(settings)
    return fleet.ConfigDesired(version=3, hash=fleet.settings_hash(s), settings=s)


def test_settings_hash_is_canonical_and_ignores_unset_sections() -> None:
    a = fleet.RemoteSettings.model_validate({"ui": {"language": "en"}, "log_level": "info"})
    b = fleet.RemoteSettings.model_validate({"log_level": "info", "ui": {"language": "en"},
                                             "printer": None})
    assert fleet.settings_hash(a) == fleet.settings_hash(b)
    c = fleet.RemoteSettings.model_validate({"log_level": "debug", "ui": {"language": "en"}})
    assert fleet.settings_hash(a) != fleet.settings_hash(c)


def test_desired_config_refuses_a_hash_that_does_not_match() -> None:
    good = desired(telemetry_interval_s=15.0)
    assert good.version == 3
    with pytest.raises(ValidationError):
        fleet.ConfigDesired(version=3, hash="0" * 64, settings=good.settings)


@pytest.mark.parametrize("settings", [
    {"telemetry_interval_s": 1.0},            # below the floor
    {"log_level": "trace"},
    {"ui": {"idle_timeout_s": 5}},
    {"printer": {"host": "10.0.0.9"}},        # addresses are not remotely settable
    {"uplink": {"host": "evil.example"}},     # nor is the broker
    {"telemetry_interval_s": "30"},           # strict: a string is not a number
])
def test_remote_settings_refuse_what_central_may_not_set(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        fleet.RemoteSettings.model_validate(settings)


def test_commands_take_only_their_own_arguments() -> None:
    ok = fleet.Command(command_id="a" * 32, name="log.level", args={"level": "debug"})
    assert ok.name in fleet.COMMANDS and ok.name not in fleet.DISRUPTIVE_COMMANDS
    assert "reboot" in fleet.DISRUPTIVE_COMMANDS
    for name, args in [("log.level", {}), ("log.level", {"level": "loud"}),
                       ("reboot", {"delay": 5}), ("service.restart", {"service": "sshd"}),
                       ("shell", {})]:
        with pytest.raises(ValidationError):
            fleet.Command(command_id="a" * 32, name=name, args=args)  # type: ignore[arg-type]


def test_enroll_status_approved_must_carry_the_identity() -> None:
    with pytest.raises(ValidationError):
        fleet.EnrollStatus(request_id="b" * 32, status="approved", device_id="kiosk-003")
    with pytest.raises(ValidationError):
        fleet.EnrollStatus(request_id="b" * 32, status="pending")  # no code to show
    with pytest.raises(ValidationError):
        fleet.EnrollStatus(request_id="b" * 32, status="pending", code="IL0U-1234")
    pending = fleet.EnrollStatus(request_id="b" * 32, status="pending", code="7K2M-9QPD")
    assert pending.code == "7K2M-9QPD"


def test_enroll_csr_serial_must_match_its_facts() -> None:
    facts = fleet.DeviceFacts(serial="10000000abcdef01", model="Raspberry Pi 4 Model B")
    with pytest.raises(ValidationError):
        fleet.EnrollCsr(serial="10000000abcdef02", csr="x" * 80, facts=facts)
    assert fleet.EnrollCsr(serial="10000000abcdef01", csr="x" * 80, facts=facts).serial


def test_signed_command_checks_in_order_and_the_guard_refuses_replays() -> None:
    key = generate_private_key()
    body = dump_body(fleet.Command(command_id="c" * 32, name="printer.test"))
    env = sign(new_envelope(fleet.TYPE_CMD, "kiosk-003", body, now=NOW, seq=7,
                            exp=NOW + timedelta(minutes=10)), key)
    guard = SeqGuard(last_seq=6)
    assert verify_command(env, key.public_key(), guard, dev="kiosk-003", now=NOW) == 7
    assert isinstance(fleet.parse_fleet_body(env), fleet.Command)
    with pytest.raises(SequenceReplay):  # the same command again
        verify_command(env, key.public_key(), guard, dev="kiosk-003", now=NOW)


def test_parse_fleet_body_gives_typed_errors() -> None:
    env = new_envelope(fleet.TYPE_CMD, "kiosk-003", {"command_id": "c" * 32, "name": "rm"},
                       now=NOW)
    with pytest.raises(InvalidBody):
        fleet.parse_fleet_body(env)
    other = new_envelope("reg.book", "kiosk-003", {}, now=NOW)
    with pytest.raises(InvalidBody):
        fleet.parse_fleet_body(other)


def test_device_requests_are_answered_by_central_and_enroll_ids_are_reserved() -> None:
    assert {"device.cert_renew", "device.log_bundle"} <= set(REQUESTS)
    assert {"device.cert_renew", "device.log_bundle"} <= CENTRAL_REQUESTS
    assert {fleet.ENROLL_DEV, "claim"} <= RESERVED_DEVICE_IDS
