"""Signed commands from central, the device side (docs/fleet-trust.md, "Signed commands").

Central publishes ``cmd`` on ``ykt/v1/dev/{dev}/down/cmd`` (QoS 1), signed, with ``seq``
(its own stream: a :class:`~edge.fleet.remote.SignedStream` apart from the config's) and
``exp``. :class:`CommandRunner`:

1. checks signature, device, seq, expiry, ``exp`` present and the body (``Command``); a
   failure is answered ``rejected`` (``bad_signature``, ``wrong_device``, ``replay``,
   ``expired``, ``invalid``) and nothing runs;
2. records the seq and the command in the journal in one fsynced commit **before** anything
   else (a power cut after that never makes it, or an older one, acceptable again) and
   reports ``delivered``;
3. a disruptive command (``reboot``, ``service.restart``, ``printer.test``,
   ``reader.selftest``, ``update.install``) while a card session is open or a payment is
   unresolved reports ``waiting`` and runs once the device is idle — or ends ``expired`` at
   ``exp``; so does ``cert.rotate`` (it restarts the uplink). Idle and ``exp`` are checked
   again right before the command runs, under the lock that runs one command at a time;
4. reports ``in_progress`` (journal first), runs, and reports ``succeeded`` / ``failed``
   with its output.

``update.install`` (docs/updates.md) downloads and verifies at once, before it waits for
an idle device; it installs and restarts once idle, and stays ``in_progress`` across the
restart: the new version settles it (``succeeded`` once committed) or the old one after a
rollback (``failed`` with the reason). Its progress is ``update.status`` (edge/update/).

At-most-once: a command the journal holds is never run again. After a restart, one that had
not finished is reported ``failed`` (``interrupted``) — except a ``reboot`` or a restart of
this daemon that was in progress: the restart *was* the command, so it ``succeeded``.
A redelivered command (central re-sends after a birth) gets its current state again.

Reports are ``cmd.result`` on ``up/result`` through the uplink's durable outbox.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge.fleet.identity import (
    FleetState,
    Identity,
    IdentityError,
    IdentityStore,
    check_certificate,
    make_csr,
    new_key,
)
from edge.fleet.remote import CMD_STREAM, Rejection, ResultLink, SignedStream
from yikatong.common.errors import LocalizedError
from yikatong.common.logging import JsonFormatter, MaskingFilter
from yikatong.mqtt.session import InboundMessage
from yikatong.protocol.envelope import Envelope, decode, parse_ts
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import (
    DISRUPTIVE_COMMANDS,
    FINAL_COMMAND_STATES,
    TYPE_CMD,
    TYPE_CMD_RESULT,
    Command,
    CommandResult,
)
from yikatong.protocol.messages import dump_body

__all__ = [
    "CommandContext",
    "CommandFailed",
    "CommandPending",
    "CommandRunner",
    "LogRing",
    "SystemExecutor",
    "SystemctlExecutor",
    "log_bundle",
]

log = logging.getLogger(__name__)

#: Journal states in which a command still has something to do.
_OPEN = frozenset({"delivered", "waiting", "in_progress"})
#: Commands that wait for an idle device: the disruptive ones, and cert.rotate (it restarts
#: the uplink, which a request of a patient's session would see drop).
_WAITS_FOR_IDLE = DISRUPTIVE_COMMANDS | {"cert.rotate"}
#: The most a ``device.log_bundle`` may carry (LogBundleReq.gzip_b64).
_MAX_B64 = 180_000


class CommandFailed(LocalizedError):
    """A command ran and did not succeed; ``code`` and ``output`` go into the report."""

    code = "command_failed"

    def __init__(self, code: str, message: str, message_zh: str,
                 output: dict[str, Any] | None = None) -> None:
        super().__init__(message, message_zh, reason=code)
        self.code = code
        self.output = output or {}


class CommandPending(LocalizedError):
    """A handler is done for now; the command stays ``in_progress`` and is settled later
    (:meth:`CommandRunner.settle`), e.g. by the new version after an update's restart."""

    code = "pending"

    def __init__(self, output: dict[str, Any] | None = None) -> None:
        super().__init__("the command continues after a restart", "指令将在重启后继续")
        self.output = output or {}


