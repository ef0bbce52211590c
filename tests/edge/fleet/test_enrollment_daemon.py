"""``ykt edge`` from a blank device to an enrolled one, in-process, against real Mosquittos.

The daemon (``edge.daemon.run``) starts with ``[enrollment]`` and no identity: its local API
serves the pairing state; the test (playing central) approves on the enrollment broker; the
daemon writes its identity, connects to the device broker with mutual TLS as ``kiosk-101``
and swaps in the full API on the same port — no restart. Then central's signed config and
commands reach it (``cert.rotate`` included: the device reconnects with its new certificate),
and a restart of the daemon comes up enrolled at once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from support import wait_until_async

from central.broker import free_port
from edge.config import EdgeConfig
from edge.daemon import run
from edge.uplink.config import TlsConfig
from yikatong.mqtt.session import InboundMessage, MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import decode, encode, new_envelope
from yikatong.protocol.fleet import ENROLL_DEV, TYPE_ENROLL_STATUS
from yikatong.protocol.messages import CertRenewResult, make_reply_ok
from yikatong.protocol.signing import sign

SERIAL = "SN0000DAEMON01"
DEV = "kiosk-101"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def reboot(self) -> None:
        self.calls.append(("reboot",))

    async def restart(self, unit: str) -> None:
        self.calls.append(("restart", unit))


class Central:
    """Central on both brokers: enrollment answers, the device's results, cert renewals."""

    def __init__(self, eb: Any, device_port: int, cert: Path, key: Path, fleet_ca: Any,
                 issue: Callable[..., bytes]) -> None:
        self.csrs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.up: list[Any] = []
        self.renewed = 0
        self.fleet_ca, self.issue = fleet_ca, issue
        self.enroll = MqttSession(
            "central-enroll", host="127.0.0.1", port=eb.port, username=eb.central_user,
            password=eb.central_password, tls=TlsConfig(cafile=eb.cafile),
            backoff_min_s=0.05, backoff_max_s=0.3,
            subscriptions=[("ykt/v1/enroll/+/csr", 1)],
            on_message=lambda m: self.csrs.put_nowait(decode(m.payload).body))
        self.device = MqttSession(
            "central-x", host="127.0.0.1", port=device_port,
            tls=TlsConfig(cafile=fleet_ca.chain_file, certfile=cert, keyfile=key),
            backoff_min_s=0.05, backoff_max_s=0.3,
            subscriptions=[("ykt/v1/dev/+/up/#", 1), ("ykt/v1/dev/+/state", 1)],
            on_message=self._on_device)

    def _on_device(self, msg: InboundMessage) -> None:
        env = decode(msg.payload)
        self.up.append((msg.topic, env))
        if env.type == "device.cert_renew":
            self.renewed += 1
            result = CertRenewResult(cert=self.issue(env.body["csr"], DEV).decode(),
                                     chain=self.fleet_ca.chain_file.read_text(),
                                     not_after="2027-01-01T00:00:00.000Z")
            reply = make_reply_ok(env, result, now=datetime.now(UTC))
            self.device.publish_nowait(topics.down(DEV, "resp"), encode(reply), qos=1)

    async def start(self) -> None:
        for s in (self.enroll, self.device):
            await s.start()
            assert await s.wait_connected(10)

    async def stop(self) -> None:
        for s in (self.enroll, self.device):
            await s.stop()

    def results(self, type_: str) -> list[dict[str, Any]]:
        return [e.body for t, e in self.up if t == topics.up(DEV, "result") and e.type == type_]

    def births(self) -> list[Any]:
        return [e.body for t, e in self.up if t == topics.state(DEV) and e.body["online"]]


