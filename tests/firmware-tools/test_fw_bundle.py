"""``ykt fw bundle``: build (offline, from the project wheelhouse), sign, verify — every kind
of tampering exits 1 with its reason in both languages — the pins, a foreign architecture
without prebuilt wheels, and upload/list against a running central (uvicorn on loopback)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bundle_support import HOST_ARCH, REPO, WHEELHOUSE, require_wheelhouse
from dashboard_fleet_fake import serve
from firmware_tools.bundle import read_pins, runtime_pins

from central.dashboard.app import create_dashboard
from central.fleet.bundles import tokens_of
from central.fleet.settings import FleetSection
from central.fleet.store import FleetTables
from central.registry import Registry
from central.store import open_store
from yikatong.cli import main as ykt

ADMIN = "boot-token-for-tests"
PASSWORD = "correct horse battery"


def run(capsys: Any, *args: str) -> tuple[int, str, str]:
    rc = ykt(["fw", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    assert ykt(["fw", "keygen", "--out", str(d), "--name", "release"]) == 0
    assert ykt(["fw", "keygen", "--out", str(d), "--name", "other"]) == 0
    return d


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Path:
    """A bundle built and signed with the CLI, exactly as a release engineer would."""
    require_wheelhouse()
    out = tmp_path_factory.mktemp("bundle") / "b"
    rc = ykt(["fw", "bundle", "build", "--out", str(out), "--offline", "--wheelhouse",
              str(WHEELHOUSE), "--set-version", "1.5.0", "--min-version", "1.2.0",
              "--model", "YK-K1", "--model", "YK-C1", "--notes", "test release"])
    assert rc == 0
    assert ykt(["fw", "bundle", "sign", str(out), "--key", str(keys / "release.key")]) == 0
    return out


@pytest.fixture
def bundle(signed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(signed, out)
    return out


def test_build_sign_verify(bundle: Path, keys: Path, capsys: Any) -> None:
    m = json.loads((bundle / "manifest.json").read_bytes())
    assert (m["version"], m["min_version"], m["models"], m["architectures"], m["notes"]) == (
        "1.5.0", "1.2.0", ["YK-K1", "YK-C1"], [HOST_ARCH], "test release")
    names = {Path(f["path"]).name.split("-")[0].lower() for f in m["files"]}
    pins = read_pins(REPO / "config" / "device-constraints.txt")
    # The own wheel plus exactly the pinned closure (names as wheel files spell them).
    assert names == {"yikatong"} | {n.replace("-", "_") for n in pins}
    rc, out, err = run(capsys, "bundle", "verify", str(bundle), "--pub",
                       str(keys / "release.pub"), "--arch", HOST_ARCH)
    assert rc == 0, err
    sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert "signature verified" in out and sha in out and "1.5.0" in out


def test_the_stamped_version_is_inside_the_wheel(bundle: Path) -> None:
    import zipfile

    wheel = next((bundle / "wheels").glob("yikatong-1.5.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = z.read("yikatong-1.5.0.dist-info/METADATA").decode()
        assert "Version: 1.5.0" in meta
        assert "yikatong/bundle.py" in z.namelist()
        assert "firmware_tools/bundle.py" in z.namelist()


def _verify_fails(capsys: Any, bundle: Path, pub: Path, code: str) -> str:
    rc, out, err = run(capsys, "bundle", "verify", str(bundle), "--pub", str(pub))
    assert rc == 1, out
    assert code in err, err
    assert " / " in err  # English / 中文
    assert "Traceback" not in err
    return err


def test_tampered_wheel_byte(bundle: Path, keys: Path, capsys: Any) -> None:
    wheel = next((bundle / "wheels").glob("yikatong-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[-100] ^= 0x80
    wheel.write_bytes(bytes(data))
    err = _verify_fails(capsys, bundle, keys / "release.pub", "hash_mismatch")
    assert wheel.name in err and "被修改" in err


def test_tampered_manifest_byte(bundle: Path, keys: Path, capsys: Any) -> None:
    data = (bundle / "manifest.json").read_bytes()
    (bundle / "manifest.json").write_bytes(data.replace(b'"YK-K1"', b'"YK-K2"'))
    _verify_fails(capsys, bundle, keys / "release.pub", "bad_signature")


def test_signed_by_another_key(bundle: Path, keys: Path, capsys: Any) -> None:
    rc, _out, _err = run(capsys, "bundle", "sign", str(bundle), "--key",
                         str(keys / "other.key"))
    assert rc == 0
    _verify_fails(capsys, bundle, keys / "release.pub", "unknown_key")
    rc, _out, err = run(capsys, "bundle", "verify", str(bundle), "--pub",
                        str(keys / "other.pub"))
    assert rc == 0, err


def test_missing_and_extra_file(bundle: Path, keys: Path, capsys: Any) -> None:
    victim = next((bundle / "wheels").glob("pyscard-*.whl"))
    data = victim.read_bytes()
    victim.unlink()
    _verify_fails(capsys, bundle, keys / "release.pub", "missing_file")
    victim.write_bytes(data)
    (bundle / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06")
    _verify_fails(capsys, bundle, keys / "release.pub", "extra_file")


def test_wrong_arch_and_bad_key_files(bundle: Path, keys: Path, capsys: Any) -> None:
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    rc, _out, err = run(capsys, "bundle", "verify", str(bundle), "--pub",
                        str(keys / "release.pub"), "--arch", other)
    assert rc == 1 and "wrong_arch" in err
    rc, _out, err = run(capsys, "bundle", "verify", str(bundle), "--pub",
                        str(keys / "release.key"))
    assert rc == 1 and "bad_key" in err
    rc, _out, err = run(capsys, "bundle", "sign", str(bundle), "--key",
                        str(keys / "release.pub"))
    assert rc == 1 and "bad_key" in err


def test_a_foreign_arch_without_prebuilt_wheels_names_what_is_missing(
        tmp_path: Path, capsys: Any) -> None:
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    rc, _out, err = run(capsys, "bundle", "build", "--out", str(tmp_path / "b"), "--offline",
                        "--wheelhouse", str(WHEELHOUSE), "--set-version", "1.5.0",
                        "--arch", HOST_ARCH, "--arch", other)
    assert rc == 1
    assert f"no {other} wheel" in err
    for name in ("pyscard==", "evdev==", "cryptography=="):
        assert name in err, err
    assert "--wheelhouse" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_a_prebuilt_foreign_wheelhouse_is_used(tmp_path: Path, capsys: Any) -> None:
    """A foreign arch from a wheelhouse: binary wheels per arch, pure ones shared."""
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    house = tmp_path / "house"
    shutil.copytree(WHEELHOUSE, house)
    # Stand-ins for wheels built on the other machine: the same files under its tag.
    for whl in WHEELHOUSE.glob(f"*{HOST_ARCH}.whl"):
        name = whl.name.split("-")
        plat = f"linux_{other}.whl"
        shutil.copyfile(whl, house / "-".join([*name[:-1], plat]))
    rc, _out, err = run(capsys, "bundle", "build", "--out", str(tmp_path / "b"), "--offline",
                        "--wheelhouse", str(house), "--set-version", "1.5.0",
                        "--arch", HOST_ARCH, "--arch", other)
    assert rc == 0, err
    m = json.loads((tmp_path / "b" / "manifest.json").read_bytes())
    assert m["architectures"] == [HOST_ARCH, other]
    by_path = {f["path"]: f["arch"] for f in m["files"]}
    pyscard = {p: a for p, a in by_path.items() if "/pyscard-" in p}
    assert sorted(pyscard.values()) == sorted([[HOST_ARCH], [other]])
    assert by_path[next(p for p in by_path if "/yikatong-" in p)] == []
    assert by_path[next(p for p in by_path if "/peewee-" in p)] == []


def test_pins_match_the_tested_environment() -> None:
    """What bundles ship is what the tests run against: regenerate with ykt fw bundle pins."""
    committed = read_pins(REPO / "config" / "device-constraints.txt")
    here = dict(line.split("==") for line in runtime_pins())
    assert committed == here, ("config/device-constraints.txt differs from this venv; run "
                               "ykt fw bundle pins --out config/device-constraints.txt")


def test_an_unpinned_dependency_fails_the_build(tmp_path: Path, capsys: Any) -> None:
    pins = (REPO / "config" / "device-constraints.txt").read_text().splitlines()
    short = tmp_path / "pins.txt"
    short.write_text("\n".join(p for p in pins if not p.startswith("peewee==")) + "\n")
    rc, _out, err = run(capsys, "bundle", "build", "--out", str(tmp_path / "b"), "--offline",
                        "--wheelhouse", str(WHEELHOUSE), "--set-version", "1.5.0",
                        "--pins", str(short))
    assert rc == 1 and "not pinned" in err and "peewee" in err
    loose = tmp_path / "loose.txt"
    loose.write_text("peewee>=3\n")
    rc, _out, err = run(capsys, "bundle", "build", "--out", str(tmp_path / "c"), "--offline",
                        "--wheelhouse", str(WHEELHOUSE), "--pins", str(loose))
    assert rc == 1 and "not an exact pin" in err


class BundleFleet:
    def __init__(self, store: Any, data_dir: Path, release_keys: Path | None) -> None:
        self.store = store
        self.tables = FleetTables.open(store)
        self.fleet_dir = data_dir / "fleet"
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        self.section = FleetSection(release_keys=release_keys)


@pytest.fixture
def central(tmp_path: Path, keys: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[str, BundleFleet]]:
    monkeypatch.setenv("YKT_FW_SESSION", str(tmp_path / "cfg" / "fw-session"))
    monkeypatch.delenv("YKT_CENTRAL_ADMIN_TOKEN", raising=False)
    store = open_store(tmp_path / "central.db")
    fleet = BundleFleet(store, tmp_path / "data", keys / "release.pub")
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试", fleet=fleet)
    with serve(app) as url:
        for user, role in (("wang.li", "technician"), ("chen.jie", "administrator")):
            httpx.post(f"{url}/api/users", headers={"Authorization": f"Bearer {ADMIN}"},
                       json={"username": user, "name": user, "role": role,
                             "password": PASSWORD}, timeout=10).raise_for_status()
        yield url, fleet
    store.close()


def _login(capsys: Any, url: str, user: str, tmp: Path) -> None:
    pw = tmp / f"{user}.pw"
    pw.write_text(PASSWORD + "\n")
    rc, _out, err = run(capsys, "login", "--central", url, "--user", user,
                        "--password-file", str(pw))
    assert rc == 0, err


def test_upload_and_list_as_signed_in_staff(central: Any, bundle: Path, keys: Path,
                                            tmp_path: Path, capsys: Any) -> None:
    url, fleet = central
    _login(capsys, url, "wang.li", tmp_path)
    rc, _out, err = run(capsys, "bundle", "upload", str(bundle))
    assert rc == 1 and "administrator" in err.lower()
    _login(capsys, url, "chen.jie", tmp_path)
    rc, out, err = run(capsys, "bundle", "upload", str(bundle))
    assert rc == 0, err
    assert "uploaded yikatong 1.5.0" in out and "signature checked" in out
    rc, out, err = run(capsys, "bundle", "upload", str(bundle))
    assert rc == 1 and "already stored" in err
    rc, out, err = run(capsys, "bundle", "list", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["version"], r["uploaded_by"], r["signature_checked"]) for r in rows] == [
        ("1.5.0", "chen.jie", True)]
    rc, out, _err = run(capsys, "bundle", "list")
    assert "1.5.0" in out and "chen.jie" in out
    # A device with a token fetches what was uploaded, byte for byte.
    token = tokens_of(fleet).issue("kiosk-001", "cd" * 16, "1.5.0", ttl_s=60)
    m = json.loads((bundle / "manifest.json").read_bytes())
    f = m["files"][0]
    r = httpx.get(f"{url}/api/fleet/bundles/1.5.0/files/{f['path']}",
                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert hashlib.sha256(r.content).hexdigest() == f["sha256"]


def test_an_unsigned_or_other_key_bundle_is_not_uploaded(central: Any, bundle: Path,
                                                         keys: Path, tmp_path: Path,
                                                         capsys: Any) -> None:
    url, _fleet = central
    _login(capsys, url, "chen.jie", tmp_path)
    assert run(capsys, "bundle", "sign", str(bundle), "--key", str(keys / "other.key"))[0] == 0
    rc, _out, err = run(capsys, "bundle", "upload", str(bundle))
    assert rc == 1 and "not a trusted release key" in err
    (bundle / "manifest.sig").unlink()
    rc, _out, err = run(capsys, "bundle", "upload", str(bundle))
    assert rc == 1 and "not signed" in err


def test_a_missing_wheelhouse_fails_and_says_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    import bundle_support

    monkeypatch.setattr(bundle_support, "WHEELHOUSE", tmp_path / "absent")
    with pytest.raises(RuntimeError, match=r"scripts/install\.sh"):
        bundle_support.require_wheelhouse()
