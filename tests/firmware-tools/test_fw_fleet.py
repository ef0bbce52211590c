"""``ykt fw`` fleet commands against a running dashboard (uvicorn on loopback) with a fake
FleetService: sign-in and the session file, enrollment, devices, config, commands, staff
accounts, the claim bundle; tables and ``--json``, exit codes, refusals in both languages."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard_fleet_fake import FakeFleet, serve

from central.dashboard.app import create_dashboard
from central.registry import Registry
from central.store import open_store
from yikatong.cli import main as ykt
from yikatong.site.demo import free_port

ADMIN = "boot-token-for-tests"
PASSWORD = "correct horse battery"
SEEN = datetime(2026, 3, 9, 23, 5, 7, tzinfo=UTC)  # 07:05:07 next day in Beijing


@dataclass
class Fw:
    url: str
    fleet: FakeFleet
    tmp: Path
    capsys: Any

    def __call__(self, *args: str) -> tuple[int, str, str]:
        rc = ykt(["fw", *args])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def login(self, user: str) -> None:
        pw = self.tmp / f"{user}.pw"
        pw.write_text(PASSWORD + "\n")
        rc, _out, err = self("login", "--central", self.url, "--user", user,
                             "--password-file", str(pw))
        assert rc == 0, err


@pytest.fixture
def fw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Iterator[Fw]:
    monkeypatch.setenv("YKT_FW_SESSION", str(tmp_path / "cfg" / "fw-session"))
    monkeypatch.delenv("YKT_CENTRAL_ADMIN_TOKEN", raising=False)
    store = open_store(tmp_path / "central.db")
    for dev, role in (("kiosk-001", "kiosk"), ("kiosk-002", "kiosk"),
                      ("cashier-001", "cashier")):
        store.add_device(dev, role, SEEN)
        store.apply_state(dev, online=True, boot_seq=1, version="1.4.0", now=SEEN)
    fleet = FakeFleet(step_s=0.05)
    app = create_dashboard(store, Registry(store, tmp_path / "broker"), ADMIN,
                           site_name="测试", fleet=fleet)
    with serve(app) as url:
        for user, name, role in (("zhao.min", "赵敏", "viewer"), ("wang.li", "王丽", "technician"),
                                 ("chen.jie", "陈杰", "administrator")):
            httpx.post(f"{url}/api/users", headers={"Authorization": f"Bearer {ADMIN}"},
                       json={"username": user, "name": name, "role": role,
                             "password": PASSWORD}, timeout=10).raise_for_status()
        yield Fw(url, fleet, tmp_path, capsys)
    store.close()


def token_file(tmp: Path) -> str:
    p = tmp / "admin.token"
    p.write_text(ADMIN + "\n")
    p.chmod(0o600)
    return str(p)


# -- sign-in ---------------------------------------------------------------------------------

def test_login_keeps_a_0600_session_that_later_commands_use(fw: Fw) -> None:
    rc, _out, err = fw("enroll", "list", "--central", fw.url)
    assert rc == 1 and "sign in first" in err and "请先登录" in err
    fw.login("wang.li")
    path = fw.tmp / "cfg" / "fw-session"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    session = json.loads(path.read_text())
    assert session["central"] == fw.url and session["username"] == "wang.li"
    assert session["role"] == "technician" and len(session["token"]) >= 40
    rc, out, err = fw("enroll", "list")  # no --central: the session's
    assert rc == 0, err
    assert "7KQ2-M9XD" in out
    rc, _out, err = fw("enroll", "list", "--central", "http://127.0.0.1:1")
    assert rc == 1 and "the saved session is for" in err
    rc, out, _err = fw("logout")
    assert rc == 0 and "signed out" in out and not path.exists()
    rc, _out, err = fw("enroll", "list", "--central", fw.url)
    assert rc == 1 and "sign in first" in err


def test_wrong_password_and_getpass(fw: Fw, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = fw.tmp / "bad.pw"
    bad.write_text("not it\n")
    rc, _out, err = fw("login", "--central", fw.url, "--user", "wang.li",
                       "--password-file", str(bad))
    assert rc == 1
    assert "central refused: wrong user name or password / 用户名或密码错误" in err
    assert not (fw.tmp / "cfg" / "fw-session").exists()
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSWORD)
    rc, out, err = fw("login", "--central", fw.url, "--user", "wang.li")
    assert rc == 0, err
    assert "王丽 (wang.li), technician" in out and "(Asia/Shanghai)" in out


def test_an_expired_session_says_sign_in_again(fw: Fw) -> None:
    fw.login("zhao.min")
    path = fw.tmp / "cfg" / "fw-session"
    session = json.loads(path.read_text())
    path.write_text(json.dumps({**session, "token": "no-longer-valid"}))
    rc, _out, err = fw("device", "list")
    assert rc == 1 and "session has ended" in err and "ykt fw login" in err


# -- enrollment ------------------------------------------------------------------------------

def test_enroll_list_approve_reject(fw: Fw) -> None:
    fw.login("wang.li")
    rc, out, _err = fw("enroll", "list")
    lines = out.splitlines()
    assert lines[0] == "times in Asia/Shanghai"
    assert lines[1].split()[:4] == ["CODE", "SERIAL", "MODEL", "MAC"]
    row = next(line for line in lines if line.startswith("W4PJ-6C0E"))
    assert "YKT-C1-00087" in row and "DUPLICATE" in row and "pending" in row
    assert "check which device is real" in out
    rc, out, _err = fw("enroll", "list", "--json")
    assert rc == 0 and len(json.loads(out)) == 3
    rc, out, _err = fw("enroll", "list", "--all")
    assert "bench unit, not for this site" in out and "DECIDED BY" in out

    rc, out, err = fw("enroll", "approve", "7kq2-m9xd", "--name", "kiosk-004", "--role",
                      "kiosk", "--site", "门诊楼")
    assert rc == 0, err
    assert "serial YKT-K2-00231 is now kiosk-004 (kiosk, 门诊楼)" in out
    assert fw.fleet.calls[-1][1]["actor"] == "wang.li"
    rc, _out, err = fw("enroll", "approve", "7KQ2-M9XD", "--name", "kiosk-005", "--role",
                       "kiosk", "--site", "门诊楼")
    assert rc == 1
    assert "central refused: no open enrollment request with code 7KQ2-M9XD" in err
    assert "没有配对码为 7KQ2-M9XD 的待批准申请" in err and "Traceback" not in err
    rc, out, _err = fw("enroll", "reject", "W4PJ-6C0E", "--reason", "clone", "--json")
    assert rc == 0 and json.loads(out)["status"] == "rejected"


def test_a_viewer_is_told_which_role_is_needed(fw: Fw) -> None:
    fw.login("zhao.min")
    rc, _out, err = fw("enroll", "approve", "7KQ2-M9XD", "--name", "kiosk-004", "--role",
                       "kiosk", "--site", "门诊楼")
    assert rc == 1
    assert err.strip() == "ykt fw: central refused: technician role needed / 需要技术员权限"
    rc, _out, err = fw("device", "revoke", "kiosk-002")
    assert rc == 1 and "administrator role needed / 需要管理员权限" in err


# -- devices ---------------------------------------------------------------------------------

def test_device_list_adds_site_and_config_state(fw: Fw) -> None:
    fw.login("zhao.min")
    rc, out, _err = fw("device", "list")
    assert rc == 0
    head, *rows = out.splitlines()
    assert head.split()[:6] == ["DEVICE", "ROLE", "STATE", "VERSION", "SITE", "CONFIG"]
    assert head.endswith("LAST SEEN (Asia/Shanghai)")
    k2 = next(r for r in rows if r.startswith("kiosk-002"))
    assert "门诊楼" in k2 and "pending" in k2 and k2.endswith("2026-03-10 07:05:07")
    rc, out, _err = fw("device", "list", "--json")
    devs = {d["id"]: d for d in json.loads(out)}
    assert devs["kiosk-001"]["config_state"] == "in_sync" and devs["kiosk-001"]["site"] == "门诊楼"


def test_device_show_disable_revoke(fw: Fw) -> None:
    fw.login("wang.li")
    rc, out, _err = fw("device", "show", "kiosk-003")
    assert rc == 0
    assert "kiosk-003  kiosk  site 住院部  online" in out
    assert "NOT in sync" in out and "printer_refused" in out
    assert "ui.idle_timeout_s = 90" in out
    rc, out, _err = fw("device", "show", "kiosk-001", "--json")
    assert json.loads(out)["desired"]["version"] == 7
    rc, _out, err = fw("device", "show", "kiosk-999")
    assert rc == 1 and "no device kiosk-999 / 没有设备 kiosk-999" in err
    rc, out, _err = fw("device", "disable", "kiosk-002")
    assert rc == 0 and fw.fleet.calls[-1] == ("disable", {"dev": "kiosk-002",
                                                          "actor": "wang.li"})
    rc, _out, err = fw("device", "revoke", "kiosk-002")
    assert rc == 1 and "administrator role needed" in err
    rc, out, err = fw("device", "revoke", "kiosk-002", "--token-file", token_file(fw.tmp),
                      "--central", fw.url)
    assert rc == 0, err
    assert "revoked the certificate of kiosk-002" in out
    assert fw.fleet.calls[-1] == ("revoke", {"dev": "kiosk-002", "actor": "admin-token"})


# -- config ----------------------------------------------------------------------------------

def test_config_set_takes_dotted_keys_and_json_values(fw: Fw) -> None:
    fw.login("wang.li")
    rc, out, err = fw("config", "set", "device", "kiosk-001", "printer.status_poll_s=5",
                      "ui.language=en", "scanner.enabled=false", "log_level=debug")
    assert rc == 0, err
    assert fw.fleet.calls[-1][1]["settings"] == {
        "printer": {"status_poll_s": 5}, "ui": {"language": "en"},
        "scanner": {"enabled": False}, "log_level": "debug"}
    assert 'ui.language = "en"' in out and "devices: kiosk-001 v8" in out
    rc, out, _err = fw("config", "get", "device", "kiosk-001", "--json")
    assert json.loads(out)["settings"]["scanner"] == {"enabled": False}
    rc, out, _err = fw("config", "get", "site", "门诊楼")
    assert out.splitlines() == ["site 门诊楼", "  settings set here:", '    ui.language = "zh"',
                                "    telemetry_interval_s = 60"]
    rc, out, _err = fw("config", "push", "site", "门诊楼")
    assert rc == 0
    assert "to 3 device(s): kiosk-001 v8, kiosk-002 v8, cashier-001 v7" in out
    rc, _out, err = fw("config", "set", "site", "门诊楼", "ui.language")
    assert rc == 1 and "is not key=value" in err
    rc, _out, err = fw("config", "set", "site", "门诊楼", "broker.host=evil.example")
    assert rc == 1 and "central refused: invalid settings" in err


# -- commands --------------------------------------------------------------------------------

def test_cmd_wait_prints_states_and_exits_by_outcome(fw: Fw) -> None:
    fw.login("wang.li")
    rc, out, err = fw("cmd", "kiosk-001", "printer.test", "--wait", "10")
    assert rc == 0, err
    states = [line.split()[2] for line in out.splitlines()[1:]]
    assert states[0] == "queued" and states[-1] == "succeeded"
    assert "printed=True paper=ok" in out.splitlines()[-1]

    fw.fleet.script["reader.selftest"] = [("delivered", {}), ("failed", {
        "code": "reader_missing", "message": "no reader on USB"})]
    rc, out, _err = fw("cmd", "kiosk-001", "reader.selftest", "--wait")
    assert rc == 1 and "failed  reader_missing no reader on USB" in out

    fw.fleet.script["reboot"] = [("delivered", {}), ("waiting", {})]
    rc, out, err = fw("cmd", "kiosk-001", "reboot", "--wait", "0.5")
    assert rc == 2 and "no final state after 0.5 s (still waiting)" in err

    rc, out, _err = fw("cmd", "kiosk-001", "service.restart", "--arg", "service=edge")
    assert rc == 0 and "queued" in out  # without --wait: sent, not followed
    assert fw.fleet.calls[-1][1]["args"] == {"service": "edge"}
    rc, out, _err = fw("cmd", "kiosk-001", "logs.collect", "--arg", "lines=200", "--wait",
                       "--json")
    assert rc == 0 and json.loads(out)["state"] == "succeeded"
    assert fw.fleet.calls[-1][1]["args"] == {"lines": 200}
    rc, _out, err = fw("cmd", "kiosk-001", "format.disk")
    assert rc == 1 and "unknown command 'format.disk'" in err


def test_cert_rotate(fw: Fw) -> None:
    fw.login("wang.li")
    rc, out, _err = fw("cert", "rotate", "kiosk-001", "--wait", "10")
    assert rc == 0 and "cert.rotate → kiosk-001" in out and "succeeded" in out
    assert fw.fleet.calls[-1][1]["name"] == "cert.rotate"


# -- staff accounts, claim bundle ------------------------------------------------------------

def test_user_add_list_disable(fw: Fw) -> None:
    tok = ["--central", fw.url, "--token-file", token_file(fw.tmp)]
    pw = fw.tmp / "new.pw"
    pw.write_text("a long new password\n")
    rc, out, err = fw("user", "add", "li.na", "--name", "李娜", "--role", "technician",
                      "--password-file", str(pw), *tok)
    assert rc == 0, err
    assert "added li.na (李娜), technician" in out
    rc, out, _err = fw("user", "list", *tok)
    row = next(line for line in out.splitlines() if line.startswith("li.na"))
    assert row.split()[:4] == ["li.na", "李娜", "technician", "active"]
    assert row.split()[-1] == "admin-token"
    rc, out, _err = fw("user", "disable", "li.na", *tok)
    assert rc == 0
    rc, out, _err = fw("user", "list", "--json", *tok)
    assert {u["username"]: u["disabled"] for u in json.loads(out)}["li.na"] is True
    fw.login("wang.li")
    rc, _out, err = fw("user", "list")
    assert rc == 1 and "administrator role needed" in err


def test_claim_bundle_files_and_modes(fw: Fw, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = fw.tmp / "bundle"
    fw.login("wang.li")
    rc, _out, err = fw("claim-bundle", "--out", str(out_dir))
    assert rc == 1 and "administrator role needed" in err and not out_dir.exists()
    fw.login("chen.jie")
    # An earlier bundle's password file, world-readable (copied around, say): the new
    # password must never be readable by others, not even for a moment.
    out_dir.mkdir(mode=0o700)
    (out_dir / "claim.password").write_text("old\n")
    (out_dir / "claim.password").chmod(0o644)
    watch_secret(monkeypatch, out_dir / "claim.password", "claim-Secret-123")
    rc, out, err = fw("claim-bundle", "--out", str(out_dir))
    assert rc == 0, err
    assert "central.example.org:8884" in out and "claim-Secret-123" not in out
    assert (out_dir / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE((out_dir / "ca.pem").stat().st_mode) == 0o644
    assert "PUBLIC KEY" in (out_dir / "central-signing.pub").read_text()
    assert (out_dir / "claim.password").read_text() == "claim-Secret-123\n"
    assert stat.S_IMODE((out_dir / "claim.password").stat().st_mode) == 0o600
    assert sorted(p.name for p in out_dir.iterdir()) == [  # no temporary files left
        "ca.pem", "central-signing.pub", "claim.password"]


def watch_secret(monkeypatch: pytest.MonkeyPatch, path: Path, secret: str) -> None:
    """Fail when ``path`` holds ``secret`` with a mode other than 0600 at any chmod or
    rename (where a write-then-chmod or an atomic replace shows what it left)."""

    def check() -> None:
        if path.exists() and secret in path.read_text():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, "secret readable by others"

    real_chmod, real_replace = os.chmod, os.replace

    def chmod(p: Any, mode: int, *a: Any, **kw: Any) -> None:
        check()
        real_chmod(p, mode, *a, **kw)
        check()

    def replace(src: Any, dst: Any, *a: Any, **kw: Any) -> None:
        check()
        real_replace(src, dst, *a, **kw)
        check()

    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(os, "replace", replace)


# -- as a process: no traceback, whatever happens --------------------------------------------

def _ykt(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "yikatong.cli", "fw", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


def test_unreachable_central_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {"YKT_FW_SESSION": str(tmp_path / "s"), "YKT_CENTRAL_ADMIN_TOKEN": "x"}
    dead = f"http://127.0.0.1:{free_port()}"
    r = _ykt("device", "list", "--central", dead, env=env)
    assert r.returncode == 1
    assert r.stderr.startswith(f"ykt fw: cannot reach central at {dead}")
    assert "无法连接中心服务" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "world.token"
    bad.write_text("tok")
    bad.chmod(0o644)
    r = _ykt("enroll", "list", "--central", dead, "--token-file", str(bad),
             env={"YKT_FW_SESSION": str(tmp_path / "s")})
    assert r.returncode == 1 and "world-readable" in r.stderr and "Traceback" not in r.stderr


def test_ca_show_for_staff_and_rotation_for_administrators_only(fw: Fw) -> None:
    fw.login("zhao.min")
    rc, out, err = fw("ca", "show", "--central", fw.url)
    assert rc == 0, err
    assert "Yikatong Fleet Issuing CA G2" in out and "retired" not in out
    rc, _out, err = fw("ca", "rotate", "--central", fw.url)
    assert rc == 1 and "administrator" in err.lower()
    fw.login("wang.li")
    rc, _out, err = fw("ca", "rotate", "--central", fw.url)
    assert rc == 1 and "administrator" in err.lower()
    assert [c for c in fw.fleet.calls if c[0] == "rotate_ca"] == []
    fw.login("chen.jie")
    rc, out, err = fw("ca", "rotate", "--central", fw.url)
    assert rc == 0, err
    assert "已更换签发证书" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "G3" in rows["issuing"] and "G2" in rows["retired"]
    assert fw.fleet.calls[-1] == ("rotate_ca", {"actor": "chen.jie"})
    rc, out, _err = fw("ca", "show", "--central", fw.url, "--json")
    assert json.loads(out)["issuing"]["subject"].endswith("G3")
