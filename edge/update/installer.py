"""Fetch, verify and install an update bundle into the inactive slot (docs/updates.md).

The order is the point (docs/updates.md, "On the device"):

1. **fetch the manifest** and check its SHA-256 against the signed command's
   ``manifest_sha256``, then its Ed25519 signature against the release key(s) of
   ``/etc/yikatong/release.pub`` (:func:`yikatong.bundle.verify_manifest`) — before anything
   the manifest says is believed;
2. **refuse** what may not be installed: another architecture, model or Python, a version
   other than the command's, a running version below ``min_version``, a downgrade (unless
   the signed command allows one);
3. **fetch the files** this architecture needs, each resumable (HTTP ``Range`` into
   ``update/downloads/<version>/<path>.part``), each hashed as it completes, then the whole
   checked again (:func:`verify_fetched`: signature, exactly the listed files, every size
   and SHA-256 with :func:`yikatong.bundle.check_files`) — and once more before installing;
4. **install** into the slot that is neither ``current`` nor ``committed``: marker dropped,
   folder wiped, ``python -m venv --without-pip``, pip offline from the bundle's wheels
   only (``--no-index --find-links``), ``bin/ykt --version`` must name the new version,
   the marker written last;
5. **trial record**, then ``current`` switched; the caller asks systemd to restart.

Every step boundary is a :func:`~edge.update.slots.crash_point` (``YKT_UPDATE_CRASH_AT``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.update.slots import (
    Layout,
    TrialRecord,
    UpdateError,
    crash_point,
    fsync_dir,
    trial_deadline,
)
from yikatong.bundle import (
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    BundleError,
    check_files,
    files_for_arch,
    manifest_sha256,
    verify_bundle,
    verify_manifest,
)
from yikatong.protocol.update import MANIFEST_NAME, SIGNATURE_NAME, Manifest, compare_versions

__all__ = [
    "Fetched",
    "Progress",
    "check_allowed",
    "fetch_bundle",
    "inactive_slot",
    "install_slot",
    "verify_fetched",
    "verify_local_bundle",
]

log = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total)`` while files download.
Progress = Callable[[int, int], None]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class Fetched:
    """A downloaded, verified bundle: its folder, manifest and the manifest's SHA-256."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    files: list[str]


def _bundle_error(exc: BundleError) -> UpdateError:
    return UpdateError(exc.code, exc.message, exc.message_zh)


