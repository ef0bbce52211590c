"""Wire models of fleet trust: enrollment, signed desired config, signed commands (pure).

docs/fleet-trust.md describes the flows; this module is the source of truth of the bodies.
Every model is strict and refuses unknown fields, like the rest of the catalogue
(:mod:`yikatong.protocol.messages`).

Topics and envelope types::

    ykt/v1/enroll/{serial}/csr    enroll.csr      device (claim credential) → central
    ykt/v1/enroll/{serial}/cert   enroll.status   central → device (pending / approved / …)
    ykt/v1/dev/{dev}/down/config  config.desired  central → device, retained, seq+exp+sig
    ykt/v1/dev/{dev}/down/cmd     cmd             central → device, seq+exp+sig
    ykt/v1/dev/{dev}/up/result    config.report   device → central
    ykt/v1/dev/{dev}/up/result    cmd.result      device → central
    ykt/v1/dev/{dev}/up/req       device.cert_renew, device.log_bundle (see messages.py)

Enrollment envelopes carry ``dev = "enroll"`` (a reserved id): the device has no id yet.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final, Literal

from pydantic import Field, StringConstraints, ValidationError, model_validator

from yikatong.protocol.envelope import Envelope, canonical_json
from yikatong.protocol.errors import InvalidBody
from yikatong.protocol.messages import Hash256, Timestamp, WireModel, dump_body
from yikatong.protocol.update import TYPE_UPDATE_STATUS, VERSION_RE, UpdateStatus

__all__ = [
    "COMMANDS",
    "COMMAND_STATES",
    "DISRUPTIVE_COMMANDS",
    "ENROLL_DEV",
    "FINAL_COMMAND_STATES",
    "PAIRING_CODE_RE",
    "TYPE_CMD",
    "TYPE_CMD_RESULT",
    "TYPE_CONFIG_DESIRED",
    "TYPE_CONFIG_REPORT",
    "TYPE_ENROLL_CSR",
    "TYPE_ENROLL_STATUS",
    "CardSettings",
    "Command",
    "CommandResult",
    "ConfigDesired",
    "ConfigReport",
    "DeviceFacts",
    "EnrollCsr",
    "EnrollStatus",
    "PrinterSettings",
    "RemoteSettings",
    "ScannerSettings",
    "UiSettings",
    "parse_fleet_body",
    "settings_hash",
]

ENROLL_DEV: Final = "enroll"
TYPE_ENROLL_CSR: Final = "enroll.csr"
TYPE_ENROLL_STATUS: Final = "enroll.status"
TYPE_CONFIG_DESIRED: Final = "config.desired"
TYPE_CONFIG_REPORT: Final = "config.report"
TYPE_CMD: Final = "cmd"
TYPE_CMD_RESULT: Final = "cmd.result"

#: Pairing codes: 8 characters of Crockford base32 (no I, L, O, U) as ``XXXX-XXXX``.
PAIRING_CODE_RE: Final = r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$"

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
Short = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL)]
Text = Annotated[str, StringConstraints(max_length=400, pattern=_NO_CONTROL)]
Pem = Annotated[str, StringConstraints(min_length=64, max_length=16_384)]
CommandId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
Serial = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")]
Role = Literal["kiosk", "cashier"]
LogLevel = Literal["debug", "info", "warning", "error"]


# --------------------------------------------------------------------------- enrollment


class DeviceFacts(WireModel):
    """What a device says about its hardware when it asks to be enrolled (shown to staff)."""

    serial: Serial
    model: Short
    mac: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")] | None = None
    hostname: Short | None = None
    sam_terminal: Annotated[str, StringConstraints(pattern=r"^[0-9A-Fa-f]{12}$")] | None = None
    reader: Short | None = None
    printer: Short | None = None
    version: Short | None = None


class EnrollCsr(WireModel):
    """``enroll.csr``: a device's certificate request (its key never leaves it)."""

    serial: Serial
    csr: Pem
    facts: DeviceFacts

    @model_validator(mode="after")
    def _serial_matches(self) -> EnrollCsr:
        if self.facts.serial != self.serial:
            raise ValueError("facts.serial differs from serial")
        return self


