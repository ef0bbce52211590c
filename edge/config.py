"""Typed configuration of the device daemon (``ykt edge``), one model per TOML section."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edge.devices.card.config import CardConfig
from edge.devices.printer.config import PrinterConfig
from edge.devices.scanner.config import ScannerConfig
from edge.uplink.config import UplinkConfig
from yikatong.common.config import StrictModel, TimeZoneName

__all__ = ["ApiConfig", "DeviceConfig", "EdgeConfig", "EnrollmentConfig", "LogConfig",
           "RemoteConfig", "UpdateConfig"]


class DeviceConfig(StrictModel):
    """Who this device is.

    With ``[enrollment]`` the id and role may be left out: they come from the identity
    central issues at enrollment (``data_dir/identity/identity.json``).
    """

    id: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{2,62}$",
                           description="device id = MQTT client id")
    role: Literal["kiosk", "cashier"] | None = None
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


class EnrollmentConfig(StrictModel):
    """``[enrollment]``: how a device without an identity asks central for one (by claim).

    The files come from the claim bundle (``ykt fw claim-bundle``): ``cafile`` the fleet
    chain, ``claim_password_file`` the site's claim password, ``signing_public_key``
    central's Ed25519 key that signs configs and commands (docs/fleet-trust.md).
    """

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=8884, ge=1, le=65535)
    cafile: Path
    claim_username: str = Field(default="claim", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    claim_password_file: Path
    signing_public_key: Path
    #: Hardware serial (the enrollment client id); default: /proc/cpuinfo ``Serial``, else
    #: /etc/machine-id.
    serial: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
    #: Shown to the technician; default: /proc/device-tree/model, else "generic".
    model: str | None = Field(default=None, min_length=1, max_length=64)
    #: Seconds between CSR publications until central answers (and while pending).
    retry_s: float = Field(default=30.0, gt=0, le=3600)
    #: Seconds to wait after a rejection before asking again with a new key.
    rejected_wait_s: float = Field(default=600.0, ge=0, le=7 * 24 * 3600)
    keepalive: int = Field(default=30, ge=5, le=3600)


class RemoteConfig(StrictModel):
    """``[remote]``: signed desired config and commands from central (docs/fleet-trust.md).

    Both need central's signing key: ``signing_public_key`` here, else the one of
    ``[enrollment]``; without either they are off.
    """

    enabled: bool = True
    signing_public_key: Path | None = None
    #: Log records (masked) kept in memory for ``logs.collect``.
    log_ring_lines: int = Field(default=5000, ge=100, le=50_000)
    #: systemd units ``service.restart`` may restart.
    edge_unit: str = Field(default="ykt-edge.service", pattern=r"^[A-Za-z0-9@_.-]+\.service$")
    kiosk_unit: str = Field(default="ykt-kiosk.service", pattern=r"^[A-Za-z0-9@_.-]+\.service$")
    #: How often a disruptive command that waits checks whether the device is idle.
    idle_poll_s: float = Field(default=1.0, gt=0, le=60)


class UpdateConfig(StrictModel):
    """``[update]``: software updates into A/B slots (docs/updates.md, "On the device").

    ``update.install`` (signed by central) is refused unless the daemon runs from a slot
    under ``root`` and the bundle is signed by a key in ``release_keys``.
    """

    enabled: bool = True
    #: The A/B root: slots/a, slots/b, current, committed, update/.
    root: Path = Path("/opt/yikatong")
    #: Release public key(s), PEM (one or more blocks), put there by the installer.
    release_keys: Path = Path("/etc/yikatong/release.pub")
    #: Seconds a new version has after its start to pass every health check.
    health_deadline_s: float = Field(default=120.0, ge=5, le=3600)
    #: Starts of a new version before the guard rolls it back.
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: What the health check requires (a part the config switches off is not probed).
    health_checks: list[Literal["uplink", "reader", "sam", "printer"]] = Field(
        default_factory=lambda: ["uplink", "reader", "sam", "printer"])
    #: Times a broken download is resumed within one command.
    download_retries: int = Field(default=5, ge=0, le=100)


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
    enrollment: EnrollmentConfig | None = None
    remote: RemoteConfig = RemoteConfig()
    update: UpdateConfig = UpdateConfig()

    @model_validator(mode="before")
    @classmethod
    def _identity_tls(cls, data: Any) -> Any:
        """With ``[enrollment]`` the uplink's client certificate is the enrolled identity's.

        The files live in ``data_dir/identity/``; filling them in here keeps the uplink's
        own rule ("a username or a client certificate") true before the device is enrolled.
        """
        if not isinstance(data, dict) or not isinstance(data.get("enrollment"), dict):
            return data
        uplink, device = data.get("uplink"), data.get("device")
        data_dir = device.get("data_dir") if isinstance(device, dict) else getattr(
            device, "data_dir", None)
        if not isinstance(uplink, dict) or data_dir is None:
            return data
        if uplink.get("username") is not None or uplink.get("password_file") is not None:
            return data  # refused in _check, with a message naming the keys
        ident = Path(str(data_dir)) / "identity"
        tls = dict(uplink.get("tls") or {})
        if tls.get("certfile") is not None or tls.get("keyfile") is not None:
            return data  # refused in _check
        tls.setdefault("cafile", str(ident / "chain.pem"))
        tls["certfile"], tls["keyfile"] = str(ident / "device.pem"), str(ident / "device.key")
        return {**data, "uplink": {**uplink, "tls": tls}}

    @model_validator(mode="after")
    def _check(self) -> EdgeConfig:
        if self.enrollment is not None:
            if self.uplink.username is not None or self.uplink.password_file is not None:
                raise ValueError("with [enrollment] the broker takes the identity from the "
                                 "device certificate: remove uplink.username/password_file")
            ident = self.device.data_dir / "identity"
            tls = self.uplink.tls
            if tls is None or (tls.certfile, tls.keyfile) != (ident / "device.pem",
                                                              ident / "device.key"):
                raise ValueError("with [enrollment] uplink.tls.certfile/keyfile come from the "
                                 "enrolled identity: remove them")
            return self
        if self.device.id is None or self.device.role is None:
            raise ValueError("device.id and device.role are required (or configure "
                             "[enrollment] so central assigns them)")
        if self.uplink.username and self.uplink.username != self.device.id:
            raise ValueError("uplink.username must equal device.id (the broker ACL keys on it)")
        return self

    @property
    def signing_key_file(self) -> Path | None:
        """Central's signing key (``[remote]``, else ``[enrollment]``), or None."""
        if self.remote.signing_public_key is not None:
            return self.remote.signing_public_key
        return self.enrollment.signing_public_key if self.enrollment is not None else None
