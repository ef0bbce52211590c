"""Configuration of the card subsystem (``[card]`` section), strict and typed.

The SAM PIN is a per-site secret: only the path of a file holding it appears here.
Reader patterns are shell-style globs matched case-insensitively against PC/SC names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.devices.card.card_session import CardProfile, Timeouts
from edge.devices.card.errors import SamPinError, SamUnavailable
from edge.devices.card.protocol.security import AuthScheme

__all__ = ["AuthSchemeConfig", "CardConfig", "CardTimeouts", "read_sam_pin"]


class AuthSchemeConfig(BaseModel):
    """Parameters marked *unsure* in the spec (see ``protocol.security``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cipher: Literal["SM4", "AES-128"] = "SM4"
    card_factor_source: Literal["card_number", "atr_historical"] = "card_number"
    city_pad: Annotated[int, Field(ge=0, le=0xFF)] = 0xFF
    city_align: Literal["left", "right"] = "left"
    levels: Literal["city_card", "card"] = "city_card"
    ext_auth_layout: Literal["kv_first", "kv_last"] = "kv_first"
    key_version: Annotated[int, Field(ge=0, le=0xFF)] = 1
    # combined: one 80DE (P1=01) diversifies and answers the cryptogram; split: 80DE + 80FA.
    sam_auth: Literal["combined", "split"] = "combined"

    def to_scheme(self) -> AuthScheme:
        """The frozen dataclass the protocol code uses."""
        return AuthScheme(**self.model_dump())


class CardTimeouts(BaseModel):
    """Per-APDU and per-operation limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apdu_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    operation_s: Annotated[float, Field(gt=0, le=300)] = 20.0

    @model_validator(mode="after")
    def _order(self) -> CardTimeouts:
        if self.operation_s < self.apdu_s:
            raise ValueError("operation_s must be at least apdu_s")
        return self

    def to_timeouts(self) -> Timeouts:
        """As the session's dataclass."""
        return Timeouts(self.apdu_s, self.operation_s)


class CardConfig(BaseModel):
    """The ``[card]`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    patient_reader: Annotated[str, Field(min_length=1)] = "*00 00"
    sam_reader: Annotated[str, Field(min_length=1)] = "*00 01"
    sam_pin_file: Path | None = None
    auth: AuthSchemeConfig = AuthSchemeConfig()
    read_mode: Literal["auto", "sfi", "select"] = "auto"
    timeouts: CardTimeouts = CardTimeouts()
    hotlist_path: Path = Path("/var/lib/ykt/hotlist.sqlite")
    # Where the card service keeps its state (the SAM PIN failure record); by default the
    # hot list's directory, so a test or a site that moves one moves both.
    state_dir: Path | None = None
    reject_expired: bool = True
    poll_interval_s: Annotated[float, Field(gt=0, le=10)] = 0.5

    @model_validator(mode="after")
    def _distinct_readers(self) -> CardConfig:
        if self.patient_reader == self.sam_reader:
            raise ValueError("patient_reader and sam_reader must differ")
        return self

    def sam_pin_state_path(self) -> Path:
        """The persisted SAM PIN failure record (see ``pinstate``)."""
        return (self.state_dir or self.hotlist_path.parent) / "sam-pin-state.json"

    def profile(self) -> CardProfile:
        """Card quirks as the session's dataclass."""
        return CardProfile(self.read_mode)


def read_sam_pin(path: Path | None) -> str:
    """Read the SAM PIN from its file (digits only, surrounding whitespace ignored)."""
    if path is None:
        raise SamUnavailable("No sam_pin_file configured", "未配置 PSAM 卡密码文件。")
    try:
        pin = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SamUnavailable(f"Cannot read SAM PIN file {path}: {exc}",
                             "无法读取 PSAM 卡密码文件。") from exc
    if not pin.isdigit() or not 4 <= len(pin) <= 12:
        raise SamPinError(f"SAM PIN file {path} must hold 4-12 digits",
                          "PSAM 卡密码文件格式错误。")
    return pin
