"""Enrollment by claim against a real Mosquitto (TLS, claim account, ``%c`` ACL).

The test plays central on the enrollment broker: it reads the device's ``enroll.csr``,
answers ``pending`` / ``approved`` / ``rejected`` / ``expired``, issues the certificate with
:class:`central.ca.FleetCA` and signs the first config with its own Ed25519 key.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import wait_until_async

from edge.config import EnrollmentConfig
from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.sim.decoder import decode as decode_escpos
from edge.devices.printer.transport import MemoryTransport
from edge.fleet.enrollment import (
    Enrollment,
    EnrollmentState,
    detect_model,
    detect_serial,
    device_facts,
    sanitise_serial,
)
from edge.fleet.identity import FleetState, IdentityStore
from edge.fleet.remote import RunningConfigFile
from edge.uplink.config import TlsConfig
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import decode, encode, new_envelope
from yikatong.protocol.fleet import ENROLL_DEV, TYPE_ENROLL_STATUS, EnrollCsr
from yikatong.protocol.signing import sign

SERIAL = "10000000abcdef01"


# --------------------------------------------------------------------------- pure parts


def test_serial_comes_from_cpuinfo_then_machine_id(tmp_path: Path) -> None:
    cpu = tmp_path / "cpuinfo"
    cpu.write_text("processor\t: 0\nHardware\t: BCM2835\nSerial\t\t: 10000000abcdef01\n")
    mid = tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    assert detect_serial(cpu, mid) == "10000000abcdef01"
    cpu.write_text("Serial\t\t: 0000000000000000\n")  # a board without one
    assert detect_serial(cpu, mid) == "0123456789abcdef0123456789abcdef"
    assert sanitise_serial(" --ab/c:d e!f ") == "abcdef"
    assert sanitise_serial("x") is None
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert detect_model(model) == "Raspberry Pi 4 Model B Rev 1.4"
    assert detect_model(tmp_path / "none") == "generic"


# --------------------------------------------------------------------------- rig


class Central:
    """Central's enrollment connection: reads CSRs, answers on ``…/cert``."""

    def __init__(self, eb: Any, signer: Any) -> None:
        self.signer = signer
        self.csrs: asyncio.Queue[EnrollCsr] = asyncio.Queue()
        self.session = MqttSession(
            "central-enroll", host="127.0.0.1", port=eb.port, username=eb.central_user,
            password=eb.central_password, tls=TlsConfig(cafile=eb.cafile),
            backoff_min_s=0.05, backoff_max_s=0.3,
            subscriptions=[("ykt/v1/enroll/+/csr", 1)], on_message=self._on)

    def _on(self, msg: InboundMessage) -> None:
        env = decode(msg.payload)
        assert env.type == "enroll.csr" and env.dev == ENROLL_DEV
        assert msg.topic == topics.enroll(env.body["serial"], "csr")
        self.csrs.put_nowait(EnrollCsr.model_validate(env.body))

    async def __aenter__(self) -> Central:
        await self.session.start()
        assert await self.session.wait_connected(10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.stop()

    async def next_csr(self, within_s: float = 10) -> EnrollCsr:
        return await asyncio.wait_for(self.csrs.get(), within_s)

    async def answer(self, serial: str, body: dict[str, Any], now: Any, *,
                     key: Ed25519PrivateKey | None = None, signed: bool = True) -> None:
        """Publish ``enroll.status``, signed as central does (``key``: another signer)."""
        env = new_envelope(TYPE_ENROLL_STATUS, ENROLL_DEV, body, now=now)
        if signed:
            env = sign(env, key or self.signer.key)
        await self.session.publish(topics.enroll(serial, "cert"), encode(env), qos=1,
                                   timeout_s=5)

    async def answer_raw(self, serial: str, payload: bytes) -> None:
        await self.session.publish(topics.enroll(serial, "cert"), payload, qos=1, timeout_s=5)


def csr_public_key(csr: EnrollCsr) -> bytes:
    req = x509.load_pem_x509_csr(csr.csr.encode())
    assert [a.value for a in req.subject] == [SERIAL]
    return req.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class Rig:
    def __init__(self, tmp: Path, eb: Any, signer: Any, clock: Any, **cfg: Any) -> None:
        pub = tmp / "central-signing.pub"
        pub.write_bytes(signer.pub_pem())
        self.cfg = EnrollmentConfig(host="127.0.0.1", port=eb.port, cafile=eb.cafile,
                                    claim_password_file=eb.claim_password_file,
                                    signing_public_key=pub, serial=SERIAL,
                                    **{"retry_s": 30.0, **cfg})
        self.data = tmp / "data"
        self.store = IdentityStore(self.data)
        self.fleet_state = FleetState(self.store.ensure_dir() / "fleet-state.db")
        self.running = RunningConfigFile(self.data / "remote-config.json")
        self.paper = MemoryTransport()

        def opened(_cfg: PrinterConfig) -> MemoryTransport:
            self.paper.open()
            return self.paper

        self.printer = PrinterService(PrinterConfig(kind="memory"), tmp / "jobs.db",
                                      transport_factory=opened)
        self.state = EnrollmentState(SERIAL)
        self.enrollment = Enrollment(
            self.cfg, self.store, self.fleet_state, self.running, serial=SERIAL,
            facts=device_facts(SERIAL, "Test board", printer="xprinter_xp80", version="9.9"),
            signing_keys=[signer.key.public_key()], state=self.state, printer=self.printer,
            hospital_name="示范市第一人民医院", clock=clock, backoff_s=(0.05, 0.3))
        self.task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.enrollment.run())

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        self.fleet_state.close()

    def printed(self) -> list[str]:
        return [job.text for job in decode_escpos(bytes(self.paper.written))]


