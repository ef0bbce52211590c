"""``ykt fw`` fleet commands: sign-in, enrollment, devices, config, commands, staff, claim bundle.

Each talks to central's REST API (central/dashboard/fleet_api.py, auth.py) with the
credentials firmware_tools/central.py finds. Tables show times in the site's zone (central's
``/api/status``) as ``YYYY-MM-DD HH:MM:SS``; ``--json`` prints central's answer as it is.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from firmware_tools.central import (
    DEFAULT_CENTRAL,
    Central,
    FwError,
    NotAvailable,
    clear_session,
    connect,
    load_session,
    save_session,
    write_file,
)
from yikatong.protocol.fleet import FINAL_COMMAND_STATES

__all__ = ["parse_assignments", "site_time", "table"]

#: ``--wait`` without a number waits this long.
DEFAULT_WAIT_S = 120.0
#: Longest single long-poll of a command's state (central caps it at 30 s).
POLL_S = 5.0


# -- output -------------------------------------------------------------------------------

def site_time(iso: str | None, zone: ZoneInfo) -> str:
    """An ISO time from central as ``YYYY-MM-DD HH:MM:SS`` in the site's zone (``-`` if none)."""
    if not iso:
        return "-"
    t = datetime.fromisoformat(iso)
    if t.tzinfo is None:  # central stores UTC
        t = t.replace(tzinfo=UTC)
    return t.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FwError(f"central reports an unknown time zone {name!r}",
                      f"中心服务的时区 {name} 无法识别") from None


