"""Real update bundles for tests, built offline from the project wheelhouse (docs/updates.md).

``build_test_bundle(out, version="1.5.0")`` runs the same build as ``ykt fw bundle build
--offline --wheelhouse .venv/wheelhouse --set-version 1.5.0`` (the ``yikatong`` wheel of this
tree, stamped with that version, plus every pinned dependency) and signs it with a fixed test
release key. Builds are cached per process by their parameters and copied into ``out``, so a
second bundle of the same version costs a copy, not a pip run.

The wheelhouse is made by ``scripts/install.sh``; without it the build fails (never skips)
and says so.
"""

from __future__ import annotations

import atexit
import hashlib
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from firmware_tools.bundle import build_bundle

from yikatong.bundle import write_signature
from yikatong.protocol.signing import key_id, public_key_to_pem
from yikatong.protocol.update import Manifest, parse_manifest

__all__ = [
    "HOST_ARCH",
    "OTHER_RELEASE_KEY",
    "REPO",
    "TEST_RELEASE_KEY",
    "WHEELHOUSE",
    "build_test_bundle",
    "release_kid",
    "require_wheelhouse",
    "small_bundle_tar",
    "write_release_pub",
]

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".venv" / "wheelhouse"
HOST_ARCH = platform.machine()

#: Fixed test release keys (seeds derived from a label, so every process agrees).
TEST_RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"yikatong test release key").digest())
OTHER_RELEASE_KEY = Ed25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"yikatong some other key").digest())

_cache: dict[tuple[object, ...], Path] = {}


def release_kid(key: Ed25519PrivateKey = TEST_RELEASE_KEY) -> str:
    """The key id of a test release key (what manifest.sig names)."""
    return key_id(key.public_key())


def write_release_pub(path: Path, *keys: Ed25519PrivateKey) -> Path:
    """Write the public key(s) of ``keys`` (default: the test release key) as one PEM file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(public_key_to_pem(k.public_key())
                              for k in (keys or (TEST_RELEASE_KEY,))))
    return path


def require_wheelhouse() -> None:
    """Fail (never skip) with what to do when the offline wheelhouse is missing."""
    if not any(WHEELHOUSE.glob("*.whl")):
        raise RuntimeError(
            f"no wheelhouse at {WHEELHOUSE}: bundle tests build offline from it. "
            "Run scripts/install.sh (it builds .venv/wheelhouse from "
            "config/device-constraints.txt).")


def build_test_bundle(out: Path, *, version: str, project: Path = REPO,
                      key: Ed25519PrivateKey | None = TEST_RELEASE_KEY,
                      models: Sequence[str] = ("*",), min_version: str = "0.0.1",
                      architectures: Sequence[str] = (), notes: str | None = None) -> Manifest:
    """Build (offline), sign with ``key`` (None: leave unsigned) and put a bundle in ``out``."""
    require_wheelhouse()
    params = (str(project), version, tuple(models), min_version, tuple(architectures), notes)
    built = _cache.get(params)
    if built is None:
        root = Path(tempfile.mkdtemp(prefix="ykt-test-bundle-"))
        atexit.register(shutil.rmtree, root, True)
        built = root / "bundle"
        build_bundle(built, project=project, version=version, models=models,
                     min_version=min_version, architectures=architectures, notes=notes,
                     wheelhouse=WHEELHOUSE, offline=True)
        _cache[params] = built
    if out.exists():
        out.rmdir()  # must be empty: a bundle is never mixed into another folder
    shutil.copytree(built, out)
    if key is not None:
        write_signature(out, key)
    return parse_manifest((out / "manifest.json").read_bytes())


def small_bundle_tar(version: str, key: Ed25519PrivateKey, *, min_version: str = "1.0.0",
                     models: Sequence[str] = ("*",)) -> bytes:
    """A small signed bundle (one stand-in wheel) as the tar ``ykt fw bundle upload`` sends.

    For tests of central's store and rollouts, which never install it; the install tests use
    :func:`build_test_bundle` (real wheels).
    """
    import io
    import tarfile

    from yikatong.protocol.update import manifest_bytes

    wheel = f"wheels/yikatong-{version}-py3-none-any.whl"
    data = f"not really a wheel, version {version}".encode()
    manifest = Manifest(version=version, min_version=min_version,
                        built_at="2025-06-01T00:00:00.000Z", models=list(models),
                        architectures=["x86_64", "aarch64"], python="3.11",
                        files=[{"path": wheel, "sha256": hashlib.sha256(data).hexdigest(),
                                "size": len(data)}])
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "wheels").mkdir()
        (root / wheel).write_bytes(data)
        (root / "manifest.json").write_bytes(manifest_bytes(manifest))
        write_signature(root, key)
        with tarfile.open(fileobj=buf, mode="w:") as tar:
            for name in ("manifest.json", "manifest.sig", wheel):
                tar.add(root / name, arcname=name)
    return buf.getvalue()
