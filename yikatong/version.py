"""The installed Yikatong version (what devices report in their birth and telemetry)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["installed_version"]


def installed_version() -> str:
    """The ``yikatong`` distribution's version, or ``0+unknown`` when run from a source tree."""
    try:
        return version("yikatong")
    except PackageNotFoundError:
        return "0+unknown"
