"""TLS settings of an MQTT connection (device or central)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["TlsConfig"]


class TlsConfig(BaseModel):
    """TLS to the broker; ``certfile``/``keyfile`` together make it mutual TLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cafile: Path
    certfile: Path | None = None
    keyfile: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("tls.certfile and tls.keyfile go together")
        return self