# --------------------------------------------------------------------------- log ring


class LogRing(logging.Handler):
    """The daemon's last log records, masked, in memory (``logs.collect`` reads them).

    There is no log file on the device (stdout goes to journald, which the service user
    cannot read): this bounded ring is what a technician can ask for. Records pass the same
    masking filter as stdout, so ID numbers, phones, payment codes and names never get in.
    """

    def __init__(self, capacity: int = 5000) -> None:
        super().__init__(logging.NOTSET)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.addFilter(MaskingFilter())
        self.setFormatter(JsonFormatter("edge"))

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the formatted record."""
        try:
            self.lines.append(self.format(record))
        except Exception:  # never let logging fail the caller
            self.handleError(record)

    def tail(self, n: int) -> list[str]:
        """The last ``n`` lines, oldest first."""
        return list(self.lines)[-n:] if n > 0 else []


def log_bundle(lines: list[str], max_b64: int = _MAX_B64) -> tuple[int, str]:
    """``(lines kept, base64 of gzip)`` of ``lines``, oldest dropped until it fits.

    CPU work (run it in a thread): when the whole does not fit, the cut is sized with the
    compression ratio just measured, so it is compressed about twice, not once per 10 %.
    """
    keep = list(lines)
    b64 = _gzip_b64(keep)
    while len(b64) > max_b64 and keep:
        raw = sum(len(line.encode("utf-8")) + 1 for line in keep)
        budget = max_b64 * raw / len(b64) * 0.97  # raw bytes that should fit, with margin
        n, size = 0, 0
        for line in reversed(keep):
            size += len(line.encode("utf-8")) + 1
            if size > budget:
                break
            n += 1
        n = min(n, len(keep) - 1)  # at least one line less each round
        keep = keep[len(keep) - n:] if n else []
        b64 = _gzip_b64(keep)
    return len(keep), b64


def _gzip_b64(lines: list[str]) -> str:
    data = ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")
    return base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")


# --------------------------------------------------------------------------- system


class SystemExecutor(Protocol):
    """Reboots the machine and restarts services (tests record instead)."""

    async def reboot(self) -> None:
        """Reboot the machine."""

    async def restart(self, unit: str) -> None:
        """Restart a systemd unit."""


class SystemctlExecutor:
    """The real one: ``systemctl reboot`` / ``systemctl --no-block restart UNIT``.

    ``ykt`` runs unprivileged: the site image grants these two actions to the service user
    with a polkit rule (units ``ykt-edge.service`` and ``ykt-kiosk.service`` only).
    ``--no-block``: restarting ``ykt-edge`` stops this very process.
    """

    async def _run(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "systemctl", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        if proc.returncode != 0:
            text = out.decode("utf-8", "replace").strip()[-300:]
            raise CommandFailed("systemctl_failed", f"systemctl {' '.join(args)}: {text}",
                                "系统命令执行失败")

    async def reboot(self) -> None:
        """Reboot the machine."""
        await self._run("reboot")

    async def restart(self, unit: str) -> None:
        """Restart ``unit`` without waiting for the job."""
        await self._run("--no-block", "restart", unit)


# --------------------------------------------------------------------------- context


@dataclass
class CommandContext:
    """What the commands act on; a part that is missing makes its command fail cleanly."""

    executor: SystemExecutor
    #: Why the device is not idle now (see ``EdgeRuntime.busy_reason``), or None.
    busy: Callable[[], str | None] = lambda: None
    printer: Any = None          # PrinterService
    cards: Any = None            # CardService
    hotlist_sync: Any = None     # HotlistSync
    uplink: Any = None           # Uplink (requests; stop/start to take a new certificate)
    identity_store: IdentityStore | None = None
    identity: Identity | None = None
    log_ring: LogRing | None = None
    units: dict[str, str] = field(default_factory=lambda: {"edge": "ykt-edge.service",
                                                           "kiosk": "ykt-kiosk.service"})
    version: str = ""
    timezone: str = "Asia/Shanghai"
    #: Sets the root log level (``log.level``).
    set_log_level: Callable[[str], None] = lambda level: logging.getLogger().setLevel(
        level.upper())
    #: Seconds to wait for the uplink to connect with a new certificate.
    reconnect_timeout_s: float = 30.0
    #: Software updates (``edge.update.service.UpdateService``); None: not on this device.
    updates: Any = None


Handler = Callable[[Command], Awaitable[dict[str, Any]]]


class CommandRunner:
    """Receives, checks, journals, runs and reports this device's signed commands."""

    def __init__(
        self,
        link: ResultLink,
        state: FleetState,
        ctx: CommandContext,
        *,
        dev: str,
        keys: Iterable[Ed25519PublicKey],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        idle_poll_s: float = 1.0,
        timeout_s: float = 300.0,
    ) -> None:
        self.link = link
        self.stream = SignedStream(state, CMD_STREAM, dev=dev, keys=keys, clock=clock)
        self.state = state
        self.ctx = ctx
        self.dev = dev
        self.clock = clock
        self.idle_poll_s = idle_poll_s
        self.timeout_s = timeout_s
        self._run_lock = asyncio.Lock()
        self._accept_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        # New commands wait until recover() has settled what a restart interrupted.
        self._ready = asyncio.Event()
        #: Every report made, newest last (tests and the log read it).
        self.reports: list[dict[str, Any]] = []
        self.handlers: dict[str, Handler] = {
            "reboot": self._reboot, "service.restart": self._service_restart,
            "printer.test": self._printer_test, "reader.selftest": self._reader_selftest,
            "logs.collect": self._logs_collect, "cert.rotate": self._cert_rotate,
            "log.level": self._log_level, "hotlist.refresh": self._hotlist_refresh,
            "update.install": self._update_install,
        }
        #: Envelope ids of commands being run (handlers that report on their own need them).
        self._corr: dict[str, str] = {}

    def attach(self, uplink: Any) -> None:
        """Register for ``down/cmd`` (before ``uplink.start()``)."""
        uplink.on_message("cmd", self.on_message)

    # -- lifecycle ---------------------------------------------------------------------------
    async def recover(self) -> None:
        """Report what became of commands a restart interrupted (never runs them again)."""
        try:
            await self._recover()
        finally:
            self._ready.set()

    async def _recover(self) -> None:
        for rec in await asyncio.to_thread(self.state.unfinished, self.dev,
                                           FINAL_COMMAND_STATES):
            restarted = rec.state == "in_progress" and (
                rec.name == "reboot"
                or (rec.name == "service.restart" and rec.args.get("service") == "edge"))
            if rec.name == "update.install" and self.ctx.updates is not None:
                outcome = self.ctx.updates.interrupted(rec)
                if outcome is None:  # its trial runs: the health check settles it
                    continue
                state, code, msg, msg_zh = outcome
            elif restarted:
                state, code, msg, msg_zh = ("succeeded", None, "restarted", "已重启")
            else:
                state, code, msg, msg_zh = ("failed", "interrupted",
                                            f"the daemon restarted while it was {rec.state}",
                                            "设备重启，指令未完成")
            await asyncio.to_thread(self.state.command_state, rec.command_id, state, code=code)
            log.info("command %s %s after a restart: %s", rec.name, rec.command_id, state)
            await self._report(rec.env_id, CommandResult.model_validate({
                "command_id": rec.command_id, "name": rec.name, "seq": rec.seq,
                "state": state, "code": code, "message": msg[:400], "message_zh": msg_zh}))

    async def settle(self, command_id: str, state: str, *, code: str | None = None,
                     message: str | None = None, message_zh: str | None = None,
                     output: dict[str, Any] | None = None) -> None:
        """Give a pending command (``in_progress`` across a restart) its final state."""
        rec = await asyncio.to_thread(self.state.command, command_id)
        if rec is None or rec.state in FINAL_COMMAND_STATES:
            return
        await asyncio.to_thread(self.state.command_state, command_id, state, code=code,
                                output=_output(output))
        await self._report(rec.env_id, CommandResult.model_validate({
            "command_id": command_id, "name": rec.name, "seq": rec.seq, "state": state,
            "code": code, "message": None if message is None else message[:400],
            "message_zh": message_zh, "output": _output(output)}))

    async def stop(self) -> None:
        """Cancel commands still waiting or running (the journal says where they were)."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- inbound -----------------------------------------------------------------------------
    def on_message(self, msg: InboundMessage) -> None:
        """The uplink's handler (synchronous: the work runs in a task of ours)."""
        self._spawn(self.handle(msg.payload))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("command handling failed", exc_info=task.exception())

    async def handle(self, payload: bytes) -> None:
        """Check and journal one ``cmd``, then run it to its end (waiting for idle if need be)."""
        await self._ready.wait()
        async with self._accept_lock:  # one at a time through the checks: seq order holds
            accepted = await self._accept(payload)
        if accepted is not None:
            env, seq, cmd = accepted
            await self._execute(env, seq, cmd)

    async def _accept(self, payload: bytes) -> tuple[Envelope, int, Command] | None:
        try:
            env = decode(payload)
        except ProtocolError as exc:
            await self._reject(None, {}, Rejection("invalid", f"undecodable ({exc.code})",
                                                   "消息格式错误"))
            return None
        body = env.body
        if env.type != TYPE_CMD:
            await self._reject(env, body, Rejection("invalid", f"{env.type} on down/cmd",
                                                    "消息类型错误"))
            return None
        try:
            seq = self.stream.verify(env)
        except Rejection as rej:
            if rej.code == "replay" and await self._redelivered(env):
                return None
            await self._reject(env, body, rej)
            return None
        try:
            cmd = Command.model_validate(body)
        except ValidationError as exc:
            await self._reject(env, body, Rejection(
                "invalid", f"invalid cmd ({exc.error_count()} errors)", "指令内容无效"))
            return None
        if await asyncio.to_thread(self.state.command, cmd.command_id) is not None:
            await self._reject(env, body, Rejection("replay", "command id already seen",
                                                    "指令编号重复"))
            return None
        # Durable before anything happens: seq and journal entry in one fsynced commit.
        await asyncio.to_thread(self.stream.accept, env, seq, state="delivered", command={
            "command_id": cmd.command_id, "name": cmd.name, "args": cmd.args, "exp": env.exp})
        log.info("command %s %s accepted (seq %d)", cmd.name, cmd.command_id, seq)
        await self._report(env.id, CommandResult(command_id=cmd.command_id, name=cmd.name,
                                                 seq=seq, state="delivered"))
        return env, seq, cmd

    async def _redelivered(self, env: Envelope) -> bool:
        """A command we already have (same envelope): say its state again; True if so."""
        cid = env.body.get("command_id")
        rec = await asyncio.to_thread(self.state.command, cid) if isinstance(cid, str) else None
        if rec is None or rec.env_id != env.id:
            return False
        log.info("command %s delivered again: still %s", rec.command_id, rec.state)
        await self._report(env.id, CommandResult.model_validate({
            "command_id": rec.command_id, "name": rec.name, "seq": rec.seq,
            "state": rec.state, "code": rec.code, "output": _output(rec.output)}))
        return True

    async def _reject(self, env: Envelope | None, body: dict[str, Any], rej: Rejection) -> None:
        log.warning("command rejected: %s (%s)", rej.code, rej)
        cid = body.get("command_id")
        name = body.get("name")
        await self._report(env.id if env is not None else None, CommandResult(
            command_id=cid if isinstance(cid, str) and _is_command_id(cid) else None,
            name=name[:64] if isinstance(name, str) and name.isprintable() and name else None,
            seq=env.seq if env is not None else None, state="rejected", code=rej.code,
            message=rej.message[:400], message_zh=rej.message_zh))

    # -- running -------------------------------------------------------------------------------
    async def _execute(self, env: Envelope, seq: int, cmd: Command) -> None:
        result = CommandResult(command_id=cmd.command_id, name=cmd.name, seq=seq,
                               state="in_progress")
        waits_for_idle = cmd.name in _WAITS_FOR_IDLE
        waiting = [False]  # "waiting" reported already (once per command)
        self._corr[cmd.command_id] = env.id
        try:
            await self._execute_idle(env, seq, cmd, result, waits_for_idle=waits_for_idle,
                                     waiting=waiting)
        finally:
            self._corr.pop(cmd.command_id, None)

    async def _execute_idle(self, env: Envelope, seq: int, cmd: Command, result: CommandResult,
                            *, waits_for_idle: bool, waiting: list[bool]) -> None:
        if cmd.name == "update.install" and not await self._prepare_update(env, result, cmd):
            return  # download or verification refused: reported failed
        while True:
            if waits_for_idle and not await self._wait_idle(env, seq, cmd, waiting):
                return
            async with self._run_lock:
                # Checked again under the lock, right before running: another command may
                # have held it (cert.rotate: minutes) while a card went in or exp passed.
                if self._past_exp(env):
                    await self._expire(env, seq, cmd, "expired",
                                       message="it expired while another command ran",
                                       message_zh="等待其他指令执行期间已过期")
                    return
                if waits_for_idle and (reason := self.ctx.busy()) is not None:
                    await self._report_waiting(env, seq, cmd, reason, waiting)
                    continue  # the lock is released: wait for idle again
                await self._set(env, result)
                output = await self._run_handler(env, result, cmd)
            if output is not None:
                await self._set(env, result.model_copy(update={"state": "succeeded",
                                                               "output": _output(output)}))
            return

    async def _prepare_update(self, env: Envelope, result: CommandResult, cmd: Command) -> bool:
        """``update.install``'s download and verification, before any wait for idle."""
        from edge.update.slots import UpdateError

        updates = self.ctx.updates
        try:
            if updates is None:
                raise CommandFailed("unsupported", "no software updates on this device",
                                    "本机不支持软件更新")
            await updates.prepare(cmd, env.id)
        except (UpdateError, CommandFailed) as exc:
            log.warning("update %s refused: %s", cmd.args.get("version"), exc.message)
            await self._set(env, result.model_copy(update={
                "state": "failed", "code": exc.code, "message": exc.message[:400],
                "message_zh": exc.message_zh}))
            return False
        except Exception as exc:
            log.exception("update download crashed")
            await self._set(env, result.model_copy(update={
                "state": "failed", "code": "error",
                "message": f"{type(exc).__name__}: {exc}"[:400], "message_zh": "执行出错"}))
            return False
        return True

    async def _run_handler(self, env: Envelope, result: CommandResult,
                           cmd: Command) -> dict[str, Any] | None:
        """Run the command (``in_progress`` reported); its output, or None (failure reported,
        or the command stays ``in_progress``: :class:`CommandPending`)."""
        try:
            async with asyncio.timeout(self.timeout_s):  # not wait_for: keeps a cancel
                return await self.handlers[cmd.name](cmd)
        except CommandPending as pending:
            log.info("command %s %s in progress until settled", cmd.name, cmd.command_id)
            await self._set(env, result.model_copy(update={"output": _output(pending.output)}))
        except CommandFailed as exc:
            log.warning("command %s failed: %s", cmd.name, exc.message)
            await self._set(env, result.model_copy(update={
                "state": "failed", "code": exc.code, "message": exc.message[:400],
                "message_zh": exc.message_zh, "output": _output(exc.output)}))
        except TimeoutError:
            await self._set(env, result.model_copy(update={
                "state": "failed", "code": "timeout", "message": "did not finish in time",
                "message_zh": "执行超时"}))
        except Exception as exc:
            log.exception("command %s crashed", cmd.name)
            await self._set(env, result.model_copy(update={
                "state": "failed", "code": "error",
                "message": f"{type(exc).__name__}: {exc}"[:400], "message_zh": "执行出错"}))
        return None

    def _past_exp(self, env: Envelope) -> bool:
        return env.exp is not None and self.clock() >= parse_ts(env.exp)

    async def _expire(self, env: Envelope, seq: int, cmd: Command, code: str, *,
                      message: str, message_zh: str) -> None:
        log.info("command %s %s expired: %s", cmd.name, cmd.command_id, message)
        await self._set(env, CommandResult(
            command_id=cmd.command_id, name=cmd.name, seq=seq, state="expired", code=code,
            message=message, message_zh=message_zh))

    async def _report_waiting(self, env: Envelope, seq: int, cmd: Command, reason: str,
                              waiting: list[bool]) -> None:
        if waiting[0]:
            return
        waiting[0] = True
        log.info("command %s waits: %s", cmd.name, reason)
        await self._set(env, CommandResult(
            command_id=cmd.command_id, name=cmd.name, seq=seq, state="waiting",
            code=reason, message=f"waiting until the device is idle ({reason})",
            message_zh="等待设备空闲后执行"))

    async def _wait_idle(self, env: Envelope, seq: int, cmd: Command,
                         waiting: list[bool] | None = None) -> bool:
        """Wait until nobody is served; False (reported ``expired``) if ``exp`` comes first.

        ``waiting[0]``: ``waiting`` was reported already (it is reported once, then set).
        """
        waiting = [False] if waiting is None else waiting
        while True:
            reason = self.ctx.busy()
            if reason is None:
                return True
            if self._past_exp(env):
                await self._expire(env, seq, cmd, "not_idle",
                                   message=f"the device was never idle ({reason})",
                                   message_zh="设备一直在服务患者，指令已过期")
                return False
            await self._report_waiting(env, seq, cmd, reason, waiting)
            await asyncio.sleep(self.idle_poll_s)

    async def _set(self, env: Envelope, result: CommandResult) -> None:
        """Journal the state (fsynced), then report it."""
        assert result.command_id is not None
        await asyncio.to_thread(self.state.command_state, result.command_id, result.state,
                                code=result.code, output=result.output)
        await self._report(env.id, result)

    async def _report(self, corr: str | None, result: CommandResult) -> None:
        body = dump_body(result)
        self.reports.append(body)
        try:
            await self.link.publish_result(TYPE_CMD_RESULT, body, corr=corr)  # type: ignore[arg-type]
        except Exception as exc:  # the uplink is closed (shutting down): the journal has it
            log.warning("command report not queued: %s", getattr(exc, "message", exc))

    # -- the commands --------------------------------------------------------------------------
    async def _reboot(self, cmd: Command) -> dict[str, Any]:
        await self.ctx.executor.reboot()
        return {"action": "reboot"}

    async def _service_restart(self, cmd: Command) -> dict[str, Any]:
        unit = self.ctx.units[str(cmd.args["service"])]
        await self.ctx.executor.restart(unit)
        return {"unit": unit}

    async def _printer_test(self, cmd: Command) -> dict[str, Any]:
        from edge.devices.printer.documents import TestPage

        printer = _need(self.ctx.printer, "printer")
        doc = TestPage(device_id=self.dev, version=self.ctx.version or "?",
                       printed_at=self.clock().astimezone(ZoneInfo(self.ctx.timezone)),
                       note="远程测试 / remote test")
        try:
            outcome = await printer.print(doc, job_id=f"test-{cmd.command_id}")
        except Exception as exc:
            raise CommandFailed(getattr(exc, "reason", None) or "printer_error",
                                getattr(exc, "message", str(exc)), "打印机故障") from exc
        out = {"job_id": outcome.job_id, "state": outcome.state, "reason": outcome.reason}
        if outcome.state != "printed":
            raise CommandFailed(outcome.reason or "not_printed", outcome.message,
                                outcome.message_zh, out)
        return out

    async def _reader_selftest(self, cmd: Command) -> dict[str, Any]:
        cards = _need(self.ctx.cards, "card service")
        health = cards.health()
        # Opens the SAM if no card was read yet (the command waits for an idle terminal).
        sam = await cards.probe_sam()
        reader = health.get("patient_reader")
        out = {"reader_present": bool(health.get("reader_present")),
               "reader": reader,
               "card_present": reader is not None and reader in cards.cards,
               "sam_state": sam.get("state"),
               "sam_reader": sam.get("reader"),
               "sam_terminal": sam.get("terminal_number")}
        if not out["reader_present"] or out["sam_state"] != "ok":
            raise CommandFailed("selftest_failed",
                                f"reader present: {out['reader_present']}, SAM: {out['sam_state']}",
                                "读卡器或安全模块异常", out)
        return out

    async def _logs_collect(self, cmd: Command) -> dict[str, Any]:
        ring = _need(self.ctx.log_ring, "log ring")
        uplink = _need(self.ctx.uplink, "uplink")
        wanted = int(cmd.args.get("lines", 500))
        kept, b64 = await asyncio.to_thread(log_bundle, ring.tail(wanted))
        result = await uplink.request("device.log_bundle", {
            "command_id": cmd.command_id, "lines": kept, "gzip_b64": b64}, timeout=60)
        return {"lines": kept, "size": int(getattr(result, "size", 0)),
                "sha256": str(getattr(result, "sha256", ""))}

    async def _log_level(self, cmd: Command) -> dict[str, Any]:
        level = str(cmd.args["level"])
        self.ctx.set_log_level(level)
        return {"level": level}

    async def _hotlist_refresh(self, cmd: Command) -> dict[str, Any]:
        sync = _need(self.ctx.hotlist_sync, "hot list sync")
        applied = await sync.sync_once()
        return {"applied": bool(applied), "version": int(sync.hotlist.version)}

    async def _update_install(self, cmd: Command) -> dict[str, Any]:
        """Install the bundle :meth:`_prepare_update` fetched, switch, restart (docs/updates.md).

        The device is idle (the runner waited). The command stays ``in_progress``: the
        restarted daemon settles it after its health check (:class:`CommandPending`).
        """
        from edge.update.slots import UpdateError

        updates = _need(self.ctx.updates, "software updates")
        try:
            output = await updates.install(cmd, self._corr.get(cmd.command_id, ""))
        except UpdateError as exc:
            raise CommandFailed(exc.code, exc.message, exc.message_zh) from exc
        raise CommandPending(output)

    async def _cert_rotate(self, cmd: Command) -> dict[str, Any]:
        """New key, CSR, ``device.cert_renew``; switch once idle; keep the old until connected.

        :meth:`_execute` waits for an idle device before this starts (bounded by ``exp``).
        The switch (files, uplink restart) runs to its end even if the command's timeout or
        a cancel lands meanwhile: see :meth:`_switch_identity`.
        """
        store = _need(self.ctx.identity_store, "identity")
        ident = _need(self.ctx.identity, "identity")
        uplink = _need(self.ctx.uplink, "uplink")
        key = new_key()
        csr = make_csr(key, self.dev).decode()
        renewed = await uplink.request("device.cert_renew",
                                       {"csr": csr, "command_id": cmd.command_id}, timeout=60)
        cert, chain = renewed.cert.encode(), renewed.chain.encode()
        try:
            check_certificate(cert, key, self.dev)
        except IdentityError as exc:
            raise CommandFailed(exc.reason, exc.message, exc.message_zh) from exc
        # The uplink reconnects to take the new certificate: not while a patient is served
        # (a request in flight would see the link drop). A card inserted during the request
        # above: wait again (bounded by the timeout; nothing has changed yet).
        while self.ctx.busy() is not None:  # noqa: ASYNC110 - polled: no event says "idle"
            await asyncio.sleep(self.idle_poll_s)
        switch = asyncio.ensure_future(self._switch_identity(store, uplink, key, cert=cert,
                                                             chain=chain, ident=ident))
        cancelled: asyncio.CancelledError | None = None
        while not switch.done():
            try:
                await asyncio.wait({switch})  # a cancel here does not cancel the switch
            except asyncio.CancelledError as exc:
                cancelled = exc  # the timeout or a stop: let the switch settle first
        if cancelled is not None:
            if not switch.cancelled():
                switch.exception()  # retrieved (its outcome is logged): asyncio stays quiet
            raise cancelled
        return switch.result()

    async def _switch_identity(self, store: IdentityStore, uplink: Any, key: Any, *,
                               cert: bytes, chain: bytes, ident: Identity) -> dict[str, Any]:
        """Put the new identity in place and reconnect; go back to the old one if it fails.

        Never left half done: the uplink is always started again, and the ``*.old`` files
        are always settled (dropped once connected with the new certificate, else restored).
        """
        new: Identity | None = None
        connected = False
        try:
            new = await asyncio.to_thread(store.rotate, key, cert, chain, ident)
            connected = await self._reconnect(uplink)
        except Exception:
            log.exception("switching to the new certificate failed")
        if connected and new is not None:
            self.ctx.identity = new
            try:
                await asyncio.to_thread(store.drop_old)
            except OSError as exc:  # IdentityStore.recover() drops them at the next start
                log.warning("old identity files not removed: %s", exc)
            log.info("now connected with certificate %s (until %s)", new.cert_serial,
                     new.not_after)
            return {"cert_serial": new.cert_serial, "not_after": new.not_after}
        log.error("the new certificate did not connect: back to the old one")
        old: Identity | None = None
        try:
            old = await asyncio.to_thread(store.restore_old)
        except Exception:
            log.exception("restoring the old identity failed")
        finally:
            try:
                await self._reconnect(uplink)
            except Exception:
                log.exception("the uplink did not start again")
        self.ctx.identity = old or ident
        raise CommandFailed("new_certificate_refused",
                            "the uplink did not connect with the new certificate; the old "
                            "one is in use again", "新证书无法连接，已恢复原证书",
                            {"cert_serial": new.cert_serial if new is not None else None})

    async def _reconnect(self, uplink: Any) -> bool:
        """Restart the uplink (it reads the certificate files when it starts); connected?"""
        try:
            await uplink.stop()
        finally:
            await uplink.start()
        return bool(await uplink.wait_connected(self.ctx.reconnect_timeout_s))


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise CommandFailed("unsupported", f"no {what} on this device", "本机不支持该指令")
    return value


def _is_command_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _output(output: dict[str, Any] | None) -> dict[str, str | int | float | bool | None]:
    """An output dict the result model accepts (scalars, strings up to 400, 32 keys)."""
    out: dict[str, str | int | float | bool | None] = {}
    for k, v in list((output or {}).items())[:32]:
        if v is None or isinstance(v, bool | int | float):
            out[str(k)[:64]] = v
        else:
            out[str(k)[:64]] = str(v)[:400]
    return out

