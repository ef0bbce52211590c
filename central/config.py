"""Typed configuration of the central service (``ykt central``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from central.authz import AuthzSettings
from central.fleet.settings import FleetSection
from central.metrics import MetricsSettings
from central.platform.config import PlatformConfig
from central.retention import PrivacySettings
from central.staff import StaffSettings
from central.telemetry_history import TelemetrySettings
from yikatong.common.config import StrictModel, TimeZoneName

__all__ = ["BrokerSection", "BrokerTlsSection", "CentralConfig", "CentralSection",
           "DashboardSection", "FleetSection", "ForwarderSection", "forwarder_client_id"]


class CentralSection(StrictModel):
    """Where central keeps its state."""

    data_dir: Path
    site_name: str = Field(default="示范市第一人民医院", min_length=1, max_length=60)
    # The site's zone: every time a person reads (dashboard, ``ykt fw``) is shown in it,
    # as kiosks, receipts and the closing report already do; storage stays UTC.
    timezone: TimeZoneName = "Asia/Shanghai"


class BrokerTlsSection(StrictModel):
    """The embedded broker's TLS listener for devices.

    Leave ``cafile``/``certfile``/``keyfile`` out to have the fleet CA (``[fleet]``) make
    them: the server certificate for ``[fleet] server_names``, the CA chain devices trust.
    """

    host: str = "0.0.0.0"  # noqa: S104 - the devices' listener faces the site network
    port: int = Field(default=8883, ge=1, le=65535)
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    # Mutual TLS: devices present their certificate from enrollment (docs/fleet-trust.md);
    # its CN becomes the username (use_identity_as_username) and, with [fleet], the CA's
    # CRL is checked. False: username + password over TLS ([broker] legacy_passwords).
    require_certificate: bool = False

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> BrokerTlsSection:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("broker.tls.certfile and keyfile go together")
        return self


class BrokerSection(StrictModel):
    """The MQTT broker: central's own supervised Mosquitto, or an external one."""

    mode: Literal["embedded", "external"] = "embedded"
    # Plain listener (embedded) / broker address (external). Central itself connects here;
    # keep it on loopback and give devices the TLS listener.
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    max_queued_messages: int = Field(default=100_000, ge=1001)
    tls: BrokerTlsSection | None = None
    # external mode only: central's own credentials on that broker (the forwarder's), and
    # the hot-list publisher's own account. The broker must bind client id to username, so
    # the two connections need two accounts (config/mosquitto/README.md).
    username: str | None = None
    password_file: Path | None = None
    fleet_username: str | None = None
    fleet_password_file: Path | None = None
    # external mode, several central instances on one broker (docs/scaling.md): the other
    # instances' accounts (forwarder and fleet), kept in the ACL this instance writes, so a
    # device registered here never rewrites the others out of the broker's ACL.
    other_central_users: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
                              ] = Field(default_factory=list, max_length=64)
    # Device passwords (Registry.register). Off by default: devices enroll and use
    # certificates; old sites whose devices still log in with a password set it true.
    legacy_passwords: bool = False

    @model_validator(mode="after")
    def _external_needs_credentials(self) -> BrokerSection:
        if self.mode == "external" and (self.username is None or self.password_file is None):
            raise ValueError("external broker needs username and password_file")
        if (self.fleet_username is None) != (self.fleet_password_file is None):
            raise ValueError("fleet_username and fleet_password_file go together")
        if self.mode == "external" and self.tls is not None:
            raise ValueError("broker.tls configures the embedded broker's listener; an "
                             "external broker's TLS is set up on that broker")
        if self.tls is not None and self.tls.port == self.port and \
                self.tls.host in (self.host, "0.0.0.0"):  # noqa: S104
            raise ValueError("broker.tls.port must differ from broker.port")
        return self


