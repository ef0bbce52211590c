"""Central's store of update bundles and the download tokens devices fetch them with.

docs/updates.md ("Bundles"). Central keeps bundles but cannot make one: the manifest is
signed with a release key central never holds. What central checks on upload:

- the archive holds only regular files with safe names (no links, no ``..``, no absolute
  path), each at most once; ``manifest.json`` and ``manifest.sig`` are there;
- the manifest is canonical and valid, its version is the one uploaded to, and the files
  are exactly the listed ones with their sizes and SHA-256 (:func:`yikatong.bundle.check_files`);
- with ``[fleet] release_keys`` configured, the signature verifies with one of them
  (:func:`yikatong.bundle.verify_bundle`); without, the bundle is stored unchecked and the
  listing says so — the devices check the signature anyway, with their own keys.

Layout: ``data_dir/bundles/<version>/{manifest.json, manifest.sig, wheels/…}``; uploads are
unpacked into ``data_dir/bundles/.incoming/`` and renamed into place only when complete
and checked, so a half-uploaded bundle is never served. The table ``fleet_bundle``
(central/fleet/store.py) lists them; every upload and delete is in central's audit chain.

Download tokens: ``v1.<dev>.<rollout>.<expiry>.<mac>``, the MAC an HMAC-SHA256 over
``dev|rollout|version|expiry`` with a secret of 32 random bytes kept 0600 in
``data_dir/fleet/bundle-token.key``. A token opens one version's files for one device and
rollout until it expires; it needs no table and survives a restart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tarfile
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from central.fleet.store import FleetTables
from central.store import Store
from yikatong.bundle import (
    BundleError,
    check_files,
    load_release_keys,
    manifest_sha256,
    verify_bundle,
)
from yikatong.common.errors import LocalizedError
from yikatong.protocol.errors import InvalidBody
from yikatong.protocol.update import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    VERSION_RE,
    Manifest,
    parse_manifest,
    parse_signature,
)

__all__ = ["MAX_UPLOAD_BYTES", "BundleStore", "BundleStoreError", "BundleTokens",
           "bundles_of", "tokens_of"]

#: Largest upload central accepts (a two-architecture bundle is ~50 MB).
MAX_UPLOAD_BYTES: Final = 2 << 30
_PATH_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$")
_DEV_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}$")
_ROLLOUT_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_TOKEN_RE: Final = re.compile(
    r"^v1\.([a-z0-9][a-z0-9-]{2,62})\.([0-9a-f]{32})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


class BundleStoreError(LocalizedError):
    """A refused bundle operation: ``code``, an HTTP ``status`` and both languages."""

    code = "bundle_error"

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.status = status
        self.code = code


def _valid_version(version: str) -> str:
    if len(version) > 40 or not re.fullmatch(VERSION_RE, version):
        raise BundleStoreError(404, "unknown_bundle", f"no bundle {version!r}",
                               f"没有更新包 {version!r}")
    return version


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class BundleTokens:
    """Issue and check download tokens (module docstring)."""

    secret: bytes
    clock: Callable[[], float] = time.time

    @classmethod
    def open(cls, path: Path, clock: Callable[[], float] = time.time) -> BundleTokens:
        """Load the secret from ``path`` (0600), making it on first use."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
        os.chmod(path, 0o600)
        secret = path.read_bytes()
        if len(secret) < 32:
            raise BundleStoreError(500, "bad_token_key", f"{path} is too short",
                                   f"{path} 太短")
        return cls(secret, clock)

    def _mac(self, dev: str, rollout_id: str, version: str, exp: int) -> str:
        msg = f"{dev}|{rollout_id}|{version}|{exp}".encode()
        return base64.urlsafe_b64encode(
            hmac.new(self.secret, msg, hashlib.sha256).digest()).rstrip(b"=").decode()

    def issue(self, dev: str, rollout_id: str, version: str, ttl_s: float) -> str:
        """A token letting ``dev`` fetch ``version`` for ``rollout_id`` for ``ttl_s`` seconds."""
        if not _DEV_RE.match(dev) or not _ROLLOUT_RE.match(rollout_id):
            raise ValueError("bad device or rollout id")
        _valid_version(version)
        exp = int(self.clock() + ttl_s)
        return f"v1.{dev}.{rollout_id}.{exp}.{self._mac(dev, rollout_id, version, exp)}"

    def check(self, token: str, version: str) -> tuple[str, str]:
        """``(dev, rollout_id)`` of a valid, unexpired token for ``version``; else 403."""
        m = _TOKEN_RE.match(token or "")
        if m is None:
            raise BundleStoreError(403, "bad_token", "not a download token",
                                   "不是有效的下载令牌")
        dev, rollout_id, exp_text, mac = m.groups()
        exp = int(exp_text)
        if not hmac.compare_digest(mac, self._mac(dev, rollout_id, version, exp)):
            raise BundleStoreError(403, "bad_token",
                                   f"the download token is not valid for version {version}",
                                   f"下载令牌对版本 {version} 无效")
        if self.clock() >= exp:
            raise BundleStoreError(403, "token_expired", "the download token has expired",
                                   "下载令牌已过期")
        return dev, rollout_id


