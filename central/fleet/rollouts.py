"""Staged rollouts of software updates at central (docs/updates.md "Rollouts").

A **rollout** installs one stored bundle version (central/fleet/bundles.py) on a set of
devices, a few at a time, the AWS IoT Jobs / Mender way:

* **Target** — the devices listed (or every registered device), narrowed by site, role and
  the version they run (``from_versions``). Chosen once, when the rollout is created: each
  device gets one row and is never chosen twice. A device that cannot take this bundle is
  ``skipped`` at once with the reason (already current, newer without ``allow_downgrade``,
  older than the bundle's ``min_version``, another model, disabled, in another open
  rollout); the version is checked again when its turn comes.
* **Rate** — at most ``max_per_minute`` devices started in any 60 s and at most
  ``max_in_flight`` started and not finished. Only online devices are started; an offline
  one stays ``queued`` and is tried again on a later round.
* **Failure threshold** — ``failure_threshold`` devices failed or rolled back, or (once
  ``min_finished`` devices have finished) a ``failure_ratio`` of the finished ones, and the
  rollout is ``paused`` with the reason: no new device is started. Devices already started
  go on (their signed commands are out). ``resume`` counts failures afresh from then on.
* **Per device** — ``queued`` → ``sent`` (its ``update.install`` is signed and out) → the
  device's own ``update.status`` states (``downloading`` … ``awaiting_health``) →
  ``committed`` | ``rolled_back`` | ``failed``, or ``skipped``. A status moves a row
  forward only, never out of a final state; only a device of the rollout that was sent its
  command may report for it (anything else is audited and dropped). A command that ends
  ``expired``, ``rejected`` or ``failed`` fails its device; so does a device that reports no
  final state within ``[fleet] rollout_report_timeout_s`` after its command succeeded.
* **States** — ``scheduled`` (until ``start_at``) → ``running`` ⇄ ``paused`` →
  ``completed`` (nothing queued or in flight) | ``cancelled`` (queued devices skipped).

The scheduler (:meth:`RolloutService.run`, one round a second) is started by the fleet
service and must run on one central instance only (``[fleet] rollout_scheduler``; issue 13):
it is the only sender of rollout commands, and sends them through
:meth:`central.fleet.service.FleetService.send_command` (same seq, exp, signature, journal
and ``waiting`` handling as every command) with a download token from
:class:`central.fleet.bundles.BundleTokens` bound to the device, rollout and version.
Every staff action is audited with the staff member's name; the scheduler's own steps as
``rollout``.

Several instances (PostgreSQL, central/fleet/store.py): statuses arrive at any of them and
staff act on any of them while the scheduler runs on one. Every write that moves a rollout
or its devices holds the rollout's row first (``FOR UPDATE``), then its devices' rows, and
appends to the audit chain last — one order everywhere, so two instances never deadlock — and
moves a device's row only from the state it read (compare-and-set): a status never moves a
row back, a device is sent one ``update.install`` per rollout, and a cancelled or paused
rollout starts no one. Creating a rollout holds :data:`~central.fleet.store.ROLLOUT_LOCK`:
a device is queued in one open rollout only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Protocol

from peewee import fn
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from central.fleet.bundles import bundles_of, tokens_of
from central.fleet.errors import FleetError
from central.fleet.store import ROLLOUT_LOCK, for_update
from yikatong.protocol.envelope import format_ts
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.update import (
    FINAL_UPDATE_STATES,
    MANIFEST_NAME,
    UPDATE_STATES,
    VERSION_RE,
    Manifest,
    UpdateStatus,
    compare_versions,
    parse_manifest,
)

__all__ = [
    "DEVICE_STATES",
    "FINAL_DEVICE_STATES",
    "IN_FLIGHT_STATES",
    "OPEN_ROLLOUT_STATES",
    "ROLLOUT_STATES",
    "BundleSource",
    "RolloutService",
    "RolloutSpec",
    "StoredBundles",
]

log = logging.getLogger(__name__)

ROLLOUT_STATES: Final = ("scheduled", "running", "paused", "completed", "cancelled")
OPEN_ROLLOUT_STATES: Final = frozenset({"scheduled", "running", "paused"})
#: Per device, in order; ``sent`` = the command is out, no status yet.
DEVICE_STATES: Final = ("queued", "sent", *UPDATE_STATES, "skipped")
IN_FLIGHT_STATES: Final = frozenset({"sent", *UPDATE_STATES}) - FINAL_UPDATE_STATES
FINAL_DEVICE_STATES: Final = frozenset({*FINAL_UPDATE_STATES, "skipped"})
FAILED_STATES: Final = frozenset({"failed", "rolled_back"})
#: How far along a device is; a status never moves it back (finals are all last).
RANK: Final[dict[str, int]] = {
    "queued": 0, "sent": 1, "downloading": 2, "downloaded": 3, "verified": 4,
    "installing": 5, "awaiting_health": 6,
    "committed": 7, "rolled_back": 7, "failed": 7, "skipped": 7}
#: One scheduler round per this many seconds.
TICK_S = 1.0
#: The rate window of ``max_per_minute``.
RATE_WINDOW_S = 60.0
#: A command the device itself ended failed/rejected fails its row only after this long:
#: the device's own ``update.status`` (with the real reason) may be a moment behind it.
COMMAND_GRACE_S = 10.0
#: Who the scheduler's automatic steps are audited as.
SCHEDULER_ACTOR = "rollout"
_ACTOR_MAX = 64

Clock = Callable[[], datetime]
Short = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                         pattern=r"^[^\x00-\x1f\x7f]*$")]
Version = Annotated[str, StringConstraints(max_length=40, pattern=VERSION_RE)]
DeviceId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
_ROLLOUT_ID = re.compile(r"^[0-9a-f]{32}$")


class BundleSource(Protocol):
    """What rollouts need of central's bundle store (central/fleet/bundles.py)."""

    def manifest_bytes(self, version: str) -> bytes | None:
        """The stored ``manifest.json`` of ``version`` exactly as uploaded, or None."""

    def issue_token(self, dev: str, rollout_id: str, version: str, ttl_s: float) -> str:
        """A download token for ``dev`` in ``rollout_id`` for ``version``, valid ``ttl_s``."""


