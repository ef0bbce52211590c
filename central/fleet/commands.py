"""Signed commands: validation, the order of states, bundles of ``logs.collect``.

Pure helpers; :class:`central.fleet.service.FleetService` stores, signs and publishes.
"""

from __future__ import annotations

import base64
import binascii
import zlib

from pydantic import ValidationError

from central.fleet.errors import FleetError
from yikatong.protocol.fleet import FINAL_COMMAND_STATES, Command

__all__ = ["MAX_BUNDLE_BYTES", "STATE_RANK", "advances", "check_bundle", "validate_command"]

#: How far along a command is; a result never moves it back (finals are all last).
STATE_RANK: dict[str, int] = {"queued": 0, "delivered": 1, "waiting": 2, "in_progress": 3,
                              "succeeded": 4, "failed": 4, "expired": 4, "rejected": 4}
#: Largest compressed log bundle kept (the wire allows 180,000 base64 characters).
MAX_BUNDLE_BYTES = 140_000
#: Largest bundle once unpacked (a zip bomb is refused, not written).
_MAX_UNPACKED = 16 * 1024 * 1024


def validate_command(command_id: str, name: str, args: object) -> Command:
    """The command as the wire model, or FleetError 422 saying what is wrong."""
    if not isinstance(args, dict):
        raise FleetError(422, "invalid_command", "args must be a JSON object",
                         "命令参数必须是 JSON 对象")
    try:
        return Command.model_validate({"command_id": command_id, "name": name, "args": args})
    except ValidationError as exc:
        errors = exc.errors(include_input=False)
        loc = errors[0]["loc"] if errors else ()
        msg = errors[0]["msg"] if errors else "invalid"
        where = ".".join(str(p) for p in loc) or "command"
        raise FleetError(422, "invalid_command", f"invalid command: {where}: {msg}",
                         "命令无效") from None


def advances(current: str, new: str) -> bool:
    """True if a result in state ``new`` may replace ``current`` (never out of a final one)."""
    if current in FINAL_COMMAND_STATES:
        return False
    return STATE_RANK.get(new, -1) > STATE_RANK.get(current, 0)


def check_bundle(gzip_b64: str) -> bytes:
    """The gzip bytes of a log bundle, checked: base64, size, a complete gzip stream.

    Raises ValueError saying what is wrong.
    """
    try:
        data = base64.b64decode(gzip_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle of {len(data)} bytes is larger than {MAX_BUNDLE_BYTES}")
    d = zlib.decompressobj(wbits=31)  # gzip framing only
    try:
        d.decompress(data, _MAX_UNPACKED)
    except zlib.error:
        raise ValueError("not gzip") from None
    if d.unconsumed_tail:
        raise ValueError("bundle unpacks to more than 16 MiB")
    if not d.eof or d.unused_data:
        raise ValueError("incomplete or trailing gzip data")
    return data


