"""``ykt card …`` and ``ykt sim card …`` through their argparse wiring, on the real stack."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.devices.card.cli import add_card_commands
from edge.devices.card.sim.cardos import HealthCardSim
from edge.devices.card.sim.cli import add_sim_card_commands
from edge.devices.card.sim.pcscd import PcscDaemon
from edge.devices.card.sim.sam import SamSim
from edge.devices.card.sim.vpcd import VirtualCardSlot

pytestmark = pytest.mark.stack


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ykt")
    top = parser.add_subparsers(dest="cmd", required=True)
    add_card_commands(top)
    sim = top.add_parser("sim").add_subparsers(dest="sim_cmd", required=True)
    add_sim_card_commands(sim)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def config_file(tmp_path: Path, pcscd: PcscDaemon, sam_pin_file: Path) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(f'[card]\npatient_reader = "{pcscd.patient_reader}"\n'
                 f'sam_reader = "{pcscd.sam_reader}"\nsam_pin_file = "{sam_pin_file}"\n'
                 f'hotlist_path = "{tmp_path / "none.sqlite"}"\n')
    return p


def test_sim_insert_then_card_read_then_remove(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, config_file: Path, tmp_path: Path,
        wait_card: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    port = str(pcscd.patient_port)
    assert run(["sim", "card", "insert", "--name", "赵六", "--sex", "2", "--ethnicity", "02",
                "--birth-date", "19900202", "--id-number", "110101199002021236",
                "--card-number", "H11010119900202001", "--port", port,
                "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "赵*" in out and "赵六" not in out
    try:
        wait_card(pcscd.patient_reader, True)
        assert run(["card", "read", "--json", "--config", str(config_file)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["holder"]["name"] == "赵*"
        assert doc["holder"]["id_number"] == "110***********1236"
        assert doc["apdus"]["card"] > 12
        assert run(["card", "read", "--json", "--show-personal-data",
                    "--config", str(config_file)]) == 0
        full = json.loads(capsys.readouterr().out)
        assert full["holder"]["name"] == "赵六" and full["holder"]["sex"] == "2"
        assert run(["card", "sam", "--json", "--config", str(config_file)]) == 0
        assert json.loads(capsys.readouterr().out)["terminal_number"] == "110100000001"
    finally:
        assert run(["sim", "card", "remove", "--port", port, "--state-dir", str(state)]) == 0
    wait_card(pcscd.patient_reader, False)
    assert run(["sim", "card", "remove", "--port", port, "--state-dir", str(state)]) == 1
    assert capsys.readouterr().err == f"no virtual card recorded for port {port}\n"
    assert run(["card", "read", "--config", str(config_file)]) == 1
    assert capsys.readouterr().err == "error: No card in the reader\n错误：请插入居民健康卡。\n"


def test_card_read_without_sam_prints_free_data(
        pcscd: PcscDaemon, patient_slot: VirtualCardSlot, tmp_path: Path,
        wait_card: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    patient_slot.insert(HealthCardSim.from_holder(card_number="H11010119800101001"))
    wait_card(pcscd.patient_reader, True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[card]\npatient_reader = "{pcscd.patient_reader}"\n'
                   f'sam_reader = "no such reader"\n')
    assert run(["card", "read", "--json", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["issuer"]["card_number"] == "H110**********1001"
    assert "holder" not in doc and "PSAM" in captured.err


def test_config_errors_name_file_and_key(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[card]\nsam_pin = "123456"\n')
    assert run(["card", "read", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "card.sam_pin" in err
    assert run(["sim", "card", "insert", "--birth-date", "1990", "--state-dir",
                str(tmp_path)]) == 2


def test_card_sam_never_presents_a_rejected_pin_again(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    sam = sam_slot.card
    assert isinstance(sam, SamSim)
    pin = tmp_path / "sam.pin"
    pin.write_text("999999\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[card]\npatient_reader = "{pcscd.patient_reader}"\n'
                   f'sam_reader = "{pcscd.sam_reader}"\nsam_pin_file = "{pin}"\n'
                   f'hotlist_path = "{tmp_path / "hot.sqlite"}"\n')
    assert run(["card", "sam", "--config", str(cfg)]) == 1
    assert capsys.readouterr().err == ("error: SAM PIN rejected (SW 63C2); 2 tries left; "
                                       "not retried\n错误：PSAM 卡密码错误，请联系工作人员。\n")
    for argv in (["card", "sam"], ["card", "read"], ["card", "sam"]):  # later processes
        assert run([*argv, "--config", str(cfg)]) == 1
        assert "the same PIN is not presented again" in capsys.readouterr().err
    assert (sam.verify_count, sam.pin_tries_left) == (1, 2)
    pin.write_text("123456\n")  # the PIN file is fixed: its PIN gets the one try it needs
    assert run(["card", "sam", "--json", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["pin_tries_left"] == 2  # asked before VERIFY
    assert (sam.verify_count, sam.pin_tries_left) == (2, 3)
