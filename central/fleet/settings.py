"""``[fleet]`` of central.toml: where the CA and the signing key live, the enrollment broker."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from yikatong.common.config import StrictModel

__all__ = ["FleetSection"]

_DAY = 86_400.0


class FleetSection(StrictModel):
    """Fleet trust (docs/fleet-trust.md); present = enrollment, certificates, signed config.

    Paths left out go under ``data_dir/fleet/``.
    """

    #: The fleet CA (central/ca.py); default ``data_dir/fleet/ca``.
    ca_dir: Path | None = None
    #: Central's Ed25519 key for ``config.desired`` and ``cmd``; default
    #: ``data_dir/fleet/signing.key`` (0600), its public half next to it as ``.pub``.
    signing_key: Path | None = None
    #: Release public key(s) (PEM, one or more; never a private key): with them, an uploaded
    #: update bundle must carry a valid signature by one of them (docs/updates.md "Bundles").
    #: Central only checks; it never holds the release private key.
    release_keys: Path | None = None
    #: Listen address and port of the enrollment broker (a second Mosquitto, TLS only).
    enroll_host: str = "127.0.0.1"
    enroll_port: int = Field(default=8884, ge=1, le=65535)
    #: Host names / IP addresses devices dial; the brokers' server certificate names them.
    server_names: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost"],
                                    min_length=1, max_length=32)
    #: An enrollment request not approved within this is answered ``expired``.
    enroll_ttl_s: float = Field(default=_DAY, ge=60, le=30 * _DAY)
    #: Open (pending) enrollment requests central keeps at most: a leaked claim password
    #: cannot bury the technicians' list under invented serials. Beyond it new requests
    #: are ignored (the devices ask again later) and counted in ``enroll_capped``.
    max_open_enrollments: int = Field(default=200, ge=1, le=100_000)
    #: ``exp`` of a signed desired config.
    config_exp_s: float = Field(default=30 * _DAY, ge=3600, le=365 * _DAY)
    #: Default ``exp`` of a signed command.
    command_exp_s: float = Field(default=600.0, ge=10, le=7 * _DAY)
    #: Lifetime of a device certificate (devices rotate by ``cert.rotate``).
    cert_days: int = Field(default=398, ge=1, le=3650)
    #: Central sends ``cert.rotate`` to an online device whose certificate expires within
    #: this many days (and has no rotation open). Devices never renew on their own say-so.
    renew_before_days: int = Field(default=30, ge=1, le=365)
    #: How devices reach central's HTTP API (``http(s)://host:port``, with a path prefix if
    #: a proxy adds one): rollouts send ``{public_url}/api/fleet/bundles/{version}`` in
    #: ``update.install``. Without it no rollout can be created (docs/updates.md "Rollouts").
    public_url: str | None = Field(
        default=None, max_length=200,
        pattern=r"^https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~%-]+)*$")
    #: This instance runs the rollout scheduler. With several central instances (issue 13)
    #: exactly one must: two would each start devices within the rate.
    rollout_scheduler: bool = True
    #: ``exp`` of a rollout's ``update.install``: it waits on the device for an idle moment
    #: (no card session, no unresolved payment), which may take hours on a busy kiosk.
    rollout_command_exp_s: float = Field(default=6 * 3600.0, ge=60, le=7 * _DAY)
    #: After its ``update.install`` ended ``succeeded``, a device has this long to report a
    #: final ``update.status`` (committed / rolled back / failed) before it counts as failed.
    rollout_report_timeout_s: float = Field(default=3600.0, ge=30, le=_DAY)
