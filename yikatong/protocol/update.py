"""Wire models of software updates: the bundle manifest, its signature, update status (pure).

docs/updates.md describes the flow; this module is the source of truth of the shapes.

A **bundle** is a folder::

    manifest.json      canonical JSON of :class:`Manifest` (the exact bytes that are signed)
    manifest.sig       JSON of :class:`ManifestSignature`: Ed25519 over manifest.json's bytes
    wheels/*.whl       the ``yikatong`` wheel and every pinned dependency, per architecture

The manifest is signed with a **release key** that central never holds: central stores and
serves bundles, but a stolen central cannot make a device install anything. Devices hold the
release public key(s) from their installer (``/etc/yikatong/release.pub``), not from central.

Device → central progress is ``update.status`` on ``ykt/v1/dev/{dev}/up/result`` (the same
topic as ``cmd.result``), through the device's durable outbox. An install is started by the
signed command ``update.install`` (:mod:`yikatong.protocol.fleet`).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from packaging.version import Version as Version_
from pydantic import Field, StringConstraints, ValidationError, model_validator

from yikatong.protocol.envelope import canonical_json
from yikatong.protocol.errors import InvalidBody
from yikatong.protocol.messages import Hash256, Timestamp, WireModel, dump_body

__all__ = [
    "ARCHITECTURES",
    "FINAL_UPDATE_STATES",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "TYPE_UPDATE_STATUS",
    "UPDATE_STATES",
    "VERSION_RE",
    "BundleFile",
    "Manifest",
    "ManifestSignature",
    "UpdateStatus",
    "compare_versions",
    "manifest_bytes",
    "parse_manifest",
    "parse_signature",
]

TYPE_UPDATE_STATUS: Final = "update.status"
MANIFEST_NAME: Final = "manifest.json"
SIGNATURE_NAME: Final = "manifest.sig"

#: Machine architectures (``uname -m``) a bundle can target.
ARCHITECTURES: Final = ("x86_64", "aarch64")

#: Per-device states of one update, in order; the last three are final.
UPDATE_STATES: Final = ("downloading", "downloaded", "verified", "installing",
                        "awaiting_health", "committed", "rolled_back", "failed")
FINAL_UPDATE_STATES: Final = frozenset({"committed", "rolled_back", "failed"})

#: Release versions: PEP 440 public versions as we cut them (1.4.0, 1.5.0rc1, 1.5.0.post1).
VERSION_RE: Final = r"^[0-9]+(\.[0-9]+){1,3}((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$"

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
Version = Annotated[str, StringConstraints(max_length=40, pattern=VERSION_RE)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_NO_CONTROL)]
Text = Annotated[str, StringConstraints(max_length=400, pattern=_NO_CONTROL)]
RolloutId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
#: A file inside the bundle: relative POSIX path of safe characters, no ``..``, no ``/`` lead.
BundlePath = Annotated[str, StringConstraints(
    max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$")]


class BundleFile(WireModel):
    """One file of a bundle: where it lies, its SHA-256 and size, which architectures use it."""

    path: BundlePath
    sha256: Hash256
    size: Annotated[int, Field(ge=0, le=2**40)]
    #: Empty = every architecture (pure-Python wheels).
    arch: list[Literal["x86_64", "aarch64"]] = Field(default_factory=list)


class Manifest(WireModel):
    """``manifest.json``: what a bundle holds and where it may be installed."""

    format: Literal[1] = 1
    package: Literal["yikatong"] = "yikatong"
    version: Version
    #: The oldest running version that may update to this one directly.
    min_version: Version
    built_at: Timestamp
    #: Device models this bundle is for (``DeviceFacts.model``); ``*`` = any.
    models: Annotated[list[Short], Field(min_length=1, max_length=32)]
    architectures: Annotated[list[Literal["x86_64", "aarch64"]],
                             Field(min_length=1, max_length=2)]
    python: Annotated[str, StringConstraints(pattern=r"^3\.[0-9]{1,2}$")]
    files: Annotated[list[BundleFile], Field(min_length=1, max_length=500)]
    notes: Text | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        if any(p in (MANIFEST_NAME, SIGNATURE_NAME) for p in paths):
            raise ValueError("the manifest cannot list itself or its signature")
        for f in self.files:
            if not set(f.arch) <= set(self.architectures):
                raise ValueError(f"{f.path} targets an architecture the bundle does not")
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError("an architecture is listed twice")
        if _version_key(self.min_version) > _version_key(self.version):
            raise ValueError("min_version is newer than version")
        own = [p for p in paths if re.match(r"^wheels/yikatong-", p)]
        if not own:
            raise ValueError("the bundle has no yikatong wheel")
        return self


class ManifestSignature(WireModel):
    """``manifest.sig``: Ed25519 over the exact bytes of ``manifest.json``."""

    alg: Literal["Ed25519"] = "Ed25519"
    #: :func:`yikatong.protocol.signing.key_id` of the release public key.
    kid: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    #: base64url (no padding) of the 64-byte signature.
    sig: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{86}$")]


class UpdateStatus(WireModel):
    """``update.status``: where one device stands in one update (device → central)."""

    rollout_id: RolloutId
    command_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    version: Version
    state: Literal["downloading", "downloaded", "verified", "installing",
                   "awaiting_health", "committed", "rolled_back", "failed"]
    #: The version the device runs now (the old one until committed, again after a rollback).
    running_version: Version | None = None
    bytes_done: Annotated[int, Field(ge=0, le=2**40)] | None = None
    bytes_total: Annotated[int, Field(ge=0, le=2**40)] | None = None
    code: Short | None = None
    message: Text | None = None
    message_zh: Text | None = None


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest: what ``manifest.json`` holds and what is signed."""
    return canonical_json(dump_body(manifest))


def parse_manifest(data: bytes) -> Manifest:
    """Parse ``manifest.json``; raise InvalidBody unless it is exactly canonical and valid.

    Refusing a non-canonical spelling means the signed bytes and the parsed meaning can never
    differ (no duplicate keys, no trailing data, no alternative number forms).
    """
    import json

    try:
        raw = json.loads(data.decode("utf-8"))
        manifest = Manifest.model_validate(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidBody("manifest", [{"loc": (), "msg": f"not JSON: {e}"}]) from None
    except ValidationError as e:
        raise InvalidBody("manifest", e.errors(include_input=False)) from None
    if manifest_bytes(manifest) != data:
        raise InvalidBody("manifest", [{"loc": (), "msg": "not in canonical form"}])
    return manifest


def parse_signature(data: bytes) -> ManifestSignature:
    """Parse ``manifest.sig``; raise InvalidBody if it is not a signature record."""
    import json

    try:
        return ManifestSignature.model_validate(json.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidBody("manifest.sig", [{"loc": (), "msg": f"not JSON: {e}"}]) from None
    except ValidationError as e:
        raise InvalidBody("manifest.sig", e.errors(include_input=False)) from None


def _version_key(text: str) -> Version_:
    return Version_(text)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b`` (PEP 440)."""
    ka, kb = Version_(a), Version_(b)
    return (ka > kb) - (ka < kb)
