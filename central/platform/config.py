"""Platform adapter configuration and the factory that builds an adapter from it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from central.platform.base import PlatformAdapter
from central.platform.breaker import CircuitBreaker
from central.platform.reference import ReferenceAdapter

__all__ = ["ADAPTERS", "BreakerConfig", "PlatformConfig", "create_adapter"]


class BreakerConfig(BaseModel):
    """Circuit-breaker thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(5, ge=1, le=1000)
    reset_timeout_s: float = Field(30.0, gt=0, le=3600)


class PlatformConfig(BaseModel):
    """The ``platform`` section of central's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["reference"] = "reference"
    base_url: str = "http://127.0.0.1:8600"
    connect_timeout_s: float = Field(2.0, gt=0, le=60)
    read_timeout_s: float = Field(10.0, gt=0, le=300)
    breaker: BreakerConfig = BreakerConfig()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError("base_url must be an http(s) URL with a host")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> PlatformConfig:
        if self.connect_timeout_s > self.read_timeout_s:
            raise ValueError("connect_timeout_s should not exceed read_timeout_s")
        return self


AdapterFactory = Callable[..., PlatformAdapter]


def _reference(
    cfg: PlatformConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PlatformAdapter:
    breaker = CircuitBreaker(
        failure_threshold=cfg.breaker.failure_threshold,
        reset_timeout=cfg.breaker.reset_timeout_s,
        clock=clock,
    )
    return ReferenceAdapter(
        cfg.base_url,
        connect_timeout=cfg.connect_timeout_s,
        read_timeout=cfg.read_timeout_s,
        breaker=breaker,
        transport=transport,
    )


#: Adapter kinds, registered explicitly; a real platform adds its own entry here.
ADAPTERS: dict[str, AdapterFactory] = {"reference": _reference}


def create_adapter(
    cfg: PlatformConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PlatformAdapter:
    """Build the adapter named by ``cfg.kind`` (clock and transport injectable for tests)."""
    factory = ADAPTERS.get(cfg.kind)
    if factory is None:  # only reachable if ADAPTERS and the Literal drift apart
        raise ValueError(f"unknown platform kind {cfg.kind!r}")
    return factory(cfg, clock=clock, transport=transport)
