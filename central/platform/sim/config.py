"""Settings of the reference platform."""

from __future__ import annotations

import json
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["PlatformSimSettings", "SettingsError", "load_sim_settings"]


class SettingsError(ValueError):
    """A settings file could not be read or failed validation (names file and key)."""


class PlatformSimSettings(BaseModel):
    """Everything the reference platform needs, loaded once and passed in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_path: Path
    seed: int = Field(20240601, ge=0, le=2**63 - 1)
    timezone: str = "Asia/Shanghai"
    admin_enabled: bool = False
    hospital_name: str = Field("示范市第一人民医院", min_length=1, max_length=60)
    #: seconds a wallet payment stays "user paying" before it resolves (see data.WALLET_RULES)
    wallet_pending_s: float = Field(10.0, ge=0, le=3600)
    #: base of the verification link printed on lab reports
    verify_base_url: str = "https://lis.hospital.example/verify"
    #: when set, the seeded staff accounts get this PIN (demo sites); otherwise random PINs
    demo_staff_pin: str | None = Field(None, pattern=r"^\d{4,8}$")
    #: how long a "timeout" / "drop" fault holds the reply; longer than any client timeout
    fault_hang_s: float = Field(30.0, gt=0, le=600)
    #: percent of a registration fee an insured patient pays (医保个人自付比例); the rest
    #: is the insurance fund's part
    insured_share_pct: int = Field(30, ge=0, le=100)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The platform's local time zone."""
        return zoneinfo.ZoneInfo(self.timezone)


def load_sim_settings(path: Path | None, **overrides: Any) -> PlatformSimSettings:
    """Load settings from a TOML or JSON file (a ``[platform_sim]`` table is accepted)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = path.read_bytes()
            loaded = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: top level must be a table/object")
        data = loaded.get("platform_sim", loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PlatformSimSettings.model_validate(data)
    except ValidationError as exc:
        where = path or "settings"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"{where}: {problems}") from exc
