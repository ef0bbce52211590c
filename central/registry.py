"""Device registry: who may connect, and the broker's password and ACL files that say so.

Devices enroll and authenticate with certificates from central's CA (mutual TLS,
``use_identity_as_username``; central/fleet). Old sites may keep passwords
(``[broker] legacy_passwords = true``): each device then gets its own random broker
password, generated here and shown once; the broker keeps only the salted hash
(``mosquitto_passwd``). There are no shared or default passwords. The ACL is the same
either way because username = client id = device id.

Central itself has one broker account per connection (the forwarder, its hot-list
publisher, every further instance): the broker binds the client id to the username
(``use_username_as_clientid``), so two connections sharing an account would disconnect each
other. Each account's username is the connection's name plus a random suffix made once, and
it is kept with its random password in a 0600 file in the broker workdir — stable across
restarts, so the forwarder's persistent session survives, and not guessable by devices.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from central.broker import (
    BrokerError,
    mosquitto_passwd_delete,
    mosquitto_passwd_set,
    render_acl,
    write_atomic,
)
from central.store import DeviceInfo, Store
from yikatong.common.errors import LocalizedError
from yikatong.protocol.topics import RESERVED_DEVICE_IDS, is_valid_device_id

__all__ = ["CENTRAL_USER", "Credentials", "Registry", "RegistryError"]

CENTRAL_USER = "central"  # default connection name; before per-connection accounts, the user
_CONNECTION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
Role = Literal["kiosk", "cashier"]
ROLES = frozenset({"kiosk", "cashier"})


class RegistryError(LocalizedError):
    """A registry operation was refused (bad id, unknown device, reserved name)."""

    code = "registry_error"


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
        central_users: Sequence[str] = (),
        legacy_passwords: bool = True,
    ) -> None:
        self.store = store
        self.workdir = Path(broker_workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._token = token
        # Called after the password/ACL files change (e.g. Mosquitto.reload → SIGHUP).
        self._on_change = on_change
        # Accounts made elsewhere (an external broker's, from central.toml) that the ACL
        # written here must still give ykt/v1/#.
        self._extra_central_users = tuple(u for u in central_users if u)
        # Device passwords (``[broker] legacy_passwords``). ``ykt central`` passes the
        # setting (default false: devices enroll and get certificates, docs/fleet-trust.md);
        # a Registry built directly keeps the password behaviour for tools and tests.
        self.legacy_passwords = legacy_passwords

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
        """The old single shared account's password file (removed on first use, see below)."""
        return self.workdir / "central.password"

    @property
    def central_accounts_dir(self) -> Path:
        """One 0600 file per central connection: its broker username and password."""
        return self.workdir / "central-accounts"

    def central_usernames(self) -> list[str]:
        """Broker usernames of all of central's connections (sorted)."""
        made: list[str] = []
        if self.central_accounts_dir.is_dir():
            made = [json.loads(p.read_text())["username"]
                    for p in self.central_accounts_dir.glob("*.json")]
        return sorted({*made, *self._extra_central_users})

    def write_acl(self) -> Path:
        """(Re)write the ACL file (every central account gets ykt/v1/#, devices the pattern)."""
        # Whole or not at all: the broker may be re-reading it right now (write_atomic).
        write_atomic(self.acl_file, render_acl(*self.central_usernames()), 0o644)
        return self.acl_file

    def central_credentials(self, connection: str = CENTRAL_USER) -> Credentials:
        """The broker account of one central connection, created once and kept (0600).

        ``connection`` names the connection (the forwarder's client id, ``<id>-fleet``); the
        username is that name plus a random suffix, and the password is random.
        """
        if not _CONNECTION_RE.fullmatch(connection):
            raise RegistryError(f"invalid connection name {connection!r}",
                                f"连接名称无效：{connection!r}")
        path = self.central_accounts_dir / f"{connection}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return Credentials(str(data["username"]), str(data["password"]))
        prefix = connection if connection[0].isalnum() else "c" + connection
        suffix = "".join(ch for ch in self._token(12) if ch.isalnum())[:12]
        username = f"{prefix[:50]}-{suffix}"
        password = self._token(32)
        try:
            mosquitto_passwd_set(self.password_file, username, password)
        except BrokerError as exc:
            raise RegistryError(exc.message, exc.message_zh) from exc
        self.central_accounts_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_secret(path, json.dumps({"username": username, "password": password}))
        self._drop_shared_account()
        self.write_acl()
        self._changed()
        return Credentials(username, password)

    def _drop_shared_account(self) -> None:
        # Sites set up before per-connection accounts had one "central" user for everything.
        if self.central_password_file.exists():
            mosquitto_passwd_delete(self.password_file, CENTRAL_USER)
            self.central_password_file.unlink()

    def register(self, device_id: str, role: str) -> Credentials:
        """Register (or re-key) ``device_id``; returns its new password, shown only this once."""
        if not is_valid_device_id(device_id) or device_id in RESERVED_DEVICE_IDS:
            raise RegistryError(
                f"invalid device id {device_id!r}", f"设备编号无效：{device_id!r}"
            )
        if role not in ROLES:
            raise RegistryError(f"invalid role {role!r}", f"设备角色无效：{role!r}")
        if device_id in self.central_usernames():
            raise RegistryError(f"{device_id!r} is one of central's broker accounts",
                                f"设备编号与中心账号冲突：{device_id!r}")
        if not self.legacy_passwords:
            raise RegistryError(
                "device passwords are off ([broker] legacy_passwords = false): enroll the "
                "device with its pairing code instead (docs/fleet-trust.md)",
                "已停用设备密码：请用配对码为设备办理入网")
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
        """Enable ``device_id`` again: with fresh credentials under ``legacy_passwords`` (the
        old password is gone), else as it was (its certificate authenticates it)."""
        info = self.store.device(device_id)
        if info is None:
            raise RegistryError(f"unknown device {device_id!r}", f"未登记的设备：{device_id!r}")
        if not self.legacy_passwords:
            # A device on certificates: enabled again as it was (a revoked certificate stays
            # revoked; such a device enrolls anew).
            self.store.set_enabled(device_id, True)
            self.store.audit(self._clock(), "registry", "device.enable", {"dev": device_id})
            self._changed()
            return Credentials(device_id)
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