class EnrollStatus(WireModel):
    """``enroll.status``: where a device's request stands; ``approved`` carries its identity.

    ``config`` is the first signed ``config.desired`` envelope (as a JSON object); the device
    checks it with central's signing key from its claim bundle before it trusts anything
    else in this message.
    """

    request_id: CommandId
    status: Literal["pending", "approved", "rejected", "expired"]
    code: Annotated[str, StringConstraints(pattern=PAIRING_CODE_RE)] | None = None
    expires_at: Timestamp | None = None
    message: Text | None = None
    message_zh: Text | None = None
    device_id: DeviceId | None = None
    role: Role | None = None
    site: Short | None = None
    cert: Pem | None = None
    chain: Annotated[str, StringConstraints(min_length=64, max_length=65_536)] | None = None
    config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _approved_is_complete(self) -> EnrollStatus:
        if self.status == "approved" and None in (self.device_id, self.role, self.cert,
                                                  self.chain, self.config):
            raise ValueError("approved needs device_id, role, cert, chain and config")
        if self.status == "pending" and self.code is None:
            raise ValueError("pending needs the pairing code")
        return self


# --------------------------------------------------------------------------- desired config


class PrinterSettings(WireModel):
    """Remotely settable printer options (``[printer]`` of edge.toml)."""

    status_poll_s: Annotated[float, Field(ge=0, le=3600)] | None = None
    job_timeout_s: Annotated[float, Field(gt=0, le=600)] | None = None
    reconnect_attempts: Annotated[int, Field(ge=0, le=20)] | None = None


class ScannerSettings(WireModel):
    """Remotely settable scanner options (``[scanner]`` of edge.toml)."""

    enabled: bool | None = None
    dedup_window_s: Annotated[float, Field(ge=0, le=60)] | None = None


class CardSettings(WireModel):
    """Remotely settable card-reader options (``[card]`` of edge.toml)."""

    poll_interval_s: Annotated[float, Field(gt=0, le=10)] | None = None
    reject_expired: bool | None = None


class UiSettings(WireModel):
    """Settings of the kiosk/cashier screen (served by the daemon to ``ykt kiosk``)."""

    language: Literal["zh", "en"] | None = None
    idle_timeout_s: Annotated[int, Field(ge=15, le=600)] | None = None
    countdown_s: Annotated[int, Field(ge=3, le=60)] | None = None
    voice: bool | None = None


class RemoteSettings(WireModel):
    """The part of a device's configuration central may set; None = the device's own value.

    Identity, addresses, keys and hardware wiring stay in the device's TOML: a config that
    could move a kiosk to another broker or reader would be a takeover tool.
    """

    telemetry_interval_s: Annotated[float, Field(ge=5, le=3600)] | None = None
    log_level: LogLevel | None = None
    printer: PrinterSettings | None = None
    scanner: ScannerSettings | None = None
    card: CardSettings | None = None
    ui: UiSettings | None = None


def settings_hash(settings: RemoteSettings) -> str:
    """SHA-256 (hex) of the canonical JSON of ``settings`` (what devices report back)."""
    return hashlib.sha256(canonical_json(dump_body(settings))).hexdigest()


class ConfigDesired(WireModel):
    """``config.desired``: the settings central wants on this device (retained, signed)."""

    version: Annotated[int, Field(ge=1, le=2**53 - 1)]
    hash: Hash256
    settings: RemoteSettings

    @model_validator(mode="after")
    def _hash_matches(self) -> ConfigDesired:
        if settings_hash(self.settings) != self.hash:
            raise ValueError("hash does not match settings")
        return self


class ConfigReport(WireModel):
    """``config.report``: what the device did with a desired config (and what it runs now)."""

    version: Annotated[int, Field(ge=0, le=2**53 - 1)]
    hash: Hash256 | None = None
    status: Literal["applied", "failed", "rejected"]
    #: The version/hash the device runs after this (its previous one after a failure).
    running_version: Annotated[int, Field(ge=0, le=2**53 - 1)]
    running_hash: Hash256 | None = None
    code: Short | None = None
    message: Text | None = None
    message_zh: Text | None = None


# --------------------------------------------------------------------------- commands

