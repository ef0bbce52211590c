"""Central's bundle store and API (central/fleet/bundles.py, central/dashboard/bundles_api.py):
upload checks (completeness, signature with ``[fleet] release_keys``, archive safety), roles,
audit, download tokens, and resumable downloads with HTTP Range."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundle_support import (
    OTHER_RELEASE_KEY,
    TEST_RELEASE_KEY,
    build_test_bundle,
    write_release_pub,
)

from central.dashboard.app import create_dashboard
from central.dashboard.auth import StaffAccounts
from central.fleet.bundles import BundleStoreError, BundleTokens, bundles_of, tokens_of
from central.fleet.settings import FleetSection
from central.fleet.store import FleetTables
from central.registry import Registry
from central.store import Store, open_store
from yikatong.bundle import write_signature
from yikatong.protocol.fleet import Command
from yikatong.protocol.signing import private_key_to_pem

ADMIN = "boot-token-for-tests"
BOOT = {"Authorization": f"Bearer {ADMIN}"}
CSRF = {"X-Requested-With": "ykt"}
PASSWORD = "correct horse battery"
STAFF = (("zhao.min", "赵敏", "viewer"), ("wang.li", "王丽", "technician"),
         ("chen.jie", "陈杰", "administrator"))
ROLLOUT = "ab" * 16


class BundleFleet:
    """What the bundle API uses of a FleetService: its store, tables, folder and settings."""

    def __init__(self, store: Store, data_dir: Path, release_keys: Path | None) -> None:
        self.store = store
        self.tables = FleetTables.open(store)
        self.fleet_dir = data_dir / "fleet"
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        self.section = FleetSection(release_keys=release_keys)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    build_test_bundle(out, version="1.5.0", min_version="1.0.0")
    return out


def tar_of(bundle: Path, *, extra: dict[str, bytes] | None = None,
           skip: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(bundle.rglob("*")):
            rel = p.relative_to(bundle).as_posix()
            if p.is_file() and rel not in skip:
                tar.add(p, arcname=rel, recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def make_env(tmp_path: Path, release_keys: Path | None) -> AsyncIterator[Any]:
    store = open_store(tmp_path / "c.db")
    fleet = BundleFleet(store, tmp_path / "data", release_keys)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试", fleet=fleet, accounts=StaffAccounts(store))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://dash") as client:
        auth = {}
        for user, name, role in STAFF:
            r = await client.post("/api/users", headers=BOOT, json={
                "username": user, "name": name, "role": role, "password": PASSWORD})
            assert r.status_code == 201
            r = await client.post("/api/login", headers=CSRF, json={
                "username": user, "password": PASSWORD, "want_token": True})
            auth[role] = {"Authorization": f"Bearer {r.json()['token']}"}
        client.cookies.clear()
        yield client, fleet, auth, store
    store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Any]:
    pub = write_release_pub(tmp_path / "release.pub")
    async for e in make_env(tmp_path, pub):
        yield e


@pytest.fixture
async def env_nokeys(tmp_path: Path) -> AsyncIterator[Any]:
    async for e in make_env(tmp_path, None):
        yield e


def err(r: httpx.Response) -> tuple[int, str]:
    body = r.json()
    assert set(body) >= {"error", "message", "message_zh"}, body
    return r.status_code, body["error"]


async def upload(client: httpx.AsyncClient, headers: dict[str, str], data: bytes,
                 version: str = "1.5.0") -> httpx.Response:
    return await client.put(f"/api/fleet/bundles/{version}", content=data,
                            headers={**headers, "Content-Type": "application/x-tar"})


def copy(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    return out


# -- upload ----------------------------------------------------------------------------------

async def test_upload_list_show_delete_with_roles_and_audit(env, built: Path) -> None:
    client, fleet, auth, store = env
    data = tar_of(built)
    r = await upload(client, auth["technician"], data)
    assert r.status_code == 403
    r = await upload(client, auth["administrator"], data)
    assert r.status_code == 200, r.text
    row = r.json()["bundle"]
    assert r.json()["signature_checked"] is True
    manifest = (built / "manifest.json").read_bytes()
    assert row["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert (row["version"], row["min_version"], row["uploaded_by"]) == ("1.5.0", "1.0.0",
                                                                        "chen.jie")
    stored = fleet.fleet_dir.parent / "bundles" / "1.5.0"
    assert (stored / "manifest.json").read_bytes() == manifest
    assert not list((fleet.fleet_dir.parent / "bundles" / ".incoming").iterdir())

    assert (await client.get("/api/fleet/bundles", headers=auth["viewer"])).status_code == 403
    r = await client.get("/api/fleet/bundles", headers=auth["technician"])
    assert [b["version"] for b in r.json()["bundles"]] == ["1.5.0"]
    r = await client.get("/api/fleet/bundles/1.5.0", headers=auth["technician"])
    assert len(r.json()["manifest"]["files"]) == row["files"]

    r = await upload(client, auth["administrator"], data)
    assert err(r) == (409, "bundle_exists")

    assert (await client.delete("/api/fleet/bundles/1.5.0",
                                headers=auth["technician"])).status_code == 403
    r = await client.delete("/api/fleet/bundles/1.5.0", headers=auth["administrator"])
    assert r.status_code == 200, r.text
    assert not stored.exists()
    assert (await client.get("/api/fleet/bundles", headers=auth["technician"])
            ).json()["bundles"] == []
    r = await client.delete("/api/fleet/bundles/1.5.0", headers=auth["administrator"])
    assert err(r) == (404, "unknown_bundle")
    actions = [(e.actor, e.action, e.detail.get("version")) for e in store.audit_entries()
               if e.action.startswith("fleet.bundle")]
    assert actions == [("chen.jie", "fleet.bundle_upload", "1.5.0"),
                       ("chen.jie", "fleet.bundle_delete", "1.5.0")]
    ok, _ = store.verify_chain()
    assert ok


async def test_a_cookie_upload_without_the_csrf_header_is_refused(env, built: Path) -> None:
    client, _fleet, _auth, _store = env
    r = await client.post("/api/login", headers=CSRF, json={
        "username": "chen.jie", "password": PASSWORD})
    assert r.status_code == 200
    r = await client.put("/api/fleet/bundles/1.5.0", content=tar_of(built))
    assert err(r) == (403, "csrf")


@pytest.mark.parametrize("damage", ["wheel_byte", "manifest_byte", "other_key", "missing",
                                    "extra", "unsigned"])
async def test_damaged_bundles_are_refused_and_nothing_is_kept(env, built: Path,
                                                                tmp_path: Path,
                                                                damage: str) -> None:
    client, fleet, auth, store = env
    b = copy(built, tmp_path)
    wheel = next((b / "wheels").glob("yikatong-*.whl"))
    skip: tuple[str, ...] = ()
    extra: dict[str, bytes] = {}
    if damage == "wheel_byte":
        data = bytearray(wheel.read_bytes())
        data[100] ^= 1
        wheel.write_bytes(bytes(data))
        want = "hash_mismatch"
    elif damage == "manifest_byte":
        m = (b / "manifest.json").read_bytes().replace(b'"min_version":"1.0.0"',
                                                       b'"min_version":"0.0.0"')
        (b / "manifest.json").write_bytes(m)
        want = "bad_signature"
    elif damage == "other_key":
        write_signature(b, OTHER_RELEASE_KEY)
        want = "unknown_key"
    elif damage == "missing":
        skip = (wheel.relative_to(b).as_posix(),)
        want = "missing_file"
    elif damage == "extra":
        extra = {"wheels/evil-1.0-py3-none-any.whl": b"PK"}
        want = "extra_file"
    else:
        skip = ("manifest.sig",)
        want = "missing_signature"
    r = await upload(client, auth["administrator"], tar_of(b, skip=skip, extra=extra))
    assert err(r) == (400, want)
    root = fleet.fleet_dir.parent / "bundles"
    assert [p.name for p in root.iterdir()] == [".incoming"]
    assert not list((root / ".incoming").iterdir())
    assert not [e for e in store.audit_entries() if e.action == "fleet.bundle_upload"]


async def test_unsafe_archives_are_refused(env, built: Path) -> None:
    client, _fleet, auth, _store = env
    for name in ("../escape.whl", "/etc/evil", "wheels/../../x", "wheels/./x"):
        r = await upload(client, auth["administrator"], tar_of(built, extra={name: b"x"}))
        assert err(r) == (400, "unsafe_path"), name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("wheels/link.whl")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    r = await upload(client, auth["administrator"], buf.getvalue())
    assert err(r) == (400, "unsafe_path")
    dup = tar_of(built, extra={"manifest.json": (built / "manifest.json").read_bytes()})
    r = await upload(client, auth["administrator"], dup)
    assert err(r) == (400, "duplicate_file")
    r = await upload(client, auth["administrator"], b"not a tar at all" * 100)
    assert err(r) == (400, "bad_archive")
    r = await upload(client, auth["administrator"], tar_of(built), version="1.6.0")
    assert err(r) == (400, "version_mismatch")
    r = await upload(client, auth["administrator"], tar_of(built), version="../x")
    assert r.status_code in (404, 405)


async def test_without_release_keys_a_bundle_is_stored_but_marked_unchecked(
        env_nokeys, built: Path, tmp_path: Path) -> None:
    client, _fleet, auth, _store = env_nokeys
    b = copy(built, tmp_path)
    write_signature(b, OTHER_RELEASE_KEY)  # any key: central cannot tell
    r = await upload(client, auth["administrator"], tar_of(b))
    assert r.status_code == 200, r.text
    assert r.json()["signature_checked"] is False
    # Completeness is checked all the same.
    r = await upload(client, auth["administrator"], tar_of(built, skip=("manifest.json",)),
                     version="1.5.1")
    assert err(r) == (400, "missing_manifest")


async def test_release_keys_holding_a_private_key_are_refused(tmp_path: Path,
                                                              built: Path) -> None:
    bad = tmp_path / "release.pub"
    bad.write_bytes(private_key_to_pem(TEST_RELEASE_KEY))
    async for client, _fleet, auth, _store in make_env(tmp_path, bad):
        r = await upload(client, auth["administrator"], tar_of(built))
        assert err(r) == (400, "bad_key")
        assert "private" in r.json()["message"]


async def test_a_bundle_in_an_open_rollout_cannot_be_deleted(env, built: Path) -> None:
    client, fleet, auth, _store = env
    assert (await upload(client, auth["administrator"], tar_of(built))).status_code == 200
    now = time.time()
    with fleet.store.atomic():
        fleet.tables.Rollout.create(
            rollout_id=ROLLOUT, version="1.5.0", manifest_sha256="0" * 64, target="{}",
            max_per_minute=1, max_in_flight=1, min_finished=1, state="running",
            created_by="chen.jie", created_at=now, updated_at=now, counted_since=now)
    r = await client.delete("/api/fleet/bundles/1.5.0", headers=auth["administrator"])
    assert err(r) == (409, "bundle_in_use")


# -- tokens and downloads --------------------------------------------------------------------

def test_tokens_are_bound_to_version_and_expire(tmp_path: Path) -> None:
    now = [1_000_000.0]
    key = tmp_path / "fleet" / "bundle-token.key"
    tokens = BundleTokens.open(key, clock=lambda: now[0])
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    t = tokens.issue("kiosk-001", ROLLOUT, "1.5.0", ttl_s=3600)
    # Fits update.install's token argument.
    Command.model_validate({"command_id": "0" * 32, "name": "update.install", "args": {
        "rollout": ROLLOUT, "version": "1.5.0", "url": "http://c:8800/api/fleet/bundles/1.5.0",
        "token": t, "manifest_sha256": "0" * 64}})
    assert re.fullmatch(r"[A-Za-z0-9_.-]{16,400}", t)
    assert tokens.check(t, "1.5.0") == ("kiosk-001", ROLLOUT)
    again = BundleTokens.open(key, clock=lambda: now[0])  # same secret after a restart
    assert again.check(t, "1.5.0") == ("kiosk-001", ROLLOUT)
    for bad, version in ((t, "1.5.1"), (t.replace("kiosk-001", "kiosk-002"), "1.5.0"),
                         (t[:-1] + ("A" if t[-1] != "A" else "B"), "1.5.0"),
                         ("", "1.5.0"), ("v1.x.y.z.w", "1.5.0")):
        with pytest.raises(BundleStoreError) as exc:
            tokens.check(bad, version)
        assert (exc.value.status, exc.value.code) == (403, "bad_token")
    other = BundleTokens.open(tmp_path / "other.key", clock=lambda: now[0])
    with pytest.raises(BundleStoreError):
        other.check(t, "1.5.0")
    now[0] += 3600
    with pytest.raises(BundleStoreError) as exc:
        tokens.check(t, "1.5.0")
    assert exc.value.code == "token_expired"


async def test_range_download_resumes_and_tokens_are_checked(env, built: Path) -> None:
    client, fleet, auth, _store = env
    assert (await upload(client, auth["administrator"], tar_of(built))).status_code == 200
    token = tokens_of(fleet).issue("kiosk-001", ROLLOUT, "1.5.0", ttl_s=600)
    dev = {"Authorization": f"Bearer {token}"}
    base = "/api/fleet/bundles/1.5.0"

    r = await client.get(f"{base}/manifest.json", headers=dev)
    assert r.status_code == 200
    assert r.content == (built / "manifest.json").read_bytes()
    r = await client.get(f"{base}/manifest.sig", headers=dev)
    assert r.content == (built / "manifest.sig").read_bytes()

    manifest = bundles_of(fleet).manifest("1.5.0")
    f = max(manifest.files, key=lambda x: x.size)  # the largest wheel
    url = f"{base}/files/{f.path}"
    half = f.size // 2
    r = await client.get(url, headers={**dev, "Range": f"bytes=0-{half - 1}"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes 0-{half - 1}/{f.size}"
    first = r.content
    assert len(first) == half
    r = await client.get(url, headers={**dev, "Range": f"bytes={half}-"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {half}-{f.size - 1}/{f.size}"
    assert hashlib.sha256(first + r.content).hexdigest() == f.sha256
    r = await client.get(url, headers={**dev, "Range": f"bytes={f.size}-"})
    assert r.status_code == 416
    r = await client.head(url, headers=dev)
    assert (r.status_code, int(r.headers["content-length"])) == (200, f.size)
    assert r.headers.get("accept-ranges") == "bytes"

    # No token, a staff token, a token for another version, an expired one.
    r = await client.get(url)
    assert err(r) == (401, "token_needed")
    r = await client.get(url, headers=auth["administrator"])
    assert err(r) == (403, "bad_token")
    t151 = tokens_of(fleet).issue("kiosk-001", ROLLOUT, "1.5.1", ttl_s=600)
    r = await client.get(url, headers={"Authorization": f"Bearer {t151}"})
    assert err(r) == (403, "bad_token")
    old = tokens_of(fleet).issue("kiosk-001", ROLLOUT, "1.5.0", ttl_s=-1)
    r = await client.get(url, headers={"Authorization": f"Bearer {old}"})
    assert err(r) == (403, "token_expired")

    # Only listed files: nothing else under the folder, no way out of it.
    stored = fleet.fleet_dir.parent / "bundles" / "1.5.0"
    (stored / "secret.txt").write_text("not listed")
    secret = (fleet.fleet_dir / "bundle-token.key").read_bytes()
    for path in ("secret.txt", "../../fleet/bundle-token.key", "wheels",
                 "%2e%2e/%2e%2e/fleet/bundle-token.key", "wheels/%2e%2e/secret.txt",
                 "wheels%2f..%2f..%2f..%2ffleet%2fbundle-token.key"):
        r = await client.get(f"{base}/files/{path}", headers=dev)
        assert r.status_code == 404, (path, r.status_code)
        assert secret not in r.content
    r = await client.get("/api/fleet/bundles/9.9.9/manifest.json",
                         headers={"Authorization": "Bearer " + tokens_of(fleet).issue(
                             "kiosk-001", ROLLOUT, "9.9.9", ttl_s=60)})
    assert err(r) == (404, "unknown_bundle")
