"""Loading of typed TOML configuration and of secrets (files or environment).

Every component has one pydantic model per section with ``extra="forbid"``; this module
turns a TOML file into such a model and turns every failure into one ``ConfigError``
that names the file, the key and what is wrong, so the CLI can print a single line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from yikatong.common.errors import LocalizedError

__all__ = ["ConfigError", "StrictModel", "TimeZoneName", "load_config", "read_secret",
           "resolve_paths"]

M = TypeVar("M", bound=BaseModel)


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


#: An IANA time zone name (``Asia/Shanghai``), checked against the system's zone database.
TimeZoneName = Annotated[str, AfterValidator(_check_zone)]


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigError(LocalizedError):
    """A configuration file or secret is missing or invalid; names the file and the key."""

    code = "config_error"

    def __init__(self, file: str, key: str, problem: str) -> None:
        super().__init__(
            f"{file}: {key}: {problem}" if key else f"{file}: {problem}",
            f"配置有误，请检查 {file} 中的 {key}" if key else f"配置有误，请检查 {file}",
        )
        self.file = file
        self.key = key
        self.problem = problem


def _key_of(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def validate_mapping(model: type[M], data: Mapping[str, Any], *, source: str) -> M:
    """Validate ``data`` into ``model``; the first error becomes a ``ConfigError``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not allowed here)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(source, _key_of(tuple(err["loc"])), msg + extra) from None


def load_config(path: str | Path, model: type[M], *, base_dir: Path | None = None) -> M:
    """Read a TOML file into ``model``; relative paths in it resolve against its folder."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(p), "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), "", f"TOML syntax error: {exc}") from None
    cfg = validate_mapping(model, data, source=str(p))
    return resolve_paths(cfg, base_dir or p.resolve().parent)


def read_secret(
    file: str | Path | None,
    env_var: str | None = None,
    *,
    what: str,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Return a secret from ``env_var`` (if set) or ``file``; never from the TOML itself.

    The file must not be readable by group/other when it lives on a real device; we only
    warn-by-error when it is world-readable, since a leaked SAM PIN or token is a site risk.
    """
    env = os.environ if environ is None else environ
    if env_var and env.get(env_var):
        return env[env_var].strip()
    if file is None:
        raise ConfigError(what, "", f"no secret configured (set {env_var or 'a file'})")
    p = Path(file)
    try:
        st = p.stat()
        value = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(str(p), what, "secret file not found") from None
    except OSError as exc:
        raise ConfigError(str(p), what, f"cannot read secret: {exc.strerror}") from None
    if st.st_mode & 0o004:
        raise ConfigError(str(p), what, "secret file is world-readable (chmod 600 it)")
    if not value:
        raise ConfigError(str(p), what, "secret file is empty")
    return value


def resolve_paths(model: M, base: Path) -> M:
    """Return a copy of ``model`` whose relative ``Path`` fields (at any depth) are absolute."""
    updates: dict[str, object] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, Path) and not value.is_absolute():
            updates[name] = (base / value).resolve()
        elif isinstance(value, BaseModel):
            resolved = resolve_paths(value, base)
            if resolved is not value:
                updates[name] = resolved
    return model.model_copy(update=updates) if updates else model