def python_tag() -> str:
    """``3.11``: the Python of this interpreter (the new slot's venv uses the same)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- checks


def check_allowed(manifest: Manifest, *, running_version: str, want_version: str | None = None,
                  allow_downgrade: bool = False, arch: str | None = None,
                  model: str | None = None) -> None:
    """Refuse a bundle this device may not install (raises UpdateError)."""
    if want_version is not None and manifest.version != want_version:
        raise UpdateError("version_mismatch",
                          f"the bundle is version {manifest.version}, the command names "
                          f"{want_version}", f"更新包版本 {manifest.version} 与指令中的 "
                          f"{want_version} 不符")
    arch = arch or platform.machine()
    if arch not in manifest.architectures:
        raise UpdateError("wrong_arch", f"the bundle is for {', '.join(manifest.architectures)}"
                          f", this device is {arch}", f"更新包不适用于本机架构 {arch}")
    if model is not None and "*" not in manifest.models and model not in manifest.models:
        raise UpdateError("wrong_model", f"the bundle is not for model {model}",
                          f"更新包不适用于设备型号 {model}")
    if manifest.python != python_tag():
        raise UpdateError("wrong_python", f"the bundle is for Python {manifest.python}, this "
                          f"device runs {python_tag()}", f"更新包需要 Python {manifest.python}")
    try:
        older_than_min = compare_versions(running_version, manifest.min_version) < 0
        downgrade = compare_versions(manifest.version, running_version) < 0
    except ValueError:  # the running version is not a release (a source tree): no order
        older_than_min, downgrade = False, False
    if older_than_min:
        raise UpdateError("below_min_version",
                          f"version {manifest.version} installs over {manifest.min_version} "
                          f"or newer; this device runs {running_version}",
                          f"版本 {manifest.version} 要求当前版本不低于 {manifest.min_version}"
                          f"（当前 {running_version}）")
    if downgrade and not allow_downgrade:
        raise UpdateError("downgrade",
                          f"{manifest.version} is older than the running {running_version}; "
                          "a downgrade needs allow_downgrade=1 in the signed command",
                          f"{manifest.version} 低于当前版本 {running_version}，降级需要签名指令"
                          "允许（allow_downgrade=1）")


def verify_local_bundle(path: Path, keys: Iterable[Ed25519PublicKey], *,
                        arch: str | None = None) -> Fetched:
    """Verify a whole bundle folder (a technician's copy) with A's checks."""
    try:
        manifest = verify_bundle(path, list(keys), arch=arch or platform.machine())
    except BundleError as exc:
        raise _bundle_error(exc) from None
    sha = manifest_sha256((path / MANIFEST_NAME).read_bytes())
    crash_point("verified")
    return Fetched(path, manifest, sha, files_for_arch(manifest, arch or platform.machine()))


# --------------------------------------------------------------------------- fetching


def _get_small(client: httpx.Client, url: str, limit: int) -> bytes:
    try:
        r = client.get(url)
    except httpx.HTTPError as exc:
        raise UpdateError("download_failed", f"{url}: {exc}", "下载更新包失败") from None
    if r.status_code != 200:
        raise UpdateError("download_failed", f"{url}: HTTP {r.status_code}",
                          f"下载更新包失败（HTTP {r.status_code}）")
    if len(r.content) > limit:
        raise UpdateError("bad_manifest", f"{url}: {len(r.content)} bytes, too large",
                          "更新包清单过大")
    return r.content


def _fetch_file(client: httpx.Client, url: str, final: Path, *, size: int, sha256: str,
                on_bytes: Callable[[int], None]) -> None:
    """Download one file to ``final`` (resuming ``final.part``); check its size and hash."""
    if final.exists() and final.stat().st_size == size:
        on_bytes(size)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    on_bytes(have)
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        with client.stream("GET", url, headers=headers) as r:
            if r.status_code == 206 and have:
                if not r.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    raise UpdateError("download_failed", f"{url}: unexpected Content-Range",
                                      "下载断点续传失败")
                mode = "ab"
            elif r.status_code == 200:
                have, mode = 0, "wb"
                on_bytes(0)
            else:
                raise UpdateError("download_failed", f"{url}: HTTP {r.status_code}",
                                  f"下载更新包失败（HTTP {r.status_code}）")
            with open(part, mode) as f:
                for chunk in r.iter_bytes(_CHUNK):
                    have += len(chunk)
                    if have > size:
                        raise UpdateError("size_mismatch",
                                          f"{final.name}: more than the manifest's {size} bytes",
                                          f"{final.name} 大小与清单不符")
                    f.write(chunk)
                    on_bytes(have)
                f.flush()
                os.fsync(f.fileno())
    if have != size:
        raise UpdateError("download_incomplete", f"{final.name}: {have} of {size} bytes",
                          "下载未完成")
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != sha256:
        part.unlink()  # a file that was changed is never resumed
        raise UpdateError("hash_mismatch", f"{final.name}: SHA-256 differs from the manifest's "
                          "(the file was changed)", f"{final.name} 的 SHA-256 与清单不符")
    os.replace(part, final)


def fetch_bundle(url: str, token: str, layout: Layout, *, expected_sha256: str,
                 keys: Iterable[Ed25519PublicKey], running_version: str,
                 want_version: str | None = None, allow_downgrade: bool = False,
                 arch: str | None = None, model: str | None = None,
                 progress: Progress | None = None, retries: int = 5,
                 retry_wait_s: float = 2.0, timeout_s: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> Fetched:
    """Download and verify a bundle (see the module docstring, steps 1–3).

    Network failures are retried ``retries`` times, each attempt resuming what the last
    one got (a power cut meanwhile resumes as well: the ``.part`` files stay).
    """
    arch = arch or platform.machine()
    keys = list(keys)
    base = url.rstrip("/")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s,
                      follow_redirects=False, transport=transport) as client:
        data = _get_small(client, f"{base}/{MANIFEST_NAME}", MAX_MANIFEST_BYTES)
        got = manifest_sha256(data)
        if got != expected_sha256:
            raise UpdateError("manifest_mismatch",
                              f"manifest.json has SHA-256 {got[:16]}…, the signed command "
                              f"says {expected_sha256[:16]}…",
                              "更新包清单与签名指令中的摘要不符")
        sig = _get_small(client, f"{base}/{SIGNATURE_NAME}", MAX_SIGNATURE_BYTES)
        try:
            manifest = verify_manifest(data, sig, keys)
        except BundleError as exc:
            raise _bundle_error(exc) from None
        check_allowed(manifest, running_version=running_version, want_version=want_version,
                      allow_downgrade=allow_downgrade, arch=arch, model=model)
        dest = layout.downloads / manifest.version
        old = dest / MANIFEST_NAME
        if old.exists() and old.read_bytes() != data:
            shutil.rmtree(dest)  # another build of the same version: start again
        for other in layout.downloads.glob("*") if layout.downloads.exists() else []:
            if other != dest:
                shutil.rmtree(other, ignore_errors=True)  # one download kept at a time
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MANIFEST_NAME).write_bytes(data)
        (dest / SIGNATURE_NAME).write_bytes(sig)
        wanted = files_for_arch(manifest, arch)
        entries = {f.path: f for f in manifest.files}
        total = sum(entries[p].size for p in wanted)
        done: dict[str, int] = {}

        def on_bytes(path: str) -> Callable[[int], None]:
            def note(n: int) -> None:
                done[path] = n
                if progress is not None:
                    progress(sum(done.values()), total)
            return note

        for rel in wanted:
            entry = entries[rel]
            for attempt in range(retries + 1):
                try:
                    _fetch_file(client, f"{base}/files/{rel}", dest / rel, size=entry.size,
                                sha256=entry.sha256, on_bytes=on_bytes(rel))
                    break
                except (httpx.HTTPError, UpdateError) as exc:
                    retryable = isinstance(exc, httpx.HTTPError) or exc.code in (
                        "download_incomplete", "download_failed")
                    if not retryable or attempt == retries:
                        if isinstance(exc, UpdateError):
                            raise
                        raise UpdateError("download_failed", f"{rel}: {exc}",
                                          "下载更新包失败") from None
                    log.info("download of %s interrupted (%s): resuming", rel, exc)
                    time.sleep(retry_wait_s)
    crash_point("downloaded")
    return Fetched(dest, manifest, got, wanted)


def verify_fetched(bundle: Fetched, keys: Iterable[Ed25519PublicKey]) -> None:
    """Check a fetched bundle whole again: signature over the stored manifest, the files
    (exactly those listed, each size and SHA-256) — run after the download and once more
    right before installing."""
    try:
        data = (bundle.path / MANIFEST_NAME).read_bytes()
        if manifest_sha256(data) != bundle.manifest_sha256:
            raise UpdateError("manifest_mismatch", "manifest.json changed since it was "
                              "checked", "更新包清单在校验后被修改")
        verify_manifest(data, (bundle.path / SIGNATURE_NAME).read_bytes(), list(keys))
        check_files(bundle.path, bundle.manifest, only=bundle.files)
    except BundleError as exc:
        raise _bundle_error(exc) from None
    except OSError as exc:
        raise UpdateError("missing_file", f"the downloaded bundle is incomplete: {exc}",
                          "下载的更新包不完整") from None
    crash_point("verified")


# --------------------------------------------------------------------------- installing


def _bundled_pip() -> Path | None:
    """pip's own wheel (run as ``python pip.whl/pip``) when this interpreter has no pip."""
    import ensurepip

    places = [Path(ensurepip.__file__).parent / "_bundled", Path("/usr/share/python-wheels")]
    for place in places:
        wheels = sorted(place.glob("pip-*.whl"))
        if wheels:
            return wheels[-1]
    return None


def _pip(target_python: Path) -> list[str]:
    """How to run pip for ``target_python`` offline: this interpreter's pip, or pip's wheel."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "--python", str(target_python)]
    wheel = _bundled_pip()
    if wheel is None:
        raise UpdateError("no_pip", "no pip to install with (neither in this slot nor "
                          "ensurepip's wheel)", "没有可用的 pip 安装工具")
    return [str(target_python), f"{wheel}/pip"]


def _run(args: list[str], what: str, timeout_s: float) -> str:
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError("install_failed", f"{what}: {exc}", "安装失败") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        raise UpdateError("install_failed", f"{what} failed: {tail}", "安装失败")
    return proc.stdout


def inactive_slot(layout: Layout) -> str:
    """The slot to install into: neither ``current`` nor ``committed``."""
    cur, com = layout.current_slot(), layout.committed_slot()
    if com is None:
        return "a" if cur != "a" else "b"
    if cur is not None and cur != com:
        raise UpdateError("update_in_progress", f"slot {cur} is on trial; wait for it to be "
                          "committed or rolled back", "另一更新正在试运行，请稍后")
    return layout.other(com)


def build_slot(layout: Layout, slot: str, bundle: Fetched, *, timeout_s: float = 900.0) -> None:
    """Wipe ``slot`` and install the bundle into it; the marker is written last."""
    manifest = bundle.manifest
    layout.wipe(slot)
    crash_point("wiped")
    target = layout.slot(slot)
    _run([sys.executable, "-m", "venv", "--without-pip", str(target)], "venv", timeout_s)
    crash_point("venv")
    wheels = bundle.path / "wheels"
    _run([*_pip(target / "bin" / "python"), "install", "--no-index", "--find-links",
          str(wheels), "--only-binary", ":all:", "--no-cache-dir",
          f"yikatong=={manifest.version}"], "pip install", timeout_s)
    crash_point("packages")
    out = _run([str(target / "bin" / "ykt"), "--version"], "ykt --version", 120)
    if out.split() != ["ykt", manifest.version]:
        raise UpdateError("install_failed", f"the new slot says {out.strip()!r}, not "
                          f"ykt {manifest.version}", "新版本安装后自检失败")
    crash_point("checked")
    fsync_dir(target)
    layout.write_marker(slot, manifest.version, bundle.manifest_sha256)
    crash_point("marker")


def install_slot(layout: Layout, bundle: Fetched, *, from_version: str,
                 rollout_id: str | None = None, command_id: str | None = None,
                 deadline_s: float = 180.0, max_attempts: int = 3,
                 now: datetime | None = None, extra: dict[str, Any] | None = None
                 ) -> TrialRecord | None:
    """Install into the inactive slot, write the trial record, switch ``current``.

    With no committed slot yet (a first install) the slot is committed at once: there is
    nothing to go back to (returns None). Otherwise returns the trial record.
    """
    rec = layout.trial()
    if rec is not None and rec.state == "trial" and layout.current_slot() == rec.slot:
        raise UpdateError("update_in_progress", f"version {rec.version} is on trial",
                          f"版本 {rec.version} 正在试运行")
    slot = inactive_slot(layout)
    committed = layout.committed_slot()
    build_slot(layout, slot, bundle)
    now = now or datetime.now(UTC)
    if committed is None or not layout.usable(committed):
        layout.switch(layout.committed, slot)
        layout.switch(layout.current, slot)
        layout.clear_trial()
        log.info("version %s installed in slot %s and committed (first install)",
                 bundle.manifest.version, slot)
        return None
    rec = TrialRecord(slot=slot, version=bundle.manifest.version, from_slot=committed,
                      from_version=from_version, rollout_id=rollout_id, command_id=command_id,
                      deadline=trial_deadline(now, deadline_s), attempts=0,
                      max_attempts=max_attempts, manifest_sha256=bundle.manifest_sha256,
                      started_at=now.isoformat(), extra=dict(extra or {}))
    layout.write_trial(rec)
    crash_point("trial")
    layout.switch(layout.current, slot)
    crash_point("switched")
    log.info("version %s installed in slot %s; current switched (trial until %s)",
             rec.version, slot, rec.deadline)
    return rec
