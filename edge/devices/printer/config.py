"""Printer section of the edge config (strict pydantic, extra keys rejected)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.devices.printer.escpos.profiles import PROFILES

__all__ = ["PrinterConfig"]


class PrinterConfig(BaseModel):
    """Which printer, how to reach it, and its timeouts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    kind: Literal["usb", "serial", "network", "cups", "memory"] = "network"
    profile: str = "xprinter_xp80"
    vendor_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    product_id: int | None = Field(default=None, ge=0, le=0xFFFF)
    usb_in_ep: int = Field(default=0x82, ge=0, le=0xFF)
    usb_out_ep: int = Field(default=0x01, ge=0, le=0xFF)
    device: str | None = None
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 9600
    host: str | None = None
    port: int = Field(default=9100, ge=1, le=65535)
    queue: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    status_timeout_s: float = Field(default=2.0, gt=0, le=30)
    job_timeout_s: float = Field(default=30.0, gt=0, le=600)
    reconnect_attempts: int = Field(default=3, ge=0, le=20)
    reconnect_delay_s: float = Field(default=1.0, ge=0, le=30)
    # DLE EOT poll while no job runs, so "paper near end" reaches staff before a patient
    # meets an empty printer; 0 turns the poll off.
    status_poll_s: float = Field(default=10.0, ge=0, le=3600)

    @field_validator("vendor_id", "product_id", mode="before")
    @classmethod
    def _hex_ids(cls, value: Any) -> Any:
        """Accept USB ids written as in lsusb: ``"0x0416"`` or ``"0416"``."""
        if isinstance(value, str):
            try:
                return int(value, 16)
            except ValueError:
                raise ValueError(f"not a hexadecimal USB id: {value!r}") from None
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"unknown printer profile {value!r}; known: {sorted(PROFILES)}")
        return value

    @model_validator(mode="after")
    def _transport_fields(self) -> PrinterConfig:
        needs = {
            "usb": ("vendor_id", "product_id"),
            "serial": ("device",),
            "network": ("host",),
            "cups": ("queue",),
            "memory": (),
        }[self.kind]
        missing = [name for name in needs if getattr(self, name) is None]
        if self.enabled and missing:
            raise ValueError(f"kind={self.kind} needs {', '.join(missing)}")
        return self
