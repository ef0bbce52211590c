"""The device's A/B slots: layout, atomic switches, the trial record and the start guard.

docs/updates.md ("On the device") describes the layout::

    ROOT/slots/a, ROOT/slots/b   two virtual environments; usable only with .slot.json
    ROOT/current  -> slots/X     what systemd starts (ExecStart=ROOT/current/bin/ykt edge …)
    ROOT/committed -> slots/Y    the last known good; the guard runs from it (ExecStartPre)
    ROOT/update/state.json       the trial record (atomic write + fsync)
    ROOT/update/downloads/V/     a bundle being fetched

Every change is made so that a power cut at any instant leaves a state :func:`guard` turns
into one that starts: symlinks are replaced atomically (a new link under a temporary name,
``os.replace``, the folder fsynced), files are written to a temporary name, fsynced and
renamed, and a slot counts only once its marker — written last — exists.

Fault injection (tests, docs/updates.md "Power cuts"): ``YKT_UPDATE_CRASH_AT=<step>`` makes
the process ``os._exit(CRASH_EXIT)`` right at that step boundary (:func:`crash_point`).
It is off unless the variable is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

from yikatong.common.errors import LocalizedError

__all__ = [
    "CRASH_ENV",
    "CRASH_EXIT",
    "CRASH_STEPS",
    "SLOTS",
    "GuardReport",
    "Layout",
    "SlotMarker",
    "TrialRecord",
    "UpdateError",
    "abort_trial",
    "commit_trial",
    "crash_point",
    "fsync_dir",
    "guard",
    "rollback",
    "running_slot",
    "trial_deadline",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

SLOTS: Final = ("a", "b")
MARKER: Final = ".slot.json"
CRASH_ENV: Final = "YKT_UPDATE_CRASH_AT"
CRASH_EXIT: Final = 86
#: The step boundaries where ``YKT_UPDATE_CRASH_AT`` can cut an install, in order.
CRASH_STEPS: Final = ("downloaded", "verified", "wiping", "wiped", "venv", "packages",
                      "checked", "marker", "trial", "switch-tmp", "switched", "restart")


class UpdateError(LocalizedError):
    """An update step refused or failed; ``code`` goes into ``update.status`` / cmd.result."""

    code = "update_failed"

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code


def crash_point(step: str) -> None:
    """Die at once (no cleanup, like a power cut) if ``YKT_UPDATE_CRASH_AT`` names ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        sys.stderr.write(f"{CRASH_ENV}={step}: exiting\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT)


# --------------------------------------------------------------------------- durable files


def fsync_dir(path: Path) -> None:
    """fsync a folder (so a rename or a new link in it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file, fsync it, rename it over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): ignored", path, exc)
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SlotMarker:
    """``slots/X/.slot.json``: the slot is complete (written last, fsynced)."""

    version: str
    manifest_sha256: str
    installed_at: str


@dataclass
class TrialRecord:
    """``update/state.json``: a slot on trial, or the outcome the old daemon must report.

    ``state``: ``trial`` (current → ``slot``, not committed yet), ``rolled_back`` (back on
    ``from_slot``; ``code``/``reason`` say why) or ``failed`` (the install was cut short
    before the switch; nothing changed).
    """

    slot: str
    version: str
    from_slot: str
    from_version: str
    rollout_id: str | None
    command_id: str | None
    deadline: str
    attempts: int = 0
    max_attempts: int = 3
    state: Literal["trial", "rolled_back", "failed"] = "trial"
    code: str | None = None
    reason: str | None = None
    reason_zh: str | None = None
    #: The manifest's SHA-256 (what was verified) and when the trial started.
    manifest_sha256: str | None = None
    started_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def deadline_dt(self) -> datetime:
        """The deadline as an aware datetime (unparseable: long past)."""
        try:
            dt = datetime.fromisoformat(self.deadline)
        except (TypeError, ValueError):
            return datetime(1970, 1, 1, tzinfo=UTC)
        return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord | None:
        """Parse a stored record; None if it is not one."""
        names = set(cls.__dataclass_fields__)
        try:
            rec = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None
        if rec.slot not in SLOTS or rec.from_slot not in SLOTS or rec.state not in (
                "trial", "rolled_back", "failed"):
            return None
        return rec


# --------------------------------------------------------------------------- layout


class Layout:
    """The paths under one update root and the operations on them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.slots_dir = self.root / "slots"
        self.current = self.root / "current"
        self.committed = self.root / "committed"
        self.update_dir = self.root / "update"
        self.state_path = self.update_dir / "state.json"
        self.downloads = self.update_dir / "downloads"

    def slot(self, name: str) -> Path:
        """The folder of slot ``name``."""
        return self.slots_dir / name

    def other(self, name: str) -> str:
        """The other slot."""
        return "b" if name == "a" else "a"

    # -- markers -----------------------------------------------------------------------------
    def marker(self, name: str) -> SlotMarker | None:
        """The slot's marker, or None (the slot is not usable)."""
        data = _read_json(self.slot(name) / MARKER)
        if data is None:
            return None
        try:
            return SlotMarker(version=str(data["version"]),
                              manifest_sha256=str(data["manifest_sha256"]),
                              installed_at=str(data["installed_at"]))
        except KeyError:
            return None

    def usable(self, name: str | None) -> bool:
        """The slot has its marker and an interpreter and ``ykt`` to start."""
        if name not in SLOTS:
            return False
        d = self.slot(name)
        return (self.marker(name) is not None and (d / "bin" / "python").exists()
                and (d / "bin" / "ykt").exists())

    def write_marker(self, name: str, version: str, manifest_sha256: str,
                     now: datetime | None = None) -> SlotMarker:
        """Mark the slot complete (the last install step)."""
        marker = SlotMarker(version=version, manifest_sha256=manifest_sha256,
                            installed_at=(now or datetime.now(UTC)).isoformat())
        write_json_atomic(self.slot(name) / MARKER, asdict(marker))
        return marker

    def drop_marker(self, name: str) -> None:
        """Make the slot unusable (the first step before it is wiped)."""
        path = self.slot(name) / MARKER
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)

    def wipe(self, name: str) -> None:
        """Empty the slot folder (marker first, so a cut leaves it unusable, never half)."""
        self.drop_marker(name)
        crash_point("wiping")
        d = self.slot(name)
        if d.is_symlink() or d.is_file():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.slots_dir)

    # -- links -------------------------------------------------------------------------------
    def link_slot(self, link: Path) -> str | None:
        """The slot a link (``current``/``committed``) points at, or None."""
        try:
            target = Path(os.readlink(link))
        except OSError:
            return None
        if target.parent.as_posix() in ("slots", str(self.slots_dir)) and target.name in SLOTS:
            return target.name
        return None

    def current_slot(self) -> str | None:
        """Where ``current`` points."""
        return self.link_slot(self.current)

    def committed_slot(self) -> str | None:
        """Where ``committed`` points."""
        return self.link_slot(self.committed)

    def switch(self, link: Path, name: str) -> None:
        """Point ``link`` at slot ``name`` atomically (power-cut safe)."""
        if name not in SLOTS:
            raise ValueError(f"no slot {name!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"slots/{name}", tmp)
        fsync_dir(self.root)
        if link.name == "current":
            crash_point("switch-tmp")
        os.replace(tmp, link)
        fsync_dir(self.root)

    def clean_temp_links(self) -> None:
        """Remove links a cut switch left under their temporary names."""
        for link in (self.current, self.committed):
            with contextlib.suppress(FileNotFoundError):
                link.with_name(f".{link.name}.tmp").unlink()

    # -- trial record ------------------------------------------------------------------------
    def trial(self) -> TrialRecord | None:
        """The trial record, or None."""
        data = _read_json(self.state_path)
        return None if data is None else TrialRecord.from_dict(data)

    def write_trial(self, rec: TrialRecord) -> None:
        """Store the record (atomic, fsynced)."""
        write_json_atomic(self.state_path, asdict(rec))

    def clear_trial(self) -> None:
        """Remove the record."""
        if self.state_path.exists():
            self.state_path.unlink()
            fsync_dir(self.state_path.parent)

    def status(self) -> dict[str, Any]:
        """What is installed where (``ykt update status``)."""
        slots: dict[str, Any] = {}
        for name in SLOTS:
            m = self.marker(name)
            slots[name] = None if m is None else asdict(m)
        rec = self.trial()
        return {"root": str(self.root), "current": self.current_slot(),
                "committed": self.committed_slot(), "slots": slots,
                "trial": None if rec is None else asdict(rec)}


def running_slot(layout: Layout, prefix: str | None = None) -> str | None:
    """The slot this interpreter runs from (``sys.prefix`` inside ``slots/X``), or None."""
    here = Path(prefix or sys.prefix).resolve()
    for name in SLOTS:
        try:
            if here == layout.slot(name).resolve():
                return name
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------- guard


@dataclass
class GuardReport:
    """What :func:`guard` found and did."""

    current: str | None
    committed: str | None
    actions: list[str] = field(default_factory=list)
    ok: bool = True


def _now() -> datetime:
    return datetime.now(UTC)


def guard(root: str | os.PathLike[str], *, now: datetime | None = None) -> GuardReport:
    """Run before every start (ExecStartPre, from the committed slot): leave ``current`` at a
    slot that starts, count the start attempts of a slot on trial, roll it back when they
    run out or its deadline passed, and repair half states a power cut left.
    """
    lay = Layout(root)
    now = now or _now()
    rep = GuardReport(lay.current_slot(), lay.committed_slot())
    lay.clean_temp_links()

    # 1. ``committed`` must name a usable slot; else adopt one (never a slot on trial).
    rec = lay.trial()
    if not lay.usable(rep.committed):
        trial_slot = rec.slot if rec is not None and rec.state == "trial" else None
        candidates = [s for s in (rep.current, *SLOTS)
                      if s is not None and s != trial_slot and lay.usable(s)]
        if not candidates:
            candidates = [s for s in SLOTS if lay.usable(s)]
        if not candidates:
            rep.ok = False
            rep.actions.append("no usable slot: nothing to start")
            return rep
        lay.switch(lay.committed, candidates[0])
        rep.actions.append(f"committed -> {candidates[0]} (it named no usable slot)")
        rep.committed = candidates[0]
    committed = rep.committed
    assert committed is not None

    # 2. A slot on trial: count this start, or roll it back.
    if rec is not None and rec.state == "trial":
        why: tuple[str, str, str] | None = None
        if rec.slot == committed:
            # The commit switched ``committed`` but was cut before it was reported and the
            # record cleared: the daemon (on that slot) reports it at start.
            rep.actions.append(f"trial of {rec.slot} already committed")
            rec = None
        elif not lay.usable(rec.slot):
            why = ("incomplete_install", f"slot {rec.slot} is not complete",
                   f"槽位 {rec.slot} 安装不完整")
        elif rep.current != rec.slot:
            # The install was cut between writing the record and switching ``current``.
            rec.state, rec.code = "failed", "interrupted"
            rec.reason = "the install was interrupted before the switch"
            rec.reason_zh = "安装在切换前被中断"
            lay.write_trial(rec)
            rep.actions.append(f"trial of {rec.slot} never started: recorded as failed")
        elif now >= rec.deadline_dt():
            why = ("health_deadline", f"version {rec.version} was not healthy before "
                   f"its deadline {rec.deadline}", f"版本 {rec.version} 未在期限内通过健康检查")
        elif rec.attempts >= rec.max_attempts:
            why = ("start_failed", f"version {rec.version} did not start healthy in "
                   f"{rec.attempts} attempt(s)", f"版本 {rec.version} 启动 {rec.attempts} 次均失败")
        else:
            rec.attempts += 1
            lay.write_trial(rec)
            rep.actions.append(f"trial of {rec.slot} ({rec.version}): start attempt "
                               f"{rec.attempts} of {rec.max_attempts}")
            return rep
        if why is not None and rec is not None:
            abort_trial(lay, rec, *why)
            rep.actions.append(f"rolled back to {committed}: {why[1]}")
            rep.current = committed
            return rep

    # 3. No trial: ``current`` must be the committed slot.
    if rep.current != committed:
        lay.switch(lay.current, committed)
        rep.actions.append(f"current -> {committed} (was {rep.current}, not on trial)")
        rep.current = committed
    return rep


def abort_trial(lay: Layout, rec: TrialRecord, code: str, reason: str, reason_zh: str) -> None:
    """``current`` → ``committed``; the record keeps why (the old daemon reports it)."""
    committed = lay.committed_slot()
    assert committed is not None
    rec.state, rec.code, rec.reason, rec.reason_zh = "rolled_back", code, reason, reason_zh
    lay.write_trial(rec)  # the reason first: a cut after it still rolls back (guard)
    lay.switch(lay.current, committed)
    log.warning("update to %s rolled back (%s): %s", rec.version, code, reason)


def commit_trial(lay: Layout, rec: TrialRecord) -> None:
    """The slot on trial is good: ``committed`` → it (the record is cleared once reported)."""
    lay.switch(lay.committed, rec.slot)
    log.info("version %s committed (slot %s)", rec.version, rec.slot)


def rollback(root: str | os.PathLike[str], *, code: str = "manual",
             reason: str = "rolled back by hand", reason_zh: str = "已手动回滚") -> str:
    """Go back: end a trial (current → committed), or with none, switch both links to the
    other slot (the previous version) if it is usable. Returns the slot now current.
    """
    lay = Layout(root)
    lay.clean_temp_links()
    rec = lay.trial()
    committed = lay.committed_slot()
    if rec is not None and rec.state == "trial" and committed is not None \
            and rec.slot != committed and lay.usable(committed):
        abort_trial(lay, rec, code, reason, reason_zh)
        return committed
    cur = lay.current_slot() or committed
    if cur is None:
        raise UpdateError("no_slot", f"{lay.root} has no current slot",
                          f"{lay.root} 没有当前槽位")
    target = lay.other(cur)
    if not lay.usable(target):
        raise UpdateError("no_previous", f"slot {target} holds no complete version to go "
                          "back to", f"槽位 {target} 中没有可回退的完整版本")
    lay.switch(lay.committed, target)
    lay.switch(lay.current, target)
    return target


def trial_deadline(now: datetime, seconds: float) -> str:
    """The ISO deadline ``seconds`` after ``now``."""
    return (now + timedelta(seconds=seconds)).isoformat()
