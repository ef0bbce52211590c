"""Signed desired config from central, the device side (docs/fleet-trust.md, "the shadow").

Central publishes ``config.desired`` retained on ``ykt/v1/dev/{dev}/down/config``, signed,
with ``seq`` and ``exp``. :class:`RemoteConfigService` (registered with the uplink before it
connects, so the retained copy is not missed):

1. checks, in order, with :func:`yikatong.protocol.signing.verify_command` on a
   :class:`SeqGuard` whose ``last_seq`` comes from :class:`~edge.fleet.identity.FleetState`:
   signature (central's pinned key), ``dev`` = this device, ``seq`` above the last accepted
   config seq, not expired; then that ``exp`` is present and the body is a valid
   ``ConfigDesired`` (hash matching). A message failing any of these is reported
   ``rejected`` with its code (``bad_signature``, ``wrong_device``, ``replay``,
   ``expired``, ``invalid``) and changes nothing — not even the stored seq;
2. records the seq durably (fsync) **before** acting;
3. applies the settings to every running part (:class:`Part`: telemetry interval, log level,
   printer, scanner, card, kiosk UI). A part may refuse by raising; then the previous
   settings are applied again to the parts already changed (and the one that refused), the
   device keeps running on its previous config and reports ``failed``;
4. on success writes ``remote-config.json`` atomically (loaded at start: a restart keeps the
   settings) and reports ``applied``.

Reports are ``config.report`` on ``up/result`` through the uplink's durable outbox
(:meth:`Uplink.publish_result`): one made while offline goes out after the reconnect.

The retained copy of the config the device already runs arrives again after every
reconnect: same envelope id and seq as the last accepted one, it is ignored quietly. If the
device went down between recording a config and finishing it, that same copy is applied
then (applying settings is idempotent).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge.fleet.identity import FleetState, atomic_write
from yikatong.common.errors import LocalizedError
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import Envelope, decode
from yikatong.protocol.errors import (
    BadSignature,
    BadTopic,
    Expired,
    ProtocolError,
    SequenceReplay,
)
from yikatong.protocol.fleet import (
    TYPE_CONFIG_DESIRED,
    TYPE_CONFIG_REPORT,
    ConfigDesired,
    ConfigReport,
    RemoteSettings,
)
from yikatong.protocol.messages import dump_body
from yikatong.protocol.signing import SeqGuard, public_key_from_pem, verify_command

__all__ = [
    "CMD_STREAM",
    "CONFIG_STREAM",
    "Part",
    "Rejection",
    "RemoteConfigService",
    "ResultLink",
    "RunningConfig",
    "RunningConfigFile",
    "SignedStream",
    "load_signing_keys",
    "store_first_config",
]

log = logging.getLogger(__name__)

CONFIG_STREAM = "config"
CMD_STREAM = "cmd"


def load_signing_keys(path: Path) -> list[Ed25519PublicKey]:
    """Central's Ed25519 public key(s) from a PEM file (several keys: a key rotation)."""
    data = Path(path).read_bytes()
    marker = b"-----END PUBLIC KEY-----"
    blocks = [b + marker for b in data.split(marker) if b.strip()]
    return [public_key_from_pem(b.strip() + b"\n") for b in blocks]


class ResultLink(Protocol):
    """What we need of :class:`edge.uplink.client.Uplink` to report."""

    async def publish_result(self, type: str, body: dict[str, Any], *, corr: str) -> str:
        """Queue an ``up/result`` message durably."""


# --------------------------------------------------------------------------- verification


class Rejection(LocalizedError):
    """A signed message the device refuses; ``code`` is what central is told."""

    code = "rejected"

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code


_REJECTIONS: dict[type[Exception], tuple[str, str, str]] = {
    BadSignature: ("bad_signature", "the signature does not verify with central's key",
                   "签名无效"),
    BadTopic: ("wrong_device", "signed for another device", "该指令发给其他设备"),
    SequenceReplay: ("replay", "seq is not above the last accepted one", "重放或乱序的消息"),
    Expired: ("expired", "past its exp", "消息已过期"),
}


