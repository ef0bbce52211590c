"""scripts/install-device.sh (docs/operations.md, "Install and enroll a device").

* ``--dry-run`` for kiosk and cashier, amd64 and arm64 (``YKT_INSTALL_ARCH``), from a bundle
  and from source: all 14 steps print, numbered, with what they would run, and nothing is
  written — neither in the ``--root`` folder nor on this machine.
* Unknown systems and architectures are refused with a clear message.
* A real install into a ``--root`` folder from a real signed bundle (tests/bundle_support.py)
  and one from this checkout: the slot, symlinks, users, modes, configs, units; the steps
  that need the running system are listed as not done; ``systemd-analyze verify`` passes on
  the installed units; the installed slot's own ``ykt`` runs. A second run changes nothing.
* A tampered bundle and one signed by another key are refused before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from bundle_support import OTHER_RELEASE_KEY, WHEELHOUSE, build_test_bundle, write_release_pub
from systemd_support import add_host_units, verify_units

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-device.sh"
STEPS = 14
STEP_RE = re.compile(r"^\[\s*(\d+)/(\d+)\] (.+)$")
BASE_GROUPS = ["root:x:0:", "lp:x:7:", "dialout:x:20:", "audio:x:29:", "video:x:44:",
               "plugdev:x:46:", "users:x:100:", "input:x:101:"]


def base_root(path: Path) -> Path:
    """A folder with the account files of a fresh Debian image (what --root installs into)."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (path / "etc/group").write_text("\n".join(BASE_GROUPS) + "\n")
    (path / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (path / "etc/gshadow").write_text("root:*::\n")
    (path / "etc/shadow").chmod(0o640)
    (path / "home").mkdir()
    return path


def install(*args: str | Path, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("YKT_INSTALL")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False, cwd="/")


def steps(out: str) -> dict[int, list[str]]:
    """Step number → its output lines; checks the numbering on the way."""
    got: dict[int, list[str]] = {}
    current = 0
    for line in out.splitlines():
        m = STEP_RE.match(line)
        if m:
            current = int(m.group(1))
            assert int(m.group(2)) == STEPS, line
            assert current == len(got) + 1, f"step {current} out of order"
            got[current] = []
        elif current and line.startswith("        "):
            got[current].append(line.strip())
    assert sorted(got) == list(range(1, STEPS + 1)), out
    return got


def snapshot(*roots: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``roots`` with type, mode, owner, size, mtime and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            out[str(root)] = ("absent",)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames, ""]:
                p = Path(dirpath) / name
                st = p.lstat()
                digest = ""
                if stat.S_ISLNK(st.st_mode):
                    digest = os.readlink(p)
                elif stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                               digest)
    return out


def ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == user:
            return int(f[2]), int(f[3])
    raise AssertionError(f"no user {user} in {root}/etc/passwd")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real signed bundle of this tree (version 1.5.0) and its release.pub beside it."""
    base = tmp_path_factory.mktemp("bundle")
    build_test_bundle(base / "bundle", version="1.5.0")
    write_release_pub(base / "release.pub")
    return base


@pytest.fixture
def claim(tmp_path: Path) -> Path:
    """A claim bundle as `ykt fw claim-bundle --out DIR` writes it (contents are opaque here)."""
    d = tmp_path / "claim"
    d.mkdir()
    (d / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    (d / "central-signing.pub").write_text("-----BEGIN PUBLIC KEY-----\nx\n"
                                           "-----END PUBLIC KEY-----\n")
    (d / "claim.password").write_text("claim-secret\n")
    (d / "claim.password").chmod(0o600)
    return d


# --------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize("role", ["kiosk", "cashier"])
@pytest.mark.parametrize("source", ["bundle", "source"])
def test_dry_run_prints_every_step_and_writes_nothing(tmp_path: Path, claim: Path, arch: str,
                                                       role: str, source: str) -> None:
    root = base_root(tmp_path / "root")
    fake_bundle = tmp_path / "b"
    fake_bundle.mkdir()
    pub = tmp_path / "release.pub"
    pub.write_text("not read in a dry run\n")
    what = (["--bundle", fake_bundle, "--pub", pub] if source == "bundle"
            else ["--from-source", REPO])
    watched = [root, tmp_path / "b", claim, REPO / "config", REPO / "systemd"]
    before = snapshot(*watched)
    res = install("--role", role, *what, "--claim", claim, "--root", root, "--dry-run",
                  env={"YKT_INSTALL_ARCH": arch})
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(*watched) == before
    got = steps(res.stdout)
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    assert f"ok: Debian GNU/Linux 12 (bookworm), {arch} ({machine}), role {role}" in got[1][0]
    for n in range(2, STEPS + 1):
        assert got[n], f"step {n} printed nothing"
    text = res.stdout
    apt = next(line for line in got[2] if "apt-get install" in line)
    assert "would leave (--root: needs the running system)" in apt
    assert all(p in apt for p in ("pcscd", "libccid", "python3-venv", "fonts-noto-cjk",
                                  "chromium"))
    assert ("espeak-ng" in apt) == (role == "kiosk")
    assert f"useradd --prefix {root} --system --gid ykt" in text
    for g in ("lp", "dialout", "input", "plugdev"):
        assert f"usermod --prefix {root} --append --groups {g} ykt" in text
    assert f"install -d -m 0750 {root}/etc/yikatong" in text
    assert f"python3 -m venv {root}/opt/yikatong/slots/a" in text
    if source == "bundle":
        assert "check manifest.sig with openssl" in text and "--find-links" in text
    else:
        assert f"pip install -q --no-cache-dir --disable-pip-version-check --constraint " \
               f"{REPO}/config/device-constraints.txt {REPO}" in text
    assert f"mv -Tf {root}/opt/yikatong/.current.tmp {root}/opt/yikatong/current" in text
    assert f"config/edge-{role}.toml {root}/etc/yikatong/edge.toml" in text
    ui = "kiosk.toml" if role == "kiosk" else "cashier-ui.toml"
    assert f"config/{ui} {root}/etc/yikatong/kiosk.toml" in text
    assert f"{claim}/claim.password {root}/etc/yikatong/claim/claim.password" in text
    for unit in ("ykt-edge.service", "ykt-kiosk.service", "ykt-kiosk-browser.service"):
        assert f"systemd/{unit} {root}/etc/systemd/system/{unit}" in text
    assert f"systemd/50-yikatong.rules {root}/etc/polkit-1/rules.d/50-yikatong.rules" in text
    assert f"systemctl --root={root} enable --quiet ykt-edge.service" in text
    assert f"ykt fw enroll approve CODE --name {role}-003 --role {role}" in text
    assert text.rstrip().endswith("dry run: nothing was changed")
    assert "not done" not in text  # a dry run reports what it would do, it does nothing


def test_dry_run_on_this_machine_changes_nothing(claim: Path) -> None:
    """Without --root the dry run looks at the real system, and still writes nothing."""
    watched = [Path("/opt/yikatong"), Path("/etc/yikatong"), Path("/var/lib/yikatong"),
               Path("/etc/systemd/system"), Path("/etc/passwd"), Path("/etc/group"),
               Path("/etc/polkit-1")]
    before = snapshot(*watched)
    res = install("--role", "kiosk", "--from-source", REPO, "--claim", claim, "--dry-run")
    assert res.returncode == 0, res.stdout + res.stderr
    assert snapshot(*watched) == before
    got = steps(res.stdout)
    assert "would run: python3 -m venv /opt/yikatong/slots/a" in got[5]
    assert "would run: systemctl enable --now pcscd.socket ykt-edge.service ykt-kiosk.service " \
           "ykt-kiosk-browser.service" in got[13] or any(
               line.startswith("already done: ") for line in got[13])


# --------------------------------------------------------------------------- refusals


def test_unknown_architecture_and_system_are_refused(tmp_path: Path) -> None:
    root = base_root(tmp_path / "root")
    before = snapshot(root)
    for arch in ("armhf", "i386", "riscv64"):
        res = install("--role", "kiosk", "--from-source", REPO, "--root", root, "--dry-run",
                      env={"YKT_INSTALL_ARCH": arch})
        assert res.returncode == 3
        assert f"unsupported architecture: {arch}" in res.stderr
        assert "不支持的架构" in res.stderr
    for os_release in ('ID=ubuntu\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04"\n',
                       'ID=debian\nVERSION_ID="11"\nVERSION_CODENAME=bullseye\n'
                       'PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\n'):
        f = tmp_path / "os-release"
        f.write_text(os_release)
        res = install("--role", "kiosk", "--from-source", REPO, "--root", root, "--dry-run",
                      env={"YKT_INSTALL_OS_RELEASE": str(f)})
        assert res.returncode == 3, res.stdout + res.stderr
        assert "unsupported system" in res.stderr and "不支持的系统" in res.stderr
    raspios = tmp_path / "raspios"
    raspios.write_text('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
                       'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    res = install("--role", "kiosk", "--from-source", REPO, "--root", root, "--dry-run",
                  env={"YKT_INSTALL_OS_RELEASE": str(raspios), "YKT_INSTALL_ARCH": "arm64"})
    assert res.returncode == 0, res.stderr
    res = install("--role", "kiosk", "--bundle", tmp_path, "--root", root, "--dry-run")
    assert res.returncode == 2 and "--bundle needs --pub" in res.stderr
    res = install("--role", "printer", "--from-source", REPO, "--root", root, "--dry-run")
    assert res.returncode == 2 and "--role kiosk|cashier" in res.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize("damage", ["wheel_byte", "other_key", "extra_file"])
def test_a_bad_bundle_installs_nothing(tmp_path: Path, bundle_dir: Path, damage: str) -> None:
    root = base_root(tmp_path / "root")
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir / "bundle", bundle)
    pub = bundle_dir / "release.pub"
    if damage == "wheel_byte":
        wheel = next((bundle / "wheels").glob("yikatong-*.whl"))
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0x01
        wheel.write_bytes(bytes(data))
    elif damage == "other_key":
        pub = write_release_pub(tmp_path / "other.pub", OTHER_RELEASE_KEY)
    else:
        (bundle / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    res = install("--role", "kiosk", "--bundle", bundle, "--pub", pub, "--root", root)
    assert res.returncode == 4, res.stdout + res.stderr
    assert "is refused; nothing was installed" in res.stderr
    expect = {"wheel_byte": "size or SHA-256 differs", "other_key": "does not verify with any key",
              "extra_file": "extra ['wheels/evil-1.0-py3-none-any.whl']"}[damage]
    assert expect in res.stderr
    assert not (root / "opt/yikatong/slots/a").exists()


# --------------------------------------------------------------------------- real installs


def _check_installed(root: Path, role: str, out: str) -> None:
    opt = root / "opt/yikatong"
    uid, gid = ids(root, "ykt")
    assert os.readlink(opt / "current") == "slots/a"
    assert os.readlink(opt / "committed") == "slots/a"
    for p in (opt, opt / "slots", opt / "update", opt / "slots/a", opt / "slots/a/bin/ykt"):
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (uid, gid), p
    etc = root / "etc/yikatong"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750
    assert (etc.stat().st_uid, etc.stat().st_gid) == (0, gid)
    for secret in ("secrets/edge-api.token", "secrets/sam.pin", "claim/claim.password",
                   "edge.toml", "kiosk.toml"):
        st = (etc / secret).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, gid), secret
    assert len((etc / "secrets/edge-api.token").read_text().strip()) >= 40
    assert stat.S_IMODE((root / "var/lib/yikatong/edge").stat().st_mode) == 0o700
    edge = (etc / "edge.toml").read_text()
    assert 'host = "central.test"' in edge and "central.hospital.lan" not in edge
    assert edge.startswith(f"# ykt edge — device daemon of a {role}")
    ui = (etc / "kiosk.toml").read_text()
    assert f'role = "{role}"' in ui
    for unit in ("ykt-edge.service", "ykt-kiosk.service", "ykt-kiosk-browser.service"):
        assert (root / "etc/systemd/system" / unit).read_bytes() == \
            (REPO / "systemd" / unit).read_bytes()
        wants = "graphical" if unit == "ykt-kiosk-browser.service" else "multi-user"
        assert (root / f"etc/systemd/system/{wants}.target.wants/{unit}").is_symlink()
    assert (root / "etc/polkit-1/rules.d/50-yikatong.rules").read_bytes() == \
        (REPO / "systemd/50-yikatong.rules").read_bytes()
    groups = {line.split(":")[0]: line.split(":")[3].split(",")
              for line in (root / "etc/group").read_text().splitlines()}
    for g in ("lp", "dialout", "input", "plugdev"):
        assert "ykt" in groups[g], g
    assert "kiosk" in groups["video"] and "kiosk" in groups["input"]
    # On the device the slot's scripts run /opt/yikatong/…, not this test folder.
    assert (opt / "slots/a/bin/ykt").read_text().splitlines()[0] == \
        "#!/opt/yikatong/slots/a/bin/python"
    # What --root could not do is listed, not skipped.
    tail = out.split("Not done here", 1)[1]
    assert "apt-get install" in tail and "systemctl daemon-reload" in tail
    assert "systemctl start pcscd.socket ykt-edge.service" in tail


def _verify_installed_units(root: Path) -> None:
    """The installed units verify in the installed tree (the host's base units added)."""
    add_host_units(root)
    for exe in ("usr/bin/chromium", "bin/sh"):  # the apt packages' binaries, stood in for
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    rc, report = verify_units(root, ["ykt-edge.service", "ykt-kiosk.service",
                                     "ykt-kiosk-browser.service"])
    assert (rc, report) == (0, ""), report


def _run_slot(root: Path, *args: str) -> str:
    """The installed slot's own ``ykt`` (by its interpreter: the #! names the device path)."""
    slot = root / "opt/yikatong/slots/a"
    res = subprocess.run([str(slot / "bin/python"), "-I", str(slot / "bin/ykt"), *args],
                         capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_install_from_a_bundle_into_a_root_twice(tmp_path: Path, bundle_dir: Path,
                                                 claim: Path) -> None:
    root = base_root(tmp_path / "root")
    pin = tmp_path / "sam.pin"
    pin.write_text("123456\n")
    args = ["--role", "kiosk", "--bundle", bundle_dir / "bundle", "--pub",
            bundle_dir / "release.pub", "--claim", claim, "--central", "central.test",
            "--sam-pin", pin, "--root", root]
    first = install(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    got = steps(first.stdout)
    assert any(line.startswith("signature and 38 files ok: version 1.5.0") or
               re.match(r"signature and \d+ files ok: version 1\.5\.0", line)
               for line in got[5]), got[5]
    marker = json.loads((root / "opt/yikatong/slots/a/.slot.json").read_text())
    manifest = (bundle_dir / "bundle/manifest.json").read_bytes()
    assert marker["version"] == "1.5.0"
    assert marker["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert (root / "etc/yikatong/release.pub").read_bytes() == \
        (bundle_dir / "release.pub").read_bytes()
    assert "ykt 1.5.0" in _run_slot(root, "--version")
    _check_installed(root, "kiosk", first.stdout)

    before = snapshot(root)
    second = install(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(root) == before  # nothing rewritten, not even a time stamp
    again = steps(second.stdout)
    for n in (3, 4, 6, 7, 9, 10, 11):
        assert again[n] and all(line.startswith("already done: ") for line in again[n]), \
            (n, again[n])
    assert again[5] == ["already done: slot a holds version 1.5.0 (a newer version goes in "
                        "with ykt update install / a rollout)"]
    assert not any(line.startswith("+ ") for n in again for line in again[n]
                   if "load both configs" not in line)
    _verify_installed_units(root)


def test_install_from_source_into_a_root(tmp_path: Path, claim: Path) -> None:
    if not any(WHEELHOUSE.glob("*.whl")):
        raise AssertionError(f"no wheelhouse at {WHEELHOUSE}: run scripts/install.sh")
    root = base_root(tmp_path / "root")
    pin = tmp_path / "sam.pin"
    pin.write_text("123456\n")
    args = ["--role", "cashier", "--from-source", REPO, "--wheelhouse", WHEELHOUSE,
            "--claim", claim, "--central", "central.test", "--sam-pin", pin, "--root", root]
    first = install(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    marker = json.loads((root / "opt/yikatong/slots/a/.slot.json").read_text())
    assert marker["manifest_sha256"] == "source"
    assert marker["version"] == _run_slot(root, "--version").split()[-1]
    assert not (root / "etc/yikatong/release.pub").exists()
    assert "NOT SET: without /etc/yikatong/release.pub" in first.stdout
    _check_installed(root, "cashier", first.stdout)
    before = snapshot(root)
    second = install(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert snapshot(root) == before
    _verify_installed_units(root)
