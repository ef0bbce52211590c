"""Update bundles on disk: check one (signature, completeness, hashes) and sign one.

docs/updates.md ("Bundles") describes the format; the wire shapes are
:mod:`yikatong.protocol.update`. This module is neutral: the technician's tool
(``ykt fw bundle verify``), central (upload checks) and the device (before installing) run
the same checks in the same order:

1. ``manifest.sig`` names a trusted release key and its Ed25519 signature verifies over the
   exact bytes of ``manifest.json`` — before anything the manifest says is believed;
2. ``manifest.json`` is a canonical, valid :class:`~yikatong.protocol.update.Manifest`;
3. the folder holds exactly the listed files (no missing, no extra, no symlink, nothing
   outside the folder), each with its size and SHA-256 (streamed, never read whole);
4. if an architecture is given, the bundle targets it.

Every refusal is a :class:`BundleError` with a stable ``code`` and English/Chinese text.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from yikatong.common.errors import LocalizedError
from yikatong.protocol.envelope import canonical_json
from yikatong.protocol.errors import BadKey, InvalidBody
from yikatong.protocol.messages import dump_body
from yikatong.protocol.signing import (
    b64url_decode,
    b64url_encode,
    key_id,
    private_key_from_pem,
    public_key_from_pem,
)
from yikatong.protocol.update import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Manifest,
    ManifestSignature,
    parse_manifest,
    parse_signature,
)

__all__ = [
    "CHUNK",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "BundleError",
    "check_files",
    "file_sha256",
    "files_for_arch",
    "load_release_keys",
    "load_signing_key",
    "manifest_sha256",
    "read_manifest_file",
    "sign_manifest",
    "verify_bundle",
    "verify_manifest",
    "write_signature",
]

#: Read size when hashing wheels (they are streamed, never loaded whole).
CHUNK: Final = 1 << 20
#: A manifest lists at most 500 files; 1 MiB is far above any real one.
MAX_MANIFEST_BYTES: Final = 1 << 20
MAX_SIGNATURE_BYTES: Final = 4096

_PEM_PUBLIC = re.compile(
    rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----", re.DOTALL)


class BundleError(LocalizedError):
    """A bundle (or a key file) was refused; ``code`` says why.

    Codes: ``missing_manifest``, ``bad_manifest``, ``missing_signature``, ``bad_signature``,
    ``unknown_key``, ``no_keys``, ``bad_key``, ``missing_file``, ``extra_file``,
    ``unsafe_path``, ``size_mismatch``, ``hash_mismatch``, ``wrong_arch``, ``not_a_bundle``.
    """

    code = "bundle_error"

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code


# --------------------------------------------------------------------------- hashing, keys


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file, read in :data:`CHUNK` pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def manifest_sha256(data: bytes) -> str:
    """SHA-256 (hex) of ``manifest.json``'s bytes (the ``manifest_sha256`` of update.install)."""
    return hashlib.sha256(data).hexdigest()


def load_release_keys(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM file (one or more ``PUBLIC KEY`` blocks).

    Several keys let a new release key roll in while the old one is still trusted.
    Raises BundleError ``bad_key`` when the file holds no key or a block is not Ed25519.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BundleError("bad_key", f"Cannot read the release key file {path}: {e.strerror}.",
                          f"无法读取发布公钥文件 {path}：{e.strerror}。") from None
    blocks = _PEM_PUBLIC.findall(data)
    if not blocks:
        raise BundleError("bad_key", f"{path} holds no PEM public key.",
                          f"{path} 中没有 PEM 公钥。")
    keys: list[Ed25519PublicKey] = []
    for block in blocks:
        try:
            keys.append(public_key_from_pem(block + b"\n"))
        except BadKey as e:
            raise BundleError("bad_key", f"{path}: a key is not usable ({e.message}).",
                              f"{path}：有一个公钥不可用（{e.message_zh}）。") from None
    return keys


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The release private key from a PKCS#8 PEM file (as ``ykt fw keygen`` writes it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BundleError("bad_key", f"Cannot read the signing key {path}: {e.strerror}.",
                          f"无法读取签名私钥 {path}：{e.strerror}。") from None
    try:
        return private_key_from_pem(data)
    except BadKey as e:
        raise BundleError("bad_key", f"{path} is not an Ed25519 private key ({e.message}).",
                          f"{path} 不是 Ed25519 私钥（{e.message_zh}）。") from None


