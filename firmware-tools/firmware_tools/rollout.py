"""``ykt fw rollout``: staged software updates through central (docs/updates.md "Rollouts").

``create`` starts installing a stored bundle version (``ykt fw bundle upload``) on the
devices of a target — a site, a role, the versions they run, or a list of devices — a few
at a time, pausing by itself at a failure threshold; ``list`` and ``show`` follow it (the
counts per state and every device's state with its code); ``pause``, ``resume`` and
``cancel`` steer it. Central's REST API (central/dashboard/rollouts_api.py) decides who may:
viewers read, technicians pause, administrators create, resume and cancel.

A rollout is named by its id or any unique start of it (at least 4 characters), as ``list``
shows it. Tables show times in the site's zone; ``--json`` prints central's answer as it is.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from firmware_tools.central import Central, FwError, connect
from firmware_tools.fleet import site_time, table

__all__ = ["add_rollout_commands"]

#: Per-device states in the order a device goes through them (central/fleet/rollouts.py).
DEVICE_STATES = ("queued", "sent", "downloading", "downloaded", "verified", "installing",
                 "awaiting_health", "committed", "rolled_back", "failed", "skipped")
ROLLOUT_STATES = ("scheduled", "running", "paused", "completed", "cancelled")
_ID_START = re.compile(r"^[0-9a-f]{4,32}$")


def _central(args: argparse.Namespace) -> Central:
    return connect(getattr(args, "central", None), getattr(args, "token_file", None))


def _zone(c: Central) -> ZoneInfo:
    name = c.zone_name()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FwError(f"central reports an unknown time zone {name!r}",
                      f"中心服务的时区 {name} 无法识别") from None


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _resolve(c: Central, ref: str) -> str:
    """The full id of the rollout ``ref`` names (its id or a unique start of it)."""
    ref = ref.strip().lower()
    if not _ID_START.match(ref):
        raise FwError(f"{ref!r} is not a rollout id (hexadecimal, at least 4 characters; "
                      "see ykt fw rollout list)",
                      f"{ref} 不是发布任务编号（见 ykt fw rollout list）")
    if len(ref) == 32:
        return ref
    found = [r["rollout_id"] for r in c.call("GET", "/api/rollouts?limit=1000")["rollouts"]
             if r["rollout_id"].startswith(ref)]
    if not found:
        raise FwError(f"no rollout starts with {ref}", f"没有以 {ref} 开头的发布任务")
    if len(found) > 1:
        raise FwError(f"{len(found)} rollouts start with {ref}: give more of the id",
                      f"有 {len(found)} 个发布任务以 {ref} 开头，请输入更长的编号")
    return str(found[0])


def _target(r: dict[str, Any]) -> str:
    t = r.get("target") or {}
    parts = []
    if t.get("site"):
        parts.append(f"site {t['site']}")
    if t.get("role"):
        parts.append(f"role {t['role']}")
    if t.get("from_versions"):
        parts.append("from " + ",".join(t["from_versions"]))
    if t.get("devices"):
        n = len(t["devices"])
        parts.append(", ".join(t["devices"]) if n <= 3 else f"{n} listed devices")
    return "; ".join(parts) or "all devices"


def _threshold(r: dict[str, Any]) -> str:
    parts = []
    if r.get("failure_threshold") is not None:
        parts.append(f"{r['failure_threshold']} failed")
    if r.get("failure_ratio") is not None:
        parts.append(f"{r['failure_ratio']:.0%} of ≥{r.get('min_finished')} finished")
    return " or ".join(parts) or "-"


def _progress(r: dict[str, Any]) -> str:
    counts = r.get("counts") or {}
    return " ".join(f"{s}={counts[s]}" for s in DEVICE_STATES if counts.get(s))


# -- commands ----------------------------------------------------------------------------------

def rollout_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "version": args.version, "site": args.site, "role": args.role,
        "from_versions": args.from_version or [], "devices": args.device or [],
        "max_per_minute": args.rate, "max_in_flight": args.in_flight,
        "failure_threshold": args.max_failures, "failure_ratio": args.max_failure_ratio,
        "min_finished": args.min_finished, "allow_downgrade": args.allow_downgrade,
        "start_at": args.start_at, "notes": args.notes}
    with _central(args) as c:
        r = c.call("POST", "/api/rollouts", json=body)["rollout"]
        if args.json:
            _json(r)
            return 0
        zone = _zone(c)
    counts = r.get("counts") or {}
    print(f"rollout {r['rollout_id']}: {r['version']} to {_target(r)} — {r['state']} / 已创建")
    print(f"  {counts.get('queued', 0)} device(s) queued, {counts.get('skipped', 0)} skipped; "
          f"at most {r['max_per_minute']} started a minute and {r['max_in_flight']} at once; "
          f"pauses at {_threshold(r)}")
    if r.get("start_at") and r["state"] == "scheduled":
        print(f"  starts at {site_time(r['start_at'], zone)} ({zone.key})")
    skipped = [d for d in r.get("device_rows") or [] if d["state"] == "skipped"]
    if skipped:
        print(table(["SKIPPED", "WHY", ""], [[d["dev"], d.get("code"), d.get("message")]
                                             for d in skipped]))
    print(f"follow it: ykt fw rollout show {r['rollout_id'][:8]}")
    return 0


def rollout_list(args: argparse.Namespace) -> int:
    path = "/api/rollouts" + (f"?state={quote(args.state)}" if args.state else "")
    with _central(args) as c:
        items = c.call("GET", path)["rollouts"]
        if args.json:
            _json(items)
            return 0
        zone = _zone(c)
    if not items:
        print("no rollouts / 没有发布任务")
        return 0
    rows = [[r["rollout_id"][:8], r["version"], r["state"], _target(r),
             f"{r.get('done', 0)}/{r.get('devices', 0)}", r.get("failed", 0),
             r.get("created_by"), site_time(r.get("created_at"), zone), _progress(r)]
            for r in items]
    print(f"times in {zone.key}")
    print(table(["ID", "VERSION", "STATE", "TARGET", "DONE", "FAILED", "BY", "CREATED",
                 "DEVICES"], rows))
    return 0


def rollout_show(args: argparse.Namespace) -> int:
    with _central(args) as c:
        rid = _resolve(c, args.rollout)
        r = c.call("GET", f"/api/rollouts/{rid}")["rollout"]
        if args.json:
            _json(r)
            return 0
        zone = _zone(c)
    print(f"rollout {r['rollout_id']}  {r['version']}  {r['state']}   (times in {zone.key})")
    if r.get("reason"):
        print(f"  reason       {r.get('reason_code')}: {r['reason']}")
    print(f"  target       {_target(r)}"
          + ("  (downgrade allowed)" if r.get("allow_downgrade") else ""))
    print(f"  rate         {r['max_per_minute']}/min, {r['max_in_flight']} at once; pauses at "
          f"{_threshold(r)}")
    print(f"  created      {site_time(r.get('created_at'), zone)} by {r.get('created_by')}"
          + (f"; started {site_time(r['started_at'], zone)}" if r.get("started_at") else "")
          + (f"; ended {site_time(r['finished_at'], zone)}" if r.get("finished_at") else ""))
    if r.get("notes"):
        print(f"  notes        {r['notes']}")
    print(f"  progress     {r.get('done', 0)} of {r.get('devices', 0)} done, "
          f"{r.get('in_flight', 0)} in flight, {r.get('failed', 0)} failed: {_progress(r)}")
    rows = []
    for d in r.get("device_rows") or []:
        now = d.get("running_version") or "-"
        size = (f"{d['bytes_done']}/{d['bytes_total']}" if d.get("bytes_total")
                else "")
        rows.append([d["dev"], d["state"], d.get("from_version"), now, size,
                     site_time(d.get("updated_at"), zone),
                     " ".join(x for x in (d.get("code"), d.get("message")) if x)])
    print(table(["DEVICE", "STATE", "FROM", "RUNS", "BYTES", "UPDATED", "CODE / MESSAGE"],
                rows))
    return 0


def _act(action: str, says: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        body = {"reason": args.reason} if getattr(args, "reason", None) else {}
        with _central(args) as c:
            rid = _resolve(c, args.rollout)
            r = c.call("POST", f"/api/rollouts/{rid}/{action}", json=body)["rollout"]
        if args.json:
            _json(r)
            return 0
        print(f"rollout {r['rollout_id'][:8]} ({r['version']}): {r['state']} / {says}")
        if action == "pause":
            print("  devices already started go on; no new device starts until resume")
        return 0

    return run


# -- parser ------------------------------------------------------------------------------------

def _ratio(text: str) -> float:
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("a fraction in (0, 1] or a percentage, e.g. 0.2 or 20%")
    return value


def add_rollout_commands(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                         wrap: Callable[[Any], Any]) -> None:
    """Add ``ykt fw rollout create|list|show|pause|resume|cancel``."""
    ro = sub.add_parser("rollout", help="staged software updates: create, list, show, pause, "
                        "resume, cancel")
    rsub = ro.add_subparsers(dest="rollout_cmd", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--central", default=None, help="central's URL (default: the "
                       "signed-in one, else http://127.0.0.1:8800)")
        p.add_argument("--token-file", type=Path, default=None,
                       help="central's admin token (or $YKT_CENTRAL_ADMIN_TOKEN); without "
                       "it, the session of ykt fw login")
        p.add_argument("--json", action="store_true",
                       help="machine-readable output (central's answer, ISO 8601 times)")

    p = rsub.add_parser("create", help="install a stored bundle version on a target, a few "
                        "devices at a time (administrator)")
    p.add_argument("version", help="a bundle stored at central (ykt fw bundle list)")
    p.add_argument("--site", default=None, help="only devices of this site")
    p.add_argument("--role", choices=["kiosk", "cashier"], default=None)
    p.add_argument("--from-version", action="append", metavar="VERSION",
                   help="only devices running this version (repeatable)")
    p.add_argument("--device", action="append", metavar="DEVICE",
                   help="only these devices, started in this order (repeatable)")
    p.add_argument("--rate", type=int, default=5, metavar="N",
                   help="start at most N devices a minute (default 5)")
    p.add_argument("--in-flight", type=int, default=10, metavar="M",
                   help="at most M devices updating at once (default 10)")
    p.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help="pause once N devices failed or rolled back (default 1 when no "
                   "--max-failure-ratio is given)")
    p.add_argument("--max-failure-ratio", type=_ratio, default=None, metavar="F",
                   help="pause once this fraction of the finished devices failed, e.g. 0.2 "
                   "or 20%%")
    p.add_argument("--min-finished", type=int, default=5, metavar="K",
                   help="the ratio counts once K devices have finished (default 5)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="devices running a newer version may go back to this one")
    p.add_argument("--start-at", default=None, metavar="TIME",
                   help="start later, e.g. 2026-03-10T22:00:00+08:00")
    p.add_argument("--notes", default=None, help="why (kept with the rollout)")
    common(p)
    p.set_defaults(func=wrap(rollout_create))

    p = rsub.add_parser("list", help="rollouts, newest first, with their progress")
    p.add_argument("--state", choices=ROLLOUT_STATES, default=None)
    common(p)
    p.set_defaults(func=wrap(rollout_list))

    p = rsub.add_parser("show", help="one rollout: counts per state and every device")
    p.add_argument("rollout", metavar="ID", help="its id or a unique start of it")
    common(p)
    p.set_defaults(func=wrap(rollout_show))

    for action, help_, says in (
            ("pause", "start no more devices (technician)", "已暂停"),
            ("resume", "go on; failures are counted afresh (administrator)", "已继续"),
            ("cancel", "end it: queued devices are skipped (administrator)", "已取消")):
        p = rsub.add_parser(action, help=help_)
        p.add_argument("rollout", metavar="ID", help="its id or a unique start of it")
        if action != "resume":
            p.add_argument("--reason", default=None, help="kept with the rollout and audited")
        common(p)
        p.set_defaults(func=wrap(_act(action, says)))