class DashboardSection(StrictModel):
    """Staff dashboard and REST API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8800, ge=1, le=65535)
    admin_token_file: Path | None = None
    admin_token_env: str = "YKT_CENTRAL_ADMIN_TOKEN"  # noqa: S105 - a variable name
    # Fleet health alarms (central/fleet_health.py): below / above these a device is flagged.
    disk_low_mb: int = Field(default=500, ge=0, le=10_000_000)
    temp_high_c: float = Field(default=80.0, ge=-50, le=150)
    backlog_high: int = Field(default=100, ge=1, le=10_000_000)


class ForwarderSection(StrictModel):
    """Forwarding of device requests to the platform."""

    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    concurrency: int = Field(default=32, ge=1, le=1024)
    # The MQTT client id must differ between instances (the broker drops the older of two
    # connections with one id) and stay the same across restarts of one instance (its
    # persistent session, and its own in-flight requests, which it takes over at once).
    # Default: "central-<host name>-<instance>". At most 58 characters: the hot-list
    # publisher connects as "<client_id>-fleet" within MQTT's 64.
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,58}$")
    instance: int = Field(default=0, ge=0, le=999)
    # A request another (dead) instance was working on is taken over after this long.
    lease_s: float = Field(default=120.0, ge=1.0, le=3600.0)
    call_timeout_s: float = Field(default=60.0, gt=0, le=600.0)

    @model_validator(mode="after")
    def _lease_outlasts_the_call(self) -> ForwarderSection:
        if self.lease_s <= self.call_timeout_s:
            raise ValueError("lease_s must be longer than call_timeout_s (a live call would be "
                             "taken over)")
        return self


def forwarder_client_id(section: ForwarderSection, hostname: str) -> str:
    """The forwarder's MQTT client id: the configured one, or from host name + instance."""
    if section.client_id is not None:
        return section.client_id
    short = hostname.split(".", maxsplit=1)[0]
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", short).strip("-") or "host"
    suffix = f"-{section.instance}"
    return "central-" + host[: 58 - len("central-") - len(suffix)] + suffix


class StoreSection(StrictModel):
    """Where central keeps its state (docs/scaling.md).

    Left out: SQLite at ``<data_dir>/central.db`` (one instance, the single-site default).
    ``url = "postgresql://user@host:5432/dbname"``: PostgreSQL, which several central
    instances share. The password, if any, is read from ``password_file`` (never in the URL,
    so central.toml holds no secret).
    """

    url: str | None = Field(default=None, pattern=r"^postgres(ql)?://[^\s]+$")
    password_file: Path | None = None

    @model_validator(mode="after")
    def _no_password_in_url(self) -> StoreSection:
        if self.url is not None and "@" in self.url and \
                ":" in self.url.split("://", 1)[1].split("@", 1)[0]:
            raise ValueError("store.url must not carry a password: use store.password_file")
        return self


class ClusterSection(StrictModel):
    """Several central instances on one PostgreSQL store (docs/scaling.md).

    Work that must happen once — the payment resolver, the hot-list publisher, alarm
    derivation, retention, the telemetry rollup and the rollout scheduler — runs on the one
    instance holding the ``jobs`` lease in the store; when that instance dies, another takes
    the lease over after ``lease_s``.
    """

    # False: this instance never runs the once-only jobs (it only forwards and serves).
    jobs: bool = True
    lease_s: float = Field(default=15.0, ge=2.0, le=600.0)


class LogSection(StrictModel):
    """Logging level; JSON lines on stdout."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class CentralConfig(StrictModel):
    """The whole ``ykt central`` configuration file."""

    central: CentralSection
    broker: BrokerSection = BrokerSection()
    platform: PlatformConfig = PlatformConfig()
    dashboard: DashboardSection = DashboardSection()
    forwarder: ForwarderSection = ForwarderSection()
    authz: AuthzSettings = AuthzSettings()
    staff: StaffSettings = StaffSettings()
    privacy: PrivacySettings = PrivacySettings()
    # Telemetry history: raw, minute and hour tiers and their retention.
    telemetry: TelemetrySettings = TelemetrySettings()
    log: LogSection = LogSection()
    # SQLite in data_dir (default) or PostgreSQL shared by several instances.
    store: StoreSection = StoreSection()
    cluster: ClusterSection = ClusterSection()
    # Who may read /metrics (central/metrics.py); enabled by default, loopback only.
    metrics: MetricsSettings = MetricsSettings()
    # Fleet trust (enrollment broker, CA, signed config and commands); absent = off.
    fleet: FleetSection | None = None

    @model_validator(mode="after")
    def _tls_files_or_fleet(self) -> CentralConfig:
        t = self.broker.tls
        if t is not None and self.fleet is None and (t.cafile is None or t.certfile is None):
            raise ValueError("broker.tls needs cafile, certfile and keyfile, or a [fleet] "
                             "section whose CA makes them")
        if self.fleet is not None and t is not None and t.require_certificate \
                and t.cafile is not None:
            # The CRL belongs to the fleet CA's listener: with files of another CA given
            # here, revoking a device would change nothing at the broker.
            raise ValueError("with [fleet] and require_certificate, leave broker.tls cafile/"
                             "certfile/keyfile out: the fleet CA makes them and its "
                             "revocation list is checked")
        # The embedded broker's device listener is made here; an external broker's is set
        # up on that broker (docs/scaling.md: mutual TLS, certificate CN as username).
        if self.fleet is not None and not self.broker.legacy_passwords and \
                self.broker.mode == "embedded" and (t is None or not t.require_certificate):
            raise ValueError("[fleet] devices log in with certificates: set broker.tls "
                             "require_certificate = true (or legacy_passwords = true)")
        return self