@pytest.fixture
async def rig(tmp_path: Path, make_enroll_broker: Callable[[], Any], signer: Any,
              clock: Any) -> Any:
    eb = make_enroll_broker()
    rigs: list[Rig] = []

    def make(**cfg: Any) -> Rig:
        r = Rig(tmp_path, eb, signer, clock, **cfg)
        rigs.append(r)
        return r

    async with Central(eb, signer) as central:
        yield make, central
    for r in rigs:
        await r.close()


def pending(code: str = "7K3M-Q9XZ", request_id: str | None = None, clock: Any = None
            ) -> dict[str, Any]:
    body: dict[str, Any] = {"request_id": request_id or "a" * 32, "status": "pending",
                            "code": code}
    if clock is not None:
        body["expires_at"] = (clock() + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return body


def approved(issue: Any, fleet_ca: Any, csr: EnrollCsr, signer: Any, *,
             dev: str = "kiosk-101", config: bytes | None = None,
             cert_for: EnrollCsr | None = None, request_id: str = "a" * 32) -> dict[str, Any]:
    env = json.loads(config if config is not None else signer.config(
        dev, 7, {"telemetry_interval_s": 60, "ui": {"idle_timeout_s": 90}}, version=3))
    return {"request_id": request_id, "status": "approved", "device_id": dev, "role": "kiosk",
            "site": "门诊楼", "cert": issue((cert_for or csr).csr, dev).decode(),
            "chain": fleet_ca.chain_file.read_text(), "config": env}


# --------------------------------------------------------------------------- the flows


async def test_pending_then_approved_writes_the_identity_and_the_first_config(
        rig: Any, issue: Any, fleet_ca: Any, signer: Any, clock: Any) -> None:
    make, central = rig
    r = make(retry_s=0.3)
    r.start()
    first = await central.next_csr()
    assert first.serial == SERIAL and first.facts.model == "Test board"
    assert r.state.state == "enrolling"
    await central.answer(SERIAL, pending(clock=clock), clock())
    await wait_until_async(lambda: r.state.state == "pending", 10)
    assert r.state.as_dict()["code"] == "7K3M-Q9XZ"
    assert r.state.as_dict()["expires_at"].startswith("2026-03-03T08:00")
    # Until approved the same key is asked again (central keeps one request per key).
    again = await central.next_csr()
    assert csr_public_key(again) == csr_public_key(first)
    await central.answer(SERIAL, pending(clock=clock), clock())  # answered pending again
    # The code is printed once, in both languages, in the site's time zone.
    await wait_until_async(lambda: any("7K3M-Q9XZ" in t for t in r.printed()), 10)
    await asyncio.sleep(0.3)
    slips = [t for t in r.printed() if "7K3M-Q9XZ" in t]
    assert len(slips) == 1
    assert "设备配对码" in slips[0] and "PAIRING CODE" in slips[0] and SERIAL in slips[0]
    assert "2026-03-03 16:00" in slips[0]  # 08:00 UTC + 24 h in Asia/Shanghai

    await central.answer(SERIAL, approved(issue, fleet_ca, first, signer), clock())
    assert r.task is not None
    ident = await asyncio.wait_for(r.task, 10)
    assert (ident.device_id, ident.role, ident.site) == ("kiosk-101", "kiosk", "门诊楼")
    assert r.state.state == "enrolled" and r.state.device_id == "kiosk-101"
    d = r.store.dir
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d / "device.key").st_mode) == 0o600
    assert r.store.load() == ident  # key, certificate and identity.json belong together
    assert not list(d.glob(".*.tmp"))
    # The first config: its seq recorded, its settings kept for the daemon to apply.
    seq, env_id, state = r.fleet_state.last("kiosk-101", "config")
    assert (seq, state) == (7, "applied") and env_id
    rc = r.running.load("kiosk-101")
    assert (rc.version, rc.seq, rc.reported) == (3, 7, False)
    assert rc.settings.telemetry_interval_s == 60 and rc.settings.ui.idle_timeout_s == 90


