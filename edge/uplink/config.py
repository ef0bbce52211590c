"""Typed, strict configuration of the device uplink (MQTT session + outbox)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from yikatong.mqtt.config import TlsConfig

__all__ = ["TlsConfig", "UplinkConfig", "default_timeouts"]


def default_timeouts() -> dict[str, float]:
    """Default caller timeouts (seconds) by type prefix; the longest matching prefix wins."""
    # Payments wait for the payer's phone / the acquirer: longer than lookups.
    return {"": 15.0, "pay.": 60.0, "report.fetch": 30.0}


class UplinkConfig(BaseModel):
    """Broker address, credentials, retry/backoff and outbox settings of one device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    retry_interval_s: float = Field(default=10.0, gt=0, le=3600)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    max_inflight: int = Field(default=20, ge=1, le=65535)
    outbox_path: Path
    max_entries: int = Field(default=10_000, ge=10)
    state_path: Path
    timeouts: dict[str, float] = Field(default_factory=default_timeouts)
    # Default ``exp`` of a request: past it central must not act on it (a booking made an
    # hour after the patient left is worse than none).
    request_exp_s: float = Field(default=600.0, gt=0)
    # Completed entries are kept this long (result_of after the caller gave up).
    keep_done_s: float = Field(default=7 * 24 * 3600, ge=0)
    #: A mutating request answered "outcome unknown"/"unavailable" is asked again this often
    #: in the background until central gives a final answer (the patient may have left).
    follow_up_interval_s: float = Field(default=20.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _checks(self) -> UplinkConfig:
        if self.backoff_min_s > self.backoff_max_s:
            raise ValueError("backoff_min_s must be <= backoff_max_s")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.username is None and (self.tls is None or self.tls.certfile is None):
            raise ValueError("no credentials: set username + password_file, or tls with certfile")
        if any(t <= 0 for t in self.timeouts.values()):
            raise ValueError("timeouts must be > 0")
        return self

    def timeout_for(self, type_: str) -> float:
        """Caller timeout for request ``type_`` (longest matching prefix of ``timeouts``)."""
        best = ""
        for prefix in self.timeouts:
            if type_.startswith(prefix) and len(prefix) >= len(best):
                best = prefix
        return self.timeouts.get(best, 15.0)
