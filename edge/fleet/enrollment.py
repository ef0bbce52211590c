"""Enrollment by claim, the device side (docs/fleet-trust.md, "Enrollment by claim").

A device with ``[enrollment]`` in edge.toml and no identity yet runs :class:`Enrollment`
before its uplink exists:

1. it takes the key a previous attempt left in ``data_dir/identity/device.key`` (a restart
   keeps the same request at central) or makes a new EC P-256 key, and a CSR with
   ``CN = serial``;
2. it connects to the enrollment broker as the claim account, client id = serial, TLS with
   the fleet chain of the claim bundle, subscribes ``ykt/v1/enroll/{serial}/cert`` and
   publishes ``enroll.csr`` (``dev = "enroll"``) on ``…/csr``, again every ``retry_s``
   (30 s) until central approves, and at once after every reconnect;
3. ``pending``: the pairing code goes to :class:`EnrollmentState` (served by the local API
   as ``GET /v1/enrollment``; the kiosk shows it full screen) and is printed once on the
   receipt printer (job id ``pairing-{code}``: the printer's durable job store prints a job
   id once, also across restarts);
4. ``approved``: the ``enroll.status`` envelope's signature (central's pinned signing key;
   every ``enroll.status`` is checked so) and the first ``config.desired`` in it —
   signature, ``dev`` = the new device id, seq, expiry, body — are checked *before*
   anything else in the message is trusted, then the certificate (our public key, CN = the
   device id, issued by the claim bundle's fleet CA or a CA of the chain it issued); the
   config is stored as the first applied one with its seq, the identity is
   written (``identity.json`` last), and the session to the enrollment broker ends;
5. ``rejected``: the reason is shown; after ``rejected_wait_s`` (10 min) it starts again
   with a new key. ``expired``: it asks again at once with a new key (a new request, so a
   new code).

Messages that do not decode, are not an ``enroll.status``, or whose approval does not check
out are logged and ignored: the claim credential is shared by a site's new devices, so
anything on the enrollment broker is untrusted until central's signature says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge.config import EnrollmentConfig
from edge.fleet.identity import (
    FleetState,
    Identity,
    IdentityError,
    IdentityStore,
    check_certificate,
    check_issuer,
    make_csr,
)
from edge.fleet.remote import CONFIG_STREAM, RunningConfigFile, store_first_config
from edge.runtime.events import EventBus
from edge.uplink.config import TlsConfig
from yikatong.common.config import ConfigError, read_secret
from yikatong.common.errors import LocalizedError
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import Envelope, decode, encode, new_envelope, parse_ts
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import (
    ENROLL_DEV,
    TYPE_CONFIG_DESIRED,
    TYPE_ENROLL_CSR,
    TYPE_ENROLL_STATUS,
    ConfigDesired,
    DeviceFacts,
    EnrollCsr,
    EnrollStatus,
)
from yikatong.protocol.signing import SeqGuard, verify_any, verify_command

__all__ = [
    "Enrollment",
    "EnrollmentError",
    "EnrollmentState",
    "detect_model",
    "detect_serial",
    "device_facts",
    "sanitise_serial",
]

log = logging.getLogger(__name__)

_SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EnrollmentError(LocalizedError):
    """Enrollment cannot start (no serial, unreadable claim files) or an answer is refused."""

    code = "enrollment_error"


# --------------------------------------------------------------------------- device facts


def sanitise_serial(raw: str) -> str | None:
    """``raw`` cut down to ``^[A-Za-z0-9][A-Za-z0-9_-]{2,63}$``, or None if too little is left."""
    kept = re.sub(r"[^A-Za-z0-9_-]", "", raw.strip())
    kept = kept.lstrip("_-")[:64]
    return kept if _SERIAL_RE.fullmatch(kept) else None


def detect_serial(cpuinfo: Path = Path("/proc/cpuinfo"),
                  machine_id: Path = Path("/etc/machine-id")) -> str:
    """The hardware serial: ``Serial`` of /proc/cpuinfo (a Pi's), else /etc/machine-id."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "serial":
                serial = sanitise_serial(value)
                if serial is not None and serial.strip("0"):
                    return serial
    with contextlib.suppress(OSError):
        serial = sanitise_serial(machine_id.read_text(errors="replace"))
        if serial is not None:
            return serial
    raise EnrollmentError("no hardware serial found: set enrollment.serial in edge.toml",
                          "未找到设备序列号，请在配置文件 enrollment.serial 中填写")


def detect_model(path: Path = Path("/proc/device-tree/model")) -> str:
    """The board's model (/proc/device-tree/model), else ``generic``."""
    with contextlib.suppress(OSError):
        text = _CONTROL.sub("", path.read_bytes().decode("utf-8", "replace")).strip()[:64]
        if text:
            return text
    return "generic"


def _mac() -> str | None:
    with contextlib.suppress(OSError):
        for iface in sorted(Path("/sys/class/net").iterdir()):
            if iface.name == "lo":
                continue
            with contextlib.suppress(OSError):
                mac = (iface / "address").read_text().strip().lower()
                if re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac) and mac.strip("0:"):
                    return mac
    return None