class StoredBundles:
    """:class:`BundleSource` over the fleet service's bundle store and token issuer."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet

    def manifest_bytes(self, version: str) -> bytes | None:
        """The stored ``manifest.json`` of ``version``, or None."""
        store = bundles_of(self.fleet)
        if store.get(version) is None:
            return None
        try:
            return (store.root / version / MANIFEST_NAME).read_bytes()
        except OSError:
            return None

    def issue_token(self, dev: str, rollout_id: str, version: str, ttl_s: float) -> str:
        """:meth:`central.fleet.bundles.BundleTokens.issue`."""
        return tokens_of(self.fleet).issue(dev, rollout_id, version, ttl_s)


class RolloutSpec(BaseModel):
    """What a rollout is asked to do (the REST body and ``ykt fw rollout create``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Version
    site: Short | None = None
    role: Literal["kiosk", "cashier"] | None = None
    #: Only devices that run one of these versions (empty: any version).
    from_versions: Annotated[list[Version], Field(max_length=20)] = Field(default_factory=list)
    #: Only these devices, started in this order (empty: every registered device).
    devices: Annotated[list[DeviceId], Field(max_length=5000)] = Field(default_factory=list)
    max_per_minute: int = Field(default=5, ge=1, le=1000)
    max_in_flight: int = Field(default=10, ge=1, le=10_000)
    #: Pause once this many devices failed or rolled back (since the last resume).
    failure_threshold: int | None = Field(default=None, ge=1, le=100_000)
    #: Pause once at least this fraction of the finished devices failed or rolled back …
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    #: … counted only once this many have finished.
    min_finished: int = Field(default=5, ge=1, le=100_000)
    allow_downgrade: bool = False
    #: ISO 8601 time to start at; None: now.
    start_at: str | None = Field(default=None, max_length=40)
    notes: Annotated[str, StringConstraints(max_length=200,
                                            pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None


def _t(now: datetime) -> float:
    return now.timestamp()


def _iso(t: float | None) -> str | None:
    return None if t is None else format_ts(datetime.fromtimestamp(t, UTC))


def _actor(actor: str) -> str:
    return str(actor).strip()[:_ACTOR_MAX] or "unknown"


def _model_of(facts: str | None) -> str | None:
    try:
        value = json.loads(facts or "{}").get("model")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _skip_reason(version: str | None, model: str | None, manifest: Manifest,
                 allow_downgrade: bool) -> tuple[str, str] | None:
    """Why a device running ``version`` (model ``model``) cannot take ``manifest``, or None."""
    if model is not None and "*" not in manifest.models and model not in manifest.models:
        return "wrong_model", f"model {model} is not one of {', '.join(manifest.models)}"
    if version is None:
        return None  # not known yet: checked again when its turn comes
    try:
        order = compare_versions(version, manifest.version)
        too_old = compare_versions(version, manifest.min_version) < 0
    except ValueError:  # a version string we cannot order: the device decides
        return None
    if order == 0:
        return "already_current", f"already runs {version}"
    if order > 0 and not allow_downgrade:
        return "newer_version", f"runs {version}, newer than {manifest.version}"
    if too_old:
        return "below_min_version", (f"runs {version}, older than the bundle's minimum "
                                     f"{manifest.min_version}")
    return None


class _Stale(Exception):
    """The row or rollout changed between choosing a device and signing its command."""


class RolloutService:
    """Rollouts over a :class:`central.fleet.service.FleetService` (see the module doc)."""

    def __init__(self, fleet: Any, *, bundles: BundleSource | None = None,
                 clock: Clock | None = None) -> None:
        self.fleet = fleet
        self.store = fleet.store
        self.section = fleet.section
        self.bundles: BundleSource = bundles if bundles is not None else StoredBundles(fleet)
        self._clock: Clock = clock or fleet._clock
        self._lock = asyncio.Lock()
        self.stats: dict[str, int] = {"rounds": 0, "sent": 0, "status": 0,
                                      "status_refused": 0, "round_errors": 0}

    @property
    def R(self) -> Any:  # the table (short, like the service's K, D, E)
        return self.fleet.tables.Rollout

    @property
    def D(self) -> Any:
        return self.fleet.tables.RolloutDevice

    def _now(self) -> datetime:
        return self._clock()

    # ================================================================== create
    def _manifest(self, version: str) -> tuple[Manifest, str]:
        """The stored manifest of ``version`` and the SHA-256 of its bytes (404 if none)."""
        data = self.bundles.manifest_bytes(version)
        if data is None:
            raise FleetError(404, "unknown_bundle",
                             f"no bundle {version} is stored at central: upload it first "
                             "(ykt fw bundle upload)", f"中心没有 {version} 版本的更新包，请先上传")
        try:
            manifest = parse_manifest(data)
        except ProtocolError as exc:
            raise FleetError(409, "bad_bundle", f"the stored manifest of {version} is not "
                             f"valid: {exc.message[:200]}", "已存储的更新包清单无效") from None
        if manifest.version != version:
            raise FleetError(409, "bad_bundle", f"the bundle stored as {version} says it is "
                             f"{manifest.version}", "更新包版本与存储位置不符")
        return manifest, hashlib.sha256(data).hexdigest()

    def _spec(self, spec: RolloutSpec | dict[str, Any]) -> RolloutSpec:
        if isinstance(spec, RolloutSpec):
            return spec
        try:
            return RolloutSpec.model_validate(spec)
        except ValidationError as exc:
            errs = exc.errors(include_input=False)
            where = ".".join(str(x) for x in errs[0]["loc"]) if errs else "rollout"
            msg = errs[0]["msg"] if errs else "invalid"
            raise FleetError(422, "invalid_rollout", f"invalid rollout: {where}: {msg}",
                             "发布任务参数无效") from None

    def _candidates(self, spec: RolloutSpec) -> list[Any]:
        """Registered devices of the target, in start order (a listed one must exist)."""
        if spec.devices:
            if len(set(spec.devices)) != len(spec.devices):
                raise FleetError(422, "invalid_rollout", "a device is listed twice",
                                 "设备重复列出")
            infos = []
            for dev in spec.devices:
                info = self.store.device(dev)
                if info is None:
                    raise FleetError(404, "unknown_device", f"no device {dev!r}",
                                     f"未登记的设备 {dev}")
                infos.append(info)
        else:
            infos = self.store.devices()
        F = self.fleet.tables.FleetDevice
        sites = {r.dev: r.site for r in F.select(F.dev, F.site)}
        out = []
        for info in infos:
            if spec.site is not None and sites.get(info.id) != spec.site:
                continue
            if spec.role is not None and info.role != spec.role:
                continue
            if spec.from_versions and info.version not in spec.from_versions:
                continue
            out.append(info)
        return out

    async def create(self, spec: RolloutSpec | dict[str, Any], *, actor: str
                     ) -> dict[str, Any]:
        """Create a rollout; returns its detail. FleetError 404/409/422 says why not."""
        spec = self._spec(spec)
        if self.section.public_url is None:
            raise FleetError(409, "no_public_url", "set [fleet] public_url in central.toml "
                             "(the address devices download bundles from)",
                             "请在 central.toml 的 [fleet] 中设置 public_url")
        manifest, digest = self._manifest(spec.version)
        if spec.failure_threshold is None and spec.failure_ratio is None:
            spec = spec.model_copy(update={"failure_threshold": 1})
        now = self._now()
        start_at: float | None = None
        if spec.start_at is not None:
            try:
                when = datetime.fromisoformat(spec.start_at)
            except ValueError:
                when = None
            if when is None or when.tzinfo is None:
                raise FleetError(422, "invalid_rollout", "start_at must be an ISO 8601 time "
                                 "with its zone, e.g. 2025-06-01T22:00:00+08:00",
                                 "开始时间格式无效（须含时区）")
            start_at = when.timestamp()
        actor = _actor(actor)
        rollout_id = uuid.uuid4().hex
        candidates = self._candidates(spec)
        F = self.fleet.tables.FleetDevice
        facts = {r.dev: r.facts for r in F.select(F.dev, F.facts)}
        target = {"site": spec.site, "role": spec.role, "from_versions": spec.from_versions,
                  "devices": spec.devices}

        def tx() -> None:
            R, D, t = self.R, self.D, _t(now)
            self.store.lock_in_tx(ROLLOUT_LOCK)  # another create's devices are busy here
            busy = {r.dev for r in D.select(D.dev).join(
                R, on=(D.rollout_id == R.rollout_id)).where(
                R.state.in_(list(OPEN_ROLLOUT_STATES))
                & D.state.in_(["queued", *IN_FLIGHT_STATES]))}
            rows = []
            for i, info in enumerate(candidates):
                reason: tuple[str, str] | None
                if not info.enabled:
                    reason = ("device_disabled", "the device is disabled")
                elif info.id in busy:
                    reason = ("in_other_rollout", "queued or updating in another rollout")
                else:
                    reason = _skip_reason(info.version, _model_of(facts.get(info.id)),
                                          manifest, spec.allow_downgrade)
                rows.append({
                    "rollout_id": rollout_id, "dev": info.id, "ord": i,
                    "state": "skipped" if reason else "queued",
                    "code": reason[0] if reason else None,
                    "message": reason[1] if reason else None,
                    "from_version": info.version, "queued_at": t, "updated_at": t,
                    "finished_at": t if reason else None})
            if not any(r["state"] == "queued" for r in rows):
                raise FleetError(422, "no_devices",
                                 f"no device of this target needs {spec.version} "
                                 f"({len(rows)} matched, all skipped)",
                                 "目标中没有需要此更新的设备")
            scheduled = start_at is not None and start_at > t
            R.create(rollout_id=rollout_id, version=spec.version, manifest_sha256=digest,
                     target=json.dumps(target, ensure_ascii=False, sort_keys=True),
                     allow_downgrade=spec.allow_downgrade,
                     max_per_minute=spec.max_per_minute, max_in_flight=spec.max_in_flight,
                     failure_threshold=spec.failure_threshold,
                     failure_ratio=spec.failure_ratio, min_finished=spec.min_finished,
                     state="scheduled" if scheduled else "running", notes=spec.notes,
                     created_by=actor, created_at=t, updated_at=t, start_at=start_at,
                     started_at=None if scheduled else t, counted_since=t)
            for chunk in range(0, len(rows), 200):
                D.insert_many(rows[chunk:chunk + 200]).execute()
            self.store.append_audit_in_tx(now, actor, "rollout.create", {
                "rollout_id": rollout_id, "version": spec.version, "manifest_sha256": digest,
                "target": json.dumps(target, ensure_ascii=False, sort_keys=True)[:1000],
                "queued": sum(r["state"] == "queued" for r in rows),
                "skipped": sum(r["state"] == "skipped" for r in rows),
                "max_per_minute": spec.max_per_minute, "max_in_flight": spec.max_in_flight,
                "failure_threshold": spec.failure_threshold,
                "failure_ratio": spec.failure_ratio, "allow_downgrade": spec.allow_downgrade})

        await self.store.write(tx)
        return self.detail(rollout_id)

    # ================================================================== staff actions
    def _require(self, rollout_id: str) -> Any:
        row = (self.R.get_or_none(self.R.rollout_id == rollout_id)
               if isinstance(rollout_id, str) and _ROLLOUT_ID.match(rollout_id) else None)
        if row is None:
            raise FleetError(404, "unknown_rollout", f"no rollout {str(rollout_id)[:40]!r}",
                             "没有此发布任务")
        return row

    async def _transition(self, rollout_id: str, action: str, allowed: tuple[str, ...],
                          new: str, *, actor: str, reason: str | None) -> dict[str, Any]:
        self._require(rollout_id)
        actor = _actor(actor)
        now = self._now()
        names_zh = {"pause": "暂停", "resume": "继续", "cancel": "取消"}

        def tx() -> None:
            R, D, t = self.R, self.D, _t(now)
            row = self._hold(rollout_id)
            assert row is not None  # checked above; rollouts are never deleted
            if row.state not in allowed:
                raise FleetError(409, "rollout_" + row.state,
                                 f"a {row.state} rollout cannot be {action}d"
                                 if action != "cancel" else
                                 f"a {row.state} rollout cannot be cancelled",
                                 f"当前状态（{row.state}）不能{names_zh[action]}")
            values: dict[str, Any] = {"state": new, "updated_at": t}
            if action == "pause":
                values.update(reason_code="staff", reason=(reason or f"paused by {actor}")[:400])
            elif action == "resume":
                values.update(reason_code=None, reason=None, counted_since=t)
                if row.started_at is None:
                    values["started_at"] = t
            else:
                values.update(reason_code="cancelled",
                              reason=(reason or f"cancelled by {actor}")[:400], finished_at=t)
                D.update(state="skipped", code="cancelled", message="the rollout was cancelled",
                         updated_at=t, finished_at=t).where(
                    (D.rollout_id == rollout_id) & (D.state == "queued")).execute()
            R.update(**values).where(R.rollout_id == rollout_id).execute()
            self.store.append_audit_in_tx(now, actor, "rollout." + action, {
                "rollout_id": rollout_id, "from": row.state, "reason": reason})

        await self.store.write(tx)
        return self.detail(rollout_id)

    async def pause(self, rollout_id: str, *, actor: str, reason: str | None = None
                    ) -> dict[str, Any]:
        """Start no more devices (those started go on); 409 unless scheduled or running."""
        return await self._transition(rollout_id, "pause", ("scheduled", "running"), "paused",
                                      actor=actor, reason=reason)

    async def resume(self, rollout_id: str, *, actor: str) -> dict[str, Any]:
        """Go on (failures are counted afresh from now); 409 unless paused or scheduled."""
        return await self._transition(rollout_id, "resume", ("paused", "scheduled"), "running",
                                      actor=actor, reason=None)

    async def cancel(self, rollout_id: str, *, actor: str, reason: str | None = None
                     ) -> dict[str, Any]:
        """End it: queued devices are skipped, started ones still report; 409 if over."""
        return await self._transition(rollout_id, "cancel", tuple(OPEN_ROLLOUT_STATES),
                                      "cancelled", actor=actor, reason=reason)

    # ================================================================== views
    def _counts(self, rollout_id: str) -> dict[str, int]:
        D = self.D
        counts = dict.fromkeys(DEVICE_STATES, 0)
        for state, n in D.select(D.state, fn.COUNT(D.dev)).where(
                D.rollout_id == rollout_id).group_by(D.state).tuples():
            counts[state] = counts.get(state, 0) + int(n)
        return counts

    def _rollout_dict(self, row: Any) -> dict[str, Any]:
        counts = self._counts(row.rollout_id)
        total = sum(counts.values())
        return {
            "rollout_id": row.rollout_id, "version": row.version,
            "manifest_sha256": row.manifest_sha256, "target": json.loads(row.target),
            "allow_downgrade": bool(row.allow_downgrade),
            "max_per_minute": row.max_per_minute, "max_in_flight": row.max_in_flight,
            "failure_threshold": row.failure_threshold, "failure_ratio": row.failure_ratio,
            "min_finished": row.min_finished, "state": row.state,
            "reason_code": row.reason_code, "reason": row.reason, "notes": row.notes,
            "created_by": row.created_by, "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at), "start_at": _iso(row.start_at),
            "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
            "counted_since": _iso(row.counted_since),
            "devices": total, "counts": counts,
            "in_flight": sum(counts[s] for s in IN_FLIGHT_STATES),
            "failed": sum(counts[s] for s in FAILED_STATES),
            "done": sum(counts[s] for s in FINAL_DEVICE_STATES),
        }

    @staticmethod
    def _device_dict(row: Any) -> dict[str, Any]:
        return {
            "dev": row.dev, "state": row.state, "command_id": row.command_id,
            "from_version": row.from_version, "running_version": row.running_version,
            "code": row.code, "message": row.message, "bytes_done": row.bytes_done,
            "bytes_total": row.bytes_total, "queued_at": _iso(row.queued_at),
            "started_at": _iso(row.started_at), "updated_at": _iso(row.updated_at),
            "finished_at": _iso(row.finished_at),
        }

    def list_rollouts(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rollouts, newest first (``state`` filters)."""
        if state is not None and state not in ROLLOUT_STATES:
            raise FleetError(422, "invalid_state", f"state is one of {', '.join(ROLLOUT_STATES)}",
                             "状态无效")
        R = self.R
        q = R.select()
        if state is not None:
            q = q.where(R.state == state)
        limit = max(1, min(int(limit), 1000))
        return [self._rollout_dict(r)
                for r in q.order_by(R.created_at.desc(), R.rollout_id).limit(limit)]

    def detail(self, rollout_id: str) -> dict[str, Any]:
        """One rollout with its devices (in start order); FleetError 404 if unknown."""
        row = self._require(rollout_id)
        D = self.D
        out = self._rollout_dict(row)
        out["device_rows"] = [self._device_dict(r) for r in D.select().where(
            D.rollout_id == row.rollout_id).order_by(D.ord)]
        return out

    # ================================================================== device status
    async def on_status(self, dev: str, body: UpdateStatus) -> None:
        """An ``update.status`` from ``dev`` (through the forwarder and the fleet service)."""
        self.stats["status"] += 1
        now = self._now()
        await self.store.write(lambda: self._status_tx(dev, body, now))

    def _refuse_tx(self, dev: str, body: UpdateStatus, why: str, now: datetime) -> None:
        self.stats["status_refused"] += 1
        log.warning("update.status of %s for rollout %s refused: %s", dev, body.rollout_id, why)
        self.store.append_audit_in_tx(now, dev, "rollout.status_refused", {
            "dev": dev, "rollout_id": body.rollout_id, "state": body.state,
            "version": body.version, "why": why})

    def _hold(self, rollout_id: str) -> Any:
        """The rollout's row, held to the end of the write (module docstring), or None."""
        R = self.R
        return for_update(self.store, R.select().where(R.rollout_id == rollout_id)).first()

    def _status_tx(self, dev: str, body: UpdateStatus, now: datetime) -> None:
        D, t = self.D, _t(now)
        ro = self._hold(body.rollout_id)
        row = for_update(self.store, D.select().where((D.rollout_id == body.rollout_id)
                                                      & (D.dev == dev))).first()
        if ro is None or row is None:
            self._refuse_tx(dev, body, "not_in_rollout", now)
            return
        if row.command_id is None:
            self._refuse_tx(dev, body, "not_started", now)
            return
        if body.version != ro.version:
            self._refuse_tx(dev, body, "wrong_version", now)
            return
        if body.command_id is not None and body.command_id != row.command_id:
            self._refuse_tx(dev, body, "wrong_command", now)
            return
        if row.state in FINAL_DEVICE_STATES or RANK[body.state] < RANK[row.state]:
            return  # late or repeated: never back, never out of a final state
        final = body.state in FINAL_UPDATE_STATES
        D.update(state=body.state, code=body.code, message=body.message,
                 running_version=body.running_version or row.running_version,
                 bytes_done=body.bytes_done if body.bytes_done is not None else row.bytes_done,
                 bytes_total=(body.bytes_total if body.bytes_total is not None
                              else row.bytes_total),
                 updated_at=t, finished_at=t if final else None).where(
            (D.rollout_id == row.rollout_id) & (D.dev == dev)).execute()
        if final:
            self.store.append_audit_in_tx(now, dev, "rollout.device_" + body.state, {
                "rollout_id": ro.rollout_id, "dev": dev, "version": ro.version,
                "code": body.code, "running_version": body.running_version})
            self._check_threshold_tx(ro.rollout_id, now)

    # ================================================================== scheduler
    def _check_threshold_tx(self, rollout_id: str, now: datetime) -> bool:
        """Pause a running rollout whose failures reached its threshold; True if paused."""
        R, D = self.R, self.D
        ro = R.get(R.rollout_id == rollout_id)
        if ro.state != "running":
            return False
        finished = list(D.select(D.state).where(
            (D.rollout_id == rollout_id) & D.state.in_(list(FINAL_UPDATE_STATES))
            & (D.finished_at >= ro.counted_since)))
        failed = sum(r.state in FAILED_STATES for r in finished)
        why = None
        if ro.failure_threshold is not None and failed >= ro.failure_threshold:
            why = (f"{failed} device(s) failed or rolled back (threshold "
                   f"{ro.failure_threshold})")
        elif (ro.failure_ratio is not None and len(finished) >= ro.min_finished
              and failed / len(finished) >= ro.failure_ratio):
            why = (f"{failed} of {len(finished)} finished devices failed or rolled back "
                   f"(threshold {ro.failure_ratio:.0%})")
        if why is None:
            return False
        if not R.update(state="paused", reason_code="failure_threshold", reason=why,
                        updated_at=_t(now)).where((R.rollout_id == rollout_id)
                                                  & (R.state == "running")).execute():
            return False
        self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.paused", {
            "rollout_id": rollout_id, "reason": why, "failed": failed,
            "finished": len(finished)})
        log.warning("rollout %s paused: %s", rollout_id, why)
        return True

    def _settle_tx(self, now: datetime) -> list[str]:
        """Commands over, report deadlines, thresholds, starts and ends; returns the running."""
        R, D, t = self.R, self.D, _t(now)
        K = self.fleet.tables.FleetCommand
        # the open rollouts' rows held first (module docstring: one lock order)
        open_ids = [r.rollout_id for r in for_update(self.store, R.select(R.rollout_id).where(
            R.state.in_(list(OPEN_ROLLOUT_STATES))).order_by(R.rollout_id))]
        # In-flight devices of any rollout (a cancelled one's started devices still count).
        rows = list(D.select(D, K.state.alias("cmd_state"), K.code.alias("cmd_code"),
                             K.message.alias("cmd_message"),
                             K.updated_at.alias("cmd_updated")).join(
            K, on=(D.command_id == K.command_id)).where(
            D.state.in_(list(IN_FLIGHT_STATES))).objects())
        touched: set[str] = set()
        timeout = self.section.rollout_report_timeout_s
        for r in rows:
            code = message = None
            if r.cmd_state == "expired" or (
                    r.cmd_state in ("failed", "rejected")
                    and r.cmd_updated < t - COMMAND_GRACE_S):
                code = r.cmd_code or f"command_{r.cmd_state}"
                message = r.cmd_message or f"update.install ended {r.cmd_state}"
            elif (r.cmd_state == "succeeded" and r.cmd_updated < t - timeout
                  and r.updated_at < t - timeout):
                code, message = "no_final_status", (
                    f"no committed/rolled back/failed report within {timeout:g} s of the "
                    "command's success")
            if code is None:
                continue
            # only from the state read: a final status committed meanwhile stays
            if not D.update(state="failed", code=str(code)[:64], message=str(message)[:400],
                            updated_at=t, finished_at=t).where(
                    (D.rollout_id == r.rollout_id) & (D.dev == r.dev)
                    & (D.state == r.state)).execute():
                continue
            self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.device_failed", {
                "rollout_id": r.rollout_id, "dev": r.dev, "code": code,
                "command_id": r.command_id})
            touched.add(r.rollout_id)
        for rollout_id in touched & set(open_ids):
            self._check_threshold_tx(rollout_id, now)
        running = []
        for ro in list(R.select().where(R.rollout_id.in_(open_ids))):
            if ro.state == "scheduled" and ro.start_at is not None and ro.start_at <= t:
                R.update(state="running", started_at=t, updated_at=t,
                         counted_since=t).where((R.rollout_id == ro.rollout_id)
                                                & (R.state == "scheduled")).execute()
                self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.start",
                                              {"rollout_id": ro.rollout_id})
                ro.state = "running"
            if ro.state != "running":
                continue
            left = D.select().where((D.rollout_id == ro.rollout_id) & D.state.in_(
                ["queued", *IN_FLIGHT_STATES])).count()
            if left == 0:
                R.update(state="completed", finished_at=t, updated_at=t).where(
                    (R.rollout_id == ro.rollout_id) & (R.state == "running")).execute()
                counts = self._counts(ro.rollout_id)
                self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.completed", {
                    "rollout_id": ro.rollout_id, **{k: v for k, v in counts.items() if v}})
                continue
            running.append(ro.rollout_id)
        return running

    def _budget(self, ro: Any, now: datetime) -> int:
        D, t = self.D, _t(now)
        in_flight = D.select().where((D.rollout_id == ro.rollout_id)
                                     & D.state.in_(list(IN_FLIGHT_STATES))).count()
        recent = D.select().where((D.rollout_id == ro.rollout_id)
                                  & (D.started_at > t - RATE_WINDOW_S)).count()
        return max(0, min(int(ro.max_per_minute) - int(recent),
                          int(ro.max_in_flight) - int(in_flight)))

    async def tick(self) -> int:
        """One scheduler round; returns how many devices were sent their command."""
        async with self._lock:
            self.stats["rounds"] += 1
            R, D = self.R, self.D
            if not (R.select().where(R.state.in_(list(OPEN_ROLLOUT_STATES))).exists()
                    or D.select().where(D.state.in_(list(IN_FLIGHT_STATES))).exists()):
                return 0  # nothing to do: no write transaction every second
            now = self._now()
            running = await self.store.write(lambda: self._settle_tx(now))
            sent = 0
            for rollout_id in running:
                sent += await self._start_devices(rollout_id)
            return sent

    async def _start_devices(self, rollout_id: str) -> int:
        R, D = self.R, self.D
        ro = R.get_or_none(R.rollout_id == rollout_id)
        if ro is None or ro.state != "running":
            return 0
        budget = self._budget(ro, self._now())
        if budget <= 0:
            return 0
        publisher = self.fleet.publisher
        if publisher is None or not publisher.connected:
            return 0  # nothing can go out: try on a later round
        # Offline (enabled) devices stay queued and are tried again later; one query for
        # them all, not one per queued device every second.
        Dv = self.store.Device
        waiting = {r.id for r in Dv.select(Dv.id).where(
            (Dv.online == False) & (Dv.enabled == True))}  # noqa: E712 - SQL, not Python
        sent = 0
        for row in list(D.select(D.dev).where((D.rollout_id == rollout_id)
                                              & (D.state == "queued")).order_by(D.ord)):
            if sent >= budget:
                break
            if row.dev in waiting:
                continue
            info = self.store.device(row.dev)
            if info is not None and info.enabled and not info.online:
                continue  # offline: stays queued, tried again later
            if await self._start_one(ro, row.dev, info):
                sent += 1
        return sent

    async def _skip(self, rollout_id: str, dev: str, code: str, message: str) -> None:
        now = self._now()

        def tx() -> None:
            D, t = self.D, _t(now)
            if D.update(state="skipped", code=code, message=message[:400], updated_at=t,
                        finished_at=t).where((D.rollout_id == rollout_id) & (D.dev == dev)
                                             & (D.state == "queued")).execute():
                self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.device_skipped",
                                              {"rollout_id": rollout_id, "dev": dev,
                                               "code": code})

        await self.store.write(tx)

    async def _start_one(self, ro: Any, dev: str, info: Any) -> bool:
        """Sign and send ``dev``'s ``update.install``; True if it went out."""
        rollout_id = ro.rollout_id
        if info is None:
            await self._skip(rollout_id, dev, "unknown_device", "the device is not registered")
            return False
        if not info.enabled:
            await self._skip(rollout_id, dev, "device_disabled", "the device is disabled")
            return False
        try:
            manifest, digest = self._manifest(ro.version)
        except FleetError as exc:
            await self._pause_auto(rollout_id, exc.code, exc.message)
            return False
        if digest != ro.manifest_sha256:
            await self._pause_auto(rollout_id, "bundle_changed",
                                   f"the stored bundle {ro.version} changed since the rollout "
                                   "was created")
            return False
        F = self.fleet.tables.FleetDevice
        frow = F.get_or_none(F.dev == dev)
        reason = _skip_reason(info.version, _model_of(frow.facts if frow else None), manifest,
                              bool(ro.allow_downgrade))
        if reason is not None:
            await self._skip(rollout_id, dev, *reason)
            return False
        exp_s = self.section.rollout_command_exp_s
        token = self.bundles.issue_token(dev, rollout_id, ro.version, exp_s + 3600.0)
        public = str(self.section.public_url).rstrip("/")
        args = {"rollout": rollout_id, "version": ro.version,
                "url": f"{public}/api/fleet/bundles/{ro.version}", "token": token,
                "manifest_sha256": ro.manifest_sha256,
                "allow_downgrade": 1 if ro.allow_downgrade else 0}
        version = info.version
        now = self._now()

        def mark(command_id: str) -> None:  # inside send_command's write transaction
            D, t = self.D, _t(now)
            still = self._hold(rollout_id)  # a pause or cancel waits for this write
            if still is None or still.state != "running":
                raise _Stale(dev)
            # only from queued: a second scheduler (or a round run twice) sends nothing more
            if not D.update(state="sent", command_id=command_id, from_version=version,
                            started_at=t, updated_at=t).where(
                    (D.rollout_id == rollout_id) & (D.dev == dev)
                    & (D.state == "queued")).execute():
                raise _Stale(dev)

        try:
            await self.fleet.send_command(dev, "update.install", args,
                                          actor=f"{SCHEDULER_ACTOR}:{rollout_id[:12]}",
                                          exp_s=exp_s, in_tx=mark)
        except _Stale:
            return False
        except FleetError as exc:
            if exc.code == "device_disabled":
                await self._skip(rollout_id, dev, exc.code, exc.message)
            else:
                log.info("rollout %s: %s not started: %s", rollout_id, dev, exc.code)
            return False
        self.stats["sent"] += 1
        return True

    async def _pause_auto(self, rollout_id: str, code: str, why: str) -> None:
        now = self._now()

        def tx() -> None:
            R = self.R
            n = R.update(state="paused", reason_code=code[:64], reason=why[:400],
                         updated_at=_t(now)).where((R.rollout_id == rollout_id)
                                                   & (R.state == "running")).execute()
            if n:
                self.store.append_audit_in_tx(now, SCHEDULER_ACTOR, "rollout.paused", {
                    "rollout_id": rollout_id, "reason": why, "code": code})

        await self.store.write(tx)

    async def run(self) -> None:
        """Run :meth:`tick` every :data:`TICK_S` until cancelled."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["round_errors"] += 1
                log.exception("rollout round failed")
            await asyncio.sleep(TICK_S)

    def status(self) -> dict[str, Any]:
        """Counters for ``/api/status``: the scheduler's and how many rollouts are open."""
        R = self.R
        return {**self.stats, "scheduler": bool(self.section.rollout_scheduler),
                "open": R.select().where(R.state.in_(list(OPEN_ROLLOUT_STATES))).count()}