class SignedStream:
    """The checks of one signed stream (``config`` or ``cmd``) against its durable seq."""

    def __init__(self, state: FleetState, stream: str, *, dev: str,
                 keys: Iterable[Ed25519PublicKey],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.state = state
        self.stream = stream
        self.dev = dev
        self.keys = list(keys)
        self.clock = clock

    def last(self) -> tuple[int | None, str | None, str | None]:
        """``(last_seq, last_id, state)`` of the stream."""
        return self.state.last(self.dev, self.stream)

    def verify(self, env: Envelope, *, last_seq: int | None = None,
               use_stored: bool = True) -> int:
        """Signature, device, seq, expiry (in that order), then ``exp`` present; the seq.

        Nothing is recorded: the caller validates the body, then :meth:`accept`.
        """
        if use_stored:
            last_seq = self.last()[0]
        guard = SeqGuard(last_seq)  # a probe: the stored value moves only in accept()
        try:
            seq = verify_command(env, self.keys, guard, dev=self.dev, now=self.clock())
        except ProtocolError as exc:
            code, message, message_zh = next(
                (v for t, v in _REJECTIONS.items() if isinstance(exc, t)),
                ("invalid", exc.message, exc.message_zh))
            raise Rejection(code, f"{message} ({exc.code})", message_zh) from exc
        if env.exp is None:
            raise Rejection("invalid", "a signed message needs exp", "消息缺少有效期")
        return seq

    def accept(self, env: Envelope, seq: int, *, state: str = "accepted",
               command: dict[str, Any] | None = None) -> None:
        """Record ``seq`` durably (fsync) — before the device acts on the message."""
        self.state.accept(self.dev, self.stream, seq, env.id, state=state, command=command)


# --------------------------------------------------------------------------- running config


@dataclass(frozen=True)
class RunningConfig:
    """The remote settings the device runs (``remote-config.json``); version 0 = none yet."""

    version: int = 0
    hash: str | None = None
    settings: RemoteSettings = field(default_factory=RemoteSettings)
    seq: int | None = None
    env_id: str | None = None
    dev: str | None = None
    #: False until its ``applied`` report was queued (the first config of an enrollment).
    reported: bool = True

    def to_json(self) -> bytes:
        """The file's bytes."""
        return json.dumps({"version": self.version, "hash": self.hash,
                           "settings": dump_body(self.settings), "seq": self.seq,
                           "env_id": self.env_id, "dev": self.dev, "reported": self.reported},
                          ensure_ascii=False, sort_keys=True, indent=1).encode()


class RunningConfigFile:
    """``data_dir/remote-config.json``, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self, dev: str | None = None) -> RunningConfig:
        """The stored config (of ``dev``, when given), or the empty one."""
        try:
            data = json.loads(self.path.read_bytes())
            rc = RunningConfig(version=int(data["version"]), hash=data.get("hash"),
                               settings=RemoteSettings.model_validate(data["settings"]),
                               seq=data.get("seq"), env_id=data.get("env_id"),
                               dev=data.get("dev"), reported=bool(data.get("reported", True)))
        except FileNotFoundError:
            return RunningConfig()
        except (OSError, ValueError, KeyError, TypeError, ValidationError):
            log.error("%s is unreadable: running without remote settings", self.path)
            return RunningConfig()
        if dev is not None and rc.dev not in (None, dev):
            log.warning("%s belongs to %s, not %s: ignored", self.path, rc.dev, dev)
            return RunningConfig()
        return rc

    def save(self, rc: RunningConfig) -> None:
        """Write it atomically (tmp, fsync, rename, folder fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, rc.to_json(), 0o600)


def store_first_config(state: FleetState, running: RunningConfigFile, dev: str, env: Envelope,
                       desired: ConfigDesired) -> RunningConfig:
    """Keep the verified config an enrollment approval carried: its seq, then the file.

    The daemon applies it to the running parts when it starts and then reports it.
    """
    assert env.seq is not None
    last_seq, _, _ = state.last(dev, CONFIG_STREAM)
    if last_seq is None or env.seq > last_seq:
        state.accept(dev, CONFIG_STREAM, env.seq, env.id, state="applied")
    rc = RunningConfig(version=desired.version, hash=desired.hash, settings=desired.settings,
                       seq=env.seq, env_id=env.id, dev=dev, reported=False)
    running.save(rc)
    return rc


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Part:
    """One running part's apply function: takes the whole settings, may raise to refuse.

    ``None`` fields mean "the device's own value" (its TOML): a part applies its base
    config updated with the fields that are set, so removing a setting at central restores
    the local value.
    """

    name: str
    apply: Callable[[RemoteSettings], Awaitable[None] | None]

    async def __call__(self, settings: RemoteSettings) -> None:
        """Apply (awaiting it if the part is asynchronous)."""
        result = self.apply(settings)
        if inspect.isawaitable(result):
            await result


class RemoteConfigService:
    """Receives, checks, applies and reports the signed desired config of this device."""

    def __init__(
        self,
        link: ResultLink,
        state: FleetState,
        running: RunningConfigFile,
        *,
        dev: str,
        keys: Iterable[Ed25519PublicKey],
        parts: Iterable[Part] = (),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.link = link
        self.stream = SignedStream(state, CONFIG_STREAM, dev=dev, keys=keys, clock=clock)
        self.file = running
        self.dev = dev
        self.parts = list(parts)
        self.current = running.load(dev)
        self._lock = asyncio.Lock()
        # Messages wait until start() has applied the stored settings to the parts: the
        # retained copy arrives as soon as the uplink connects, maybe before that.
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Every report made, newest last (tests and the log read it).
        self.reports: list[dict[str, Any]] = []

    def attach(self, uplink: Any) -> None:
        """Register for ``down/config`` (before ``uplink.start()``: the copy is retained)."""
        uplink.on_message("config", self.on_message)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Apply the stored settings to the parts; report a config not reported yet."""
        try:
            await self._start()
        finally:
            self._ready.set()

    async def _start(self) -> None:
        async with self._lock:
            failed = await self._apply_all(self.current.settings, RemoteSettings())
            if failed is not None:
                name, exc = failed
                log.error("stored remote settings refused by %s at start (%s): running on "
                          "the local configuration", name, exc)
                if self.current.version:
                    await self._report(ConfigReport(
                        version=self.current.version, hash=self.current.hash, status="failed",
                        running_version=0, running_hash=None, code="apply_refused",
                        message=_short(f"{name}: {exc}"), message_zh="设备无法应用该配置"),
                        self.current.env_id)
                # The file stays: the next start (a scanner plugged in again) tries it again.
                self.current = RunningConfig()
                return
            if not self.current.reported and self.current.version:
                await self._report(ConfigReport(
                    version=self.current.version, hash=self.current.hash, status="applied",
                    running_version=self.current.version, running_hash=self.current.hash),
                    self.current.env_id)
                self.current = replace(self.current, reported=True)
                await asyncio.to_thread(self.file.save, self.current)

    async def stop(self) -> None:
        """Wait for the message being handled (briefly), cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5)
            for t in pending:
                t.cancel()

    # -- inbound -----------------------------------------------------------------------------
    def on_message(self, msg: InboundMessage) -> None:
        """The uplink's handler (synchronous: the work runs in a task of ours)."""
        task = asyncio.get_running_loop().create_task(self.handle(msg.payload),
                                                      name="remote-config")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("remote config handling failed", exc_info=task.exception())

    async def handle(self, payload: bytes) -> ConfigReport | None:
        """Check, record, apply and report one ``config.desired``; the report (None: none)."""
        await self._ready.wait()
        async with self._lock:
            return await self._handle(payload)

    async def _handle(self, payload: bytes) -> ConfigReport | None:
        try:
            env = decode(payload)
        except ProtocolError as exc:
            return await self._reject(None, 0, None, Rejection(
                "invalid", f"undecodable ({exc.code})", "消息格式错误"))
        version, hash_ = _peek(env.body)
        if env.type != TYPE_CONFIG_DESIRED:
            return await self._reject(env.id, version, hash_, Rejection(
                "invalid", f"{env.type} on down/config", "消息类型错误"))
        last_seq, last_id, last_state = self.stream.last()
        resume = False
        if env.id == last_id and env.seq == last_seq:
            if last_state != "accepted":
                log.debug("config %s (seq %s) already handled: ignored", env.id, env.seq)
                return None
            resume = True  # recorded, then the device went down before applying it
        # Resuming, the recorded seq is this message's own: the guard must let it pass.
        probe = last_seq if not resume or last_seq is None else last_seq - 1
        try:
            seq = self.stream.verify(env, last_seq=probe, use_stored=False)
            try:
                desired = ConfigDesired.model_validate(env.body)
            except ValidationError as exc:
                raise Rejection("invalid", f"invalid config.desired ({exc.error_count()} "
                                "errors)", "配置内容无效") from None
        except Rejection as rej:
            return await self._reject(env.id, version, hash_, rej)
        if not resume:
            await asyncio.to_thread(self.stream.accept, env, seq)  # durable before acting
        return await self._apply(env, seq, desired)

    async def _apply(self, env: Envelope, seq: int, desired: ConfigDesired) -> ConfigReport:
        previous = self.current
        failed = await self._apply_all(desired.settings, previous.settings)
        if failed is not None:
            name, exc = failed
            log.warning("config version %d refused by %s: %s (kept version %d)",
                        desired.version, name, exc, previous.version)
            await asyncio.to_thread(self.stream.state.set_state, self.dev, CONFIG_STREAM,
                                    env.id, "failed")
            return await self._report(ConfigReport(
                version=desired.version, hash=desired.hash, status="failed",
                running_version=previous.version, running_hash=previous.hash,
                code=getattr(exc, "code", None) or "apply_refused",
                message=_short(f"{name}: {exc}"), message_zh="设备无法应用该配置，仍使用原配置"),
                env.id)
        self.current = RunningConfig(version=desired.version, hash=desired.hash,
                                     settings=desired.settings, seq=seq, env_id=env.id,
                                     dev=self.dev, reported=True)
        await asyncio.to_thread(self.file.save, self.current)
        await asyncio.to_thread(self.stream.state.set_state, self.dev, CONFIG_STREAM, env.id,
                                "applied")
        log.info("config version %d applied (seq %d)", desired.version, seq)
        return await self._report(ConfigReport(
            version=desired.version, hash=desired.hash, status="applied",
            running_version=desired.version, running_hash=desired.hash), env.id)

    async def _apply_all(self, new: RemoteSettings, previous: RemoteSettings
                         ) -> tuple[str, Exception] | None:
        """Apply ``new`` to every part; on a refusal put ``previous`` back and say who."""
        done: list[Part] = []
        for part in self.parts:
            try:
                await part(new)
            except Exception as exc:
                for back in reversed([*done, part]):
                    try:
                        await back(previous)
                    except Exception:
                        log.exception("could not restore %s after a refused config", back.name)
                return part.name, exc
            done.append(part)
        return None

    async def _reject(self, env_id: str | None, version: int, hash_: str | None,
                      rej: Rejection) -> ConfigReport:
        log.warning("config message rejected: %s (%s)", rej.code, rej)
        return await self._report(ConfigReport(
            version=version, hash=hash_, status="rejected",
            running_version=self.current.version, running_hash=self.current.hash,
            code=rej.code, message=_short(rej.message), message_zh=rej.message_zh), env_id)

    async def _report(self, report: ConfigReport, corr: str | None) -> ConfigReport:
        body = dump_body(report)
        self.reports.append(body)
        try:
            await self.link.publish_result(TYPE_CONFIG_REPORT, body, corr=corr)  # type: ignore[arg-type]
        except Exception as exc:  # the uplink is closed (shutting down): logged, not raised
            log.warning("config report not queued: %s", getattr(exc, "message", exc))
        return report


def _peek(body: dict[str, Any]) -> tuple[int, str | None]:
    """Version and hash of a body that may not validate (for the report)."""
    v = body.get("version")
    h = body.get("hash")
    version = v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**53 else 0
    ok = isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    return version, h if ok else None


def _short(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text)
    return cleaned[:400]