def device_facts(serial: str, model: str, *, printer: str | None = None,
                 version: str | None = None) -> DeviceFacts:
    """What the device tells the technician about itself when it asks to be enrolled."""
    host = _CONTROL.sub("", socket.gethostname())[:64] or None
    return DeviceFacts(serial=serial, model=model, mac=_mac(), hostname=host,
                       printer=printer, version=(version or "")[:64] or None)


# --------------------------------------------------------------------------- state


_TEXT = {
    "enrolling": ("Requesting this terminal's certificate from central.",
                  "正在向中心申请本机证书。"),
    "pending": ("Waiting for approval: give the pairing code to the administrator.",
                "等待管理员批准：请将配对码告知管理员。"),
    "rejected": ("The administrator rejected this terminal. It will ask again later.",
                 "管理员已拒绝本机的申请，稍后将重新申请。"),
    "enrolled": ("This terminal is enrolled.", "本机已完成注册。"),
}


class EnrollmentState:
    """Where enrollment stands, for ``GET /v1/enrollment`` and the kiosk's pairing screen.

    ``state``: ``enrolling`` (asking, no answer yet), ``pending`` (the code is shown),
    ``rejected`` (the reason is shown; it asks again later) or ``enrolled``. Every change is
    published on :attr:`bus` as an ``enrollment`` event.
    """

    def __init__(self, serial: str | None = None, *, state: str = "enrolling") -> None:
        self.bus = EventBus()
        self.state = state
        self.serial = serial
        self.code: str | None = None
        self.expires_at: str | None = None
        self.device_id: str | None = None
        self.retry_at: str | None = None
        self.message, self.message_zh = _TEXT.get(state, ("", ""))

    def update(self, state: str, *, message: str | None = None,
               message_zh: str | None = None, **fields: Any) -> None:
        """Move to ``state`` (fields not given keep their value) and tell the subscribers."""
        self.state = state
        default = _TEXT.get(state, ("", ""))
        self.message = message or default[0]
        self.message_zh = message_zh or default[1]
        for key, value in fields.items():
            setattr(self, key, value)
        self.bus.publish("enrollment", self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The API's answer."""
        return {"state": self.state, "code": self.code, "serial": self.serial,
                "expires_at": self.expires_at, "device_id": self.device_id,
                "retry_at": self.retry_at, "message": self.message,
                "message_zh": self.message_zh}


# --------------------------------------------------------------------------- the flow


class Enrollment:
    """Gets this device an identity from central; :meth:`run` returns it."""

    def __init__(
        self,
        cfg: EnrollmentConfig,
        store: IdentityStore,
        fleet_state: FleetState,
        running: RunningConfigFile,
        *,
        serial: str,
        facts: DeviceFacts,
        signing_keys: Iterable[Ed25519PublicKey],
        state: EnrollmentState | None = None,
        printer: Any = None,
        hospital_name: str = "",
        timezone: str = "Asia/Shanghai",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        session_factory: Callable[..., MqttSession] = MqttSession,
        backoff_s: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.fleet_state = fleet_state
        self.running = running
        topics.enroll(serial, "csr")  # raises BadTopic for a serial that cannot be a topic level
        self.serial = serial
        self.facts = facts
        self.keys = list(signing_keys)
        if not self.keys:
            raise EnrollmentError("no signing key: enrollment needs central's public key",
                                  "缺少中心签名公钥，无法注册")
        self.state = state or EnrollmentState(serial)
        self.state.serial = serial
        self.printer = printer
        self.hospital_name = hospital_name or "—"
        self.tz = ZoneInfo(timezone)
        self._clock = clock
        self._session_factory = session_factory
        self._backoff = backoff_s
        self._printed: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Counters for tests and the log: csr_sent, ignored, pending, rejected, expired.
        self.stats: dict[str, int] = {"csr_sent": 0, "ignored": 0, "pending": 0,
                                      "rejected": 0, "expired": 0, "attempts": 0}

    def _password(self) -> str:
        """The claim password, read as every secret is (missing, empty, world-readable: no)."""
        try:
            return read_secret(self.cfg.claim_password_file,
                               what="enrollment.claim_password_file")
        except ConfigError as exc:
            raise EnrollmentError(exc.message,
                                  "无法读取注册口令文件（缺失、为空或权限过宽）") from exc

    async def run(self) -> Identity:
        """Ask until central approves; returns the identity now written to disk."""
        fresh = False
        while True:
            key = await asyncio.to_thread(self.store.enrollment_key, fresh=fresh)
            self.stats["attempts"] += 1
            outcome, status = await self._attempt(key)
            if isinstance(outcome, Identity):
                await self._drain_prints()
                return outcome
            fresh = True  # a rejected or expired request is asked again with a new key
            if outcome == "rejected":
                wait = self.cfg.rejected_wait_s
                retry = datetime.fromtimestamp(self._clock().timestamp() + wait, UTC)
                self.state.update("rejected", message=status.message if status else None,
                                  message_zh=status.message_zh if status else None,
                                  code=None, retry_at=retry.isoformat())
                log.warning("enrollment rejected (%s); asking again in %.0f s",
                            status.message if status else "", wait)
                await asyncio.sleep(wait)
                self.state.update("enrolling", code=None, expires_at=None, retry_at=None)
            else:
                log.info("pairing request expired; asking again with a new key")
                self.state.update("enrolling", code=None, expires_at=None)

    async def _attempt(self, key: ec.EllipticCurvePrivateKey
                       ) -> tuple[Identity | str, EnrollStatus | None]:
        """One request (one key): ``(identity, status)``, ``("rejected"|"expired", status)``."""
        csr = EnrollCsr(serial=self.serial, csr=make_csr(key, self.serial).decode(),
                        facts=self.facts)
        inbox: asyncio.Queue[InboundMessage] = asyncio.Queue()
        wake = asyncio.Event()
        session = self._session_factory(
            self.serial, host=self.cfg.host, port=self.cfg.port,
            username=self.cfg.claim_username, password=self._password(),
            tls=TlsConfig(cafile=self.cfg.cafile), keepalive=self.cfg.keepalive,
            backoff_min_s=self._backoff[0], backoff_max_s=self._backoff[1],
            subscriptions=[(topics.enroll(self.serial, "cert"), 1)],
            on_message=inbox.put_nowait, on_connected=wake.set)
        await session.start()
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        request_id: str | None = None
        try:
            while True:
                if wake.is_set():
                    wake.clear()
                    next_send = loop.time()  # a (re)connect: ask at once
                if session.connected and loop.time() >= next_send:
                    await self._send_csr(session, csr)
                    next_send = loop.time() + self.cfg.retry_s
                get = asyncio.ensure_future(inbox.get())
                woke = asyncio.ensure_future(wake.wait())
                # Offline: wait for the connection (it sets ``wake``), not for the next round.
                wait_s = (max(0.05, next_send - loop.time()) if session.connected
                          else self.cfg.retry_s)
                try:
                    await asyncio.wait({get, woke}, timeout=wait_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    woke.cancel()
                    if not get.done():
                        get.cancel()
                if not get.done() or get.cancelled():
                    continue
                status = self._status(get.result())
                if status is None:
                    continue
                if request_id is not None and status.request_id != request_id:
                    self._ignore("an answer to another request")
                    continue
                if status.status == "pending":
                    request_id = status.request_id
                    self._pending(status)
                elif status.status == "approved":
                    ident = await self._approved(key, status)
                    if ident is not None:
                        self.state.update("enrolled", device_id=ident.device_id, code=None,
                                          expires_at=None)
                        return ident, status
                elif status.status == "rejected":
                    self.stats["rejected"] += 1
                    return "rejected", status
                else:
                    self.stats["expired"] += 1
                    return "expired", status
        finally:
            await session.stop()

    async def _send_csr(self, session: MqttSession, csr: EnrollCsr) -> None:
        env = new_envelope(TYPE_ENROLL_CSR, ENROLL_DEV, csr, now=self._clock())
        try:
            # Not session.publish (wait_for): on 3.11 a cancel landing with the PUBACK is lost.
            fut = session.publish_nowait(topics.enroll(self.serial, "csr"), encode(env), qos=1)
            async with asyncio.timeout(10):
                await fut
            self.stats["csr_sent"] += 1
            log.info("enrollment request sent for serial %s", self.serial)
        except Exception as exc:  # offline or no PUBACK: the next round sends it again
            log.info("enrollment request not sent: %s", getattr(exc, "message", exc))

    def _ignore(self, why: str) -> None:
        self.stats["ignored"] += 1
        log.warning("enrollment message ignored: %s", why)

    def _status(self, msg: InboundMessage) -> EnrollStatus | None:
        try:
            env = decode(msg.payload)
        except ProtocolError as exc:
            self._ignore(f"undecodable ({exc.code})")
            return None
        if env.type != TYPE_ENROLL_STATUS or env.dev != ENROLL_DEV:
            self._ignore(f"unexpected {env.type} for {env.dev}")
            return None
        try:
            # Central signs every enroll.status: until the whole envelope verifies, nothing
            # in it (code, device id, role, site, certificate, chain) is central's.
            verify_any(env, self.keys)
        except ProtocolError as exc:
            self._ignore(f"enroll.status not signed by central ({exc.code})")
            return None
        try:
            return EnrollStatus.model_validate(env.body)
        except ValidationError as exc:
            self._ignore(f"invalid enroll.status ({exc.error_count()} errors)")
            return None

    def _pending(self, status: EnrollStatus) -> None:
        self.stats["pending"] += 1
        if status.code != self.state.code or self.state.state != "pending":
            log.info("pairing code %s for serial %s (expires %s)", status.code, self.serial,
                     status.expires_at)
        self.state.update("pending", message=status.message, message_zh=status.message_zh,
                          code=status.code, expires_at=status.expires_at, retry_at=None)
        if status.code is not None and status.code not in self._printed:
            self._printed.add(status.code)
            task = asyncio.create_task(self._print(status), name="pairing-slip")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _print(self, status: EnrollStatus) -> None:
        if self.printer is None or status.code is None:
            return
        from edge.devices.printer.documents import PairingSlip

        expires = None
        if status.expires_at is not None:
            with contextlib.suppress(ProtocolError, ValueError):
                expires = parse_ts(status.expires_at).astimezone(self.tz)
        doc = PairingSlip(hospital_name=self.hospital_name, code=status.code,
                          serial=self.serial, printed_at=self._clock().astimezone(self.tz),
                          expires_at=expires, model=self.facts.model)
        try:
            outcome = await self.printer.print(doc, job_id=f"pairing-{status.code}")
            log.info("pairing slip: %s", getattr(outcome, "state", outcome))
        except Exception as exc:  # no paper, no printer: the screen still shows the code
            log.warning("pairing slip not printed: %s", getattr(exc, "message", exc))

    async def _drain_prints(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=30)

    async def _approved(self, key: ec.EllipticCurvePrivateKey,
                        status: EnrollStatus) -> Identity | None:
        """Check and keep an approval; None (logged) when it does not check out."""
        dev = status.device_id
        assert dev is not None and status.config is not None  # EnrollStatus checks it
        try:
            env = Envelope.model_validate(status.config)
        except ValidationError:
            self._ignore("approval whose config is not an envelope")
            return None
        last_seq, _, _ = self.fleet_state.last(dev, CONFIG_STREAM)
        try:
            # The signature first: until it verifies, nothing in this message is central's.
            verify_command(env, self.keys, SeqGuard(last_seq), dev=dev, now=self._clock())
        except ProtocolError as exc:
            self._ignore(f"approval with a config that does not verify ({exc.code})")
            return None
        if env.type != TYPE_CONFIG_DESIRED or env.seq is None:
            self._ignore("approval whose config is not a config.desired")
            return None
        try:
            desired = ConfigDesired.model_validate(env.body)
        except ValidationError:
            self._ignore("approval with an invalid config body")
            return None
        assert status.cert is not None and status.chain is not None and status.role is not None
        try:
            check_certificate(status.cert.encode(), key, dev)
        except IdentityError as exc:
            self._ignore(f"approval with a certificate that is not ours ({exc.reason})")
            return None
        # chain.pem becomes the uplink's trust anchor: the certificate must chain to the
        # fleet CA of the claim bundle (directly or through a CA of the received chain).
        try:
            anchors = await asyncio.to_thread(self.cfg.cafile.read_bytes)
            check_issuer(status.cert.encode(), status.chain.encode(), anchors)
        except OSError as exc:
            self._ignore(f"approval not checked: cannot read {self.cfg.cafile} "
                         f"({exc.strerror})")
            return None
        except IdentityError as exc:
            self._ignore(f"approval with a certificate the fleet CA did not issue "
                         f"({exc.reason})")
            return None
        # Config and its seq first, identity.json last: a power cut in between leaves a
        # device that enrolls again, never one that runs without its first config.
        await asyncio.to_thread(store_first_config, self.fleet_state, self.running, dev, env,
                                desired)
        ident = await asyncio.to_thread(
            self.store.save, device_id=dev, role=status.role, site=status.site,
            cert_pem=status.cert.encode(), chain_pem=status.chain.encode())
        log.info("enrolled as %s (role %s, site %s), certificate %s until %s", ident.device_id,
                 ident.role, ident.site, ident.cert_serial, ident.not_after)
        return ident
