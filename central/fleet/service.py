"""The fleet facade: enrollment, certificates, signed desired config and signed commands.

:class:`FleetService` is what the rest of central uses (``ykt central`` wires it, the REST
API and dashboard call it). docs/fleet-trust.md is the design; in short:

* **Enrollment** — a second Mosquitto (:class:`~central.fleet.brokers.EnrollBroker`) takes
  ``enroll.csr`` from devices that log in with the shared claim credential. Each request
  (one per serial + public key) gets a pairing code; a technician approves it with a device
  id, role and site, and central answers with the device's certificate (from the fleet CA,
  CN = the device id), the chain and the first signed ``config.desired``.
* **Certificates** — issued and revoked through :class:`~central.ca.FleetCA`; after every
  revocation the CRL is rewritten and the device broker reloaded. ``device.cert_renew``
  issues a new certificate from a device's new key, only for an open ``cert.rotate``
  (one certificate per command); the old ones are revoked once the device confirms it
  runs the new one (its ``cert.rotate`` command succeeded).
* **Desired config** — layers (site, role, device) merged into each device's settings,
  versioned, signed (one ``seq`` counter per device shared with commands, never reused,
  ``exp`` ``config_exp_s``) and published retained on ``down/config``. Re-signed and
  re-published when a device comes online with another hash than the desired one.
* **Commands** — validated, stored ``queued``, signed and published on ``down/cmd``; results
  arriving on ``up/result`` (through the forwarder) move them on, never back out of a
  final state; past ``exp`` without a final state they become ``expired``.

Everything is in central's database (:mod:`central.fleet.store`, SQLite or PostgreSQL, which
also says how several instances write it at once); every staff action is audited with the
staff member's name. All times returned are ISO 8601 UTC strings, all returns JSON-able.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from pydantic import ValidationError

from central.ca import CaError, FleetCA
from central.fleet.brokers import EnrollBroker, ServerTls, server_tls
from central.fleet.commands import advances, check_bundle, validate_command
from central.fleet.desired import LAYER_KINDS, effective, merge, validate_settings
from central.fleet.enrollment import (
    check_csr,
    new_pairing_code,
    normalise_code,
    same_public_key,
    status_body,
)
from central.fleet.errors import FleetError
from central.fleet.rollouts import RolloutService
from central.fleet.settings import FleetSection
from central.fleet.signer import FleetSigner
from central.fleet.store import CONFIG_LOCK, ENROLL_LOCK, FleetTables, for_update
from central.platform.errors import PlatformRejected
from central.registry import ROLES, Registry, RegistryError
from central.store import Store
from yikatong.mqtt.config import TlsConfig
from yikatong.mqtt.errors import UplinkError
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import Envelope, decode, encode, format_ts, new_envelope
from yikatong.protocol.errors import ProtocolError
from yikatong.protocol.fleet import (
    ENROLL_DEV,
    FINAL_COMMAND_STATES,
    TYPE_CMD,
    TYPE_CONFIG_DESIRED,
    TYPE_ENROLL_CSR,
    TYPE_ENROLL_STATUS,
    CommandResult,
    ConfigDesired,
    ConfigReport,
    EnrollCsr,
    EnrollStatus,
    RemoteSettings,
    parse_fleet_body,
)
from yikatong.protocol.messages import (
    CertRenewReq,
    LogBundleReq,
    WireModel,
    dump_body,
)
from yikatong.protocol.topics import RESERVED_DEVICE_IDS, is_valid_device_id
from yikatong.protocol.update import UpdateStatus

__all__ = ["FleetService"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: At most this many open requests per serial (a claim credential cannot flood the list).
MAX_OPEN_PER_SERIAL = 4
#: renew_due sends a device at most one ``cert.rotate`` per this many seconds, and runs this
#: often itself.
RENEW_RETRY_S = 6 * 3600
RENEW_CHECK_S = 600
#: Largest enrollment message read (a CSR and facts).
MAX_ENROLL_PAYLOAD = 65_536
#: Commands listed in :meth:`FleetService.device_detail`.
DETAIL_COMMANDS = 20
#: How often the background loop expires commands and enrollment requests.
EXPIRY_INTERVAL_S = 1.0
#: How often the CRL is re-signed (it is valid 7 days; the broker refuses all on a stale one).
CRL_REFRESH_S = 12 * 3600.0
#: A retained config whose ``exp`` is closer than this is re-signed instead of re-sent.
RESIGN_BEFORE_S = 86_400.0
_SITE_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
_ACTOR_MAX = 64


def _iso(t: float | None) -> str | None:
    return None if t is None else format_ts(datetime.fromtimestamp(t, UTC))


def _ts(now: datetime) -> float:
    return now.timestamp()


def _actor(actor: str) -> str:
    text = str(actor).strip()[:_ACTOR_MAX]
    return text or "unknown"


def _reject(code: str, message: str, message_zh: str) -> PlatformRejected:
    """A refusal of a device's local request: replied ``rejected`` and stored as final."""
    return PlatformRejected(code, message, message_zh=message_zh)