async def test_a_blank_device_enrolls_and_runs_without_a_restart(
        tmp_path: Path, make_enroll_broker: Callable[[], Any],
        make_device_broker: Callable[[], Any], fleet_ca: Any, issue: Any, signer: Any,
        pcscd: Any, sam_pin_file: Path) -> None:
    eb = make_enroll_broker()
    device_broker, c_cert, c_key = make_device_broker()
    signer.clock.t = datetime.now(UTC)
    pub = tmp_path / "central-signing.pub"
    pub.write_bytes(signer.pub_pem())
    data = tmp_path / "data"
    api_port = free_port()
    raw = {
        "device": {"hospital_name": "示范市第一人民医院", "data_dir": str(data)},
        "api": {"port": api_port},
        "card": {"patient_reader": pcscd.patient_reader, "sam_reader": pcscd.sam_reader,
                 "sam_pin_file": str(sam_pin_file), "hotlist_path": str(data / "hotlist.db")},
        "printer": {"kind": "memory", "status_poll_s": 0},
        "uplink": {"host": "127.0.0.1", "port": device_broker.port,
                   "outbox_path": str(data / "outbox.db"),
                   "state_path": str(data / "uplink-state.json"),
                   "retry_interval_s": 0.5, "backoff_min_s": 0.05, "backoff_max_s": 0.5},
        "enrollment": {"host": "127.0.0.1", "port": eb.port, "cafile": str(eb.cafile),
                       "claim_password_file": str(eb.claim_password_file),
                       "signing_public_key": str(pub), "serial": SERIAL, "model": "Test Pi"},
        "remote": {"idle_poll_s": 0.05},
    }
    cfg = EdgeConfig.model_validate(raw)
    assert cfg.device.id is None and cfg.uplink.tls is not None  # from the identity later
    token = secrets.token_urlsafe(16)
    central = Central(eb, device_broker.port, c_cert, c_key, fleet_ca, issue)
    await central.start()
    executor = Recorder()
    stop = asyncio.Event()
    daemon = asyncio.create_task(run(cfg, token, stop=stop, executor=executor))
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}",
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)

    async def get(path: str) -> Any:
        try:
            r = await api.get(path)
        except httpx.TransportError:
            return None
        return r

    async def answer(body: dict[str, Any]) -> None:
        env = sign(new_envelope(TYPE_ENROLL_STATUS, ENROLL_DEV, body, now=datetime.now(UTC)),
                   signer.key)  # central signs every enroll.status
        await central.enroll.publish(topics.enroll(SERIAL, "cert"), encode(env), qos=1,
                                     timeout_s=5)

    try:
        # 1. Not enrolled: the pairing API answers, with the code once central gives one.
        csr = await asyncio.wait_for(central.csrs.get(), 15)
        assert csr["serial"] == SERIAL and csr["facts"]["model"] == "Test Pi"
        await answer({"request_id": "c" * 32, "status": "pending", "code": "PQRS-2345"})

        async def code() -> Any:
            r = await get("/v1/enrollment")
            return r is not None and r.status_code == 200 and r.json()["code"] == "PQRS-2345"

        await wait_until_async(code, 10)
        r = await api.get("/v1/health")
        assert r.json()["enrollment"]["state"] == "pending"
        assert (await api.get("/v1/session")).status_code == 503
        assert (await api.get("/v1/session")).json()["error"]["code"] == "not_enrolled"
        assert (await httpx.AsyncClient().get(
            f"http://127.0.0.1:{api_port}/v1/enrollment")).status_code == 401

        # 2. Approved: identity written, full API on the same port, uplink up with mTLS.
        config = json.loads(signer.config(DEV, 1, {"telemetry_interval_s": 45}, version=1))
        await answer({"request_id": "c" * 32, "status": "approved", "device_id": DEV,
                      "role": "kiosk", "site": "门诊楼", "cert": issue(csr["csr"], DEV).decode(),
                      "chain": fleet_ca.chain_file.read_text(), "config": config})

        async def full_api() -> Any:
            r = await get("/v1/health")
            return r is not None and r.status_code == 200 and r.json().get("device_id") == DEV

        await wait_until_async(full_api, 15)
        assert (await api.get("/v1/enrollment")).json()["state"] == "enrolled"
        assert (await api.get("/v1/session")).json() == {"session": None}
        await wait_until_async(central.births, 10)
        await wait_until_async(lambda: central.results("config.report"), 10)
        first = central.results("config.report")[0]
        assert (first["status"], first["version"]) == ("applied", 1)

        # 3. A new desired config (retained) reaches the running parts and the kiosk.
        await central.device.publish(
            topics.down(DEV, "config"),
            signer.config(DEV, 2, {"telemetry_interval_s": 45,
                                   "ui": {"language": "en", "idle_timeout_s": 120}},
                          version=2), qos=1, retain=True, timeout_s=5)
        await wait_until_async(lambda: len(central.results("config.report")) >= 2, 10)
        assert central.results("config.report")[1]["status"] == "applied"
        assert (await api.get("/v1/ui-settings")).json() == {
            "ui": {"language": "en", "idle_timeout_s": 120}}

        # 4. cert.rotate: new key, device.cert_renew, reconnect with the new certificate.
        ident_before = json.loads((data / "identity" / "identity.json").read_text())
        births = len(central.births())
        await central.device.publish(topics.down(DEV, "cmd"),
                                     signer.cmd(DEV, 3, "cert.rotate", command_id="d" * 32),
                                     qos=1, timeout_s=5)

        def rotated() -> Any:
            return [b for b in central.results("cmd.result")
                    if b["command_id"] == "d" * 32 and b["state"] in ("succeeded", "failed")]

        [done] = await wait_until_async(rotated, 20)
        assert done["state"] == "succeeded", done
        ident_after = json.loads((data / "identity" / "identity.json").read_text())
        assert ident_after["cert_serial"] != ident_before["cert_serial"]
        assert done["output"]["cert_serial"] == ident_after["cert_serial"]
        assert central.renewed == 1 and len(central.births()) > births  # a new connection
        assert not list((data / "identity").glob("*.old"))

        # 5. A disruptive command runs at once on an idle device.
        await central.device.publish(topics.down(DEV, "cmd"),
                                     signer.cmd(DEV, 4, "reboot"), qos=1, timeout_s=5)
        await wait_until_async(lambda: executor.calls == [("reboot",)], 10)
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 20)
        await api.aclose()

    # 6. A restart comes up enrolled at once (no pairing API), seqs kept. (Another API port:
    # in-process, the first run's listening socket is only closed when collected.)
    api_port = free_port()
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": api_port})})
    stop2 = asyncio.Event()
    again = asyncio.create_task(run(cfg, token, stop=stop2, executor=executor))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}",
                                     headers={"Authorization": f"Bearer {token}"},
                                     timeout=5) as api2:
            async def up() -> Any:
                try:
                    r = await api2.get("/v1/health")
                except httpx.TransportError:
                    return False
                return r.status_code == 200 and r.json().get("device_id") == DEV

            await wait_until_async(up, 15)
            assert (await api2.get("/v1/ui-settings")).json()["ui"]["language"] == "en"
        n = len(central.results("cmd.result"))
        await central.device.publish(topics.down(DEV, "cmd"), signer.cmd(DEV, 2, "reboot"),
                                     qos=1, timeout_s=5)
        await wait_until_async(lambda: len(central.results("cmd.result")) > n, 10)
        assert central.results("cmd.result")[-1]["code"] == "replay"
        assert executor.calls == [("reboot",)]
    finally:
        stop2.set()
        await asyncio.wait_for(again, 20)
        await central.stop()
