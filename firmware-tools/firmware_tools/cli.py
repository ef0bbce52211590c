"""``ykt fw``: technician tools for provisioning devices through central."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from yikatong.common.config import read_secret
from yikatong.common.errors import LocalizedError

__all__ = ["add_fw_commands", "site_time"]


class FwError(LocalizedError):
    """A technician command failed; the (English) message says what to do."""

    code = "fw_error"

    def __init__(self, message: str, message_zh: str = "技术员命令失败，请按提示处理") -> None:
        super().__init__(message, message_zh)


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _keygen(args: argparse.Namespace) -> int:
    """Create central's Ed25519 signing key pair (config, commands, update bundles)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out: Path = args.out
    priv_path, pub_path = out / f"{args.name}.key", out / f"{args.name}.pub"
    if priv_path.exists() and not args.force:
        raise FwError(f"{priv_path} exists; refusing to overwrite a signing key (use --force)")
    key = Ed25519PrivateKey.generate()
    _write_secret(priv_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path.write_bytes(pub)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print(json.dumps({"private_key": str(priv_path), "public_key": str(pub_path),
                      "public_key_hex": raw.hex()}, indent=2))
    return 0


def _client(args: argparse.Namespace) -> httpx.Client:
    token = read_secret(args.token_file, "YKT_CENTRAL_ADMIN_TOKEN", what="central admin token")
    return httpx.Client(base_url=args.central, headers={"Authorization": f"Bearer {token}"},
                        timeout=10.0)


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise FwError(f"cannot reach central at {client.base_url}: {exc}") from None
    if r.status_code == 401:
        raise FwError("central refused the admin token")
    if r.status_code >= 400:
        try:
            err = r.json().get("error") or r.json().get("detail")
        except ValueError:
            err = r.text
        raise FwError(f"central said HTTP {r.status_code}: {err}")
    return r.json()


def _device_add(args: argparse.Namespace) -> int:
    with _client(args) as c:
        res = _call(c, "POST", "/api/devices", json={"id": args.device_id, "role": args.role})
    if args.password_out:
        _write_secret(args.password_out, (res["password"] + "\n").encode())
        print(f"registered {args.device_id} ({args.role}); broker password written to "
              f"{args.password_out} (mode 0600) — copy it to the device, then delete it here")
    else:
        print(json.dumps(res, indent=2))
    return 0


def site_time(iso: str | None, zone: ZoneInfo) -> str:
    """An ISO time from central as ``YYYY-MM-DD HH:MM:SS`` in the site's zone (``-`` if none)."""
    if not iso:
        return "-"
    t = datetime.fromisoformat(iso)
    if t.tzinfo is None:  # central stores UTC
        t = t.replace(tzinfo=UTC)
    return t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _device_list(args: argparse.Namespace) -> int:
    with httpx.Client(base_url=args.central, timeout=10.0) as c:
        devices = _call(c, "GET", "/api/devices")["devices"]
        if args.json:  # machine-readable: central's ISO times as they are
            print(json.dumps(devices, indent=2, ensure_ascii=False))
            return 0
        # A person reads the site's time, whatever zone this laptop is set to.
        zone_name = _call(c, "GET", "/api/status").get("timezone") or "Asia/Shanghai"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FwError(f"central reports an unknown time zone {zone_name!r}") from None
    print(f"{'DEVICE':<24}{'ROLE':<10}{'STATE':<10}{'VERSION':<12}LAST SEEN ({zone_name})")
    for d in devices:
        state = ("online" if d["online"] else "offline") if d["enabled"] else "disabled"
        print(f"{d['id']:<24}{d['role']:<10}{state:<10}{(d['version'] or '-'):<12}"
              f"{site_time(d['last_seen'], zone)}")
    return 0


def _device_disable(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _call(c, "POST", f"/api/devices/{args.device_id}/disable")
    print(f"disabled {args.device_id}; its broker credentials are revoked")
    return 0


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except FwError as exc:
            print(f"ykt fw: {exc}", file=sys.stderr)
            return 1

    return run


def add_fw_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``keygen`` and ``device add|list|disable`` under ``ykt fw``."""
    k = sub.add_parser("keygen", help="create central's Ed25519 signing key pair")
    k.add_argument("--out", type=Path, required=True, help="folder for NAME.key / NAME.pub")
    k.add_argument("--name", default="central-signing", help="file name stem")
    k.add_argument("--force", action="store_true", help="overwrite an existing key")
    k.set_defaults(func=_wrap(_keygen))

    d = sub.add_parser("device", help="register, list and disable devices at central")
    dsub = d.add_subparsers(dest="device_cmd", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, admin: bool) -> None:
        p.add_argument("--central", default="http://127.0.0.1:8800",
                       help="central dashboard/API base URL")
        if admin:
            p.add_argument("--token-file", type=Path, default=None,
                           help="file holding central's admin token (or $YKT_CENTRAL_ADMIN_TOKEN)")

    a = dsub.add_parser("add", help="register a device and get its broker password (once)")
    a.add_argument("device_id")
    a.add_argument("--role", choices=["kiosk", "cashier"], required=True)
    a.add_argument("--password-out", type=Path, default=None,
                   help="write the password to this file (0600) instead of printing it")
    common(a, admin=True)
    a.set_defaults(func=_wrap(_device_add))

    ls = dsub.add_parser("list", help="list registered devices and their state")
    ls.add_argument("--json", action="store_true",
                    help="machine-readable output (ISO 8601 times as central stores them)")
    common(ls, admin=False)
    ls.set_defaults(func=_wrap(_device_list))

    dis = dsub.add_parser("disable", help="disable a device and revoke its broker credentials")
    dis.add_argument("device_id")
    common(dis, admin=True)
    dis.set_defaults(func=_wrap(_device_disable))
