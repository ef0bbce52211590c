"""The daemon's side of an update: ``update.install``, the health check, commit or rollback.

docs/updates.md ("On the device") tells the whole story; in short:

* :meth:`UpdateService.prepare` runs as soon as a signed ``update.install`` is accepted —
  even while a patient is served: download (resumable) and verification
  (``downloading`` → ``downloaded`` → ``verified``);
* :meth:`UpdateService.install` runs once the device is idle (the command runner's wait for
  disruptive commands): the files are checked again, installed into the inactive slot, the
  trial record written, ``current`` switched (``installing`` → ``awaiting_health``), and
  systemd asked to restart the daemon. The command stays ``in_progress``;
* at the next start (:meth:`UpdateService.start`) the daemon on the slot on trial runs the
  health check (:mod:`edge.update.health`) within the deadline: healthy → ``committed``
  (and the command ``succeeded``); not → it rolls itself back (``current`` → committed slot,
  the reason in the record) and has systemd restart it. The old daemon then finds the
  record and reports ``rolled_back`` with the reason (and the command ``failed``). A daemon
  that crashes at start is rolled back by the guard (:func:`edge.update.slots.guard`) after
  ``max_attempts`` starts, with the same report.

``update.status`` goes on ``up/result`` through the uplink's durable outbox, correlated
with the command's envelope, like ``cmd.result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.update.health import HealthProbes, wait_healthy
from edge.update.installer import (
    Fetched,
    fetch_bundle,
    install_slot,
    verify_fetched,
)
from edge.update.slots import (
    Layout,
    TrialRecord,
    UpdateError,
    abort_trial,
    commit_trial,
    crash_point,
    running_slot,
)
from yikatong.bundle import BundleError, load_release_keys
from yikatong.protocol.messages import dump_body
from yikatong.protocol.update import TYPE_UPDATE_STATUS, UpdateStatus

__all__ = ["UpdateService"]

log = logging.getLogger(__name__)

#: Seconds between ``downloading`` progress reports.
_PROGRESS_EVERY_S = 5.0


class UpdateService:
    """Downloads, installs and health-checks updates for one daemon (see module docstring).

    ``cfg`` is the ``[update]`` section (:class:`edge.config.UpdateConfig`); ``link`` the
    uplink (``publish_result``); ``executor`` restarts ``unit``; ``busy`` says why the device
    is not idle (a rollback restarts only an idle device); ``stop`` ends the daemon when
    systemd cannot be asked. ``runner`` (set by the daemon) settles the command.
    """

    def __init__(self, cfg: Any, link: Any, *, version: str, executor: Any,
                 unit: str = "ykt-edge.service", busy: Callable[[], str | None] = lambda: None,
                 stop: Callable[[], None] | None = None, model: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 prefix: str | None = None, idle_poll_s: float = 1.0) -> None:
        self.cfg = cfg
        self.link = link
        self.version = version
        self.executor = executor
        self.unit = unit
        self.busy = busy
        self.stop = stop
        self.model = model
        self.clock = clock
        self.idle_poll_s = idle_poll_s
        self.layout = Layout(cfg.root)
        #: The slot this daemon runs from (None: not an A/B install, updates refused).
        self.slot = running_slot(self.layout, prefix)
        self.probes = HealthProbes()
        self.runner: Any = None
        self.reports: list[dict[str, Any]] = []
        self._fetched: dict[str, Fetched] = {}
        self._lock = asyncio.Lock()
        self._pending: list[tuple[dict[str, Any], str]] = []
        self._task: asyncio.Task[None] | None = None

    # -- reporting ------------------------------------------------------------------------------
    async def _status(self, corr: str | None, *, rollout: str | None, command_id: str | None,
                      version: str, state: str, running: str | None = None,
                      **kw: Any) -> None:
        if rollout is None or corr is None:
            return  # a local install (ykt update install): nobody to tell
        try:
            body = dump_body(UpdateStatus.model_validate({
                "rollout_id": rollout, "command_id": command_id, "version": version,
                "state": state, "running_version": running or _release(self.version),
                **{k: (v[:400] if isinstance(v, str) else v) for k, v in kw.items()}}))
        except ValueError as exc:
            log.warning("update.status not made: %s", exc)
            return
        self.reports.append(body)
        log.info("update %s → %s: %s %s", version, state, kw.get("code") or "",
                 kw.get("message") or "")
        try:
            await self.link.publish_result(TYPE_UPDATE_STATUS, body, corr=corr)
        except Exception as exc:  # shutting down: the next start reports what it finds
            log.warning("update.status not queued: %s", getattr(exc, "message", exc))

    async def _failed(self, cmd: Any, corr: str, exc: UpdateError) -> None:
        await self._status(corr, rollout=str(cmd.args["rollout"]), command_id=cmd.command_id,
                           version=str(cmd.args["version"]), state="failed", code=exc.code,
                           message=exc.message, message_zh=exc.message_zh)

    def _keys(self) -> list[Any]:
        try:
            return load_release_keys(self.cfg.release_keys)
        except BundleError as exc:
            raise UpdateError("no_release_key", exc.message, exc.message_zh) from None

    def _check_enabled(self) -> None:
        if not self.cfg.enabled:
            raise UpdateError("updates_disabled", "updates are off in this device's config "
                              "([update] enabled = false)", "本机已关闭软件更新")
        if self.slot is None:
            raise UpdateError("not_ab_layout", f"this daemon does not run from a slot under "
                              f"{self.layout.root}; it cannot update itself",
                              "本机未按 A/B 槽位安装，无法自动更新")

    # -- the command ----------------------------------------------------------------------------
    async def prepare(self, cmd: Any, corr: str) -> dict[str, Any]:
        """Download and verify (before any wait for idle); raises UpdateError (reported)."""
        args = cmd.args
        rollout, version = str(args["rollout"]), str(args["version"])
        try:
            self._check_enabled()
            keys = self._keys()
            async with self._lock:
                done = [0, 0]
                await self._status(corr, rollout=rollout, command_id=cmd.command_id,
                                   version=version, state="downloading", bytes_done=0)

                def progress(n: int, total: int) -> None:
                    done[0], done[1] = n, total

                fetch = asyncio.ensure_future(asyncio.to_thread(
                    fetch_bundle, str(args["url"]), str(args["token"]), self.layout,
                    expected_sha256=str(args["manifest_sha256"]), keys=keys,
                    running_version=self.version, want_version=version,
                    allow_downgrade=int(args.get("allow_downgrade", 0)) == 1,
                    model=self.model, progress=progress,
                    retries=self.cfg.download_retries))
                last = -1
                while not fetch.done():
                    await asyncio.wait({fetch}, timeout=_PROGRESS_EVERY_S)
                    if not fetch.done() and done[1] and done[0] != last:
                        last = done[0]
                        await self._status(corr, rollout=rollout, command_id=cmd.command_id,
                                           version=version, state="downloading",
                                           bytes_done=done[0], bytes_total=done[1])
                fetched = fetch.result()
                total = sum(f.size for f in fetched.manifest.files if f.path in fetched.files)
                await self._status(corr, rollout=rollout, command_id=cmd.command_id,
                                   version=version, state="downloaded", bytes_done=total,
                                   bytes_total=total)
                await asyncio.to_thread(verify_fetched, fetched, keys)
                self._fetched[cmd.command_id] = fetched
                await self._status(corr, rollout=rollout, command_id=cmd.command_id,
                                   version=version, state="verified")
        except UpdateError as exc:
            await self._failed(cmd, corr, exc)
            raise
        return {"version": version, "files": len(fetched.files)}

    async def install(self, cmd: Any, corr: str) -> dict[str, Any]:
        """Install the prepared bundle, switch, ask for the restart (the device is idle)."""
        rollout, version = str(cmd.args["rollout"]), str(cmd.args["version"])
        try:
            self._check_enabled()
            fetched = self._fetched.pop(cmd.command_id, None)
            if fetched is None:
                raise UpdateError("not_prepared", "the bundle was not downloaded first",
                                  "更新包尚未下载")
            keys = self._keys()
            async with self._lock:
                await self._status(corr, rollout=rollout, command_id=cmd.command_id,
                                   version=version, state="installing")
                await asyncio.to_thread(verify_fetched, fetched, keys)
                rec = await asyncio.to_thread(
                    install_slot, self.layout, fetched, from_version=self.version,
                    rollout_id=rollout, command_id=cmd.command_id,
                    deadline_s=self.trial_deadline_s(), max_attempts=self.cfg.max_attempts,
                    now=self.clock(), extra={"corr": corr})
        except UpdateError as exc:
            await self._failed(cmd, corr, exc)
            raise
        assert rec is not None  # a daemon runs from a committed slot: never a first install
        await self._status(corr, rollout=rollout, command_id=cmd.command_id, version=version,
                           state="awaiting_health")
        crash_point("restart")
        await self.executor.restart(self.unit)
        return {"slot": rec.slot, "version": rec.version, "from_version": rec.from_version}

    def trial_deadline_s(self) -> float:
        """How long a trial may take in all: every start attempt with its health check."""
        return float(self.cfg.max_attempts * (self.cfg.health_deadline_s + 60.0))

    def interrupted(self, rec: Any) -> tuple[str, str | None, str, str] | None:
        """What became of an ``update.install`` a restart interrupted (the runner's recover):
        ``(state, code, message, message_zh)``, or None while its trial still runs (the
        health check settles it).
        """
        trial = self.layout.trial()
        if trial is not None and trial.command_id == rec.command_id:
            if trial.state == "trial":
                return None
            return ("failed", trial.code or trial.state, trial.reason or trial.state,
                    trial.reason_zh or "更新失败")
        self._pending.append(({"rollout": rec.args.get("rollout"),
                               "command_id": rec.command_id,
                               "version": rec.args.get("version")}, rec.env_id))
        return ("failed", "interrupted", "the daemon restarted before the update was "
                "installed", "更新安装完成前设备重启")

    # -- at start -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Report what a restart left behind and start the health check of a trial."""
        for args, corr in self._pending:
            await self._status(corr, rollout=args["rollout"], command_id=args["command_id"],
                               version=str(args["version"]), state="failed", code="interrupted",
                               message="the daemon restarted before the update was installed",
                               message_zh="更新安装完成前设备重启")
        self._pending.clear()
        if self.slot is None:
            return
        rec = self.layout.trial()
        if rec is None:
            return
        corr = rec.extra.get("corr") if isinstance(rec.extra.get("corr"), str) else None
        if rec.state in ("rolled_back", "failed"):
            if self.slot == rec.slot:
                return  # the guard has not run: the restart will
            await self._status(corr, rollout=rec.rollout_id, command_id=rec.command_id,
                               version=rec.version, state=rec.state, code=rec.code,
                               message=rec.reason, message_zh=rec.reason_zh)
            await self._settle(rec, "failed", code=rec.code, message=rec.reason,
                               message_zh=rec.reason_zh)
            await asyncio.to_thread(self.layout.clear_trial)
            return
        if self.slot != rec.slot:
            log.warning("slot %s is on trial but this daemon runs from %s: the guard sets it "
                        "right at the next start", rec.slot, self.slot)
            return
        if self.layout.committed_slot() == rec.slot:
            await self._committed(rec, corr)  # committed, cut before it was reported
            return
        self._task = asyncio.create_task(self._health(rec, corr), name="update-health")

    async def stop_tasks(self) -> None:
        """Cancel the health check (a stop during it: the next start checks again)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_health(self) -> None:
        """Wait for the health check to end (tests)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _health(self, rec: TrialRecord, corr: str | None) -> None:
        await self._status(corr, rollout=rec.rollout_id, command_id=rec.command_id,
                           version=rec.version, state="awaiting_health",
                           running=rec.from_version)
        deadline = min(rec.deadline_dt(),
                       self.clock() + timedelta(seconds=self.cfg.health_deadline_s))
        result = await wait_healthy(self.probes, self.cfg.health_checks, deadline,
                                    clock=self.clock)
        problems = [v for v in result.values() if v is not None]
        if not problems:
            await asyncio.to_thread(commit_trial, self.layout, rec)
            await self._committed(rec, corr)
            return
        why = "; ".join(problems)
        await asyncio.to_thread(abort_trial, self.layout, rec, "unhealthy",
                                f"health check failed: {why}"[:400],
                                f"健康检查未通过：{why}"[:400])
        # The switch back is durable: any restart now starts the old version. Restart only
        # an idle device (a patient may have come meanwhile).
        while self.busy() is not None:  # noqa: ASYNC110 - polled, no event says "idle"
            await asyncio.sleep(self.idle_poll_s)
        try:
            await self.executor.restart(self.unit)
        except Exception as exc:
            log.error("restart after the rollback failed (%s): stopping the daemon", exc)
            if self.stop is not None:
                self.stop()

    async def _committed(self, rec: TrialRecord, corr: str | None) -> None:
        await self._status(corr, rollout=rec.rollout_id, command_id=rec.command_id,
                           version=rec.version, state="committed", running=rec.version)
        await self._settle(rec, "succeeded", output={"version": rec.version, "slot": rec.slot,
                                   "from_version": rec.from_version})
        await asyncio.to_thread(self._after_commit)

    def _after_commit(self) -> None:
        self.layout.clear_trial()
        shutil.rmtree(self.layout.downloads, ignore_errors=True)

    async def _settle(self, rec: TrialRecord, state: str, *, code: str | None = None,
                      message: str | None = None, message_zh: str | None = None,
                      output: dict[str, Any] | None = None) -> None:
        if self.runner is None or rec.command_id is None:
            return
        await self.runner.settle(rec.command_id, state, code=code, message=message,
                                 message_zh=message_zh, output=output)


def _release(version: str) -> str | None:
    """The running version if it is a release version (``0+unknown`` from a tree is not)."""
    import re

    from yikatong.protocol.update import VERSION_RE

    return version if re.match(VERSION_RE, version) else None
