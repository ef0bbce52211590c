"""``ykt update guard|status|rollback|install BUNDLE`` (docs/updates.md, "On the device").

``guard`` is what systemd runs before every start of ``ykt-edge`` (ExecStartPre, from the
committed slot); the others are a technician's tools on the device. Errors print
"English / 中文" and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_update_commands"]

_ROOT = "/opt/yikatong"
_KEYS = "/etc/yikatong/release.pub"


def add_update_commands(sub: Any, help_text: str) -> None:
    """Add ``update`` with its subcommands to the ``ykt`` parser."""
    p = sub.add_parser("update", help=help_text,
                       description="Software updates on this device: two slots (a, b), "
                       "`current` runs, `committed` is the last known good.")
    usub = p.add_subparsers(dest="update_cmd", required=True, metavar="ACTION")

    def root_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument("--root", default=_ROOT, help=f"A/B root (default {_ROOT})")

    g = usub.add_parser("guard", help="before a start: count trial starts, roll back, repair "
                        "(systemd ExecStartPre)")
    root_arg(g)
    g.set_defaults(func=_guard)
    s = usub.add_parser("status", help="what each slot holds, where the links point")
    root_arg(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=_status)
    r = usub.add_parser("rollback", help="end a trial, or go back to the other slot's "
                        "version (restart ykt-edge afterwards)")
    root_arg(r)
    r.set_defaults(func=_rollback)
    i = usub.add_parser("install", help="verify a bundle folder and install it into the "
                        "inactive slot (a trial; the first install is committed at once)")
    i.add_argument("bundle", type=Path, help="bundle folder (manifest.json, manifest.sig, "
                   "wheels/)")
    root_arg(i)
    i.add_argument("--release-keys", default=_KEYS, type=Path,
                   help=f"release public key(s), PEM (default {_KEYS})")
    i.add_argument("--allow-downgrade", action="store_true",
                   help="install a version older than the committed one")
    i.add_argument("--deadline", type=float, default=600.0,
                   help="seconds the trial may take before the guard rolls it back")
    i.add_argument("--max-attempts", type=int, default=3, help="starts before a rollback")
    i.set_defaults(func=_install)


def _fail(exc: Any) -> int:
    print(f"ykt update: {exc.message} / {exc.message_zh}", file=sys.stderr)
    return 1


def _guard(args: argparse.Namespace) -> int:
    from edge.update.slots import guard

    rep = guard(args.root)
    for action in rep.actions:
        print(f"ykt update guard: {action}")
    print(f"ykt update guard: current={rep.current} committed={rep.committed}")
    return 0 if rep.ok else 1


def _status(args: argparse.Namespace) -> int:
    from edge.update.slots import Layout

    st = Layout(args.root).status()
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    print(f"root       {st['root']}")
    print(f"current    {st['current']}")
    print(f"committed  {st['committed']}")
    for name, marker in st["slots"].items():
        text = "empty / incomplete" if marker is None else (
            f"{marker['version']}  (manifest {marker['manifest_sha256'][:16]}…, "
            f"installed {marker['installed_at']})")
        print(f"slot {name}     {text}")
    trial = st["trial"]
    if trial is not None:
        print(f"update     {trial['version']} in slot {trial['slot']}: {trial['state']}"
              f"{' (' + trial['code'] + ')' if trial.get('code') else ''}, "
              f"start {trial['attempts']} of {trial['max_attempts']}, until {trial['deadline']}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from edge.update.slots import UpdateError, rollback

    try:
        slot = rollback(args.root)
    except UpdateError as exc:
        return _fail(exc)
    print(f"current and committed now slot {slot}; restart ykt-edge to run it")
    return 0


def _install(args: argparse.Namespace) -> int:
    from edge.update.installer import check_allowed, install_slot, verify_local_bundle
    from edge.update.slots import Layout, UpdateError
    from yikatong.bundle import BundleError, load_release_keys

    layout = Layout(args.root)
    try:
        keys = load_release_keys(args.release_keys)
        fetched = verify_local_bundle(args.bundle.resolve(), keys)
        committed = layout.committed_slot()
        marker = layout.marker(committed) if committed is not None else None
        running = marker.version if marker is not None else "0.0.0"
        if marker is not None:
            check_allowed(fetched.manifest, running_version=running,
                          allow_downgrade=args.allow_downgrade)
        rec = install_slot(layout, fetched, from_version=running, deadline_s=args.deadline,
                           max_attempts=args.max_attempts)
    except (UpdateError, BundleError) as exc:
        return _fail(exc)
    if rec is None:
        print(f"installed {fetched.manifest.version} in slot {layout.committed_slot()} "
              "and committed it (first install)")
    else:
        print(f"installed {rec.version} in slot {rec.slot} (on trial until {rec.deadline}); "
              "restart ykt-edge: the new version commits itself once healthy")
    return 0
