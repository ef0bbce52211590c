"""Device registry: who may connect, and the broker's password and ACL files that say so.

Each device gets its own random broker password, generated here and shown once; the broker
keeps only the salted hash (``mosquitto_passwd``). There are no shared or default passwords.
Certificates from central's CA (mutual TLS, ``use_identity_as_username``) replace passwords
later; the ACL is the same either way because username = client id = device id.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from central.broker import (
    BrokerError,
    mosquitto_passwd_delete,
    mosquitto_passwd_set,
    render_acl,
)
from central.store import DeviceInfo, Store
from edge.protocol.topics import RESERVED_DEVICE_IDS, is_valid_device_id

__all__ = ["CENTRAL_USER", "Credentials", "Registry", "RegistryError"]

CENTRAL_USER = "central"
Role = Literal["kiosk", "cashier"]
ROLES = frozenset({"kiosk", "cashier"})


class RegistryError(Exception):
    """A registry operation was refused (bad id, unknown device, reserved name)."""

    def __init__(self, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.message = message
        self.message_zh = message_zh


@dataclass(frozen=True, slots=True)
class Credentials:
    """Broker credentials; the password exists only in this value (show it once)."""

    username: str
    password: str = ""

    def __repr__(self) -> str:
        """Never print the password."""
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class Registry:
    """Registers devices and keeps the broker's password file and ACL in step with the store."""

    def __init__(
        self,
        store: Store,
        broker_workdir: Path,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        token: Callable[[int], str] = secrets.token_urlsafe,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.workdir = Path(broker_workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._token = token
        # Called after the password/ACL files change (e.g. Mosquitto.reload → SIGHUP).
        self._on_change = on_change

    @property
    def password_file(self) -> Path:
        """The broker's password file (hashes only)."""
        return self.workdir / "passwd"

    @property
    def acl_file(self) -> Path:
        """The broker's ACL file."""
        return self.workdir / "acl"

    @property
    def central_password_file(self) -> Path:
        """Central's own broker password (0600), read by the forwarder."""
        return self.workdir / "central.password"

    def write_acl(self) -> Path:
        """(Re)write the ACL file."""
        self.acl_file.write_text(render_acl(CENTRAL_USER))
        return self.acl_file

    def central_credentials(self) -> Credentials:
        """Central's broker credentials, created (random) on first use and kept in a 0600 file."""
        if self.central_password_file.exists():
            password = self.central_password_file.read_text().strip()
        else:
            password = self._token(32)
            mosquitto_passwd_set(self.password_file, CENTRAL_USER, password)
            _write_secret(self.central_password_file, password)
        if not self.acl_file.exists():
            self.write_acl()
        return Credentials(CENTRAL_USER, password)

    def register(self, device_id: str, role: str) -> Credentials:
        """Register (or re-key) ``device_id``; returns its new password, shown only this once."""
        if not is_valid_device_id(device_id) or device_id in RESERVED_DEVICE_IDS:
            raise RegistryError(
                f"invalid device id {device_id!r}", f"设备编号无效：{device_id!r}"
            )
        if role not in ROLES:
            raise RegistryError(f"invalid role {role!r}", f"设备角色无效：{role!r}")
        password = self._token(24)
        try:
            mosquitto_passwd_set(self.password_file, device_id, password)
        except BrokerError as exc:
            raise RegistryError(exc.message, exc.message_zh) from exc
        self.write_acl()
        now = self._clock()
        self.store.add_device(device_id, role, now)
        self.store.audit(now, "registry", "device.register", {"dev": device_id, "role": role})
        self._changed()
        return Credentials(device_id, password)

    def disable(self, device_id: str) -> None:
        """Disable ``device_id`` and remove its broker credentials (takes effect on reload)."""
        if not self.store.set_enabled(device_id, False):
            raise RegistryError(f"unknown device {device_id!r}", f"未登记的设备：{device_id!r}")
        mosquitto_passwd_delete(self.password_file, device_id)
        self.store.audit(self._clock(), "registry", "device.disable", {"dev": device_id})
        self._changed()

    def enable(self, device_id: str) -> Credentials:
        """Enable ``device_id`` again with fresh credentials (the old password is gone)."""
        info = self.store.device(device_id)
        if info is None:
            raise RegistryError(f"unknown device {device_id!r}", f"未登记的设备：{device_id!r}")
        return self.register(device_id, info.role)

    def device(self, device_id: str) -> DeviceInfo | None:
        """The stored device, or None."""
        return self.store.device(device_id)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
