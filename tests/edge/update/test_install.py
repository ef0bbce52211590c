"""Fetching, verifying and installing real bundles (docs/updates.md, "On the device").

Bundles are real: the ``yikatong`` wheel of this tree at 1.5.0 / 1.6.0 and every pinned
dependency, built offline and signed with the test release key. Installs are real too:
``python -m venv`` and pip into a temporary root, run by the committed slot's own
interpreter (which has no pip: the installer falls back to pip's bundled wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from bundle_support import OTHER_RELEASE_KEY, write_release_pub

from edge.update.installer import check_allowed, fetch_bundle, verify_fetched
from edge.update.slots import CRASH_EXIT, Layout, UpdateError
from yikatong.bundle import load_release_keys, write_signature
from yikatong.protocol.update import parse_manifest

Bundles = BundleServer = Any  # the fixtures' types live in conftest.py (not importable)
TOKEN = "test-download-token-0123456789"


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def fetch(server: BundleServer, name: str, bundle: Path, root: Path, keys_from: Path, *,
          running: str = "1.5.0", sha: str | None = None, **kw: Any) -> Any:
    url = server.add(name, bundle)
    return fetch_bundle(url, TOKEN, Layout(root), expected_sha256=sha or manifest_sha(bundle),
                        keys=load_release_keys(keys_from), running_version=running,
                        retry_wait_s=0.05, **kw)  # type: ignore[arg-type]


def test_fetch_resumes_a_cut_download_and_verifies(bundles: Bundles, server: BundleServer,
                                                   tmp_path: Path) -> None:
    bundle = bundles["1.6.0"]
    big = max((bundle / "wheels").glob("*.whl"), key=lambda p: p.stat().st_size)
    assert big.stat().st_size > 1_000_000
    server.cut_after[f"wheels/{big.name}"] = 600_000
    seen: list[tuple[int, int]] = []
    got = fetch(server, "b", bundle, tmp_path / "root", bundles.pub, want_version="1.6.0",
                progress=lambda n, t: seen.append((n, t)))
    verify_fetched(got, load_release_keys(bundles.pub))
    assert got.manifest.version == "1.6.0"
    assert got.path == tmp_path / "root" / "update" / "downloads" / "1.6.0"
    ranges = [r for p, r in server.requests if p.endswith(big.name)]
    # Cut once, then resumed where it stopped (what had arrived stays in the .part file).
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] is not None and 0 < int(ranges[1][6:-1]) <= 600_000
    total = sum(f.size for f in got.manifest.files)
    assert seen[-1] == (total, total)
    assert not list(got.path.rglob("*.part"))
    # A second fetch of the same bundle finds every file already there.
    server.requests.clear()
    fetch(server, "b", bundle, tmp_path / "root", bundles.pub)
    assert [p for p, _ in server.requests] == ["/b/manifest.json", "/b/manifest.sig"]


def _tamper_file(b: Path) -> None:
    wheel = next((b / "wheels").glob("yikatong-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    wheel.write_bytes(bytes(data))


def _tamper_manifest(b: Path) -> None:
    m = b / "manifest.json"
    m.write_bytes(m.read_bytes().replace(b'"models":["*"]', b'"models":["evil"]'))


def _other_key(b: Path) -> None:
    write_signature(b, OTHER_RELEASE_KEY)


@pytest.mark.parametrize(("case", "tamper", "code"), [
    ("tampered file", _tamper_file, "hash_mismatch"),
    ("tampered manifest", _tamper_manifest, "bad_signature"),
    ("signed by another key", _other_key, "unknown_key"),
])
def test_a_bad_bundle_is_refused_before_anything_is_installed(
        bundles: Bundles, server: BundleServer, tmp_path: Path, kit: Any, case: str,
        tamper: Any, code: str) -> None:
    bad = bundles.copy("1.6.0", tmp_path / "bad")
    tamper(bad)
    root = tmp_path / "root"
    with pytest.raises(UpdateError) as e:
        # The command's manifest_sha256 matches the (tampered) manifest: only the release
        # signature and the hashes stand between it and the device.
        fetch(server, "bad", bad, root, bundles.pub)
    assert e.value.code == code, case
    assert not (root / "slots").exists() and not Layout(root).trial()
    # The same bundle from a technician's folder is refused as well, by the same checks.
    r = kit.ykt_update(sys.executable, "install", str(bad), "--root", str(tmp_path / "r2"),
                   "--release-keys", str(bundles.pub))
    assert r.returncode == 1 and " / " in r.stderr
    assert not (tmp_path / "r2" / "slots").exists()


def test_a_manifest_other_than_the_signed_commands_is_refused_first(
        bundles: Bundles, server: BundleServer, tmp_path: Path) -> None:
    with pytest.raises(UpdateError) as e:
        fetch(server, "b", bundles["1.6.0"], tmp_path / "root", bundles.pub,
              sha=manifest_sha(bundles["1.5.0"]))
    assert e.value.code == "manifest_mismatch"
    assert [p for p, _ in server.requests] == ["/b/manifest.json"]  # nothing else fetched


def test_only_a_trusted_key_file_is_accepted(bundles: Bundles, server: BundleServer,
                                             tmp_path: Path) -> None:
    other = write_release_pub(tmp_path / "other.pub", OTHER_RELEASE_KEY)
    with pytest.raises(UpdateError) as e:
        fetch(server, "b", bundles["1.6.0"], tmp_path / "root", other)
    assert e.value.code == "unknown_key"


def test_downgrades_need_the_signed_permission(bundles: Bundles, server: BundleServer,
                                               tmp_path: Path) -> None:
    with pytest.raises(UpdateError) as e:
        fetch(server, "b", bundles["1.5.0"], tmp_path / "root", bundles.pub, running="1.6.0")
    assert e.value.code == "downgrade" and "allow_downgrade" in e.value.message
    assert not (tmp_path / "root" / "update" / "downloads").exists()  # refused before files
    got = fetch(server, "b", bundles["1.5.0"], tmp_path / "root", bundles.pub,
                running="1.6.0", allow_downgrade=True)
    assert got.manifest.version == "1.5.0"


def test_version_arch_model_and_min_version_rules(bundles: Bundles) -> None:
    m = parse_manifest((bundles["1.6.0"] / "manifest.json").read_bytes())
    check_allowed(m, running_version="1.5.0", want_version="1.6.0")
    cases = [
        ({"want_version": "1.6.1"}, "version_mismatch"),
        ({"arch": "aarch64" if m.architectures == ["x86_64"] else "x86_64"}, "wrong_arch"),
        ({"model": "Other kiosk"}, None),  # "*": any model
    ]
    for kw, code in cases:
        if code is None:
            check_allowed(m, running_version="1.5.0", **kw)  # type: ignore[arg-type]
            continue
        with pytest.raises(UpdateError) as e:
            check_allowed(m, running_version="1.5.0", **kw)  # type: ignore[arg-type]
        assert e.value.code == code
    narrow = m.model_copy(update={"models": ["Yikatong K2"], "min_version": "1.5.0"})
    with pytest.raises(UpdateError) as e:
        check_allowed(narrow, running_version="1.5.0", model="Yikatong K1")
    assert e.value.code == "wrong_model"
    with pytest.raises(UpdateError) as e:
        check_allowed(narrow, running_version="1.4.9")
    assert e.value.code == "below_min_version"


STEPS = ("verified", "wiping", "wiped", "venv", "packages", "checked", "marker", "trial",
         "switch-tmp", "switched")


def test_a_kill_at_every_install_step_leaves_a_slot_that_starts(bundles: Bundles,
                                                                tmp_path: Path,
                                                                kit: Any) -> None:
    ykt_update = kit.ykt_update
    root = kit.install_base(bundles, tmp_path / "root")
    lay = Layout(root)
    committed_ykt = root / "committed" / "bin" / "ykt"
    args = ("install", str(bundles["1.6.0"]), "--root", str(root),
            "--release-keys", str(bundles.pub))
    for step in STEPS:
        # The committed slot's own ``ykt`` installs (no pip in it: pip's wheel is used).
        r = ykt_update(committed_ykt.parent / "python", *args,
                       env={"YKT_UPDATE_CRASH_AT": step})
        assert r.returncode == CRASH_EXIT, (step, r.stdout, r.stderr)
        g = ykt_update(committed_ykt.parent / "python", "guard", "--root", str(root))
        assert g.returncode == 0, (step, g.stdout, g.stderr)
        v = os.popen(f"{root / 'current' / 'bin' / 'ykt'} --version").read().split()
        want = "1.6.0" if step == "switched" else "1.5.0"
        assert v == ["ykt", want], (step, v, g.stdout)
        assert lay.committed_slot() == "a" and lay.usable("a"), step
        rec = lay.trial()
        if step == "switched":  # the new version is on trial: its first start counted
            assert rec is not None and rec.state == "trial" and rec.attempts == 1
        elif step in ("trial", "switch-tmp"):  # a record without the switch: failed
            assert rec is not None and rec.state == "failed" and rec.code == "interrupted"
        else:
            assert rec is None, step
        assert not list(root.glob(".*.tmp")), step
        # Back to the start for the next step (slot b is wiped by the next install).
        lay.switch(lay.current, "a")
        lay.clear_trial()
    # Uninterrupted, the same install goes through; the guard starts the trial.
    r = ykt_update(committed_ykt.parent / "python", *args)
    assert r.returncode == 0, r.stderr
    assert ykt_update(committed_ykt.parent / "python", "guard", "--root", str(root)
                      ).returncode == 0
    assert os.popen(f"{root / 'current' / 'bin' / 'ykt'} --version").read().split() == [
        "ykt", "1.6.0"]
    st = json.loads(ykt_update(sys.executable, "status", "--root", str(root), "--json").stdout)
    assert st["current"] == "b" and st["committed"] == "a"
    assert st["slots"]["b"]["version"] == "1.6.0" and st["trial"]["attempts"] == 1
    # By hand: back to the committed version.
    r = ykt_update(sys.executable, "rollback", "--root", str(root))
    assert r.returncode == 0 and lay.current_slot() == "a"
    assert lay.trial().code == "manual"  # type: ignore[union-attr]
