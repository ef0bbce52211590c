"""Typed configuration of the device daemon (``ykt edge``), one model per TOML section."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edge.devices.card.config import CardConfig
from edge.devices.printer.config import PrinterConfig
from edge.devices.scanner.config import ScannerConfig
from edge.uplink.config import UplinkConfig
from yikatong.common.config import StrictModel, TimeZoneName

__all__ = ["ApiConfig", "DeviceConfig", "EdgeConfig", "LogConfig"]


class DeviceConfig(StrictModel):
    """Who this device is."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$", description="device id = MQTT client id")
    role: Literal["kiosk", "cashier"]
    hospital_name: str = Field(min_length=1, max_length=40)
    data_dir: Path
    timezone: TimeZoneName = "Asia/Shanghai"  # times printed on paper are the hospital's


class ApiConfig(StrictModel):
    """The local API the kiosk UI talks to: loopback only, token protected."""

    host: str = "127.0.0.1"
    port: int = Field(default=8701, ge=1, le=65535)
    token_file: Path | None = None
    token_env: str = "YKT_EDGE_API_TOKEN"  # noqa: S105 - the variable's name, not a secret

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, v: str) -> str:
        # The local API hands out masked identities and triggers prints: never on a LAN.
        if v == "localhost":
            return v
        try:
            if not ipaddress.ip_address(v).is_loopback:
                raise ValueError("must be a loopback address (127.0.0.1, ::1 or localhost)")
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return v


class LogConfig(StrictModel):
    """Logging level; output is JSON lines on stdout (journald)."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class EdgeConfig(StrictModel):
    """The whole ``ykt edge`` configuration file."""

    device: DeviceConfig
    api: ApiConfig = ApiConfig()
    card: CardConfig
    printer: PrinterConfig
    # Optional: without it no scanner runs and /v1/scan uses the runtime's built-in patterns.
    scanner: ScannerConfig | None = None
    uplink: UplinkConfig
    log: LogConfig = LogConfig()
    telemetry_interval_s: float = Field(default=30.0, ge=1.0, le=3600.0)

    @model_validator(mode="after")
    def _check(self) -> EdgeConfig:
        if self.uplink.username and self.uplink.username != self.device.id:
            raise ValueError("uplink.username must equal device.id (the broker ACL keys on it)")
        return self
