"""Typed configuration of the kiosk UI server (``ykt kiosk``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from yikatong.common.config import StrictModel

__all__ = ["EdgeLink", "KioskConfig", "ServerConfig", "UiConfig"]


class ServerConfig(StrictModel):
    """Where the UI is served (Chromium in kiosk mode opens it on the same machine)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)


class EdgeLink(StrictModel):
    """How to reach the local ``ykt edge`` API."""

    url: str = Field(default="http://127.0.0.1:8701",
                     pattern=r"^http://(127\.0\.0\.1|localhost|\[::1\]):\d+$")
    token_file: Path | None = None
    token_env: str = "YKT_EDGE_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
    timeout_s: float = Field(default=30.0, gt=0, le=120)


class UiConfig(StrictModel):
    """Behaviour of the screens."""

    role: Literal["kiosk", "cashier"] = "kiosk"
    language: Literal["zh", "en"] = "zh"
    idle_timeout_s: int = Field(default=60, ge=15, le=600)
    countdown_s: int = Field(default=10, ge=3, le=60)
    hospital_name: str = Field(default="示范市第一人民医院", min_length=1, max_length=40)
    pay_method: Literal["prepaid", "later"] = "prepaid"
    timezone: str = "Asia/Shanghai"  # the hospital's day decides "today" on the booking screen
    elder_mode: bool = False  # 适老化 by default (larger type, fewer items, high contrast)
    staff_lock_s: int = Field(default=300, ge=30, le=3600)  # cashier desk auto-lock
    voice: bool = False  # spoken prompts (espeak-ng, synthesised on this machine)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @model_validator(mode="after")
    def _countdown_shorter(self) -> UiConfig:
        if self.countdown_s >= self.idle_timeout_s:
            raise ValueError("countdown_s must be shorter than idle_timeout_s")
        return self


class KioskConfig(StrictModel):
    """The whole ``ykt kiosk`` configuration file."""

    server: ServerConfig = ServerConfig()
    edge: EdgeLink = EdgeLink()
    ui: UiConfig = UiConfig()
