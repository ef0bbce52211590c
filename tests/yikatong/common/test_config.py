"""Config files: strict models, one-line errors naming file and key, secrets from files."""

import os
import subprocess
import sys

import pytest
from pydantic import Field

from yikatong.common.config import ConfigError, StrictModel, load_config, read_secret


class Inner(StrictModel):
    port: int = Field(ge=1, le=65535)


class Outer(StrictModel):
    name: str
    inner: Inner


def test_valid_file_loads(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text('name = "x"\n[inner]\nport = 10\n')
    assert load_config(f, Outer).inner.port == 10


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('name = "x"\n[inner]\nport = 70000\n', "inner.port", "less than or equal"),
        ('name = "x"\n[inner]\nport = 1\ncolour = "red"\n', "inner.colour", "unknown key"),
        ('[inner]\nport = 1\n', "name", "required key is missing"),
    ],
)
def test_errors_name_file_key_and_problem(tmp_path, text, key, problem):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(f, Outer)
    assert ei.value.file == str(f) and ei.value.key == key and problem in ei.value.problem


def test_syntax_error_and_missing_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("name = \n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(f, Outer)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", Outer)


def test_secret_from_env_or_private_file(tmp_path):
    f = tmp_path / "pin"
    f.write_text("123456\n")
    os.chmod(f, 0o600)
    assert read_secret(f, "X_PIN", what="pin", environ={}) == "123456"
    assert read_secret(f, "X_PIN", what="pin", environ={"X_PIN": "999999"}) == "999999"
    os.chmod(f, 0o644)
    with pytest.raises(ConfigError, match="world-readable"):
        read_secret(f, None, what="pin", environ={})


def test_cli_bad_config_is_one_line_no_traceback(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('[device]\nid = "Bad Id"\n')
    r = subprocess.run([sys.executable, "-m", "yikatong.cli", "edge", "--config", str(f)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    err_lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err_lines) == 1
    assert str(f) in err_lines[0] and "device.id" in err_lines[0]