class FleetService:
    """Enrollment, certificates, signed config and commands (see the module docstring).

    ``publisher`` is central's own session on the device broker for ``down/config`` and
    ``down/cmd`` (a :class:`central.hotlist.FleetPublisher` with its own account);
    ``reload_broker`` makes the device broker re-read its CRL (``Mosquitto.reload``).
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        section: FleetSection,
        *,
        data_dir: Path,
        publisher: Any = None,
        own_publisher: bool = True,
        reload_broker: Callable[[], object] | None = None,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.registry = registry
        self.section = section
        self.fleet_dir = Path(data_dir) / "fleet"
        self.fleet_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.fleet_dir, 0o700)
        self._clock = clock
        now = clock()
        self._ca_lock = threading.RLock()
        self.ca = FleetCA.open(section.ca_dir or self.fleet_dir / "ca", now=now)
        with self._ca_lock:
            # The CRL is valid for days; one left from a long stop would lock every device out.
            self.ca.write_crl(now=now)
        self._crl_written = now
        self._renew_checked = now - timedelta(seconds=RENEW_CHECK_S)  # first round checks
        self.signer = FleetSigner.open(section.signing_key or self.fleet_dir / "signing.key")
        self.tables = FleetTables.open(store)
        self.server_tls: ServerTls = server_tls(self.ca, self.fleet_dir, section.server_names,
                                                now=now)
        self.enroll_broker = EnrollBroker(
            Path(data_dir) / "enroll-broker", self.fleet_dir / "claim.password",
            self.server_tls, host=section.enroll_host, port=section.enroll_port)
        self.enroll_broker.claim_password()  # made now: the claim bundle needs it
        self.publisher = publisher
        self.own_publisher = own_publisher
        #: Run the rollout scheduler in :meth:`start` (with ``[fleet] rollout_scheduler``).
        #: ``ykt central`` sets it False and runs :meth:`RolloutService.run` as one of the
        #: jobs only the holder of central's jobs lease runs (central/leases.py).
        self.scheduler_here = True
        #: Run the once-only fleet jobs (command expiry, certificate renewals) in
        #: :meth:`start`; ``ykt central`` sets it False and runs :meth:`run_jobs` under the
        #: jobs lease. The CRL is kept up to date on every instance regardless.
        self.jobs_here = True
        self._revoked_seen = -1  # revoked certificates in the store at the last sync
        self._reload_broker = reload_broker
        self._enroll_session: MqttSession | None = None
        self._enroll_queue: asyncio.Queue[InboundMessage] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped: asyncio.Event | None = None
        self._decide_lock: asyncio.Lock | None = None
        self._waiters: dict[str, asyncio.Event] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self.stats: dict[str, int] = {"enroll_requests": 0, "enroll_invalid": 0,
                                      "config_published": 0, "publish_errors": 0,
                                      "results": 0, "enroll_capped": 0}
        # Staged rollouts of stored bundles (central/fleet/rollouts.py, bundles.py).
        self.rollouts = RolloutService(self, clock=clock)

    # ================================================================== lifecycle
    @property
    def logs_dir(self) -> Path:
        """Where uploaded log bundles are kept (``logs/{dev}/{command_id}.log.gz``)."""
        return self.fleet_dir / "logs"

    @property
    def crl_file(self) -> Path:
        """The CRL the device broker reads (``crlfile``)."""
        return self.ca.crl_file

    @property
    def enroll_connected(self) -> bool:
        """True while central's session on the enrollment broker is up."""
        return self._enroll_session is not None and self._enroll_session.connected

    async def start(self) -> None:
        """Start the enrollment broker, connect to it and to the device broker, and the loops."""
        if self._stopped is not None:
            return
        self._stopped = asyncio.Event()
        self._decide_lock = asyncio.Lock()
        await asyncio.to_thread(self.enroll_broker.start)
        user, password = self.enroll_broker.central_account()
        self._enroll_queue = asyncio.Queue()
        self._enroll_session = MqttSession(
            user, host=self.enroll_broker.dial_host, port=self.enroll_broker.port,
            username=user, password=password, tls=TlsConfig(cafile=self.server_tls.cafile),
            clean_session=True, backoff_min_s=0.2, backoff_max_s=5.0,
            subscriptions=[(f"{topics.ROOT}/enroll/+/csr", 1)],
            on_message=self._enroll_queue.put_nowait)
        await self._enroll_session.start()
        if self.publisher is not None and self.own_publisher:
            await self.publisher.start()
        broker = self.enroll_broker.mosquitto
        assert broker is not None  # started above
        self._tasks = [
            asyncio.create_task(self._enroll_worker(), name="fleet-enroll"),
            asyncio.create_task(self._periodic(), name="fleet-crl"),
            asyncio.create_task(broker.supervise(), name="fleet-enroll-broker"),
        ]
        if self.jobs_here:
            self._tasks.append(asyncio.create_task(self.run_jobs(), name="fleet-expiry"))
        if self.section.rollout_scheduler and self.scheduler_here:
            self._tasks.append(asyncio.create_task(self.rollouts.run(), name="fleet-rollouts"))

    async def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait until the enrollment session (and the publisher, if any) are connected."""
        if self._enroll_session is None:
            return False
        ok = await self._enroll_session.wait_connected(timeout_s)
        if ok and self.publisher is not None:
            ok = await self.publisher.wait_connected(timeout_s)
        return bool(ok)

    async def run(self) -> None:
        """Start (if needed) and run until :meth:`stop`."""
        await self.start()
        assert self._stopped is not None
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop the loops, leave both brokers and stop the enrollment broker."""
        for task in [*self._tasks, *self._bg]:
            task.cancel()
        for task in [*self._tasks, *self._bg]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks, self._bg = [], set()
        if self._enroll_session is not None:
            await self._enroll_session.stop()
            self._enroll_session = None
        if self.publisher is not None and self.own_publisher:
            await self.publisher.stop()
        await asyncio.to_thread(self.enroll_broker.stop)
        if self._stopped is not None:
            self._stopped.set()

    def install(self, guard: Any) -> None:
        """Answer ``device.cert_renew`` and ``device.log_bundle`` through ``guard.call_local``."""
        guard.add_local_handler("device.cert_renew", self.cert_renew_in_tx)
        guard.add_local_handler("device.log_bundle", self.log_bundle_in_tx)

    def on_publisher_connected(self) -> None:
        """The device-broker session came (back): re-send every retained desired config.

        A broker restarted without its persistence file has lost them.
        """
        self._spawn(self._republish_all(), "fleet-republish")

    def _spawn(self, coro: Any, name: str) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro, name=name)
        except RuntimeError:
            coro.close()
            return
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def status(self) -> dict[str, Any]:
        """Health for ``/api/status``: the enrollment broker and central's two sessions."""
        broker = self.enroll_broker.mosquitto
        return {
            "enroll_broker": broker.status() if broker is not None else {"running": False},
            "enroll_connected": self.enroll_connected,
            "publisher_connected": bool(self.publisher is not None
                                        and self.publisher.connected),
            "signing_key_id": self.signer.key_id,
            **self.stats,
            "rollouts": self.rollouts.status(),
        }

    def claim_bundle(self) -> dict[str, Any]:
        """What a device image needs to enroll: CA chain, signing key, claim password, address."""
        host = self.section.enroll_host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listener: dial a real name
            host = self.section.server_names[0]
        return {
            "ca_pem": self.ca.chain_file.read_text(),
            "signing_pub_pem": self.signer.public_pem.decode(),
            "claim_password": self.enroll_broker.claim_password(),
            "enroll_host": host,
            "enroll_port": self.enroll_broker.port,
        }

    # ================================================================== helpers
    def _now(self) -> datetime:
        return self._clock()

    def _reload(self) -> None:
        if self._reload_broker is not None:
            try:
                self._reload_broker()
            except Exception:  # a reload failure must not undo a revocation
                log.exception("device broker reload failed")

    def _active_serials(self, dev: str) -> list[int]:
        """Certificates of ``dev`` not revoked, whichever instance issued them: this CA
        copy's record and the store's certificate table (several instances, docs/scaling.md)."""
        C = self.tables.FleetCert
        shared = {int(r.serial) for r in C.select(C.serial).where(
            (C.dev == dev) & C.revoked_at.is_null())}
        with self._ca_lock:
            local = set(self.ca.active_serials(dev))
        return sorted(shared | local)

    def sync_revocations(self) -> int:
        """Put revocations other instances recorded in the store on this instance's CRL.

        Cheap when nothing changed (one COUNT); runs every second on every instance. Returns
        how many serials were new here (the CRL was rewritten and the broker reloaded).
        """
        C = self.tables.FleetCert
        n = C.select().where(C.revoked_at.is_null(False)).count()
        if n == self._revoked_seen:
            return 0
        rows = C.select(C.serial, C.revoked_at).where(C.revoked_at.is_null(False)).tuples()
        revoked = {int(serial): datetime.fromtimestamp(at, UTC) for serial, at in rows}
        with self._ca_lock:
            new = self.ca.record_revoked(revoked, x509.ReasonFlags.cessation_of_operation)
            if new:
                self.ca.write_crl(now=self._now())
        self._revoked_seen = n
        if new:
            self._reload()
            log.info("%d certificate(s) revoked by another instance put on the CRL", len(new))
        return len(new)

    def _require_device(self, dev: str) -> Any:
        info = self.store.device(dev) if isinstance(dev, str) else None
        if info is None:
            raise FleetError(404, "unknown_device", f"no device {str(dev)[:64]!r}",
                             "未登记的设备")
        return info

    async def _publish(self, topic: str, payload: bytes) -> bool:
        pub = self.publisher
        if pub is None or not pub.connected:
            self.stats["publish_errors"] += 1
            log.info("device broker not connected; %s waits for the next connect", topic)
            return False
        try:
            await pub.publish(topic, payload)
        except (UplinkError, TimeoutError, OSError) as exc:
            self.stats["publish_errors"] += 1
            log.warning("publishing on %s failed: %s", topic, getattr(exc, "message", exc))
            return False
        return True

    def _next_seq_tx(self, dev: str, now: datetime) -> int:
        """The next seq for ``dev``: above every earlier one, and at least the clock in ms.

        The clock floor keeps seqs growing even if central's database were restored from an
        older backup: devices would otherwise refuse everything as a replay. One upsert reads
        and moves the counter: two instances signing for one device at once (PostgreSQL) get
        two seqs, the second computed from the first's committed value.
        """
        upsert = ("INSERT INTO fleet_seq (dev, last_seq) VALUES (?, ?) "  # noqa: S608 - names
                  "ON CONFLICT (dev) DO UPDATE SET last_seq = "
                  f"{self.store.dialect.greatest}(fleet_seq.last_seq + 1, excluded.last_seq) "
                  "RETURNING last_seq")
        (seq,) = self.store.connection().execute(
            upsert, (dev, int(_ts(now) * 1000))).fetchone()
        return int(seq)

    def _sign(self, type_: str, dev: str, body: WireModel | dict[str, Any], now: datetime, *,
              exp: datetime | None = None, seq: int | None = None,
              corr: str | None = None) -> Envelope:
        env = new_envelope(type_, dev, body, now=now, exp=exp, seq=seq, corr=corr,
                           id=uuid.uuid4().hex)
        return self.signer.sign(env)

    # ================================================================== enrollment
    def _enrollment_dict(self, row: Any, now: float | None = None) -> dict[str, Any]:
        status = row.status
        if status == "pending" and (now if now is not None else _ts(self._now())) > \
                row.expires_at:
            status = "expired"
        return {
            "request_id": row.request_id, "serial": row.serial, "code": row.code,
            "status": status, "duplicate": bool(row.duplicate),
            "reenroll_of": row.reenroll_of, "facts": json.loads(row.facts or "{}"),
            "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
            "decided_by": row.decided_by, "decided_at": _iso(row.decided_at),
            "device_id": row.device_id, "reason": row.reason,
        }

    def enrollments(self, status: str | None = None) -> list[dict[str, Any]]:
        """Enrollment requests, newest first; ``status`` filters (pending/approved/…)."""
        if status is not None and status not in ("pending", "approved", "rejected", "expired"):
            raise FleetError(422, "invalid_status", f"unknown status {status[:20]!r}",
                             "状态无效")
        E = self.tables.Enrollment
        now = _ts(self._now())
        out = [self._enrollment_dict(r, now)
               for r in E.select().order_by(E.created_at.desc(), E.request_id)]
        return [e for e in out if status is None or e["status"] == status]

    async def _enroll_worker(self) -> None:
        assert self._enroll_queue is not None
        while True:
            msg = await self._enroll_queue.get()
            try:
                await self.handle_enroll_message(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("enrollment message on %s failed", msg.topic[:120])

    async def handle_enroll_message(self, msg: InboundMessage) -> None:
        """One message from the enrollment broker (public for tests)."""
        try:
            t = topics.parse(msg.topic)
        except ProtocolError:
            return
        if t.direction != "enroll" or t.kind != "csr" or t.dev is None:
            return
        serial = t.dev
        self.stats["enroll_requests"] += 1
        try:
            env = decode(msg.payload, max_bytes=MAX_ENROLL_PAYLOAD)
            if env.type != TYPE_ENROLL_CSR:
                raise ProtocolError(f"{env.type} is not an enrollment request",
                                    "不是入网申请")
            body = parse_fleet_body(env)
        except ProtocolError as exc:
            self.stats["enroll_invalid"] += 1
            log.warning("invalid enrollment message for %s: %s", serial, exc.message[:200])
            return
        assert isinstance(body, EnrollCsr)
        if body.serial != serial:
            self.stats["enroll_invalid"] += 1
            log.warning("enrollment request on %s names serial %s", serial, body.serial)
            return
        now = self._now()
        try:
            csr = check_csr(body.csr, serial)
        except FleetError as exc:
            self.stats["enroll_invalid"] += 1
            log.warning("enrollment request of %s refused: %s", serial, exc.message)
            refusal = status_body(uuid.uuid4().hex, "rejected", message=exc.message,
                                  message_zh=exc.message_zh)
            await self._answer(serial, refusal, env.id, now)
            return
        facts = json.dumps(dump_body(body.facts), ensure_ascii=False, sort_keys=True)

        def record() -> dict[str, Any] | None:
            return self._record_request_tx(serial, csr.fingerprint, csr.pem, facts, now)

        answer: dict[str, Any] | None = await self.store.write(record)
        if answer is not None:
            await self._answer(serial, answer, env.id, now)

    def _record_request_tx(self, serial: str, fp: str, csr: str, facts: str,
                           now: datetime) -> dict[str, Any] | None:
        # One at a time across instances: the same request asked twice, the caps and the
        # pairing codes are decided on what the others committed.
        self.store.lock_in_tx(ENROLL_LOCK)
        E, t = self.tables.Enrollment, _ts(now)
        row = (E.select().where((E.serial == serial) & (E.key_fp == fp))
               .order_by(E.created_at.desc()).first())
        if row is not None:
            if row.status == "pending" and t > row.expires_at:
                E.update(status="expired").where(E.request_id == row.request_id).execute()
                row.status = "expired"
            if row.status == "pending":
                return status_body(row.request_id, "pending", code=row.code,
                                   expires_at=_iso(row.expires_at),
                                   message="waiting for approval: show this code to a "
                                           "technician",
                                   message_zh="等待审批：请将配对码告知技术人员")
            if row.status == "approved" and row.answer:
                # Asked again (a power cut before it wrote its identity, or it was off past
                # the config's exp): the same certificate, with the config signed afresh — a
                # new seq and exp, or the device would refuse the old one as a replay.
                answer = dict(json.loads(row.answer))
                if row.device_id and self.store.device(row.device_id) is not None:
                    *_, env = self._desired_tx(row.device_id, now, force=True)
                    if env is not None:
                        answer["config"] = json.loads(encode(env))
                return answer
            if row.status == "rejected":
                return status_body(row.request_id, "rejected",
                                   message=(row.reason or "rejected")[:400],
                                   message_zh="入网申请被拒绝")
            if row.status == "expired" and row.decided_at is None:
                # Told once (decided_at marks it); the next ask starts a new request.
                E.update(decided_by="expiry", decided_at=t,
                         reason="not approved before it expired").where(
                    E.request_id == row.request_id).execute()
                return status_body(row.request_id, "expired",
                                   message="the request expired; ask again for a new code",
                                   message_zh="入网申请已过期，请重新申请")
        open_rows = list(E.select().where((E.serial == serial) & (E.status == "pending")
                                          & (E.expires_at >= t)))
        if len(open_rows) >= MAX_OPEN_PER_SERIAL:
            log.warning("serial %s has %d open enrollment requests; new key ignored", serial,
                        len(open_rows))
            return None
        if not open_rows and E.select().where(
                (E.status == "pending") & (E.expires_at >= t)).count() \
                >= self.section.max_open_enrollments:
            self.stats["enroll_capped"] += 1
            log.warning("%d enrollment requests are open; the one of %s is ignored until "
                        "some are decided", self.section.max_open_enrollments, serial)
            return None
        duplicate = bool(open_rows)
        if duplicate:
            E.update(duplicate=True).where(
                E.request_id.in_([r.request_id for r in open_rows])).execute()
        D = self.tables.FleetDevice
        earlier = (D.select().where(D.serial == serial).order_by(D.enrolled_at.desc())
                   .first())

        def taken(code: str) -> bool:
            return bool(E.select().where((E.code == code)
                                         & (E.status == "pending")).exists())

        code = new_pairing_code(taken)
        request_id = uuid.uuid4().hex
        expires = t + self.section.enroll_ttl_s
        E.create(request_id=request_id, serial=serial, key_fp=fp, csr=csr, facts=facts,
                 code=code, status="pending", duplicate=duplicate,
                 reenroll_of=earlier.dev if earlier is not None else None,
                 created_at=t, expires_at=expires)
        self.store.append_audit_in_tx(now, "enroll", "fleet.enroll_request", {
            "serial": serial, "request_id": request_id, "duplicate": duplicate,
            "key": fp[:16]})
        return status_body(request_id, "pending", code=code, expires_at=_iso(expires),
                           message="waiting for approval: show this code to a technician",
                           message_zh="等待审批：请将配对码告知技术人员")

    async def _answer(self, serial: str, body: dict[str, Any], corr: str | None,
                      now: datetime) -> bool:
        """Publish ``enroll.status`` (signed) on the serial's cert topic, QoS 1, not retained."""
        EnrollStatus.model_validate(body)
        env = self._sign(TYPE_ENROLL_STATUS, ENROLL_DEV, body, now, corr=corr)
        session = self._enroll_session
        if session is None or not session.connected:
            log.info("enrollment broker not connected; %s gets its answer when it asks again",
                     serial)
            return False
        try:
            await session.publish(topics.enroll(serial, "cert"), encode(env), qos=1,
                                  retain=False, timeout_s=10)
        except (UplinkError, TimeoutError) as exc:
            log.warning("answer to %s not sent: %s", serial, getattr(exc, "message", exc))
            return False
        return True

    def _pending_by_code_tx(self, code: str, now: datetime) -> Any:
        # Held to the end of the write: two staff deciding one code on two instances are
        # served one after the other, and the second finds it decided.
        self.store.lock_in_tx(ENROLL_LOCK)
        E = self.tables.Enrollment
        rows = list(E.select().where(E.code == code).order_by(E.created_at.desc()))
        if not rows:
            raise FleetError(404, "unknown_code", "no enrollment request has this pairing code",
                             "没有此配对码的入网申请")
        row = next((r for r in rows if r.status == "pending"), rows[0])
        if row.status == "pending" and _ts(now) > row.expires_at:
            E.update(status="expired").where(E.request_id == row.request_id).execute()
            row.status = "expired"
        if row.status != "pending":
            raise FleetError(409, "already_decided",
                             f"this request is already {row.status}",
                             {"approved": "该申请已批准", "rejected": "该申请已拒绝",
                              "expired": "该申请已过期"}.get(row.status, "该申请已处理"))
        return row

    def _check_name(self, device_id: str, role: str, site: str) -> None:
        if not is_valid_device_id(device_id) or device_id in RESERVED_DEVICE_IDS:
            raise FleetError(422, "invalid_device_id",
                             f"invalid device id {str(device_id)[:64]!r}: 3-63 of a-z 0-9 -",
                             "设备编号无效")
        if role not in ROLES:
            raise FleetError(422, "invalid_role", f"invalid role {str(role)[:20]!r}",
                             "设备角色无效")
        if not isinstance(site, str) or not _SITE_RE.fullmatch(site):
            raise FleetError(422, "invalid_site", "site must be 1-64 printable characters",
                             "院区名称无效")

    async def approve(self, code: str, *, device_id: str, role: str, site: str,
                      actor: str) -> dict[str, Any]:
        """Approve the request with ``code`` as ``device_id`` (role, site); see the module doc.

        Issues the certificate, registers the device, revokes the id's older certificates,
        makes the first desired config and answers the device. Returns the enrollment dict.
        """
        code = normalise_code(code)
        self._check_name(device_id, role, site)
        actor = _actor(actor)
        async with self._lock():
            now = self._now()

            def check() -> tuple[str, str, str]:
                row = self._pending_by_code_tx(code, now)
                if device_id in self.registry.central_usernames():
                    raise FleetError(409, "name_taken", f"{device_id} is a central account",
                                     "设备编号与中心账号冲突")
                if self.store.device(device_id) is not None:
                    D = self.tables.FleetDevice
                    mine = D.get_or_none(D.dev == device_id)
                    if mine is None or mine.serial != row.serial:
                        raise FleetError(409, "name_taken",
                                         f"device id {device_id} is taken by another device",
                                         "设备编号已被其他设备使用")
                return row.request_id, row.serial, row.csr

            request_id, serial, csr = await self.store.write(check)

            def issue() -> tuple[Any, str]:  # signs and writes files: off the event loop
                with self._ca_lock:
                    issued = self.ca.issue_device(csr.encode(), device_id, now=now,
                                                  days=self.section.cert_days, csr_cn=serial)
                    return issued, self.ca.chain_file.read_text()  # not torn by a rotation

            try:
                issued, chain = await asyncio.to_thread(issue)
            except CaError as exc:
                raise FleetError(422, exc.code, exc.message, exc.message_zh) from exc
            cert_pem = issued.pem.decode()

            def register() -> tuple[dict[str, Any], bytes, list[int]]:
                E, D, C = self.tables.Enrollment, self.tables.FleetDevice, self.tables.FleetCert
                row = self._pending_by_code_tx(code, now)  # still pending (same lock)
                t = _ts(now)
                self.store.add_device(device_id, role, now)
                facts = row.facts
                values = {"site": site, "serial": serial, "facts": facts,
                          "cert_serial": str(issued.serial),
                          "cert_not_after": issued.not_after.timestamp(),
                          "enrolled_at": t, "renew_confirm": None}
                D.insert(dev=device_id, **values).on_conflict(
                    conflict_target=[D.dev], update=values).execute()
                C.create(serial=str(issued.serial), dev=device_id,
                         not_after=issued.not_after.timestamp(), issued_at=t, source="enroll")
                older = [s for s in self._active_serials(device_id) if s != issued.serial]
                _dev, _version, _hash, env = self._desired_tx(device_id, now, force=True)
                assert env is not None
                answer = status_body(
                    row.request_id, "approved", device_id=device_id, role=role, site=site,
                    cert=cert_pem, chain=chain, config=json.loads(encode(env)),
                    message="approved", message_zh="已批准入网")
                EnrollStatus.model_validate(answer)
                E.update(status="approved", decided_by=actor, decided_at=t,
                         device_id=device_id, role=role, site=site,
                         answer=json.dumps(answer, ensure_ascii=False)).where(
                    E.request_id == row.request_id).execute()
                # Approving one of two requests of a serial closes the other (a clone?).
                others = list(E.select().where((E.serial == serial) & (E.status == "pending")
                                               & (E.request_id != row.request_id)))
                for other in others:
                    E.update(status="rejected", decided_by=actor, decided_at=t,
                             reason="another request of this serial was approved").where(
                        E.request_id == other.request_id).execute()
                self.store.append_audit_in_tx(now, actor, "fleet.enroll_approve", {
                    "request_id": row.request_id, "serial": serial, "dev": device_id,
                    "role": role, "site": site, "cert_serial": str(issued.serial),
                    "reenroll": row.reenroll_of is not None, "closed": len(others)})
                return answer, encode(env), older

            answer, config_payload, older = await self.store.write(register)
            if older:
                await self._revoke_serials(device_id, older, now)
            await self._publish(topics.down(device_id, "config"), config_payload)
            await self._answer(serial, answer, None, now)
            return self._enrollment_dict(
                self.tables.Enrollment.get(self.tables.Enrollment.request_id == request_id))

    async def reject(self, code: str, *, reason: str, actor: str) -> dict[str, Any]:
        """Reject the request with ``code``; the device is told (and may ask again later)."""
        code = normalise_code(code)
        actor = _actor(actor)
        reason = re.sub(r"[\x00-\x1f\x7f]", " ", str(reason or "")).strip()[:400] or "rejected"
        async with self._lock():
            now = self._now()

            def tx() -> tuple[str, str]:
                E = self.tables.Enrollment
                row = self._pending_by_code_tx(code, now)
                E.update(status="rejected", decided_by=actor, decided_at=_ts(now),
                         reason=reason).where(E.request_id == row.request_id).execute()
                self.store.append_audit_in_tx(now, actor, "fleet.enroll_reject", {
                    "request_id": row.request_id, "serial": row.serial, "reason": reason})
                return row.request_id, row.serial

            request_id, serial = await self.store.write(tx)
            await self._answer(serial, status_body(request_id, "rejected", message=reason,
                                                   message_zh="入网申请被拒绝"), None, now)
            E = self.tables.Enrollment
            return self._enrollment_dict(E.get(E.request_id == request_id))

    def _lock(self) -> asyncio.Lock:
        if self._decide_lock is None:
            self._decide_lock = asyncio.Lock()
        return self._decide_lock

    # ================================================================== certificates
    async def _revoke_serials(self, dev: str, serials: list[int], now: datetime) -> None:
        """Revoke ``serials`` at the CA (CRL rewritten), record it, reload the broker."""
        if not serials:
            return
        def at_the_ca() -> None:  # signs CRLs and writes files: off the event loop
            with self._ca_lock:
                # Also serials another instance issued (the store's table is what instances
                # share; each CA copy records only its own issues).
                if self.ca.record_revoked(dict.fromkeys(serials, now),
                                          x509.ReasonFlags.cessation_of_operation):
                    self.ca.write_crl(now=now)

        await asyncio.to_thread(at_the_ca)
        C = self.tables.FleetCert
        t = _ts(now)

        def tx() -> None:
            C.update(revoked_at=t).where(C.serial.in_([str(s) for s in serials])
                                         & C.revoked_at.is_null()).execute()

        await self.store.write(tx)
        self._reload()
        log.info("revoked %d certificate(s) of %s", len(serials), dev)

    async def _registry_disable(self, dev: str) -> None:
        try:
            await asyncio.to_thread(self.registry.disable, dev)
        except RegistryError as exc:
            raise FleetError(404, "unknown_device", exc.message, exc.message_zh) from exc

    async def revoke(self, dev: str, *, actor: str) -> dict[str, Any]:
        """Revoke every certificate of ``dev`` and disable it; returns its device dict."""
        self._require_device(dev)
        actor = _actor(actor)
        now = self._now()
        # Disabled first: a renewal racing this one is refused inside its write
        # (cert_renew_in_tx), so the serials read next are all the device will ever have.
        await self._registry_disable(dev)
        await self.store.write(lambda: None)  # a renewal already in the writer is done
        serials = self._active_serials(dev)
        await self._revoke_serials(dev, serials, now)
        await self.store.write(lambda: self.store.append_audit_in_tx(
            now, actor, "fleet.revoke", {"dev": dev, "serials": ",".join(map(str, serials))}))
        self._reload()
        return self.device_detail(dev)

    def ca_view(self) -> dict[str, Any]:
        """The CA's certificates: root, the issuing CA in use and the retired ones still
        trusted (they sign their CRL until the certificates they issued are gone)."""
        def cert(c: x509.Certificate) -> dict[str, Any]:
            return {"serial": str(c.serial_number), "subject": c.subject.rfc4514_string(),
                    "not_before": _iso(c.not_valid_before_utc.timestamp()),
                    "not_after": _iso(c.not_valid_after_utc.timestamp())}

        with self._ca_lock:
            return {"root": cert(self.ca.root), "issuing": cert(self.ca.issuing),
                    "retired": [cert(c) for c in self.ca.retired_issuing()],
                    "server": self._server_view()}

    def _server_view(self) -> dict[str, Any]:
        try:
            c = x509.load_pem_x509_certificate(self.server_tls.certfile.read_bytes())
        except (OSError, ValueError):
            return {}
        return {"serial": str(c.serial_number),
                "not_after": _iso(c.not_valid_after_utc.timestamp())}

    async def rotate_ca(self, *, actor: str) -> dict[str, Any]:
        """A new issuing CA (administrators; docs/fleet-trust.md "Rotating the CA").

        Devices keep working: the old issuing certificate stays in ``chain.pem`` and goes
        on signing its CRL; new and renewed certificates come from the new one; the brokers'
        server certificate is re-issued (with its new intermediate, so devices that trust
        the root verify it) and both brokers reload (Mosquitto re-reads certificates on
        SIGHUP). Returns :meth:`ca_view`.
        """
        actor = _actor(actor)
        now = self._now()

        def rotate() -> str:
            with self._ca_lock:
                old = str(self.ca.issuing.serial_number)
                self.ca.rotate_issuing(now=now)
                self.server_tls = server_tls(self.ca, self.fleet_dir,
                                             self.section.server_names, now=now)
                self._crl_written = now
                return old

        old = await asyncio.to_thread(rotate)
        self._reload()
        mosq = self.enroll_broker.mosquitto
        if mosq is not None:
            await asyncio.to_thread(mosq.reload)
        view = self.ca_view()
        await self.store.write(lambda: self.store.append_audit_in_tx(
            now, actor, "fleet.ca_rotate", {"old_issuing": old,
                                            "issuing": view["issuing"]["serial"],
                                            "not_after": view["issuing"]["not_after"]}))
        return view

    async def disable(self, dev: str, *, actor: str) -> dict[str, Any]:
        """Disable ``dev`` (its messages are refused; a password is removed); returns its dict."""
        self._require_device(dev)
        actor = _actor(actor)
        now = self._now()
        await self._registry_disable(dev)
        await self.store.write(lambda: self.store.append_audit_in_tx(
            now, actor, "fleet.disable", {"dev": dev}))
        return self.device_detail(dev)

    def cert_renew_in_tx(self, env: Envelope) -> dict[str, Any]:
        """``device.cert_renew`` (inside the forwarder's write): a new certificate.

        Only in answer to central's own ``cert.rotate`` (sent by staff, or by
        :meth:`renew_due` near expiry) while it is open: a stolen device cannot extend its
        certificate by asking, nor by replaying the id of a rotation that is over. One
        certificate per command, kept in ``fleet_cert``: the same key asking again (a lost
        reply, a re-run write) gets the same certificate. The CSR's CN must be the sending
        device's id. The old certificates stay valid until the device reports the command
        ``succeeded`` (see the module docstring).
        """
        try:
            req = CertRenewReq.model_validate(env.body)
        except ValidationError:
            raise _reject("invalid_request", "invalid cert_renew body",
                          "证书更新请求无效") from None
        dev, now = env.dev, self._now()
        if req.command_id is None:
            raise _reject("unknown_command", "a renewal answers a cert.rotate command",
                          "证书更新须由中心发起")
        self._own_command_tx(dev, req.command_id, "cert.rotate", now)
        self._enabled_tx(dev)
        C, D = self.tables.FleetCert, self.tables.FleetDevice
        prior = C.get_or_none(C.command_id == req.command_id)
        if prior is not None:
            if not prior.pem or not same_public_key(req.csr, prior.pem):
                raise _reject("already_renewed", "this cert.rotate already has its certificate",
                              "该命令已签发证书")
            with self._ca_lock:
                chain = self.ca.chain_file.read_text()
            return {"cert": prior.pem, "chain": chain,
                    "not_after": format_ts(datetime.fromtimestamp(prior.not_after, UTC))}
        try:
            with self._ca_lock:
                issued = self.ca.issue_device(req.csr.encode(), dev, now=now,
                                              days=self.section.cert_days)
                chain = self.ca.chain_file.read_text()
        except CaError as exc:
            raise _reject(exc.code, exc.message, exc.message_zh) from None
        C.create(serial=str(issued.serial), dev=dev, not_after=issued.not_after.timestamp(),
                 issued_at=_ts(now), source="renew", command_id=req.command_id,
                 pem=issued.pem.decode())
        values = {"cert_serial": str(issued.serial),
                  "cert_not_after": issued.not_after.timestamp(),
                  "renew_confirm": req.command_id}
        D.insert(dev=dev, **values).on_conflict(conflict_target=[D.dev],
                                                update=values).execute()
        self.store.append_audit_in_tx(now, dev, "fleet.cert_renew", {
            "dev": dev, "cert_serial": str(issued.serial), "command_id": req.command_id})
        return {"cert": issued.pem.decode(), "chain": chain,
                "not_after": format_ts(issued.not_after)}

    def _enabled_tx(self, dev: str) -> None:
        """Inside the write: a device disabled (or revoked) meanwhile gets nothing new."""
        info = self.store.device(dev)
        if info is None or not info.enabled:
            raise _reject("device_disabled", f"device {dev} is disabled", "设备已停用")

    def _own_command_tx(self, dev: str, command_id: str, name: str, now: datetime) -> Any:
        """The open (not final, not past ``exp``) command ``name`` of ``dev`` with that id,
        held to the end of the write: the same answer handled by two instances at once is
        handled one after the other (one certificate, one bundle per command)."""
        K = self.tables.FleetCommand
        row = for_update(self.store, K.select().where(K.command_id == command_id)).first()
        if row is None or row.dev != dev or row.name != name:
            raise _reject("unknown_command", f"no {name} command {command_id} for this device",
                          "没有对应的命令")
        if row.state in FINAL_COMMAND_STATES or row.exp < _ts(now):
            raise _reject("command_closed", f"{name} command {command_id} is over ({row.state})",
                          "该命令已结束")
        return row

    async def _confirm_renewal(self, dev: str, now: datetime) -> None:
        """The device runs its renewed certificate: revoke the ones before it."""
        D = self.tables.FleetDevice

        row = D.get_or_none(D.dev == dev)
        if row is None or row.renew_confirm is None or not row.cert_serial:
            return
        current = str(row.cert_serial)
        older = [s for s in self._active_serials(dev) if str(s) != current]
        # Revoked first, the marker cleared after: a crash in between revokes again (the
        # next confirmation or start), never leaves an old certificate valid for good.
        await self._revoke_serials(dev, older, now)

        def tx() -> None:
            D.update(renew_confirm=None).where(D.dev == dev).execute()
            self.store.append_audit_in_tx(now, "fleet", "fleet.cert_renew_confirmed",
                                          {"dev": dev, "cert_serial": current,
                                           "revoked": len(older)})

        await self.store.write(tx)

    def log_bundle_in_tx(self, env: Envelope) -> dict[str, Any]:
        """``device.log_bundle`` (inside the forwarder's write): keep the device's bundle."""
        try:
            req = LogBundleReq.model_validate(env.body)
        except ValidationError:
            raise _reject("invalid_request", "invalid log_bundle body",
                          "日志上传请求无效") from None
        dev, now = env.dev, self._now()
        row = self._own_command_tx(dev, req.command_id, "logs.collect", now)
        try:
            data = check_bundle(req.gzip_b64)
        except ValueError as exc:
            raise _reject("bad_bundle", f"log bundle refused: {exc}", "日志包无效") from None
        digest = hashlib.sha256(data).hexdigest()
        if row.bundle:
            # One bundle per command: the same one again (a lost reply) is answered as before;
            # another one never replaces what was collected.
            kept = json.loads(row.bundle)
            if kept.get("sha256") != digest:
                raise _reject("already_uploaded", "this logs.collect already has its bundle",
                              "该命令的日志已上传")
            return {"size": int(kept["size"]), "sha256": digest}
        folder = self.logs_dir / dev
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"{req.command_id}.log.gz"
        tmp = folder / f".{req.command_id}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        K = self.tables.FleetCommand
        bundle = {"size": len(data), "sha256": digest, "lines": req.lines}
        K.update(bundle=json.dumps(bundle), updated_at=_ts(now)).where(
            K.command_id == req.command_id).execute()
        self.store.append_audit_in_tx(now, dev, "fleet.log_bundle", {
            "dev": dev, "command_id": req.command_id, "size": len(data), "sha256": digest})
        return {"size": len(data), "sha256": digest}

    def log_bundle_path(self, command_id: str) -> Path | None:
        """The stored bundle of a ``logs.collect`` command, if the device uploaded one."""
        row = self.command(command_id)
        if row is None or row["name"] != "logs.collect":
            return None
        path = self.logs_dir / row["dev"] / f"{command_id}.log.gz"
        return path if path.exists() else None

    # ================================================================== desired config
    def _layer(self, kind: str, target: str | None) -> dict[str, Any]:
        if target is None:
            return {}
        L = self.tables.ConfigLayer
        row = L.get_or_none((L.kind == kind) & (L.target == target))
        return {} if row is None else dict(json.loads(row.settings))

    def _desired_tx(self, dev: str, now: datetime, *, force: bool
                    ) -> tuple[str, int, str, Envelope | None]:
        """Recompute ``dev``'s effective settings; sign a new envelope if changed or ``force``.

        Returns (dev, version, hash, the new signed envelope or None).
        """
        self.store.lock_in_tx(CONFIG_LOCK)  # the layers as committed; a version used once
        Dv, D, Des = self.store.Device, self.tables.FleetDevice, self.tables.Desired
        device = Dv.get_or_none(Dv.id == dev)
        fleet_row = D.get_or_none(D.dev == dev)
        role = device.role if device is not None else None
        site = fleet_row.site if fleet_row is not None else None
        settings, digest = effective([self._layer("site", site), self._layer("role", role),
                                      self._layer("device", dev)])
        row = Des.get_or_none(Des.dev == dev)
        t = _ts(now)
        if row is None:
            version, changed = 1, True
            Des.create(dev=dev, version=1, hash=digest,
                       settings=json.dumps(settings, sort_keys=True), updated_at=t)
        elif row.hash != digest:
            version, changed = int(row.version) + 1, True
            Des.update(version=version, hash=digest,
                       settings=json.dumps(settings, sort_keys=True), updated_at=t).where(
                Des.dev == dev).execute()
        else:
            version, changed = int(row.version), False
        if not (changed or force):
            return dev, version, digest, None
        env = self._signed_config_tx(dev, version, digest, settings, now)
        return dev, version, digest, env

    def _signed_config_tx(self, dev: str, version: int, digest: str,
                          settings: dict[str, Any], now: datetime) -> Envelope:
        self.store.lock_in_tx(CONFIG_LOCK)  # the stored envelope is the newest signed
        Des = self.tables.Desired
        seq = self._next_seq_tx(dev, now)
        exp = now + timedelta(seconds=self.section.config_exp_s)
        body = ConfigDesired(version=version, hash=digest,
                             settings=RemoteSettings.model_validate(settings))
        env = self._sign(TYPE_CONFIG_DESIRED, dev, body, now, exp=exp, seq=seq)
        Des.update(seq=seq, envelope=encode(env), exp=exp.timestamp()).where(
            Des.dev == dev).execute()
        return env

    def _check_layer(self, kind: str, target: str) -> None:
        if kind not in LAYER_KINDS:
            raise FleetError(422, "invalid_kind", f"kind must be one of {list(LAYER_KINDS)}",
                             "配置层级无效")
        if kind == "device":
            self._require_device(target)
        elif kind == "role":
            if target not in ROLES:
                raise FleetError(422, "invalid_role", f"invalid role {str(target)[:20]!r}",
                                 "设备角色无效")
        elif not isinstance(target, str) or not _SITE_RE.fullmatch(target):
            raise FleetError(422, "invalid_site", "site must be 1-64 printable characters",
                             "院区名称无效")

    def _affected(self, kind: str, target: str) -> list[str]:
        if kind == "device":
            return [target]
        if kind == "role":
            Dv = self.store.Device
            return [r.id for r in Dv.select(Dv.id).where(Dv.role == target).order_by(Dv.id)]
        D = self.tables.FleetDevice
        return [r.dev for r in D.select(D.dev).where(D.site == target).order_by(D.dev)
                if self.store.device(r.dev) is not None]

    def get_config(self, kind: str, target: str) -> dict[str, Any]:
        """One layer: ``{kind, target, settings}`` (settings ``{}`` when nothing is set)."""
        self._check_layer(kind, target)
        return {"kind": kind, "target": target, "settings": self._layer(kind, target)}

    async def set_config(self, kind: str, target: str, settings: dict[str, Any], *,
                         actor: str, replace: bool = False) -> dict[str, Any]:
        """Merge ``settings`` into a layer (``replace``: instead of it) and publish the result.

        A None value in a merge removes that setting from the layer. Devices whose effective
        settings change get a new version, signed and published retained.
        """
        self._check_layer(kind, target)
        validate_settings(settings)  # types and ranges of the patch itself
        actor = _actor(actor)
        now = self._now()

        def tx() -> tuple[dict[str, Any], list[tuple[str, int, str, Envelope | None]]]:
            # Before reading the layer: a merge never starts from a layer another instance
            # is changing (its change would be lost).
            self.store.lock_in_tx(CONFIG_LOCK)
            L = self.tables.ConfigLayer
            base = {} if replace else self._layer(kind, target)
            merged = dump_body(validate_settings(merge(base, settings, none_deletes=True)))
            text = json.dumps(merged, sort_keys=True, ensure_ascii=False)
            values = {"settings": text, "updated_at": _ts(now), "updated_by": actor}
            L.insert(kind=kind, target=target, **values).on_conflict(
                conflict_target=[L.kind, L.target], update=values).execute()
            results = [self._desired_tx(d, now, force=False)
                       for d in self._affected(kind, target)]
            # The audit chain's lock last, as in every fleet write (locks taken in one order
            # by every instance: no deadlock between them).
            self.store.append_audit_in_tx(now, actor, "fleet.config_set", {
                "kind": kind, "target": target, "replace": replace,
                "settings": json.dumps(settings, sort_keys=True, ensure_ascii=False)[:2000]})
            return merged, results

        merged, results = await self.store.write(tx)
        await self._publish_configs(results)
        return {"kind": kind, "target": target, "settings": merged,
                "devices": [{"id": d, "version": v, "hash": h} for d, v, h, _ in results]}

    async def push_config(self, kind: str, target: str, *, actor: str) -> dict[str, Any]:
        """Re-sign (new seq and exp) and re-publish the desired config of a layer's devices."""
        self._check_layer(kind, target)
        actor = _actor(actor)
        now = self._now()

        def tx() -> list[tuple[str, int, str, Envelope | None]]:
            results = [self._desired_tx(d, now, force=True)
                       for d in self._affected(kind, target)]
            self.store.append_audit_in_tx(now, actor, "fleet.config_push",  # its lock last
                                          {"kind": kind, "target": target})
            return results

        results = await self.store.write(tx)
        await self._publish_configs(results)
        return {"kind": kind, "target": target, "settings": self._layer(kind, target),
                "devices": [{"id": d, "version": v, "hash": h} for d, v, h, _ in results]}

    async def _publish_configs(self, results: list[tuple[str, int, str, Envelope | None]]
                               ) -> None:
        for dev, _version, _hash, env in results:
            if env is not None and await self._publish(topics.down(dev, "config"), encode(env)):
                self.stats["config_published"] += 1

    async def _republish_all(self) -> None:
        """Send every stored desired config again (re-signed when close to its ``exp``)."""
        Des = self.tables.Desired
        now = self._now()
        for row in list(Des.select().where(Des.envelope.is_null(False))):
            payload: bytes = bytes(row.envelope)
            if row.exp is not None and row.exp - _ts(now) < RESIGN_BEFORE_S:
                dev: str = row.dev

                def resign(dev: str = dev) -> tuple[str, int, str, Envelope | None]:
                    return self._desired_tx(dev, now, force=True)

                _d, _v, _h, env = await self.store.write(resign)
                payload = encode(env) if env is not None else payload
            if not await self._publish(topics.down(row.dev, "config"), payload):
                return  # not connected: the next connect starts over

    # ================================================================== results, births
    async def on_birth(self, dev: str) -> None:
        """A device came online (forwarder): re-send its config if it runs another one.

        In the background: after a broker restart every device is born at once, and the
        forwarder's workers carry requests (payments), not signatures and publishes.
        """
        info = self.store.device(dev)
        if info is None or not info.enabled:
            return  # a disabled device is sent nothing
        self._spawn(self._resend_config(dev), name=f"fleet-birth-{dev}")

    async def _resend_config(self, dev: str) -> None:
        try:
            await self._resend_config_now(dev)
        except Exception:
            log.exception("re-sending the config of %s failed", dev)

    async def _resend_config_now(self, dev: str) -> None:
        now = self._now()
        Des, R = self.tables.Desired, self.tables.Reported
        desired = Des.get_or_none(Des.dev == dev)
        if desired is None:
            return
        reported = R.get_or_none(R.dev == dev)
        if reported is not None and reported.hash == desired.hash:
            return

        def tx() -> Envelope:
            row = Des.get(Des.dev == dev)
            return self._signed_config_tx(dev, int(row.version), row.hash,
                                          json.loads(row.settings), now)

        env = await self.store.write(tx)
        if await self._publish(topics.down(dev, "config"), encode(env)):
            self.stats["config_published"] += 1

    async def on_result(self, dev: str, env: Envelope, body: WireModel) -> None:
        """A ``config.report``, ``cmd.result`` or ``update.status`` from ``dev`` (validated by
        the forwarder); an ``update.status`` goes to :attr:`rollouts`."""
        self.stats["results"] += 1
        now = self._now()
        if isinstance(body, ConfigReport):
            await self.store.write(lambda: self._report_tx(dev, body, now))
        elif isinstance(body, CommandResult):
            outcome = await self.store.write(lambda: self._cmd_result_tx(dev, body, now))
            if outcome is None:
                return
            command_id, final, confirm = outcome
            if final:
                self._wake(command_id)
            if confirm:
                await self._confirm_renewal(dev, now)
        elif isinstance(body, UpdateStatus):
            await self.rollouts.on_status(dev, body)

    def _report_tx(self, dev: str, body: ConfigReport, now: datetime) -> None:
        R = self.tables.Reported
        values = {"for_version": body.version, "status": body.status,
                  "version": body.running_version, "hash": body.running_hash,
                  "code": body.code, "message": body.message, "at": _ts(now)}
        R.insert(dev=dev, **values).on_conflict(conflict_target=[R.dev],
                                                update=values).execute()
        if body.status != "applied":
            self.store.append_audit_in_tx(now, dev, "fleet.config_" + body.status, {
                "dev": dev, "version": body.version, "code": body.code})

    def _cmd_result_tx(self, dev: str, body: CommandResult, now: datetime
                       ) -> tuple[str, bool, bool] | None:
        K, D = self.tables.FleetCommand, self.tables.FleetDevice
        if body.command_id is None:
            self.store.append_audit_in_tx(now, dev, "fleet.cmd_result_unreadable", {
                "dev": dev, "state": body.state, "code": body.code, "seq": body.seq})
            return None
        # held: two results of one command handled at once (two instances) never move it
        # back nor out of a final state
        row = for_update(self.store, K.select().where(K.command_id == body.command_id)).first()
        if row is None:
            self.store.append_audit_in_tx(now, dev, "fleet.cmd_result_unknown", {
                "dev": dev, "command_id": body.command_id, "state": body.state})
            return None
        if row.dev != dev:
            self.store.append_audit_in_tx(now, dev, "fleet.cmd_result_wrong_device", {
                "dev": dev, "command_id": body.command_id, "owner": row.dev,
                "state": body.state})
            log.warning("result for %s's command %s came from %s; refused", row.dev,
                        body.command_id, dev)
            return None
        if not advances(row.state, body.state):
            return None
        final = body.state in FINAL_COMMAND_STATES
        K.update(state=body.state, code=body.code, message=body.message,
                 output=json.dumps(body.output, sort_keys=True), updated_at=_ts(now)).where(
            K.command_id == row.command_id).execute()
        if final:
            self.store.append_audit_in_tx(now, dev, "fleet.cmd_" + body.state, {
                "dev": dev, "command_id": row.command_id, "name": row.name,
                "code": body.code})
        confirm = False
        if row.name == "cert.rotate" and body.state == "succeeded":
            fleet_row = D.get_or_none(D.dev == dev)
            confirm = fleet_row is not None and fleet_row.renew_confirm == row.command_id
        return row.command_id, final, confirm

    # ================================================================== commands
    def _command_dict(self, row: Any) -> dict[str, Any]:
        output = dict(json.loads(row.output or "{}"))
        if row.bundle:
            bundle = json.loads(row.bundle)
            output["bundle_size"] = bundle.get("size")
            output["bundle_sha256"] = bundle.get("sha256")
        return {
            "command_id": row.command_id, "dev": row.dev, "name": row.name,
            "args": json.loads(row.args or "{}"), "state": row.state,
            "created_by": row.created_by, "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at), "exp": _iso(row.exp),
            "code": row.code, "message": row.message, "output": output,
        }

    async def send_command(self, dev: str, name: str, args: dict[str, Any], *, actor: str,
                           exp_s: float | None = None,
                           in_tx: Callable[[str], object] | None = None) -> dict[str, Any]:
        """Sign and send command ``name`` to ``dev``; returns the command dict (``queued``).

        ``in_tx(command_id)`` runs inside the transaction that stores the command (a rollout
        marks its device there); raising from it sends nothing.
        """
        info = self._require_device(dev)
        if not info.enabled:
            raise FleetError(409, "device_disabled", f"device {dev} is disabled",
                             "设备已停用")
        exp_s = self.section.command_exp_s if exp_s is None else float(exp_s)
        if not 10 <= exp_s <= 7 * 86_400:
            raise FleetError(422, "invalid_command", "exp_s must be 10 s to 7 days",
                             "命令有效期无效")
        command_id = uuid.uuid4().hex
        cmd = validate_command(command_id, name, args or {})
        if self.publisher is None or not self.publisher.connected:
            raise FleetError(503, "broker_unavailable",
                             "central is not connected to the device broker",
                             "中心未连接消息代理")
        actor = _actor(actor)
        now = self._now()
        exp = now + timedelta(seconds=exp_s)

        # A download token is a credential: signed into the command, never stored or shown.
        shown = json.dumps({k: "(token)" if k == "token" else v for k, v in cmd.args.items()},
                           sort_keys=True)

        def tx() -> bytes:
            seq = self._next_seq_tx(dev, now)
            env = self._sign(TYPE_CMD, dev, cmd, now, exp=exp, seq=seq)
            t = _ts(now)
            self.tables.FleetCommand.create(
                command_id=command_id, dev=dev, name=cmd.name,
                args=shown, seq=seq, state="queued",
                created_by=actor, created_at=t, updated_at=t, exp=exp.timestamp())
            if in_tx is not None:  # before the audit: its lock is taken last (set_config)
                in_tx(command_id)
            self.store.append_audit_in_tx(now, actor, "fleet.cmd_send", {
                "dev": dev, "command_id": command_id, "name": cmd.name,
                "args": shown})
            return encode(env)

        payload = await self.store.write(tx)
        await self._publish(topics.down(dev, "cmd"), payload)
        found = self.command(command_id)
        assert found is not None
        return found

    def command(self, command_id: str) -> dict[str, Any] | None:
        """One command, or None."""
        K = self.tables.FleetCommand
        row = K.get_or_none(K.command_id == str(command_id))
        return None if row is None else self._command_dict(row)

    def commands(self, dev: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Commands, newest first (of one device when ``dev`` is given)."""
        K = self.tables.FleetCommand
        q = K.select()
        if dev is not None:
            q = q.where(K.dev == dev)
        limit = max(1, min(int(limit), 1000))
        return [self._command_dict(r)
                for r in q.order_by(K.created_at.desc(), K.command_id).limit(limit)]

    def _wake(self, command_id: str) -> None:
        event = self._waiters.get(command_id)
        if event is not None:
            event.set()

    async def wait_command(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        """The command once it reaches a final state, or as it stands after ``timeout_s``."""
        found = self.command(command_id)
        if found is None:
            raise FleetError(404, "unknown_command", f"no command {str(command_id)[:40]}",
                             "没有此命令")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(timeout_s))
        event = self._waiters.setdefault(command_id, asyncio.Event())
        try:
            while found["state"] not in FINAL_COMMAND_STATES:
                left = deadline - loop.time()
                if left <= 0:
                    break
                event.clear()
                # A result may be handled by another process: look again now and then.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, 0.5))
                found = self.command(command_id) or found
        finally:
            self._waiters.pop(command_id, None)
        return found

    async def expire_due(self) -> int:
        """Mark commands past ``exp`` without a final state ``expired`` and close enrollment
        requests past ``expires_at``; returns how many commands expired."""
        now = self._now()
        t = _ts(now)
        K, E = self.tables.FleetCommand, self.tables.Enrollment
        finals = list(FINAL_COMMAND_STATES)

        def tx() -> list[str]:
            # held: a result committed meanwhile (another instance) is not overwritten
            due = [r.command_id for r in for_update(self.store, K.select(K.command_id).where(
                (K.exp < t) & K.state.not_in(finals)))]
            if due:
                K.update(state="expired", code="expired", updated_at=t,
                         message="no final state before exp").where(
                    K.command_id.in_(due)).execute()
                for command_id in due:
                    self.store.append_audit_in_tx(now, "fleet", "fleet.cmd_expired",
                                                  {"command_id": command_id})
            E.update(status="expired").where((E.status == "pending")
                                              & (E.expires_at < t)).execute()
            return due

        due = await self.store.write(tx)
        for command_id in due:
            self._wake(command_id)
        return len(due)

    async def renew_due(self) -> list[str]:
        """Send ``cert.rotate`` to each online, enabled device whose certificate expires
        within ``renew_before_days`` and that has no rotation open; returns the devices."""
        now = self._now()
        D, K = self.tables.FleetDevice, self.tables.FleetCommand
        horizon = _ts(now) + self.section.renew_before_days * 86_400
        due = [r.dev for r in D.select(D.dev).where(
            D.cert_not_after.is_null(False) & (D.cert_not_after < horizon))]
        if not due:
            return []
        # Not while one is open, nor again within RENEW_RETRY_S of the last one (a device
        # that fails its rotation is not sent a new one every round).
        open_rotations = {r.dev for r in K.select(K.dev).where(
            K.dev.in_(due) & (K.name == "cert.rotate")
            & (K.state.not_in(list(FINAL_COMMAND_STATES))
               | (K.created_at > _ts(now) - RENEW_RETRY_S)))}
        sent = []
        for dev in due:
            info = self.store.device(dev)
            if dev in open_rotations or info is None or not info.enabled or not info.online:
                continue
            try:
                await self.send_command(dev, "cert.rotate", {}, actor="central")
            except FleetError as exc:
                log.warning("certificate renewal of %s not sent: %s", dev, exc.code)
                continue
            sent.append(dev)
        return sent

    async def confirm_left_renewals(self) -> int:
        """At start: rotations that succeeded but whose old certificates were not revoked
        yet (central stopped in between) are finished now; returns how many."""
        D, K = self.tables.FleetDevice, self.tables.FleetCommand
        done = [r.dev for r in D.select(D.dev, D.renew_confirm).where(
            D.renew_confirm.is_null(False))
            if (cmd := K.get_or_none(K.command_id == r.renew_confirm)) is not None
            and cmd.state == "succeeded"]
        for dev in done:
            await self._confirm_renewal(dev, self._now())
        return len(done)

    async def run_jobs(self) -> None:
        """The fleet's once-only work, until cancelled: commands past their ``exp`` expire,
        certificates near their end are renewed, renewals a crash left are finished. One
        instance runs it (``ykt central``: under the jobs lease, central/leases.py)."""
        try:
            await self.confirm_left_renewals()
        except Exception:
            log.exception("finishing left-over certificate renewals failed")
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_S)
            try:
                await self.expire_due()
                now = self._now()
                if (now - self._renew_checked).total_seconds() >= RENEW_CHECK_S:
                    self._renew_checked = now
                    await self.renew_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet expiry round failed")

    async def _periodic(self) -> None:
        """Every instance: revocations from the others onto this CRL, the CRL kept fresh."""
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_S)
            try:
                await asyncio.to_thread(self.sync_revocations)
                now = self._now()
                if (now - self._crl_written).total_seconds() >= CRL_REFRESH_S:
                    with self._ca_lock:
                        self.ca.write_crl(now=now)
                    self._crl_written = now
                    self._reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("keeping the CRL up to date failed")

    # ================================================================== views
    def _cert_view(self, dev: str) -> dict[str, Any] | None:
        C = self.tables.FleetCert
        row = (C.select().where(C.dev == dev).order_by(C.issued_at.desc(), C.serial.desc())
               .first())
        if row is None:
            return None
        return {"serial": row.serial, "not_after": _iso(row.not_after),
                "revoked": row.revoked_at is not None or self.ca.is_revoked(int(row.serial))}

    @staticmethod
    def _config_state(desired: Any, reported: Any) -> str:
        if desired is None:
            return "unknown"
        if reported is None:
            return "pending"
        if reported.hash == desired.hash:
            return "in_sync"
        if reported.for_version == desired.version and reported.status != "applied":
            return "failed"
        return "pending"

    def device_detail(self, dev: str) -> dict[str, Any]:
        """Everything central knows about one device (FleetError 404 when unknown)."""
        info = self._require_device(dev)
        D, Des, R = self.tables.FleetDevice, self.tables.Desired, self.tables.Reported
        fleet_row = D.get_or_none(D.dev == dev)
        desired = Des.get_or_none(Des.dev == dev)
        reported = R.get_or_none(R.dev == dev)
        state = self._config_state(desired, reported)
        return {
            "id": info.id, "role": info.role,
            "site": fleet_row.site if fleet_row is not None else None,
            "serial": fleet_row.serial if fleet_row is not None else None,
            "facts": json.loads(fleet_row.facts) if fleet_row is not None and fleet_row.facts
            else {},
            "enabled": info.enabled, "online": info.online,
            "cert": self._cert_view(dev),
            "desired": None if desired is None else {
                "version": desired.version, "hash": desired.hash,
                "settings": json.loads(desired.settings)},
            "reported": None if reported is None else {
                "version": reported.version, "hash": reported.hash,
                "status": reported.status, "code": reported.code,
                "message": reported.message, "at": _iso(reported.at)},
            "in_sync": state == "in_sync",
            "commands": self.commands(dev, DETAIL_COMMANDS),
        }

    def devices_overview(self) -> list[dict[str, Any]]:
        """One row per registered device: site, certificate expiry, config versions and state."""
        D, Des, R = self.tables.FleetDevice, self.tables.Desired, self.tables.Reported
        fleet = {r.dev: r for r in D.select()}
        desired = {r.dev: r for r in Des.select()}
        reported = {r.dev: r for r in R.select()}
        out = []
        for info in self.store.devices():
            f, d, r = fleet.get(info.id), desired.get(info.id), reported.get(info.id)
            out.append({
                "id": info.id, "role": info.role,
                "site": f.site if f is not None else None,
                "cert_not_after": _iso(f.cert_not_after) if f is not None else None,
                "desired_version": d.version if d is not None else None,
                "reported_version": r.version if r is not None else None,
                "config_state": self._config_state(d, r),
            })
        return out

    def sites_overview(self) -> list[dict[str, Any]]:
        """Per site: devices, and how many run the desired config / wait / failed."""
        sites: dict[str | None, dict[str, Any]] = {}
        for row in self.devices_overview():
            s = sites.setdefault(row["site"], {"site": row["site"], "devices": 0,
                                               "in_sync": 0, "pending": 0, "failed": 0})
            s["devices"] += 1
            if row["config_state"] in ("in_sync", "pending", "failed"):
                s[row["config_state"]] += 1
        return sorted(sites.values(), key=lambda s: (s["site"] is None, s["site"] or ""))
