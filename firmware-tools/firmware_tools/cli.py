"""``ykt fw``: technician tools for provisioning and managing devices through central.

Signing keys (``keygen``), staff sign-in (``login``/``logout``), enrollment by pairing code
(``enroll``), devices (``device``), desired config (``config``), signed commands (``cmd``,
``cert rotate``), staff accounts (``user``) and the claim bundle of device images
(``claim-bundle``); docs/fleet-trust.md. Update bundles (``bundle``) and staged rollouts of
them (``rollout``); docs/updates.md. Every command says what went wrong in both
languages and exits 1 (``cmd --wait``: 2 on timeout), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from firmware_tools.bundle import add_bundle_commands
from firmware_tools.central import FwError, connect, write_file
from firmware_tools.fleet import add_fleet_commands, device_list, site_time
from firmware_tools.rollout import add_rollout_commands
from yikatong.common.config import ConfigError

__all__ = ["FwError", "add_fw_commands", "site_time"]


def _write_secret(path: Path, data: bytes) -> None:
    """``data`` to ``path`` with mode 0600, also over an existing file of another mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, data, 0o600)


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


def _device_add(args: argparse.Namespace) -> int:
    """Legacy: register a device with a broker password (sites with legacy_passwords)."""
    with connect(args.central, args.token_file) as c:
        res = c.call("POST", "/api/devices", json={"id": args.device_id, "role": args.role})
    if args.password_out:
        _write_secret(args.password_out, (res["password"] + "\n").encode())
        print(f"registered {args.device_id} ({args.role}); broker password written to "
              f"{args.password_out} (mode 0600) — copy it to the device, then delete it here")
    else:
        print(json.dumps(res, indent=2))
    return 0


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except (FwError, ConfigError) as exc:
            print(f"ykt fw: {exc}", file=sys.stderr)
        except OSError as exc:
            print(f"ykt fw: {exc.strerror or exc} ({exc.filename or ''}) / 文件操作失败",
                  file=sys.stderr)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # never a traceback in a technician's face
            print(f"ykt fw: unexpected error: {exc!r} / 意外错误", file=sys.stderr)
        return 1

    return run


def add_fw_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add every ``ykt fw`` command (keygen, login, enroll, device, config, cmd, …)."""
    k = sub.add_parser("keygen", help="create central's Ed25519 signing key pair")
    k.add_argument("--out", type=Path, required=True, help="folder for NAME.key / NAME.pub")
    k.add_argument("--name", default="central-signing", help="file name stem")
    k.add_argument("--force", action="store_true", help="overwrite an existing key")
    k.set_defaults(func=_wrap(_keygen))

    d = sub.add_parser("device", help="devices at central: list, show, disable, revoke")
    dsub = d.add_subparsers(dest="device_cmd", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--central", default=None,
                       help="central's URL (default: the signed-in one, else "
                       "http://127.0.0.1:8800)")
        p.add_argument("--token-file", type=Path, default=None,
                       help="central's admin token (or $YKT_CENTRAL_ADMIN_TOKEN); without "
                       "it, the session of ykt fw login")

    a = dsub.add_parser("add", help="legacy: register a device and get its broker password "
                        "(once); new devices enroll instead (ykt fw enroll)")
    a.add_argument("device_id")
    a.add_argument("--role", choices=["kiosk", "cashier"], required=True)
    a.add_argument("--password-out", type=Path, default=None,
                   help="write the password to this file (0600) instead of printing it")
    common(a)
    a.set_defaults(func=_wrap(_device_add))

    ls = dsub.add_parser("list", help="devices, their state, site and config state")
    ls.add_argument("--json", action="store_true",
                    help="machine-readable output (ISO 8601 times as central stores them)")
    common(ls)
    ls.set_defaults(func=_wrap(device_list))

    add_fleet_commands(sub, dsub, _wrap)
    add_bundle_commands(sub, _wrap, common)
    add_rollout_commands(sub, _wrap)