def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell (Chinese counts double); the last one unpadded."""
    cells = [[str(h) for h in headers], *[["-" if c in (None, "") else str(c) for c in r]
                                          for r in rows]]
    widths = [max(_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c + " " * (widths[i] - _width(c) + 2) for i, c in enumerate(r[:-1])]
        lines.append(("".join(parts) + r[-1]).rstrip())
    return "\n".join(lines)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _flat(settings: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(settings, dict):
        for k, v in settings.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.extend(_flat(v, key))
            else:
                out.append((key, v))
    return out


def _show_settings(settings: Any, indent: str = "  ") -> None:
    pairs = _flat(settings)
    if not pairs:
        print(f"{indent}(none: the device's own values)")
    for k, v in pairs:
        print(f"{indent}{k} = {json.dumps(v, ensure_ascii=False)}")


def _words(d: Any) -> str:
    if not isinstance(d, dict) or not d:
        return ""
    # a command's output, one line: unset values left out, the bundle's copy of size/sha
    # not said twice
    skip = {"bundle_size", "bundle_sha256"} if "sha256" in d else set()
    return " ".join(f"{k}={v}" for k, v in d.items() if v is not None and k not in skip)


def _p(part: str) -> str:
    return quote(part, safe="")


# -- parsing ------------------------------------------------------------------------------

def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["printer.status_poll_s=5", "ui.language=en"]`` → nested settings (JSON values)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise FwError(f"{item!r} is not key=value (dotted keys, e.g. ui.language=en)",
                          f"{item} 不是 key=value 格式（例如 ui.language=en）")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise FwError(f"{key}: {part} is set to a value and used as a group",
                              f"{key}：{part} 既是值又是分组")
            node = nxt
        node[parts[-1]] = _value(raw)
    return out


def _cmd_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FwError(f"--arg {item!r} is not key=value", f"--arg {item} 不是 key=value 格式")
        v = _value(raw)
        out[key.strip()] = v if isinstance(v, int) and not isinstance(v, bool) else raw
    return out


def _central(args: argparse.Namespace) -> Central:
    return connect(getattr(args, "central", None), getattr(args, "token_file", None))


# -- sign-in ------------------------------------------------------------------------------

def _read_password(path: Path | None, prompt: str, *, confirm: bool = False) -> str:
    if path is not None:
        try:
            pw = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise FwError(f"cannot read {path}: {exc.strerror}", f"无法读取 {path}") from None
    else:
        try:
            pw = getpass.getpass(prompt)
            if confirm and getpass.getpass("again / 再输一次: ") != pw:
                raise FwError("the two passwords differ", "两次输入的密码不一致")
        except EOFError:
            raise FwError("no password given: use --password-file FILE",
                          "未输入密码：请用 --password-file") from None
    if not pw:
        raise FwError("the password is empty", "密码为空")
    return pw


def login(args: argparse.Namespace) -> int:
    url = (args.central or DEFAULT_CENTRAL).rstrip("/")
    pw = _read_password(args.password_file, f"password for {args.user} at {url} / 密码: ")
    c = Central(url, None, via="login")
    with c:
        try:
            res = c.call("POST", "/api/login", json={"username": args.user, "password": pw,
                                                      "want_token": True})
        except NotAvailable:
            raise FwError(f"central at {url} has no staff sign-in (an older central: use "
                          "--token-file)", "中心服务版本较旧，不支持员工登录") from None
        zone = _zone(c.zone_name())
    path = save_session({"central": url, "token": res["token"], "username": res["username"],
                         "name": res.get("name"), "role": res.get("role"),
                         "expires_at": res.get("expires_at")})
    print(f"signed in to {url} as {res.get('name')} ({res['username']}), {res.get('role')}, "
          f"until {site_time(res.get('expires_at'), zone)} ({zone.key}) at the latest; "
          f"the session ends after {int(res.get('idle_timeout_s') or 1800) // 60} min unused. "
          f"Session file: {path} (mode 0600)")
    return 0


def logout(args: argparse.Namespace) -> int:
    session = load_session()
    if session is None:
        print("not signed in / 未登录")
        return 0
    with Central(str(session["central"]), str(session["token"]), via="session") as c:
        try:
            c.call("POST", "/api/logout")
        except FwError as exc:  # the session is gone here whatever central says
            print(f"ykt fw: {exc}", file=sys.stderr)
    clear_session()
    print(f"signed out of {session['central']} / 已退出")
    return 0


# -- enrollments --------------------------------------------------------------------------

def enroll_list(args: argparse.Namespace) -> int:
    with _central(args) as c:
        path = "/api/enrollments" if args.all else "/api/enrollments?status=pending"
        items = c.call("GET", path)["enrollments"]
        if args.json:
            _json(items)
            return 0
        zone = _zone(c.zone_name())
    if not items:
        print("no pending enrollment requests / 没有待批准的注册申请" if not args.all
              else "no enrollment requests / 没有注册申请")
        return 0
    rows = []
    for r in items:
        f = r.get("facts") or {}
        flags = ",".join(x for x in ("DUPLICATE" if r.get("duplicate") else "",
                                     f"re-enroll:{r['reenroll_of']}" if r.get("reenroll_of")
                                     else "") if x)
        row = [r["code"], r["serial"], f.get("model"), f.get("mac"), r["status"], flags,
               site_time(r.get("created_at"), zone), site_time(r.get("expires_at"), zone)]
        if args.all:
            row += [r.get("device_id"), r.get("decided_by"), r.get("reason")]
        rows.append(row)
    headers = ["CODE", "SERIAL", "MODEL", "MAC", "STATUS", "FLAGS", "RECEIVED", "EXPIRES"]
    if args.all:
        headers += ["DEVICE", "DECIDED BY", "REASON"]
    print(f"times in {zone.key}")
    print(table(headers, rows))
    if any(r.get("duplicate") for r in items):
        print("DUPLICATE: two requests from one serial with different keys — check which "
              "device is real before approving / 同一序列号两个申请，批准前请核实")
    return 0


def enroll_approve(args: argparse.Namespace) -> int:
    with _central(args) as c:
        res = c.call("POST", f"/api/enrollments/{_p(args.code)}/approve",
                     json={"device_id": args.name, "role": args.role, "site": args.site})
    r = res["enrollment"]
    if args.json:
        _json(r)
        return 0
    print(f"approved {r.get('code', args.code)}: serial {r.get('serial', '?')} is now "
          f"{r.get('device_id', args.name)} ({args.role}, {args.site}); the device takes its "
          "certificate at its next try (within 30 s) / 已批准")
    return 0


def enroll_reject(args: argparse.Namespace) -> int:
    with _central(args) as c:
        res = c.call("POST", f"/api/enrollments/{_p(args.code)}/reject",
                     json={"reason": args.reason})
    r = res["enrollment"]
    if args.json:
        _json(r)
        return 0
    print(f"rejected {r.get('code', args.code)} (serial {r.get('serial', '?')}): "
          f"{args.reason} / 已拒绝")
    return 0


# -- devices ------------------------------------------------------------------------------

def device_list(args: argparse.Namespace) -> int:
    with _central(args) as c:
        devices = c.call("GET", "/api/devices")["devices"]
        try:
            fleet = {d["id"]: d for d in c.call("GET", "/api/fleet/devices")["devices"]}
        except NotAvailable:
            fleet = {}
        for d in devices:
            f = fleet.get(d["id"], {})
            d["site"] = f.get("site")
            d["config_state"] = f.get("config_state")
        if args.json:  # machine-readable: central's ISO times as they are
            _json(devices)
            return 0
        # A person reads the site's time, whatever zone this laptop is set to.
        zone_name = c.zone_name()
    zone = _zone(zone_name)
    rows = []
    for d in devices:
        state = ("online" if d["online"] else "offline") if d["enabled"] else "disabled"
        rows.append([d["id"], d["role"], state, d.get("version"), d.get("site"),
                     (d.get("config_state") or "").replace("_", " "),
                     site_time(d.get("last_seen"), zone)])
    print(table(["DEVICE", "ROLE", "STATE", "VERSION", "SITE", "CONFIG",
                 f"LAST SEEN ({zone_name})"], rows))
    return 0


def device_show(args: argparse.Namespace) -> int:
    with _central(args) as c:
        d = c.call("GET", f"/api/fleet/devices/{_p(args.device_id)}")["device"]
        if args.json:
            _json(d)
            return 0
        zone = _zone(c.zone_name())
    state = ("online" if d.get("online") else "offline") if d.get("enabled", True) \
        else "disabled"
    print(f"{d['id']}  {d.get('role')}  site {d.get('site') or '-'}  {state}   "
          f"(times in {zone.key})")
    facts = d.get("facts") or {}
    print(f"  serial       {d.get('serial') or '-'}   model {facts.get('model') or '-'}   "
          f"version {facts.get('version') or '-'}")
    cert = d.get("cert")
    if cert:
        print(f"  certificate  {cert.get('serial')}, expires "
              f"{site_time(cert.get('not_after'), zone)}"
              f"{'  REVOKED' if cert.get('revoked') else ''}")
    else:
        print("  certificate  none")
    des, rep = d.get("desired") or {}, d.get("reported") or {}
    sync = "in sync" if d.get("in_sync") else ("never reported" if not rep else "NOT in sync")
    print(f"  config       {sync}")
    print(table(["", "DESIRED", "REPORTED"], [
        ["    version", des.get("version"), rep.get("version")],
        ["    hash", (des.get("hash") or "")[:16], (rep.get("hash") or "")[:16]],
        ["    status", "", rep.get("status")],
        ["    at", "", site_time(rep.get("at"), zone) if rep else ""],
        *([["    problem", "", " ".join(str(x) for x in (rep.get("code"), rep.get("message"))
                                          if x)]] if rep.get("code") or rep.get("message")
          else []),
    ]))
    print("  settings (desired)")
    _show_settings(des.get("settings"), indent="    ")
    cmds = d.get("commands") or []
    if cmds:
        print("  recent commands")
        print(table(["    TIME", "COMMAND", "STATE", "BY", "RESULT"], [
            ["    " + site_time(x.get("created_at"), zone), x.get("name"), x.get("state"),
             x.get("created_by"), " ".join(s for s in (x.get("code"), x.get("message"),
                                                       _words(x.get("output"))) if s)]
            for x in cmds[:10]]))
    return 0


def device_disable(args: argparse.Namespace) -> int:
    with _central(args) as c:
        try:
            c.call("POST", f"/api/fleet/devices/{_p(args.device_id)}/disable")
        except NotAvailable:  # a central without the fleet service: the broker account
            c.call("POST", f"/api/devices/{_p(args.device_id)}/disable")
    print(f"disabled {args.device_id}; it can no longer connect / 已停用")
    return 0


def device_revoke(args: argparse.Namespace) -> int:
    with _central(args) as c:
        res = c.call("POST", f"/api/fleet/devices/{_p(args.device_id)}/revoke")
    if args.json:
        _json(res)
        return 0
    dev = res.get("revoked") if isinstance(res.get("revoked"), dict) else {}
    serial = (dev.get("cert") or {}).get("serial") if isinstance(dev.get("cert"), dict) \
        else None
    print(f"revoked the certificate of {args.device_id}"
          f"{f' (serial {serial})' if serial else ''}; the broker refuses it from now on and "
          "the device must enroll again / 证书已吊销")
    return 0


# -- config -------------------------------------------------------------------------------

def _devices(items: Any) -> list[str]:
    """Device ids, or ``id vN`` when central says which desired version each one got."""
    out = []
    for d in items or []:
        if isinstance(d, dict):
            out.append(f"{d.get('id')} v{d['version']}" if d.get("version") is not None
                       else str(d.get("id")))
        else:
            out.append(str(d))
    return out


def _print_config(cfg: dict[str, Any]) -> None:
    print(f"{cfg.get('kind')} {cfg.get('target')}"
          + (f"  version {cfg['version']}" if cfg.get("version") is not None else "")
          + (f"  hash {str(cfg['hash'])[:16]}" if cfg.get("hash") else ""))
    if cfg.get("devices") is not None:
        print(f"  devices: {', '.join(_devices(cfg['devices'])) or '(none)'}")
    print("  settings set here:")
    _show_settings(cfg.get("settings"), indent="    ")
    if cfg.get("effective") is not None:
        print("  in effect (site, then role, then device):")
        _show_settings(cfg["effective"], indent="    ")


def config_get(args: argparse.Namespace) -> int:
    with _central(args) as c:
        cfg = c.call("GET", f"/api/config/{args.kind}/{_p(args.target)}")["config"]
    if args.json:
        _json(cfg)
    else:
        _print_config(cfg)
    return 0


def config_set(args: argparse.Namespace) -> int:
    settings = parse_assignments(args.assignments)
    with _central(args) as c:
        cfg = c.call("PUT", f"/api/config/{args.kind}/{_p(args.target)}",
                     json={"settings": settings, "replace": args.replace})["config"]
    if args.json:
        _json(cfg)
    else:
        _print_config(cfg)
    return 0


def config_push(args: argparse.Namespace) -> int:
    with _central(args) as c:
        res = c.call("POST", f"/api/config/{args.kind}/{_p(args.target)}/push")["pushed"]
    if args.json:
        _json(res)
        return 0
    devs = _devices(res.get("devices")) if isinstance(res, dict) else []
    print(f"pushed the signed config of {args.kind} {args.target} to {len(devs)} device(s)"
          + (f": {', '.join(devs)}" if devs else "") + " / 已下发")
    return 0


# -- commands -----------------------------------------------------------------------------

def _state_line(cmd: dict[str, Any], zone: ZoneInfo) -> str:
    extra = " ".join(s for s in (cmd.get("code"), cmd.get("message"),
                                 _words(cmd.get("output"))) if s)
    return (f"{site_time(cmd.get('updated_at') or cmd.get('created_at'), zone)}  "
            f"{cmd['state']}{'  ' + extra if extra else ''}")


def _run_command(args: argparse.Namespace, name: str, cmd_args: dict[str, Any]) -> int:
    body: dict[str, Any] = {"name": name, "args": cmd_args}
    if getattr(args, "exp", None) is not None:
        body["exp_s"] = args.exp
    with _central(args) as c:
        cmd = c.call("POST", f"/api/fleet/devices/{_p(args.device_id)}/commands",
                     json=body)["command"]
        zone = _zone(c.zone_name()) if not args.json else ZoneInfo("UTC")
        if not args.json:
            print(f"{name} → {args.device_id}: command {cmd['command_id']}")
            print(_state_line(cmd, zone))
        if args.wait is None:
            if args.json:
                _json(cmd)
            return 0
        deadline = time.monotonic() + args.wait
        last = cmd["state"]
        while cmd["state"] not in FINAL_COMMAND_STATES:
            left = deadline - time.monotonic()
            if left <= 0:
                if args.json:
                    _json(cmd)
                print(f"ykt fw: no final state after {args.wait:g} s (still {cmd['state']}); "
                      f"central keeps it until it expires — ykt fw device show "
                      f"{args.device_id} / 等待超时", file=sys.stderr)
                return 2
            wait = min(left, POLL_S)
            cmd = c.call("GET", f"/api/commands/{cmd['command_id']}?wait={wait:.1f}",
                         timeout=wait + 15)["command"]
            if cmd["state"] != last and not args.json:
                print(_state_line(cmd, zone))
            last = cmd["state"]
    if args.json:
        _json(cmd)
    return 0 if cmd["state"] == "succeeded" else 1


def cmd(args: argparse.Namespace) -> int:
    return _run_command(args, args.name, _cmd_args(args.arg or []))


def cert_rotate(args: argparse.Namespace) -> int:
    return _run_command(args, "cert.rotate", {})


def _ca_show(view: dict[str, Any], zone: Any) -> None:
    rows = [["root", view["root"]["subject"], view["root"]["serial"],
             site_time(view["root"]["not_after"], zone)],
            ["issuing", view["issuing"]["subject"], view["issuing"]["serial"],
             site_time(view["issuing"]["not_after"], zone)]]
    rows += [["retired", c["subject"], c["serial"], site_time(c["not_after"], zone)]
             for c in view.get("retired", [])]
    if view.get("server"):
        rows.append(["broker server", "", view["server"]["serial"],
                     site_time(view["server"]["not_after"], zone)])
    print(table(["CA", "SUBJECT", "SERIAL", f"EXPIRES ({zone.key})"], rows))


def ca_show(args: argparse.Namespace) -> int:
    with _central(args) as c:
        view = c.call("GET", "/api/fleet/ca")["ca"]
        if args.json:
            _json(view)
            return 0
        _ca_show(view, _zone(c.zone_name()))
    return 0


def ca_rotate(args: argparse.Namespace) -> int:
    with _central(args) as c:
        view = c.call("POST", "/api/fleet/ca/rotate")["ca"]
        if args.json:
            _json(view)
            return 0
        print("new issuing CA in use; the old one stays trusted and keeps signing its "
              "revocation list; devices move to the new one as their certificates are "
              "renewed / 已更换签发证书")
        _ca_show(view, _zone(c.zone_name()))
    return 0


# -- staff accounts -----------------------------------------------------------------------

def user_add(args: argparse.Namespace) -> int:
    pw = _read_password(args.password_file, f"password for {args.username} / 密码: ",
                        confirm=True)
    with _central(args) as c:
        u = c.call("POST", "/api/users", json={"username": args.username, "name": args.name,
                                               "role": args.role, "password": pw})["user"]
    if args.json:
        _json(u)
    else:
        print(f"added {u['username']} ({u['name']}), {u['role']} / 已添加")
    return 0


def user_list(args: argparse.Namespace) -> int:
    with _central(args) as c:
        users = c.call("GET", "/api/users")["users"]
        if args.json:
            _json(users)
            return 0
        zone = _zone(c.zone_name())
    print(table(["USER", "NAME", "ROLE", "STATE", f"CREATED ({zone.key})", "BY"], [
        [u["username"], u["name"], u["role"], "disabled" if u["disabled"] else "active",
         site_time(u.get("created_at"), zone), u.get("created_by")] for u in users]))
    return 0


def user_disable(args: argparse.Namespace) -> int:
    with _central(args) as c:
        c.call("POST", f"/api/users/{_p(args.username)}/disable")
    print(f"disabled {args.username}; their sessions have ended / 已停用")
    return 0


def user_password(args: argparse.Namespace) -> int:
    pw = _read_password(args.password_file, f"new password for {args.username} / 新密码: ",
                        confirm=True)
    with _central(args) as c:
        c.call("POST", f"/api/users/{_p(args.username)}/password", json={"password": pw})
    print(f"new password set for {args.username}; their sessions have ended / 密码已更新")
    return 0


# -- claim bundle -------------------------------------------------------------------------

def claim_bundle(args: argparse.Namespace) -> int:
    with _central(args) as c:
        b = c.call("GET", "/api/fleet/claim-bundle")
        b = b.get("bundle", b)  # the bundle itself (a wrapped one from an early central)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_file(out / "ca.pem", b["ca_pem"], 0o644)
        write_file(out / "central-signing.pub", b["signing_pub_pem"], 0o644)
        write_file(out / "claim.password", str(b["claim_password"]).strip() + "\n", 0o600)
    except OSError as exc:
        raise FwError(f"cannot write the claim bundle to {out}: {exc.strerror}",
                      f"无法写入 {out}") from None
    if args.json:
        _json({"dir": str(out), "files": ["ca.pem", "central-signing.pub", "claim.password"],
               "enroll_host": b.get("enroll_host"), "enroll_port": b.get("enroll_port")})
        return 0
    print(f"wrote {out}/ca.pem, {out}/central-signing.pub and {out}/claim.password (0600, "
          "secret: keep it off shared drives)")
    print(f"devices enroll at {b.get('enroll_host')}:{b.get('enroll_port')} "
          "([enrollment] of edge.toml) / 已写入认领包")
    return 0


# -- parser -------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, *, json_out: bool = True) -> None:
    p.add_argument("--central", default=None,
                   help=f"central's URL (default: the signed-in one, else {DEFAULT_CENTRAL})")
    p.add_argument("--token-file", type=Path, default=None,
                   help="central's admin token (or $YKT_CENTRAL_ADMIN_TOKEN); without it, "
                   "the session of ykt fw login")
    if json_out:
        p.add_argument("--json", action="store_true",
                       help="machine-readable output (central's answer, ISO 8601 times)")


def _wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", nargs="?", type=float, const=DEFAULT_WAIT_S, default=None,
                   metavar="SECONDS", help="follow the command to a final state (default "
                   f"{DEFAULT_WAIT_S:g} s); exit 0 succeeded, 1 failed/rejected/expired, "
                   "2 timed out")


def add_fleet_commands(sub: argparse._SubParsersAction, dsub: argparse._SubParsersAction,  # type: ignore[type-arg]
                       wrap: Any) -> None:
    """Add the fleet commands; ``dsub`` is ``device``'s sub-parsers (add/list exist)."""
    p = sub.add_parser("login", help="sign in to central as a staff member (keeps a session)")
    p.add_argument("--central", default=None, help=f"central's URL (default {DEFAULT_CENTRAL})")
    p.add_argument("--user", required=True, help="your staff user name")
    p.add_argument("--password-file", type=Path, default=None,
                   help="read the password from this file instead of asking")
    p.set_defaults(func=wrap(login))
    p = sub.add_parser("logout", help="end the session and delete the session file")
    p.set_defaults(func=wrap(logout))

    e = sub.add_parser("enroll", help="enrollment requests: list, approve, reject")
    esub = e.add_subparsers(dest="enroll_cmd", required=True, metavar="ACTION")
    p = esub.add_parser("list", help="pending requests (pairing code, serial, facts)")
    p.add_argument("--all", action="store_true", help="decided and expired ones too")
    _common(p)
    p.set_defaults(func=wrap(enroll_list))
    p = esub.add_parser("approve", help="approve a request by its pairing code (technician)")
    p.add_argument("code", help="the pairing code shown on the device, e.g. 7KQ2-M9XD")
    p.add_argument("--name", required=True, help="the device id to give it, e.g. kiosk-003")
    p.add_argument("--role", choices=["kiosk", "cashier"], required=True)
    p.add_argument("--site", required=True, help="its site (building), e.g. 门诊楼")
    _common(p)
    p.set_defaults(func=wrap(enroll_approve))
    p = esub.add_parser("reject", help="reject a request (technician)")
    p.add_argument("code")
    p.add_argument("--reason", required=True, help="shown on the device")
    _common(p)
    p.set_defaults(func=wrap(enroll_reject))

    p = dsub.add_parser("show", help="one device: certificate, desired vs reported config, "
                        "recent commands")
    p.add_argument("device_id")
    _common(p)
    p.set_defaults(func=wrap(device_show))
    p = dsub.add_parser("disable", help="disable a device: it can no longer connect "
                        "(technician)")
    p.add_argument("device_id")
    _common(p, json_out=False)
    p.set_defaults(func=wrap(device_disable))
    p = dsub.add_parser("revoke", help="revoke a device's certificate (administrator)")
    p.add_argument("device_id")
    _common(p)
    p.set_defaults(func=wrap(device_revoke))

    cfg = sub.add_parser("config", help="desired config of a device, a site or a role")
    csub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="ACTION")
    for name, fn, help_ in (("get", config_get, "show the settings set on a target"),
                            ("set", config_set, "change settings (technician): key=value ..."),
                            ("push", config_push, "re-sign and send the config (technician)")):
        p = csub.add_parser(name, help=help_)
        p.add_argument("kind", choices=["device", "site", "role"])
        p.add_argument("target", help="device id, site name or role (kiosk|cashier)")
        if name == "set":
            p.add_argument("assignments", nargs="+", metavar="KEY=VALUE",
                           help="dotted keys, JSON values: printer.status_poll_s=5 "
                           "ui.language=en scanner.enabled=false")
            p.add_argument("--replace", action="store_true",
                           help="replace the target's settings instead of merging")
        _common(p)
        p.set_defaults(func=wrap(fn))

    p = sub.add_parser("cmd", help="send a signed command to a device (technician)")
    p.add_argument("device_id", metavar="DEVICE")
    p.add_argument("name", metavar="NAME", help="reboot, service.restart, printer.test, "
                   "reader.selftest, logs.collect, cert.rotate, log.level, hotlist.refresh")
    p.add_argument("--arg", action="append", metavar="K=V",
                   help="an argument, e.g. --arg service=edge, --arg level=debug")
    p.add_argument("--exp", type=int, default=None, metavar="SECONDS",
                   help="expire unless done within this long (default 600)")
    _wait_arg(p)
    _common(p)
    p.set_defaults(func=wrap(cmd))

    cert = sub.add_parser("cert", help="device certificates")
    certsub = cert.add_subparsers(dest="cert_cmd", required=True, metavar="ACTION")
    p = certsub.add_parser("rotate", help="have a device make a new key and certificate")
    p.add_argument("device_id", metavar="DEVICE")
    p.add_argument("--exp", type=int, default=None, metavar="SECONDS", help=argparse.SUPPRESS)
    _wait_arg(p)
    _common(p)
    p.set_defaults(func=wrap(cert_rotate))

    ca = sub.add_parser("ca", help="central's fleet CA")
    casub = ca.add_subparsers(dest="ca_cmd", required=True, metavar="ACTION")
    p = casub.add_parser("show", help="root, issuing and retired CAs and their expiry")
    _common(p)
    p.set_defaults(func=wrap(ca_show))
    p = casub.add_parser("rotate", help="a new issuing CA (administrator; devices keep "
                         "working, docs/fleet-trust.md)")
    _common(p)
    p.set_defaults(func=wrap(ca_rotate))

    u = sub.add_parser("user", help="staff accounts at central (administrator)")
    usub = u.add_subparsers(dest="user_cmd", required=True, metavar="ACTION")
    p = usub.add_parser("add", help="add a staff account")
    p.add_argument("username", help="e.g. wang.li (lower case, 2-32 characters)")
    p.add_argument("--name", required=True, help="the person's name, e.g. 王丽")
    p.add_argument("--role", choices=["viewer", "technician", "administrator"], required=True)
    p.add_argument("--password-file", type=Path, default=None,
                   help="initial password from this file (at least 10 characters)")
    _common(p)
    p.set_defaults(func=wrap(user_add))
    p = usub.add_parser("list", help="list staff accounts")
    _common(p)
    p.set_defaults(func=wrap(user_list))
    p = usub.add_parser("disable", help="disable an account and end its sessions")
    p.add_argument("username")
    _common(p, json_out=False)
    p.set_defaults(func=wrap(user_disable))
    p = usub.add_parser("password", help="set a new password (ends the user's sessions)")
    p.add_argument("username")
    p.add_argument("--password-file", type=Path, default=None)
    _common(p, json_out=False)
    p.set_defaults(func=wrap(user_password))

    p = sub.add_parser("claim-bundle", help="write what a device image needs to enroll "
                       "(administrator)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for ca.pem, central-signing.pub, claim.password (0600)")
    _common(p)
    p.set_defaults(func=wrap(claim_bundle))

