"""Scanner section of the edge config (strict pydantic, extra keys rejected, regexes checked)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.devices.scanner.classify import DEFAULT_MAX_LENGTH, ClassifierRules
from edge.devices.scanner.models import MODELS, ScannerModel

__all__ = ["ScannerConfig", "ScannerDeviceConfig"]

_USB_ID = re.compile(r"([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})")


class ScannerDeviceConfig(BaseModel):
    """One scanner: how to find it, which model profile, which keyboard layout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal["serial", "hid"]
    port: str | None = None
    evdev_path: str | None = None
    usb_id: str | None = None
    model: str | None = None
    layout: Literal["us", "de"] | None = None
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] | None = None
    # Overrides of the model profile's framing, for a scanner reprogrammed on site (models.py:
    # "every value here is a default that the config can override"). TOML escapes give
    # control bytes: terminator = "\r\n", prefix = "\u0002". Serial only: a keyboard
    # wedge always ends a scan with Enter.
    prefix: str | None = Field(default=None, max_length=8)
    suffix: str | None = Field(default=None, max_length=8)
    terminator: str | None = Field(default=None, min_length=1, max_length=4)
    aim: bool | None = None  # whether the scanner sends an AIM id ("]Q1") before the data

    @field_validator("usb_id")
    @classmethod
    def _usb_id(cls, value: str | None) -> str | None:
        """Accept ``vvvv:pppp`` as lsusb prints it; store lower case."""
        if value is None:
            return None
        if not _USB_ID.fullmatch(value):
            raise ValueError(f"usb_id must look like 0c2e:0cd4, got {value!r}")
        return value.lower()

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None and value not in MODELS:
            raise ValueError(f"unknown scanner model {value!r}; known: {sorted(MODELS)}")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> ScannerDeviceConfig:
        if self.kind == "serial":
            if self.evdev_path is not None or self.layout is not None:
                raise ValueError("evdev_path and layout are for kind=hid")
            if self.port is None and self.usb_id is None:
                raise ValueError("kind=serial needs port or usb_id")
        else:
            if self.port is not None or self.baudrate is not None:
                raise ValueError("port and baudrate are for kind=serial")
            framing = [k for k in ("prefix", "suffix", "terminator")
                       if getattr(self, k) is not None]
            if framing:
                raise ValueError(f"{', '.join(framing)}: framing is for kind=serial")
            if self.evdev_path is None and self.usb_id is None:
                raise ValueError("kind=hid needs evdev_path or usb_id")
        if self.model is not None and MODELS[self.model].interface != self.kind:
            raise ValueError(f"model {self.model!r} is a {MODELS[self.model].interface} "
                             f"scanner, not kind={self.kind}")
        return self

    @property
    def vid_pid(self) -> tuple[int, int] | None:
        """The configured USB ids as integers."""
        if self.usb_id is None:
            return None
        vid, pid = self.usb_id.split(":")
        return int(vid, 16), int(pid, 16)

    @property
    def model_name(self) -> str:
        """The model profile to use (generic for the kind when not given)."""
        return self.model or f"generic_{self.kind}"

    def profile(self) -> ScannerModel:
        """The model profile with this device's framing overrides applied."""
        model = MODELS[self.model_name]
        changes: dict[str, object] = {
            key: value.encode("utf-8")
            for key, value in (("prefix", self.prefix), ("suffix", self.suffix),
                               ("terminator", self.terminator))
            if value is not None
        }
        if self.aim is not None:
            changes["aim"] = self.aim
        if not changes:
            return model
        frame = dataclasses.replace(model.frame, **changes)  # type: ignore[arg-type]
        return dataclasses.replace(model, frame=frame)


class ScannerConfig(BaseModel):
    """Which scanners to use and how to classify what they read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    devices: list[ScannerDeviceConfig] = Field(default_factory=list)
    # Also pick up any scanner whose vid:pid a model profile knows, without a devices entry.
    autodiscover: bool = False
    dedup_window_s: float = Field(default=1.5, ge=0, le=60)
    specimen_regex: str | None = None
    staff_badge_regex: str | None = None
    max_scan_length: int = Field(default=DEFAULT_MAX_LENGTH, ge=16, le=4096)
    discovery_interval_s: float = Field(default=2.0, gt=0, le=60)
    reconnect_delay_s: float = Field(default=1.0, gt=0, le=60)

    @field_validator("specimen_regex", "staff_badge_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        """Fail at load, naming the key, rather than at the first scan."""
        if value is None:
            return None
        if not value:
            raise ValueError("empty regex; omit the key instead")
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from None
        if pattern.fullmatch(""):
            raise ValueError(f"regex {value!r} matches the empty string")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> ScannerConfig:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate scanner names: {dupes}")
        return self

    def rules(self) -> ClassifierRules:
        """Classifier rules built from the validated regexes."""
        return ClassifierRules.from_strings(
            self.specimen_regex, self.staff_badge_regex, self.max_scan_length
        )
