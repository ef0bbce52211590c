"""Secret files ``ykt fw`` writes (firmware_tools.central.write_file): mode 0600 from the
first byte, also over an existing file with a wider mode, atomically."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from firmware_tools import central as fw_central
from firmware_tools.central import write_file

from yikatong.cli import main as ykt


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_file_replaces_a_world_readable_file_with_a_0600_one(tmp_path: Path) -> None:
    path = tmp_path / "claim.password"
    path.write_text("old\n")
    path.chmod(0o644)
    write_file(path, "s3cret\n")
    assert path.read_text() == "s3cret\n" and mode(path) == 0o600
    write_file(path, b"-----BEGIN CERTIFICATE-----\n", 0o644)  # public files keep theirs
    assert mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["claim.password"]


def test_write_file_failing_leaves_the_old_file_and_no_temporary_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "central-signing.key"
    path.write_text("old key\n")

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fw_central.os, "fsync", fail)
    with pytest.raises(OSError):
        write_file(path, "new key\n")
    assert path.read_text() == "old key\n"
    assert [p.name for p in tmp_path.iterdir()] == ["central-signing.key"]


def test_keygen_force_over_a_world_readable_key_leaves_it_0600(
        tmp_path: Path, capsys: Any) -> None:
    key = tmp_path / "central-signing.key"
    key.write_text("an old key\n")
    key.chmod(0o644)
    assert ykt(["fw", "keygen", "--out", str(tmp_path), "--force"]) == 0, capsys.readouterr()
    assert "PRIVATE KEY" in key.read_text() and mode(key) == 0o600
    assert mode(tmp_path / "central-signing.pub") & 0o044  # the public half stays readable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["central-signing.key",
                                                          "central-signing.pub"]