#: Command name → whether it disrupts a patient (waits for an idle device).
COMMANDS: Final[dict[str, bool]] = {
    "reboot": True,
    "service.restart": True,
    "printer.test": True,
    "reader.selftest": True,
    "logs.collect": False,
    "cert.rotate": False,
    "log.level": False,
    "hotlist.refresh": False,
    # Downloads and verifies at once; installs and restarts only on an idle device.
    "update.install": True,
}
DISRUPTIVE_COMMANDS: Final = frozenset(n for n, d in COMMANDS.items() if d)
COMMAND_STATES: Final = ("queued", "delivered", "waiting", "in_progress", "succeeded",
                         "failed", "expired", "rejected")
FINAL_COMMAND_STATES: Final = frozenset({"succeeded", "failed", "expired", "rejected"})

class _Matches:
    """A set of allowed string values given by a regular expression (``value in _Matches``)."""

    def __init__(self, pattern: str) -> None:
        self._re = re.compile(pattern)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self._re.fullmatch(value) is not None


_ARGS: Final[dict[str, dict[str, Any]]] = {
    "service.restart": {"service": ("edge", "kiosk")},
    "log.level": {"level": ("debug", "info", "warning", "error")},
    "logs.collect": {"lines": range(1, 5001)},
    # docs/updates.md: which bundle, where to fetch it (a download token bound to this device
    # and rollout), the manifest's SHA-256 and whether an older version may replace a newer.
    "update.install": {
        "rollout": _Matches(r"[0-9a-f]{32}"),
        "version": _Matches(VERSION_RE[1:-1]),
        "url": _Matches(r"https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~%-]+)*/?"),
        "token": _Matches(r"[A-Za-z0-9_.-]{16,400}"),
        "manifest_sha256": _Matches(r"[0-9a-f]{64}"),
        "allow_downgrade": (0, 1),
    },
}
#: Arguments a command cannot go without.
_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "service.restart": frozenset({"service"}),
    "log.level": frozenset({"level"}),
    "update.install": frozenset({"rollout", "version", "url", "token", "manifest_sha256"}),
}


class Command(WireModel):
    """``cmd``: one signed command for one device (``seq``/``exp``/``sig`` on the envelope)."""

    command_id: CommandId
    name: Literal["reboot", "service.restart", "printer.test", "reader.selftest",
                  "logs.collect", "cert.rotate", "log.level", "hotlist.refresh",
                  "update.install"]
    args: dict[str, str | int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _args_fit(self) -> Command:
        allowed = _ARGS.get(self.name, {})
        for key, value in self.args.items():
            if key not in allowed or value not in allowed[key]:
                raise ValueError(f"argument {key}={value!r} not allowed for {self.name}")
        missing = _REQUIRED.get(self.name, frozenset()) - set(self.args)
        if missing:
            raise ValueError(f"{self.name} needs {sorted(missing)}")
        return self


class CommandResult(WireModel):
    """``cmd.result``: a command's state on the device; ``command_id`` None if unreadable."""

    command_id: CommandId | None = None
    name: Short | None = None
    seq: Annotated[int, Field(ge=0, le=2**53 - 1)] | None = None
    state: Literal["delivered", "waiting", "in_progress", "succeeded", "failed", "expired",
                   "rejected"]
    code: Short | None = None
    message: Text | None = None
    message_zh: Text | None = None
    output: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded_output(self) -> CommandResult:
        if len(self.output) > 32 or any(isinstance(v, str) and len(v) > 400
                                        for v in self.output.values()):
            raise ValueError("output too large")
        return self


_BODIES: Final[dict[str, type[WireModel]]] = {
    TYPE_ENROLL_CSR: EnrollCsr,
    TYPE_ENROLL_STATUS: EnrollStatus,
    TYPE_CONFIG_DESIRED: ConfigDesired,
    TYPE_CONFIG_REPORT: ConfigReport,
    TYPE_CMD: Command,
    TYPE_CMD_RESULT: CommandResult,
    TYPE_UPDATE_STATUS: UpdateStatus,
}


def parse_fleet_body(env: Envelope) -> WireModel:
    """Validate the body of a fleet envelope by its type; raise InvalidBody if it does not fit."""
    model = _BODIES.get(env.type)
    if model is None:
        raise InvalidBody(env.type, [{"loc": ("type",), "msg": "not a fleet message type"}])
    try:
        return model.model_validate(env.body)
    except ValidationError as e:
        raise InvalidBody(env.type, e.errors(include_input=False)) from None
