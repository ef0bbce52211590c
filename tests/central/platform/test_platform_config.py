"""Config models, the adapter factory, settings files and the CLI parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from central.platform.config import ADAPTERS, PlatformConfig, create_adapter
from central.platform.reference import ReferenceAdapter
from central.platform.sim.config import SettingsError, load_sim_settings
from central.platform.sim.server import add_platform_sim_arguments, main


async def test_create_adapter_builds_the_reference_adapter() -> None:
    cfg = PlatformConfig.model_validate({
        "kind": "reference", "base_url": "http://127.0.0.1:8600", "connect_timeout_s": 1,
        "read_timeout_s": 5, "breaker": {"failure_threshold": 2, "reset_timeout_s": 7}})
    adapter = create_adapter(cfg)
    assert isinstance(adapter, ReferenceAdapter)
    assert adapter.breaker.failure_threshold == 2 and adapter.breaker.reset_timeout == 7
    assert set(ADAPTERS) == {"reference"}
    await adapter.aclose()


@pytest.mark.parametrize("bad", [
    {"kind": "acme"},
    {"base_url": "ftp://x"},
    {"read_timeout_s": 0},
    {"connect_timeout_s": 10, "read_timeout_s": 5},
    {"breaker": {"failure_threshold": 0}},
    {"retries": 3},
])
def test_platform_config_is_strict(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PlatformConfig.model_validate(bad)


def test_sim_settings_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "sim.toml"
    f.write_text('[platform_sim]\ndb_path = "x.db"\nseed = 7\nadmin_enabled = true\n')
    s = load_sim_settings(f, seed=9)
    assert (s.db_path, s.seed, s.admin_enabled, s.timezone) == (Path("x.db"), 9, True,
                                                                 "Asia/Shanghai")
    f.write_text('[platform_sim]\ndb_path = "x.db"\ncolour = "red"\n')
    with pytest.raises(SettingsError, match=r"sim\.toml: colour"):
        load_sim_settings(f)
    f.write_text('db_path = "x.db"\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(SettingsError, match="timezone"):
        load_sim_settings(f)


def test_cli_parser_and_bad_config_exit_code(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_platform_sim_arguments(parser)
    args = parser.parse_args(["--db", str(tmp_path / "p.db"), "--seed", "3", "--port", "0"])
    assert (args.host, args.port, args.seed, args.admin) == ("127.0.0.1", 0, 3, None)
    assert main(args) == 2  # port 0 is refused before anything starts
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 'x'\n")
    assert main(["--config", str(bad)]) == 2
    assert "bad.toml" in capsys.readouterr().err