async def test_forged_or_foreign_approvals_are_ignored(rig: Any, issue: Any, fleet_ca: Any,
                                                       signer: Any, clock: Any) -> None:
    make, central = rig
    r = make()
    r.start()
    csr = await central.next_csr()
    await central.answer(SERIAL, pending(clock=clock), clock())
    await wait_until_async(lambda: r.state.state == "pending", 10)
    rogue = Ed25519PrivateKey.generate()
    forged = [
        # the config signed by another key: a forged approval
        approved(issue, fleet_ca, csr, signer, config=signer.config("kiosk-101", 7, key=rogue)),
        # a config signed by central, but for another device
        approved(issue, fleet_ca, csr, signer, config=signer.config("kiosk-999", 7)),
        # an unsigned config
        approved(issue, fleet_ca, csr, signer, config=encode(
            signer.config_env("kiosk-101", 7, signed=False))),
        # an expired config
        approved(issue, fleet_ca, csr, signer, config=signer.config("kiosk-101", 7, exp_s=-1)),
    ]
    for body in forged:
        await central.answer(SERIAL, body, clock())
    await central.answer_raw(SERIAL, b"not json at all")
    await wait_until_async(lambda: r.enrollment.stats["ignored"] >= 5, 10)
    assert r.state.state == "pending" and not r.store.json_file.exists()
    assert r.fleet_state.last("kiosk-101", "config") == (None, None, None)
    assert not r.running.path.exists()
    # A certificate for another key (another device's request) is refused too.
    other = make_other_csr()
    await central.answer(SERIAL, approved(issue, fleet_ca, csr, signer, cert_for=other), clock())
    await wait_until_async(lambda: r.enrollment.stats["ignored"] >= 6, 10)
    assert not r.store.json_file.exists()
    # The genuine approval still works.
    await central.answer(SERIAL, approved(issue, fleet_ca, csr, signer), clock())
    assert r.task is not None
    assert (await asyncio.wait_for(r.task, 10)).device_id == "kiosk-101"


