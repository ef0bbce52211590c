"""yikatong/bundle.py: a real bundle (built offline by tests/bundle_support.py) verifies, and
every kind of tampering is refused with its own code: a changed wheel byte, a changed
manifest byte, a missing or an extra file, symlinks, a bundle signed by another key."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle_support import (
    HOST_ARCH,
    OTHER_RELEASE_KEY,
    TEST_RELEASE_KEY,
    build_test_bundle,
    release_kid,
    write_release_pub,
)

from yikatong.bundle import (
    BundleError,
    file_sha256,
    files_for_arch,
    load_release_keys,
    sign_manifest,
    verify_bundle,
    verify_manifest,
    write_signature,
)
from yikatong.protocol.signing import b64url_encode

KEYS = [TEST_RELEASE_KEY.public_key()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    build_test_bundle(out, version="1.5.0", min_version="1.0.0")
    return out


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(built, out)
    return out


def refused(bundle: Path, code: str, keys: list = KEYS, **kw: str) -> BundleError:
    with pytest.raises(BundleError) as exc:
        verify_bundle(bundle, keys, **kw)
    assert exc.value.code == code, exc.value
    assert exc.value.message and exc.value.message_zh
    return exc.value


def own_wheel(bundle: Path) -> Path:
    return next((bundle / "wheels").glob("yikatong-*.whl"))


def test_a_good_bundle_verifies_and_says_what_it_holds(bundle: Path) -> None:
    m = verify_bundle(bundle, KEYS, arch=HOST_ARCH)
    assert (m.version, m.min_version, m.architectures) == ("1.5.0", "1.0.0", [HOST_ARCH])
    paths = {f.path for f in m.files}
    assert own_wheel(bundle).relative_to(bundle).as_posix() in paths
    assert any(p.startswith("wheels/pyscard-") for p in paths)
    assert any(p.startswith("wheels/cryptography-") for p in paths)
    for f in m.files:
        assert file_sha256(bundle / f.path) == f.sha256
    assert set(files_for_arch(m, HOST_ARCH)) == paths
    sig = json.loads((bundle / "manifest.sig").read_bytes())
    assert sig["kid"] == release_kid()


def test_a_tampered_wheel_byte_is_refused(bundle: Path) -> None:
    wheel = own_wheel(bundle)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    e = refused(bundle, "hash_mismatch")
    assert wheel.name in e.message


def test_a_changed_size_is_refused(bundle: Path) -> None:
    wheel = own_wheel(bundle)
    with wheel.open("ab") as f:
        f.write(b"\0")
    refused(bundle, "size_mismatch")


def test_a_tampered_manifest_byte_is_refused_before_anything_else(bundle: Path) -> None:
    data = bytearray((bundle / "manifest.json").read_bytes())
    i = data.index(b'"version":"1.5.0"') + len('"version":"1.5.')
    data[i] = ord("9")  # 1.5.0 -> 1.5.9: still a valid, canonical manifest, but not signed
    (bundle / "manifest.json").write_bytes(bytes(data))
    refused(bundle, "bad_signature")


def test_missing_and_extra_files_are_refused(bundle: Path, tmp_path: Path) -> None:
    wheel = own_wheel(bundle)
    moved = tmp_path / wheel.name
    wheel.rename(moved)
    e = refused(bundle, "missing_file")
    assert wheel.name in e.message
    moved.rename(wheel)
    (bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    refused(bundle, "extra_file")
    (bundle / "wheels" / "evil-1.0-py3-none-any.whl").unlink()
    (bundle / "notes.txt").write_text("hi")
    refused(bundle, "extra_file")
    (bundle / "notes.txt").unlink()
    verify_bundle(bundle, KEYS)


def test_symlinks_are_refused(bundle: Path, tmp_path: Path) -> None:
    wheel = own_wheel(bundle)
    real = tmp_path / "elsewhere.whl"
    shutil.copyfile(wheel, real)
    wheel.unlink()
    wheel.symlink_to(real)  # same bytes, but outside the bundle
    refused(bundle, "unsafe_path")
    wheel.unlink()
    shutil.copyfile(real, wheel)
    (bundle / "link").symlink_to("/etc")
    refused(bundle, "unsafe_path")
    (bundle / "link").unlink()
    (bundle / "manifest.sig").rename(tmp_path / "sig")
    (bundle / "manifest.sig").symlink_to(tmp_path / "sig")
    refused(bundle, "unsafe_path")


def test_a_bundle_signed_by_another_key_is_refused(bundle: Path) -> None:
    write_signature(bundle, OTHER_RELEASE_KEY)
    e = refused(bundle, "unknown_key")
    assert release_kid(OTHER_RELEASE_KEY) in e.message
    # The other key's signature under the trusted key's id: the signature itself fails.
    data = (bundle / "manifest.json").read_bytes()
    forged = {"alg": "Ed25519", "kid": release_kid(),
              "sig": b64url_encode(OTHER_RELEASE_KEY.sign(data))}
    (bundle / "manifest.sig").write_text(json.dumps(forged))
    refused(bundle, "bad_signature")
    # Either key trusted (a key roll-over): accepted.
    write_signature(bundle, OTHER_RELEASE_KEY)
    verify_bundle(bundle, [TEST_RELEASE_KEY.public_key(), OTHER_RELEASE_KEY.public_key()])


def test_the_signature_is_checked_before_the_manifest_is_read(bundle: Path) -> None:
    # A non-manifest signed by an untrusted key: refused for the key, never parsed.
    junk = b'{"format": 1, "files": "not a list"}'
    sig = {"alg": "Ed25519", "kid": release_kid(OTHER_RELEASE_KEY),
           "sig": b64url_encode(OTHER_RELEASE_KEY.sign(junk))}
    with pytest.raises(BundleError) as exc:
        verify_manifest(junk, json.dumps(sig).encode(), KEYS)
    assert exc.value.code == "unknown_key"
    # Signed by the trusted key (a broken build) but not a manifest: refused as such.
    sig = {"alg": "Ed25519", "kid": release_kid(),
           "sig": b64url_encode(TEST_RELEASE_KEY.sign(junk))}
    with pytest.raises(BundleError) as exc:
        verify_manifest(junk, json.dumps(sig).encode(), KEYS)
    assert exc.value.code == "bad_manifest"
    with pytest.raises(BundleError) as exc:
        sign_manifest(junk, TEST_RELEASE_KEY)
    assert exc.value.code == "bad_manifest"


@pytest.mark.parametrize(("damage", "code"), [
    (lambda b: (b / "manifest.json").unlink(), "missing_manifest"),
    (lambda b: (b / "manifest.sig").unlink(), "missing_signature"),
    (lambda b: (b / "manifest.sig").write_text("{}"), "bad_signature"),
    (lambda b: (b / "manifest.sig").write_bytes(b"\xff" * 10), "bad_signature"),
])
def test_missing_or_broken_manifest_files(bundle: Path, damage: Callable[[Path], object],
                                          code: str) -> None:
    damage(bundle)
    refused(bundle, code)


def test_arch_and_keys(bundle: Path, tmp_path: Path) -> None:
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    e = refused(bundle, "wrong_arch", arch=other)
    assert other in e.message
    refused(bundle, "no_keys", keys=[])
    refused(tmp_path / "nothing", "not_a_bundle")
    both = write_release_pub(tmp_path / "release.pub", OTHER_RELEASE_KEY, TEST_RELEASE_KEY)
    keys = load_release_keys(both)
    assert len(keys) == 2
    verify_bundle(bundle, keys)
    (tmp_path / "empty.pub").write_text("nothing here\n")
    with pytest.raises(BundleError) as exc:
        load_release_keys(tmp_path / "empty.pub")
    assert exc.value.code == "bad_key"
    with pytest.raises(BundleError) as exc:
        load_release_keys(tmp_path / "absent.pub")
    assert exc.value.code == "bad_key"