# --------------------------------------------------------------------------- signing


def sign_manifest(manifest_data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The bytes of ``manifest.sig`` for these ``manifest.json`` bytes.

    The bytes must be a canonical manifest (checked), so what is signed is what is parsed.
    """
    try:
        parse_manifest(manifest_data)
    except InvalidBody as e:
        raise BundleError("bad_manifest", f"manifest.json is not valid: {e.message}",
                          f"manifest.json 无效：{e.message_zh}") from None
    record = ManifestSignature(kid=key_id(key.public_key()),
                               sig=b64url_encode(key.sign(manifest_data)))
    return canonical_json(dump_body(record))


def write_signature(bundle: str | os.PathLike[str], key: Ed25519PrivateKey) -> ManifestSignature:
    """Sign ``bundle/manifest.json`` and write ``bundle/manifest.sig``; return the record."""
    root = Path(bundle)
    data = read_manifest_file(root)
    sig = sign_manifest(data, key)
    tmp = root / (SIGNATURE_NAME + ".tmp")
    tmp.write_bytes(sig)
    os.replace(tmp, root / SIGNATURE_NAME)
    return parse_signature(sig)


# --------------------------------------------------------------------------- verifying


def _read_small(path: Path, limit: int, missing_code: str, name: str) -> bytes:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise BundleError(missing_code, f"The bundle has no {name}.",
                          f"更新包中缺少 {name}。") from None
    if not stat.S_ISREG(st.st_mode):
        raise BundleError("unsafe_path", f"{name} is not a regular file (symlink?).",
                          f"{name} 不是普通文件（符号链接？）。")
    if st.st_size > limit:
        raise BundleError("bad_manifest" if name == MANIFEST_NAME else "bad_signature",
                          f"{name} is too large ({st.st_size} bytes).",
                          f"{name} 过大（{st.st_size} 字节）。")
    return path.read_bytes()


def read_manifest_file(bundle: str | os.PathLike[str]) -> bytes:
    """The raw bytes of ``bundle/manifest.json`` (regular file, size-limited)."""
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError("not_a_bundle", f"{root} is not a folder.", f"{root} 不是文件夹。")
    return _read_small(root / MANIFEST_NAME, MAX_MANIFEST_BYTES, "missing_manifest",
                       MANIFEST_NAME)


def verify_manifest(manifest_data: bytes, signature_data: bytes,
                    release_keys: Iterable[Ed25519PublicKey]) -> Manifest:
    """Check the signature over ``manifest_data``, then parse it; return the manifest.

    The signature is checked first, so nothing the manifest says is believed before it is
    known to come from a release key. The device uses this on a freshly downloaded
    manifest, before fetching the files it lists.
    """
    keys = {key_id(k): k for k in release_keys}
    if not keys:
        raise BundleError("no_keys", "No release public key is configured.",
                          "未配置发布公钥。")
    try:
        record = parse_signature(signature_data)
    except InvalidBody:
        raise BundleError("bad_signature", "manifest.sig is not a signature record.",
                          "manifest.sig 不是签名记录。") from None
    key = keys.get(record.kid)
    if key is None:
        raise BundleError("unknown_key",
                          f"The bundle is signed by key {record.kid}, which is not a trusted "
                          f"release key (trusted: {', '.join(sorted(keys))}).",
                          f"更新包由密钥 {record.kid} 签名，不是受信任的发布密钥"
                          f"（受信任：{', '.join(sorted(keys))}）。")
    try:
        key.verify(b64url_decode(record.sig), manifest_data)
    except (InvalidSignature, ValueError):
        raise BundleError("bad_signature",
                          f"The signature of manifest.json does not verify with key "
                          f"{record.kid}: the manifest was changed or signed by another key.",
                          f"manifest.json 的签名无法用密钥 {record.kid} 验证："
                          f"清单被修改或由其他密钥签名。") from None
    try:
        return parse_manifest(manifest_data)
    except InvalidBody as e:  # signed but invalid: a broken build, still refused
        raise BundleError("bad_manifest", f"manifest.json is not valid: {e.message}",
                          f"manifest.json 无效：{e.message_zh}") from None


def files_for_arch(manifest: Manifest, arch: str) -> list[str]:
    """The files a device of ``arch`` installs: every-arch files plus its own."""
    return [f.path for f in manifest.files if not f.arch or arch in f.arch]


def _present_files(root: Path) -> set[str]:
    """Every file under ``root`` as a relative POSIX path; refuse symlinks and odd files."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in (*dirnames, *filenames):
            p = here / name
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                raise BundleError("unsafe_path", f"{rel} is a symlink; bundles hold none.",
                                  f"{rel} 是符号链接；更新包中不允许。")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BundleError("unsafe_path", f"{rel} is not a regular file.",
                                  f"{rel} 不是普通文件。")
            found.add(rel)
    return found


def check_files(bundle: str | os.PathLike[str], manifest: Manifest,
                *, only: Iterable[str] | None = None) -> None:
    """Check that ``bundle`` holds exactly the manifest's files with their sizes and hashes.

    ``only`` restricts the check to some listed paths (a device that fetched only its
    architecture's files); files outside the manifest are refused either way.
    """
    root = Path(bundle)
    listed = {f.path: f for f in manifest.files}
    wanted = set(listed) if only is None else set(only)
    if not wanted <= set(listed):
        raise BundleError("bad_manifest", "Asked to check a file the manifest does not list.",
                          "要检查的文件不在清单中。")
    present = _present_files(root)
    missing = sorted(wanted - present)
    if missing:
        raise BundleError("missing_file",
                          f"{', '.join(missing[:5])} listed in the manifest but missing "
                          f"({len(missing)} file(s)).",
                          f"清单中的 {', '.join(missing[:5])} 缺失（共 {len(missing)} 个）。")
    extra = sorted(present - set(listed) - {MANIFEST_NAME, SIGNATURE_NAME})
    if extra:
        raise BundleError("extra_file",
                          f"{', '.join(extra[:5])} not listed in the manifest "
                          f"({len(extra)} file(s)).",
                          f"{', '.join(extra[:5])} 不在清单中（共 {len(extra)} 个）。")
    for rel in sorted(wanted):
        entry = listed[rel]
        path = root / rel
        size = path.lstat().st_size
        if size != entry.size:
            raise BundleError("size_mismatch",
                              f"{rel} has {size} bytes, the manifest says {entry.size}.",
                              f"{rel} 大小为 {size} 字节，清单为 {entry.size} 字节。")
        digest = file_sha256(path)
        if digest != entry.sha256:
            raise BundleError("hash_mismatch",
                              f"{rel}: SHA-256 {digest[:16]}… differs from the manifest's "
                              f"{entry.sha256[:16]}… (the file was changed).",
                              f"{rel} 的 SHA-256 与清单不符（文件被修改）。")


def verify_bundle(path: str | os.PathLike[str], release_keys: Iterable[Ed25519PublicKey],
                  *, arch: str | None = None) -> Manifest:
    """Check a bundle folder end to end (see the module docstring); return its manifest.

    Raises :class:`BundleError` on the first problem found.
    """
    root = Path(path)
    data = read_manifest_file(root)
    sig = _read_small(root / SIGNATURE_NAME, MAX_SIGNATURE_BYTES, "missing_signature",
                      SIGNATURE_NAME)
    manifest = verify_manifest(data, sig, release_keys)
    check_files(root, manifest)
    if arch is not None and arch not in manifest.architectures:
        raise BundleError("wrong_arch",
                          f"The bundle is for {', '.join(manifest.architectures)}, "
                          f"not {arch}.",
                          f"更新包适用于 {', '.join(manifest.architectures)}，不适用于 {arch}。")
    return manifest