def self_signed(csr: EnrollCsr, dev: str) -> tuple[str, str]:
    """A certificate for the CSR's key with CN = ``dev``, signed by a CA of its own (also
    sent as the chain): right key and name, wrong issuer."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")])
    now = datetime.now(UTC)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=9))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    req = x509.load_pem_x509_csr(csr.csr.encode())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dev)]))
            .issuer_name(ca_name).public_key(req.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=9))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem).decode(), ca.public_bytes(pem).decode()


async def test_approvals_not_from_the_fleet_ca_or_not_signed_by_central_are_ignored(
        rig: Any, issue: Any, fleet_ca: Any, signer: Any, clock: Any) -> None:
    make, central = rig
    r = make()
    r.start()
    csr = await central.next_csr()
    await central.answer(SERIAL, pending(clock=clock), clock())
    await wait_until_async(lambda: r.state.state == "pending", 10)
    # Our key, our device id, a config central signed, but a certificate of another CA
    # (and that CA as the chain, which would become the uplink's trust anchor).
    body = approved(issue, fleet_ca, csr, signer)
    cert, chain = self_signed(csr, "kiosk-101")
    await central.answer(SERIAL, {**body, "cert": cert, "chain": chain}, clock())
    await central.answer(SERIAL, {**body, "cert": cert}, clock())  # the genuine chain
    await wait_until_async(lambda: r.enrollment.stats["ignored"] >= 2, 10)
    # A genuine approval (config and certificate) in an envelope central did not sign.
    await central.answer(SERIAL, body, clock(), key=Ed25519PrivateKey.generate())
    await central.answer(SERIAL, body, clock(), signed=False)
    await wait_until_async(lambda: r.enrollment.stats["ignored"] >= 4, 10)
    # ... nor is an unsigned "rejected" taken (it would make the device start over).
    await central.answer(SERIAL, {"request_id": "a" * 32, "status": "rejected"}, clock(),
                         signed=False)
    await wait_until_async(lambda: r.enrollment.stats["ignored"] >= 5, 10)
    assert r.state.state == "pending" and not r.store.json_file.exists()
    assert r.fleet_state.last("kiosk-101", "config") == (None, None, None)
    assert r.enrollment.stats["rejected"] == 0
    # Signed by central, issued by the fleet CA: taken.
    await central.answer(SERIAL, body, clock())
    assert r.task is not None
    assert (await asyncio.wait_for(r.task, 10)).device_id == "kiosk-101"


def test_a_certificate_through_an_intermediate_of_the_chain_is_accepted(
        fleet_ca: Any, issue: Any, tmp_path: Path) -> None:
    from edge.fleet.identity import IdentityError, check_issuer, make_csr, new_key

    cert = issue(make_csr(new_key(), "x"), "kiosk-101")
    chain = fleet_ca.chain_file.read_bytes()
    root = [c for c in x509.load_pem_x509_certificates(chain) if c.subject == c.issuer]
    assert root  # the claim bundle may hold only the root: the issuing CA comes in the chain
    root_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in root)
    check_issuer(cert, chain, chain)
    check_issuer(cert, chain, root_pem)
    with pytest.raises(IdentityError):
        check_issuer(cert, root_pem, root_pem)  # no way from the root to the certificate


def make_other_csr() -> EnrollCsr:
    from edge.fleet.identity import make_csr, new_key

    key = new_key()
    facts = device_facts(SERIAL, "x")
    return EnrollCsr(serial=SERIAL, csr=make_csr(key, SERIAL).decode(), facts=facts)


async def test_rejected_shows_the_reason_waits_and_asks_again_with_a_new_key(
        rig: Any, clock: Any) -> None:
    make, central = rig
    r = make(rejected_wait_s=0.5)
    r.start()
    first = await central.next_csr()
    await central.answer(SERIAL, pending(clock=clock), clock())
    await wait_until_async(lambda: r.state.state == "pending", 10)
    await central.answer(SERIAL, {"request_id": "a" * 32, "status": "rejected",
                                  "message": "Unknown terminal", "message_zh": "未登记的设备"},
                         clock())
    await wait_until_async(lambda: r.state.state == "rejected", 10)
    shown = r.state.as_dict()
    assert shown["message_zh"] == "未登记的设备" and shown["message"] == "Unknown terminal"
    assert shown["code"] is None and shown["retry_at"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    second = await central.next_csr()
    assert loop.time() - t0 >= 0.4  # it waited before asking again
    assert csr_public_key(second) != csr_public_key(first)  # with a new key
    assert r.state.state == "enrolling"
    assert r.enrollment.stats["rejected"] == 1


async def test_expired_asks_again_at_once_with_a_new_request(rig: Any, clock: Any) -> None:
    make, central = rig
    r = make()
    r.start()
    first = await central.next_csr()
    await central.answer(SERIAL, pending("AAAA-BBBB", clock=clock), clock())
    await wait_until_async(lambda: r.state.code == "AAAA-BBBB", 10)
    await central.answer(SERIAL, {"request_id": "a" * 32, "status": "expired"}, clock())
    second = await central.next_csr(within_s=5)  # at once, not after retry_s (30 s)
    assert csr_public_key(second) != csr_public_key(first)
    assert r.state.state == "enrolling" and r.state.code is None
    await central.answer(SERIAL, pending("CCCC-DDDD", request_id="b" * 32, clock=clock),
                         clock())
    await wait_until_async(lambda: r.state.code == "CCCC-DDDD", 10)
    # both codes were printed, each once
    await wait_until_async(lambda: sum("CCCC-DDDD" in t for t in r.printed()) == 1, 10)
    assert sum("AAAA-BBBB" in t for t in r.printed()) == 1


async def test_a_restart_while_pending_keeps_the_same_request(rig: Any, clock: Any) -> None:
    make, central = rig
    r = make()
    r.start()
    first = await central.next_csr()
    await r.close()
    r2 = make()  # a new process: same data dir
    r2.start()
    second = await central.next_csr()
    assert csr_public_key(second) == csr_public_key(first)


@pytest.mark.parametrize("case", ["world_readable", "empty", "missing"])
def test_the_claim_password_is_read_as_a_secret(case: str, tmp_path: Path,
                                                signer: Any) -> None:
    from edge.fleet.enrollment import EnrollmentError

    pw = tmp_path / "claim.password"
    if case != "missing":
        pw.write_text("" if case == "empty" else "s3cret\n")
        pw.chmod(0o644 if case == "world_readable" else 0o600)
    data = tmp_path / "data"
    store = IdentityStore(data)
    fleet_state = FleetState(store.ensure_dir() / "fleet-state.db")
    try:
        cfg = EnrollmentConfig(host="127.0.0.1", cafile=tmp_path / "ca.pem",
                               claim_password_file=pw,
                               signing_public_key=tmp_path / "signing.pub", serial=SERIAL)
        enrollment = Enrollment(cfg, store, fleet_state, RunningConfigFile(data / "rc.json"),
                                serial=SERIAL, facts=device_facts(SERIAL, "x"),
                                signing_keys=[signer.key.public_key()])
        with pytest.raises(EnrollmentError) as err:
            enrollment._password()
        assert "claim_password_file" in err.value.message
        pw.write_text("s3cret\n")
        pw.chmod(0o600)
        assert enrollment._password() == "s3cret"
    finally:
        fleet_state.close()
