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


def test_card_sam_shows_pin_state_and_the_recorded_fault(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, config_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["card", "sam", "--json", "--config", str(config_file)]) == 0
    ok = json.loads(capsys.readouterr().out)
    assert (ok["pin_verified"], ok["pin_tries_left"], ok["pin_fault"]) == (True, 3, None)
    assert ok["terminal_number"] == "110100000001" and len(ok["serial"]) == 28
    assert run(["card", "sam", "--config", str(config_file)]) == 0  # text form
    text = capsys.readouterr().out.splitlines()
    assert "pin_verified: True" in text and "pin_tries_left: 3" in text
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("999999\n")
    cfg = tmp_path / "wrong.toml"
    cfg.write_text(config_file.read_text().replace(str(tmp_path / "sam.pin"), str(wrong)))
    assert str(wrong) in cfg.read_text()
    for spent in (True, False):  # the VERIFY, then the recorded fault (no VERIFY)
        assert run(["card", "sam", "--json", "--config", str(cfg)]) == 1
        captured = capsys.readouterr()
        bad = json.loads(captured.out)
        assert (bad["pin_verified"], bad["pin_tries_left"]) == (False, 2)
        assert bad["pin_fault"]["sw"] == "63C2" and bad["pin_fault"]["retries_left"] == 2
        assert bad["serial"] == ok["serial"] and "terminal_number" not in bad
        assert "PSAM 卡密码错误" in captured.err
        assert ("not presented again" in captured.err) is not spent
    assert "999999" not in json.dumps(bad)
    assert run(["card", "sam", "--json", "--config", str(config_file)]) == 0  # right PIN
    assert json.loads(capsys.readouterr().out)["pin_fault"] is None


def test_card_read_photo_writes_the_decoded_face_only_when_asked(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, patient_slot: VirtualCardSlot,
        config_file: Path, tmp_path: Path, wait_card: Callable[..., None],
        capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from tests.edge.devices.card.test_card_photo import face_jpeg
    patient_slot.insert(HealthCardSim.from_holder(photo=face_jpeg()))
    wait_card(pcscd.patient_reader, True)
    out = tmp_path / "face.png"
    assert run(["card", "read", "--photo", str(out), "--config", str(config_file)]) == 2
    assert capsys.readouterr().err == (
        "refused: --photo writes the holder's face (personal data); add "
        "--show-personal-data to confirm\n"
        "已拒绝：照片属于个人信息，导出照片须同时指定 --show-personal-data\n")
    assert not out.exists()
    assert run(["card", "read", "--photo", str(tmp_path / "face.tif"),
                "--show-personal-data", "--config", str(config_file)]) == 2
    capsys.readouterr()
    assert run(["card", "read", "--json", "--show-personal-data", "--photo", str(out),
                "--config", str(config_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["photo"]["width"] == 90 and doc["photo"]["format"] == "JPEG"
    with Image.open(out) as img:
        assert (img.format, img.size) == ("PNG", (90, 120))
    assert out.stat().st_mode & 0o077 == 0  # a face: owner-only
    broken = HealthCardSim.from_holder(photo=face_jpeg()[:300])
    patient_slot.insert(broken)
    wait_card(pcscd.patient_reader, True)
    jpg = tmp_path / "broken.jpg"
    assert run(["card", "read", "--show-personal-data", "--photo", str(jpg),
                "--config", str(config_file)]) == 1
    err = capsys.readouterr().err
    assert "file DDF1/EF07" in err and "照片数据错误" in err
    assert not jpg.exists() and broken.reads.count("DDF1/EF07") >= 1


def test_contactless_health_card_reads_and_contactless_bank_card_is_refused(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, config_file: Path, tmp_path: Path,
        wait_card: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    state, port = str(tmp_path / "state"), str(pcscd.patient_port)
    assert run(["sim", "card", "insert", "--contactless", "--name", "孙七", "--port", port,
                "--state-dir", state]) == 0
    assert "(contactless)" in capsys.readouterr().out
    try:
        wait_card(pcscd.patient_reader, True)
        assert run(["card", "read", "--json", "--show-personal-data",
                    "--config", str(config_file)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["atr"].startswith("3B8D8001") and doc["holder"]["name"] == "孙七"
        # Out, seen out by pcscd, then the next card in (as a person swaps cards).
        assert run(["sim", "card", "remove", "--port", port, "--state-dir", state]) == 0
        wait_card(pcscd.patient_reader, False)
        assert run(["sim", "card", "insert", "--kind", "bank", "--contactless",
                    "--port", port, "--state-dir", state]) == 0
        capsys.readouterr()
        wait_card(pcscd.patient_reader, True)
        assert run(["card", "read", "--json", "--config", str(config_file)]) == 1
        assert capsys.readouterr().err == ("error: No health-card application (SELECT DDF1 → "
                                           "6A82)\n错误：此卡不是居民健康卡，请插入居民健康卡。\n")
    finally:
        assert run(["sim", "card", "remove", "--port", port, "--state-dir", state]) == 0
    wait_card(pcscd.patient_reader, False)


def test_sim_insert_faults_over_the_real_stack(
        pcscd: PcscDaemon, sam_slot: VirtualCardSlot, config_file: Path, tmp_path: Path,
        wait_card: Callable[..., None], capsys: pytest.CaptureFixture[str]) -> None:
    state, port = str(tmp_path / "state"), str(pcscd.patient_port)
    assert run(["sim", "card", "insert", "--fault", "disconnect-at=4", "--port", port,
                "--state-dir", state]) == 0
    assert "with faults: disconnect-at=4" in capsys.readouterr().out
    try:
        wait_card(pcscd.patient_reader, True)
        assert run(["card", "read", "--config", str(config_file)]) == 1
        assert "removed" in capsys.readouterr().err
        # Straight in after the pulled card (insert replaces it), as a script would do.
        assert run(["sim", "card", "insert", "--blocked-auth", "--port", port,
                    "--state-dir", state]) == 0
        capsys.readouterr()
        wait_card(pcscd.patient_reader, True)
        assert run(["card", "read", "--config", str(config_file)]) == 1
        assert "卡片已锁定" in capsys.readouterr().err
    finally:
        assert run(["sim", "card", "remove", "--port", port, "--state-dir", state]) == 0
    wait_card(pcscd.patient_reader, False)