# --------------------------------------------------------------------------- store


class BundleStore:
    """Bundles on disk plus their ``fleet_bundle`` rows (module docstring)."""

    def __init__(self, store: Store, tables: FleetTables, root: Path, *,
                 release_keys: Path | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.tables = tables
        self.root = root
        self.release_keys = release_keys
        self._clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming = self.root / ".incoming"
        shutil.rmtree(self.incoming, ignore_errors=True)  # leftovers of an interrupted upload
        self.incoming.mkdir()
        self._drop_orphans()

    # -- reading ---------------------------------------------------------------------------
    def _row(self, r: Any) -> dict[str, Any]:
        return {"version": r.version, "manifest_sha256": r.manifest_sha256, "kid": r.kid,
                "signature_checked": bool(r.signature_checked), "min_version": r.min_version,
                "architectures": json.loads(r.architectures), "models": json.loads(r.models),
                "files": r.files, "size": r.size, "notes": r.notes,
                "uploaded_by": r.uploaded_by,
                "uploaded_at": datetime.fromtimestamp(r.uploaded_at, UTC).isoformat()}

    def list_bundles(self) -> list[dict[str, Any]]:
        """Every stored bundle, newest upload first."""
        B = self.tables.FleetBundle
        return [self._row(r) for r in B.select().order_by(B.uploaded_at.desc())]

    def get(self, version: str) -> dict[str, Any] | None:
        """One bundle's row, or None."""
        r = self.tables.FleetBundle.get_or_none(version=version)
        return None if r is None else self._row(r)

    def manifest(self, version: str) -> Manifest:
        """The stored manifest of ``version`` (404 if there is no such bundle)."""
        if self.get(_valid_version(version)) is None:
            raise BundleStoreError(404, "unknown_bundle", f"no bundle {version}",
                                   f"没有更新包 {version}")
        return parse_manifest((self.root / version / MANIFEST_NAME).read_bytes())

    def file_path(self, version: str, rel: str) -> Path:
        """The file ``rel`` of bundle ``version``: only the manifest, its signature and the
        files it lists are ever served, so no path can lead anywhere else."""
        manifest = self.manifest(version)
        if rel not in (MANIFEST_NAME, SIGNATURE_NAME) and \
                rel not in {f.path for f in manifest.files}:
            raise BundleStoreError(404, "unknown_file", f"bundle {version} has no {rel!r}",
                                   f"更新包 {version} 中没有 {rel!r}")
        return self.root / version / rel

    # -- upload ----------------------------------------------------------------------------
    async def upload(self, version: str, chunks: AsyncIterator[bytes], *,
                     actor: str) -> dict[str, Any]:
        """Store the bundle in an uncompressed tar stream as ``version``; audit it."""
        _valid_version(version)
        if self.get(version) is not None:
            raise BundleStoreError(409, "bundle_exists",
                                   f"bundle {version} is already stored (delete it first)",
                                   f"更新包 {version} 已存在（请先删除）")
        work = self.incoming / uuid.uuid4().hex
        work.mkdir()
        try:
            archive = work / "upload.tar"
            size = 0
            with archive.open("wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise BundleStoreError(413, "too_large",
                                               f"upload larger than {MAX_UPLOAD_BYTES} bytes",
                                               "上传内容过大")
                    f.write(chunk)
            tree = work / "bundle"
            checked = await asyncio.to_thread(self._unpack_and_check, archive, tree, version)
            archive.unlink()
            row = {"version": version, "manifest_sha256": checked["manifest_sha256"],
                   "kid": checked["kid"], "signature_checked": checked["signature_checked"],
                   "min_version": checked["manifest"].min_version,
                   "architectures": json.dumps(list(checked["manifest"].architectures)),
                   "models": json.dumps(list(checked["manifest"].models)),
                   "files": len(checked["manifest"].files), "size": checked["size"],
                   "notes": checked["manifest"].notes}
            final = self.root / version
            now = self._clock()
            try:  # in place before the row exists: a row always has its files
                os.rename(tree, final)
            except OSError:
                raise BundleStoreError(409, "bundle_exists", f"bundle {version} is already "
                                       f"stored", f"更新包 {version} 已存在") from None

            def tx() -> None:
                B = self.tables.FleetBundle
                # One statement: of two uploads of one version at once (two instances on
                # PostgreSQL) exactly one inserts, the other is told it exists.
                if not B.insert(**row, uploaded_by=actor, uploaded_at=now.timestamp()).on_conflict(
                        conflict_target=[B.version], action="NOTHING").as_rowcount().execute():
                    raise BundleStoreError(409, "bundle_exists",
                                           f"bundle {version} is already stored",
                                           f"更新包 {version} 已存在")
                self.store.append_audit_in_tx(now, actor, "fleet.bundle_upload", {
                    "version": version, "manifest_sha256": row["manifest_sha256"],
                    "kid": row["kid"], "signature_checked": row["signature_checked"],
                    "files": row["files"], "size": row["size"]})

            try:
                await self.store.write(tx)
            except BaseException:
                kept = self.get(version)
                # Not ours (nothing stored, or another upload's row): our files go with the
                # work folder — unless they are that upload's very bundle (same manifest).
                if kept is None or kept["manifest_sha256"] != row["manifest_sha256"]:
                    os.rename(final, tree)
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        out = self.get(version)
        assert out is not None
        return out

    def _unpack_and_check(self, archive: Path, tree: Path, version: str) -> dict[str, Any]:
        tree.mkdir()
        seen: set[str] = set()
        try:
            tar = tarfile.open(archive, "r:")  # noqa: SIM115 - closed below
        except tarfile.TarError as e:
            raise BundleStoreError(400, "bad_archive", f"not an uncompressed tar: {e}",
                                   "不是未压缩的 tar 归档") from None
        with tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isdir():
                    continue
                if not member.isreg() or not _PATH_RE.match(name) or \
                        any(p in ("", ".", "..") for p in name.split("/")):
                    raise BundleStoreError(400, "unsafe_path",
                                           f"the archive holds {member.name!r}, which is not a "
                                           f"plain file with a safe name",
                                           f"归档中的 {member.name!r} 不是安全的普通文件")
                if name in seen:
                    raise BundleStoreError(400, "duplicate_file",
                                           f"{name} is in the archive twice",
                                           f"{name} 在归档中出现两次")
                seen.add(name)
                src = tar.extractfile(member)
                if src is None:
                    raise BundleStoreError(400, "bad_archive", f"cannot read {name}",
                                           f"无法读取 {name}")
                dst = tree / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                with src, dst.open("xb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        return self.check_tree(tree, version)

    def check_tree(self, tree: Path, version: str) -> dict[str, Any]:
        """Check an unpacked bundle (module docstring); what to record about it."""
        try:
            keys = self._keys()
            if keys is not None:
                manifest = verify_bundle(tree, keys)
            else:
                sig = (tree / SIGNATURE_NAME)
                if not sig.is_file():
                    raise BundleError("missing_signature", "The bundle has no manifest.sig.",
                                      "更新包中缺少 manifest.sig。")
                parse_signature(sig.read_bytes())
                manifest = parse_manifest((tree / MANIFEST_NAME).read_bytes())
                check_files(tree, manifest)
        except BundleError as e:
            raise BundleStoreError(400, e.code, e.message, e.message_zh) from None
        except InvalidBody as e:
            raise BundleStoreError(400, "bad_manifest", e.message, e.message_zh) from None
        except FileNotFoundError:
            raise BundleStoreError(400, "missing_manifest", "the bundle has no manifest.json",
                                   "更新包中缺少 manifest.json") from None
        if manifest.version != version:
            raise BundleStoreError(400, "version_mismatch",
                                   f"the manifest is for {manifest.version}, uploaded as "
                                   f"{version}", f"清单版本为 {manifest.version}，"
                                   f"而上传为 {version}")
        data = (tree / MANIFEST_NAME).read_bytes()
        return {"manifest": manifest, "manifest_sha256": manifest_sha256(data),
                "kid": parse_signature((tree / SIGNATURE_NAME).read_bytes()).kid,
                "signature_checked": keys is not None,
                "size": sum(f.size for f in manifest.files)}

    def _keys(self) -> list[Any] | None:
        if self.release_keys is None:
            return None
        try:
            text = self.release_keys.read_bytes()
        except OSError as e:
            raise BundleError("bad_key", f"cannot read [fleet] release_keys: {e.strerror}",
                              "无法读取 [fleet] release_keys") from None
        if b"PRIVATE KEY" in text:
            raise BundleError("bad_key",
                              "[fleet] release_keys holds a private key: central must hold "
                              "release public keys only", "[fleet] release_keys 中含有私钥："
                              "中心只能保存发布公钥")
        return load_release_keys(self.release_keys)

    # -- delete ----------------------------------------------------------------------------
    async def delete(self, version: str, *, actor: str) -> dict[str, Any]:
        """Remove a bundle (refused while a rollout that is not over uses it); audit it."""
        _valid_version(version)
        final = self.root / version
        trash = self.incoming / f"del-{uuid.uuid4().hex}"
        now = self._clock()

        def tx() -> dict[str, Any]:
            B, R = self.tables.FleetBundle, getattr(self.tables, "Rollout", None)
            row = B.get_or_none(version=version)
            if row is None:
                raise BundleStoreError(404, "unknown_bundle", f"no bundle {version}",
                                       f"没有更新包 {version}")
            busy = 0 if R is None else R.select().where((R.version == version) & R.state.in_(
                ("scheduled", "running", "paused"))).count()
            if busy:
                raise BundleStoreError(409, "bundle_in_use",
                                       f"bundle {version} is used by {busy} rollout(s) that "
                                       f"are not over; cancel them first",
                                       f"更新包 {version} 正被 {busy} 个未结束的发布使用")
            out = self._row(row)
            row.delete_instance()
            self.store.append_audit_in_tx(now, actor, "fleet.bundle_delete", {
                "version": version, "manifest_sha256": out["manifest_sha256"]})
            return out

        out: dict[str, Any] = await self.store.write(tx)
        if final.exists():
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        return out

    def _drop_orphans(self) -> None:
        """Folders without a row: an upload or delete cut short by a crash."""
        B = self.tables.FleetBundle
        known = {r.version for r in B.select(B.version)}
        for d in self.root.iterdir():
            if d.is_dir() and not d.is_symlink() and re.fullmatch(VERSION_RE, d.name) \
                    and d.name not in known:
                shutil.rmtree(d, ignore_errors=True)


_OPENED: weakref.WeakKeyDictionary[Any, tuple[BundleStore, BundleTokens]] = \
    weakref.WeakKeyDictionary()


def _of(fleet: Any) -> tuple[BundleStore, BundleTokens]:
    made = _OPENED.get(fleet)
    if made is None:
        made = (BundleStore(fleet.store, fleet.tables, fleet.fleet_dir.parent / "bundles",
                            release_keys=fleet.section.release_keys),
                BundleTokens.open(fleet.fleet_dir / "bundle-token.key"))
        _OPENED[fleet] = made
    return made


def bundles_of(fleet: Any) -> BundleStore:
    """The bundle store of a ``FleetService`` (``data_dir/bundles``), made once per service."""
    return _of(fleet)[0]


def tokens_of(fleet: Any) -> BundleTokens:
    """The download-token issuer of a ``FleetService`` (secret 0600 in its fleet folder)."""
    return _of(fleet)[1]
