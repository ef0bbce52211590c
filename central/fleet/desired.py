"""Desired-config layers: validate a patch, merge layers, the effective settings of a device.

Pure functions. A layer holds :class:`~yikatong.protocol.fleet.RemoteSettings` as JSON without
None values. A device's effective settings are its site layer, then its role layer, then its
own layer, merged section by section (a later layer's ``printer.status_poll_s`` replaces an
earlier one's, and leaves the earlier ``printer.job_timeout_s`` alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from central.fleet.errors import FleetError
from yikatong.protocol.fleet import RemoteSettings, settings_hash
from yikatong.protocol.messages import dump_body

__all__ = ["LAYER_KINDS", "LayerKind", "effective", "merge", "validate_settings"]

LayerKind = Literal["site", "role", "device"]
#: Order in which layers apply (later wins).
LAYER_KINDS: tuple[LayerKind, ...] = ("site", "role", "device")


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_input=False)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid"


def validate_settings(settings: object) -> RemoteSettings:
    """``settings`` as RemoteSettings, or FleetError 422 saying which field is wrong."""
    if not isinstance(settings, Mapping):
        raise FleetError(422, "invalid_settings", "settings must be a JSON object",
                         "配置必须是 JSON 对象")
    try:
        return RemoteSettings.model_validate(dict(settings))
    except ValidationError as exc:
        raise FleetError(422, "invalid_settings", f"invalid settings: {_errors(exc)}",
                         "配置无效") from None


def merge(base: Mapping[str, Any], patch: Mapping[str, Any], *,
          none_deletes: bool = False) -> dict[str, Any]:
    """``base`` with ``patch`` over it, one level into sections (dict values).

    With ``none_deletes`` a None in ``patch`` removes the key (how a staff patch unsets a
    value); otherwise None means "not set here" and keeps ``base``'s value.
    """
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in patch.items():
        if value is None:
            if none_deletes:
                out.pop(key, None)
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            section = dict(out[key])
            for k, v in value.items():
                if v is None:
                    if none_deletes:
                        section.pop(k, None)
                    continue
                section[k] = v
            out[key] = section
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def effective(layers: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    """Merge ``layers`` (site, role, device order); return the settings JSON and its hash."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    settings = validate_settings(merged)
    return dump_body(settings), settings_hash(settings)
