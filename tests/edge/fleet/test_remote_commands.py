"""Signed commands on the device: checks, journal before acting, waiting for idle, each command.

The test plays central (``signer``); hardware is faked where a command needs it, except the
printer (the real PrinterService on an in-memory printer) and the runtime's idle signals
(the real EdgeRuntime: a card session, an unresolved payment).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import wait_until_async

from edge.devices.printer.config import PrinterConfig
from edge.devices.printer.driver import PrinterService
from edge.devices.printer.sim.decoder import decode as decode_escpos
from edge.devices.printer.transport import MemoryTransport
from edge.fleet.commands import CommandContext, CommandRunner, LogRing, log_bundle
from edge.fleet.identity import FleetState, IdentityStore, make_csr
from edge.runtime import EdgeRuntime
from yikatong.protocol.messages import CertRenewResult, LogBundleResult, PaymentResult

DEV = "kiosk-301"


class Executor:
    """Records reboots and restarts instead of doing them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def reboot(self) -> None:
        self.calls.append(("reboot",))

    async def restart(self, unit: str) -> None:
        self.calls.append(("restart", unit))


class Cards:
    """The card service's read side, as reader.selftest uses it."""

    def __init__(self) -> None:
        self.cards = {"Virtual 00 00": b"\x3b"}
        self.sam: dict[str, Any] = {"reader": "Virtual 00 01", "state": "not_opened"}

    def health(self) -> dict[str, Any]:
        return {"enabled": True, "reader_present": True, "patient_reader": "Virtual 00 00",
                "sam": self.sam, "fault": None}

    async def probe_sam(self) -> dict[str, Any]:
        """Opened on demand, as CardService.probe_sam does."""
        self.sam = {"reader": "Virtual 00 01", "state": "ok", "terminal_number": "110100000001"}
        return self.sam


class HotlistSync:
    class hotlist:
        version = 41

    def __init__(self) -> None:
        self.calls = 0

    async def sync_once(self) -> bool:
        self.calls += 1
        self.hotlist.version = 42
        return True


class Uplink:
    """A fake uplink for the runtime: events kept, never connected."""

    connected = False

    async def publish_event(self, type_: str, body: dict[str, Any]) -> str:
        return "e"

    def unresolved_payments(self) -> list[str]:
        return []  # nothing in an outbox here

    async def request(self, *a: Any, **kw: Any) -> Any:
        raise AssertionError("no requests here")


class Clock:
    def __init__(self, c: Any) -> None:
        self.c = c

    def now(self) -> datetime:
        return self.c()


class Rig:
    def __init__(self, tmp: Path, link: Any, signer: Any, clock: Any) -> None:
        self.tmp, self.link, self.signer, self.clock = tmp, link, signer, clock
        self.executor = Executor()
        self.paper = MemoryTransport()

        def opened(_c: PrinterConfig) -> MemoryTransport:
            self.paper.open()
            return self.paper

        self.printer = PrinterService(PrinterConfig(kind="memory"), tmp / "jobs.db",
                                      transport_factory=opened)
        self.runtime = EdgeRuntime(device_id=DEV, role="kiosk", hospital_name="测试医院",
                                   uplink=Uplink(), printer=self.printer, clock=Clock(clock))
        self.ring = LogRing(100)
        self.levels: list[str] = []
        self.hotlist = HotlistSync()
        self.runners: list[CommandRunner] = []
        self.states: list[FleetState] = []

    def runner(self, **ctx: Any) -> CommandRunner:
        state = FleetState(self.tmp / "identity" / "fleet-state.db", self.clock)
        self.states.append(state)
        parts: dict[str, Any] = {
            "executor": self.executor, "busy": self.runtime.busy_reason,
            "printer": self.printer, "cards": Cards(), "hotlist_sync": self.hotlist,
            "uplink": self.link, "log_ring": self.ring, "version": "9.9",
            "set_log_level": self.levels.append}
        c = CommandContext(**{**parts, **ctx})
        r = CommandRunner(self.link, state, c, dev=DEV, keys=[self.signer.key.public_key()],
                          clock=self.clock, idle_poll_s=0.02)
        self.runners.append(r)
        return r

    async def close(self) -> None:
        for r in self.runners:
            await r.stop()
        for s in self.states:
            s.close()


@pytest.fixture
async def rig(tmp_path: Path, link: Any, signer: Any, clock: Any) -> Any:
    r = Rig(tmp_path, link, signer, clock)
    yield r
    await r.close()


async def run(runner: CommandRunner, payload: bytes) -> None:
    if not runner._ready.is_set():
        await runner.recover()
    await asyncio.wait_for(runner.handle(payload), 20)


CID = "0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- each command


async def test_reboot_and_service_restart_use_the_executor(rig: Rig, link: Any,
                                                           signer: Any) -> None:
    r = rig.runner()
    await run(r, signer.cmd(DEV, 1, "reboot", command_id=CID))
    assert rig.executor.calls == [("reboot",)]
    assert link.states(CID) == ["delivered", "in_progress", "succeeded"]
    await run(r, signer.cmd(DEV, 2, "service.restart", {"service": "kiosk"}))
    await run(r, signer.cmd(DEV, 3, "service.restart", {"service": "edge"}))
    assert rig.executor.calls[1:] == [("restart", "ykt-kiosk.service"),
                                      ("restart", "ykt-edge.service")]
    corr = {c for t, b, c in link.results if b.get("command_id") == CID}
    assert len(corr) == 1 and None not in corr  # every report names the command's envelope


async def test_printer_test_prints_a_test_page(rig: Rig, link: Any, signer: Any) -> None:
    await run(rig.runner(), signer.cmd(DEV, 1, "printer.test", command_id=CID))
    [job] = decode_escpos(bytes(rig.paper.written))
    assert "打印测试页" in job.text and DEV in job.text
    final = next(b for t, b, _ in link.results if b["state"] == "succeeded")
    assert final["output"]["state"] == "printed"


async def test_printer_test_reports_a_printer_fault(rig: Rig, link: Any, signer: Any) -> None:
    rig.paper.paper_out = True
    await run(rig.runner(), signer.cmd(DEV, 1, "printer.test", command_id=CID))
    final = link.results[-1][1]
    assert final["state"] == "failed" and final["code"]


async def test_reader_selftest_reports_reader_card_and_sam(rig: Rig, link: Any,
                                                           signer: Any) -> None:
    await run(rig.runner(), signer.cmd(DEV, 1, "reader.selftest", command_id=CID))
    out = link.results[-1][1]
    assert out["state"] == "succeeded"
    assert out["output"] == {"reader_present": True, "reader": "Virtual 00 00",
                             "card_present": True, "sam_state": "ok",
                             "sam_reader": "Virtual 00 01", "sam_terminal": "110100000001"}


async def test_logs_collect_uploads_the_masked_tail(rig: Rig, link: Any, signer: Any) -> None:
    lg = logging.getLogger("test.logs.collect")
    lg.addHandler(rig.ring)
    lg.setLevel(logging.INFO)
    try:
        for i in range(30):
            lg.info("line %d for 110101199003078515 phone 13812345678", i)
    finally:
        lg.removeHandler(rig.ring)
    link.answers["device.log_bundle"] = LogBundleResult(size=123, sha256="a" * 64)
    await run(rig.runner(), signer.cmd(DEV, 1, "logs.collect", {"lines": 10},
                                       command_id=CID))
    [(kind, body)] = link.requests
    assert kind == "device.log_bundle" and body["command_id"] == CID and body["lines"] == 10
    text = gzip.decompress(base64.b64decode(body["gzip_b64"])).decode()
    lines = text.splitlines()
    assert len(lines) == 10 and "line 29" in lines[-1] and "line 20" in lines[0]
    assert "110101199003078515" not in text and "13812345678" not in text
    assert "8515" in text and "5678" in text  # masked, not dropped
    assert link.results[-1][1]["output"] == {"lines": 10, "size": 123, "sha256": "a" * 64}


def test_a_log_bundle_is_cut_to_fit() -> None:
    import os

    lines = [os.urandom(60).hex() for _ in range(3000)]  # incompressible
    kept, b64 = log_bundle(lines, max_b64=20_000)
    assert len(b64) <= 20_000 and 0 < kept < 3000
    assert gzip.decompress(base64.b64decode(b64)).decode().splitlines() == lines[-kept:]


def test_a_log_bundle_is_cut_with_one_measured_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import edge.fleet.commands as commands

    rnd = random.Random(7)
    lines = [f'{{"level": "info", "msg": "card {i} read", "id": "{rnd.getrandbits(64):x}"}}'
             for i in range(5000)]
    calls = []
    real = gzip.compress

    def counted(data: bytes, **kw: Any) -> bytes:
        calls.append(len(data))
        return real(data, **kw)

    monkeypatch.setattr(commands.gzip, "compress", counted)
    kept, b64 = log_bundle(lines, max_b64=20_000)
    assert len(b64) <= 20_000 and 0 < kept < 5000
    assert gzip.decompress(base64.b64decode(b64)).decode().splitlines() == lines[-kept:]
    assert len(calls) <= 3  # not once per 10 % cut
    assert len(b64) > 18_000  # close to the limit: not cut much further than needed


async def test_logs_collect_builds_the_bundle_off_the_event_loop(
        rig: Rig, link: Any, signer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import edge.fleet.commands as commands

    threads: list[threading.Thread] = []
    real = commands.log_bundle

    def recorded(lines: list[str], *a: Any) -> tuple[int, str]:
        threads.append(threading.current_thread())
        return real(lines, *a)

    monkeypatch.setattr(commands, "log_bundle", recorded)
    link.answers["device.log_bundle"] = LogBundleResult(size=1, sha256="a" * 64)
    await run(rig.runner(), signer.cmd(DEV, 1, "logs.collect", command_id=CID))
    assert link.states(CID)[-1] == "succeeded"
    assert threads and threads[0] is not threading.main_thread()


async def test_log_level_and_hotlist_refresh(rig: Rig, link: Any, signer: Any) -> None:
    r = rig.runner()
    await run(r, signer.cmd(DEV, 1, "log.level", {"level": "debug"}))
    assert rig.levels == ["debug"]
    await run(r, signer.cmd(DEV, 2, "hotlist.refresh", command_id=CID))
    assert rig.hotlist.calls == 1
    assert link.results[-1][1]["output"] == {"applied": True, "version": 42}


async def test_cert_rotate_switches_to_the_new_certificate(
        rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any, tmp_path: Path) -> None:
    store, ident = enrolled(tmp_path, issue, fleet_ca)
    old_cert = store.cert_file.read_bytes()
    uplink = ReconnectingLink(link, connects=[True])
    link.answers["device.cert_renew"] = lambda body: CertRenewResult(
        cert=issue(body["csr"], DEV).decode(), chain=fleet_ca.chain_file.read_text(),
        not_after="2027-01-01T00:00:00.000Z")
    r = rig.runner(identity_store=store, identity=ident, uplink=uplink)
    await run(r, signer.cmd(DEV, 1, "cert.rotate", command_id=CID))
    assert link.states(CID)[-1] == "succeeded", link.results[-1]
    new = store.load()
    assert new is not None and new.cert_serial != ident.cert_serial
    assert store.cert_file.read_bytes() != old_cert
    assert not list(store.dir.glob("*.old"))
    assert uplink.restarts == 1 and r.ctx.identity == new
    csr = link.requests[0][1]["csr"]
    from cryptography import x509

    assert [a.value for a in x509.load_pem_x509_csr(csr.encode()).subject] == [DEV]


async def test_cert_rotate_goes_back_when_the_new_certificate_does_not_connect(
        rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any, tmp_path: Path) -> None:
    store, ident = enrolled(tmp_path, issue, fleet_ca)
    old = (store.key_file.read_bytes(), store.cert_file.read_bytes())
    uplink = ReconnectingLink(link, connects=[False, True])
    link.answers["device.cert_renew"] = lambda body: CertRenewResult(
        cert=issue(body["csr"], DEV).decode(), chain=fleet_ca.chain_file.read_text(),
        not_after="2027-01-01T00:00:00.000Z")
    await run(rig.runner(identity_store=store, identity=ident, uplink=uplink),
              signer.cmd(DEV, 1, "cert.rotate", command_id=CID))
    final = link.results[-1][1]
    assert (final["state"], final["code"]) == ("failed", "new_certificate_refused")
    assert (store.key_file.read_bytes(), store.cert_file.read_bytes()) == old
    assert store.load() == ident and uplink.restarts == 2


async def test_cert_rotate_refuses_a_certificate_for_another_key(
        rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any, tmp_path: Path) -> None:
    from edge.fleet.identity import new_key

    store, ident = enrolled(tmp_path, issue, fleet_ca)
    link.answers["device.cert_renew"] = lambda body: CertRenewResult(
        cert=issue(make_csr(new_key(), DEV), DEV).decode(),
        chain=fleet_ca.chain_file.read_text(), not_after="2027-01-01T00:00:00.000Z")
    uplink = ReconnectingLink(link, connects=[True])
    await run(rig.runner(identity_store=store, identity=ident, uplink=uplink),
              signer.cmd(DEV, 1, "cert.rotate", command_id=CID))
    final = link.results[-1][1]
    assert (final["state"], final["code"]) == ("failed", "key_mismatch")
    assert store.load() == ident and uplink.restarts == 0


def enrolled(tmp: Path, issue: Any, fleet_ca: Any) -> tuple[IdentityStore, Any]:
    store = IdentityStore(tmp / "dev")
    key = store.enrollment_key()
    ident = store.save(device_id=DEV, role="kiosk", site=None,
                       cert_pem=issue(make_csr(key, "SERIAL1"), DEV),
                       chain_pem=fleet_ca.chain_file.read_bytes())
    return store, ident


class ReconnectingLink:
    """The uplink's request/stop/start/wait_connected; ``connects`` scripts the reconnects."""

    def __init__(self, link: Any, connects: list[bool]) -> None:
        self.link = link
        self.connects = connects
        self.restarts = 0

    async def request(self, *a: Any, **kw: Any) -> Any:
        return await self.link.request(*a, **kw)

    async def stop(self) -> None:
        pass

    async def start(self) -> None:
        self.restarts += 1

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        return self.connects.pop(0)


class SlowSwitchLink(ReconnectingLink):
    """Tracks whether the uplink runs; its start takes ``start_s`` (the switch is slow)."""

    def __init__(self, link: Any, connects: list[bool], start_s: float) -> None:
        super().__init__(link, connects)
        self.start_s = start_s
        self.running = True
        self.switching = asyncio.Event()

    async def stop(self) -> None:
        self.running = False
        self.switching.set()

    async def start(self) -> None:
        await asyncio.sleep(self.start_s)
        self.running = True
        await super().start()


def renew_answer(link: Any, issue: Any, fleet_ca: Any) -> None:
    link.answers["device.cert_renew"] = lambda body: CertRenewResult(
        cert=issue(body["csr"], DEV).decode(), chain=fleet_ca.chain_file.read_text(),
        not_after="2027-01-01T00:00:00.000Z")


@pytest.mark.parametrize("connects", [True, False])
async def test_a_timeout_during_the_certificate_switch_leaves_it_whole(
        connects: bool, rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any,
        tmp_path: Path) -> None:
    store, ident = enrolled(tmp_path, issue, fleet_ca)
    uplink = SlowSwitchLink(link, connects=[connects, True], start_s=0.6)
    renew_answer(link, issue, fleet_ca)
    r = rig.runner(identity_store=store, identity=ident, uplink=uplink)
    r.timeout_s = 0.2  # lands while the uplink is stopped for the switch
    await run(r, signer.cmd(DEV, 1, "cert.rotate", command_id=CID))
    assert link.states(CID)[-1] == "failed"
    assert uplink.running  # started again
    assert not list(store.dir.glob("*.old"))  # settled: dropped or restored
    assert store.load() == r.ctx.identity
    if connects:
        assert r.ctx.identity != ident and uplink.restarts == 1
    else:
        assert r.ctx.identity == ident and uplink.restarts == 2


async def test_a_stop_during_the_certificate_switch_leaves_it_whole(
        rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any, tmp_path: Path) -> None:
    store, ident = enrolled(tmp_path, issue, fleet_ca)
    uplink = SlowSwitchLink(link, connects=[True], start_s=0.3)
    renew_answer(link, issue, fleet_ca)
    r = rig.runner(identity_store=store, identity=ident, uplink=uplink)
    await r.recover()
    r.on_message(type("Msg", (), {"payload": signer.cmd(DEV, 1, "cert.rotate",
                                                        command_id=CID)})())
    await asyncio.wait_for(uplink.switching.wait(), 5)
    await r.stop()  # the daemon shuts down in the middle of the switch
    assert uplink.running and uplink.restarts == 1
    assert not list(store.dir.glob("*.old"))
    new = store.load()
    assert new is not None and new != ident and r.ctx.identity == new


async def test_cert_rotate_waits_for_idle_before_asking_for_a_certificate(
        rig: Rig, link: Any, signer: Any, issue: Any, fleet_ca: Any, tmp_path: Path) -> None:
    store, ident = enrolled(tmp_path, issue, fleet_ca)
    uplink = ReconnectingLink(link, connects=[True])
    renew_answer(link, issue, fleet_ca)
    r = rig.runner(identity_store=store, identity=ident, uplink=uplink)
    rig.runtime.card_inserted("Virtual 00 00")
    task = asyncio.create_task(run(r, signer.cmd(DEV, 1, "cert.rotate", command_id=CID)))
    await wait_until_async(lambda: "waiting" in link.states(CID), 5)
    await asyncio.sleep(0.1)
    assert link.requests == [] and uplink.restarts == 0
    rig.runtime.card_removed("Virtual 00 00")
    await asyncio.wait_for(task, 5)
    assert link.states(CID) == ["delivered", "waiting", "in_progress", "succeeded"]
    assert uplink.restarts == 1


# --------------------------------------------------------------------------- waiting for idle


async def test_a_disruptive_command_waits_for_the_card_session_to_end(
        rig: Rig, link: Any, signer: Any) -> None:
    r = rig.runner()
    rig.runtime.card_inserted("Virtual 00 00")
    task = asyncio.create_task(run(r, signer.cmd(DEV, 1, "reboot", command_id=CID)))
    await wait_until_async(lambda: "waiting" in link.states(CID), 5)
    waiting = next(b for _, b, _ in link.results if b["state"] == "waiting")
    assert waiting["code"] == "card_session"
    # meanwhile a non-disruptive command runs at once
    await run(r, signer.cmd(DEV, 2, "log.level", {"level": "warning"}))
    assert rig.levels == ["warning"] and rig.executor.calls == []
    rig.runtime.card_removed("Virtual 00 00")
    await asyncio.wait_for(task, 5)
    assert rig.executor.calls == [("reboot",)]
    assert link.states(CID) == ["delivered", "waiting", "in_progress", "succeeded"]


async def test_a_disruptive_command_waits_for_an_unresolved_payment(
        rig: Rig, link: Any, signer: Any) -> None:
    r = rig.runner()
    unknown = PaymentResult(payment_id="P1", state="unknown", amount_fen=100, method="wechat")
    rig.runtime.payments.outcome("req-0001", unknown)
    assert rig.runtime.busy_reason() == "payment_unresolved"
    task = asyncio.create_task(run(r, signer.cmd(DEV, 1, "service.restart",
                                                 {"service": "kiosk"}, command_id=CID)))
    await wait_until_async(lambda: "waiting" in link.states(CID), 5)
    assert next(b for _, b, _ in link.results if b["state"] == "waiting")["code"] == \
        "payment_unresolved"
    await asyncio.sleep(0.1)
    assert rig.executor.calls == []
    rig.runtime.payments.outcome("req-0001", unknown.model_copy(update={"state": "approved"}))
    await asyncio.wait_for(task, 5)
    assert rig.executor.calls == [("restart", "ykt-kiosk.service")]


async def test_a_disruptive_command_expires_if_the_device_never_gets_idle(
        rig: Rig, link: Any, signer: Any, clock: Any) -> None:
    r = rig.runner()
    rig.runtime.card_inserted("Virtual 00 00")
    task = asyncio.create_task(run(r, signer.cmd(DEV, 1, "printer.test", exp_s=60,
                                                 command_id=CID)))
    await wait_until_async(lambda: "waiting" in link.states(CID), 5)
    clock.advance(61)
    await asyncio.wait_for(task, 5)
    assert link.states(CID) == ["delivered", "waiting", "expired"]
    assert rig.paper.written == bytearray()
    assert r.state.command(CID).state == "expired"


class BlockingSync(HotlistSync):
    """A hot list refresh that holds the run lock until released."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def sync_once(self) -> bool:
        self.started.set()
        await self.release.wait()
        return await super().sync_once()


async def test_a_reboot_waiting_on_the_lock_does_not_run_into_a_card_session(
        rig: Rig, link: Any, signer: Any) -> None:
    sync = BlockingSync()
    r = rig.runner(hotlist_sync=sync)
    await r.recover()
    holder = asyncio.create_task(run(r, signer.cmd(DEV, 1, "hotlist.refresh")))
    await asyncio.wait_for(sync.started.wait(), 5)
    # Idle now: the reboot passes its idle check and queues on the run lock.
    reboot = asyncio.create_task(run(r, signer.cmd(DEV, 2, "reboot", command_id=CID)))
    await wait_until_async(lambda: "delivered" in link.states(CID), 5)
    await asyncio.sleep(0.1)
    rig.runtime.card_inserted("Virtual 00 00")  # a patient arrives meanwhile
    sync.release.set()
    await asyncio.wait_for(holder, 5)
    await wait_until_async(lambda: "waiting" in link.states(CID), 5)
    await asyncio.sleep(0.1)
    assert rig.executor.calls == []  # never while the card session is open
    assert link.states(CID) == ["delivered", "waiting"]
    rig.runtime.card_removed("Virtual 00 00")
    await asyncio.wait_for(reboot, 5)
    assert rig.executor.calls == [("reboot",)]
    assert link.states(CID) == ["delivered", "waiting", "in_progress", "succeeded"]


async def test_a_command_that_expires_while_waiting_on_the_lock_never_runs(
        rig: Rig, link: Any, signer: Any, clock: Any) -> None:
    sync = BlockingSync()
    r = rig.runner(hotlist_sync=sync)
    await r.recover()
    holder = asyncio.create_task(run(r, signer.cmd(DEV, 1, "hotlist.refresh")))
    await asyncio.wait_for(sync.started.wait(), 5)
    reboot = asyncio.create_task(run(r, signer.cmd(DEV, 2, "reboot", exp_s=60,
                                                   command_id=CID)))
    await wait_until_async(lambda: "delivered" in link.states(CID), 5)
    clock.advance(61)
    sync.release.set()
    await asyncio.wait_for(asyncio.gather(holder, reboot), 5)
    assert rig.executor.calls == []
    assert link.states(CID) == ["delivered", "expired"]
    assert r.state.command(CID).state == "expired"


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("case", ["forged", "replayed", "reordered", "expired", "wrong_device",
                                  "unknown_name", "bad_args", "same_id"])
async def test_untrusted_commands_are_rejected_and_never_run(
        case: str, rig: Rig, link: Any, signer: Any) -> None:
    r = rig.runner()
    await run(r, signer.cmd(DEV, 10, "log.level", {"level": "info"}))
    payload, code = {
        "forged": (signer.cmd(DEV, 11, "reboot", key=Ed25519PrivateKey.generate()),
                   "bad_signature"),
        "replayed": (signer.cmd(DEV, 10, "reboot"), "replay"),
        "reordered": (signer.cmd(DEV, 9, "reboot"), "replay"),
        "expired": (signer.cmd(DEV, 11, "reboot", exp_s=-1), "expired"),
        "wrong_device": (signer.cmd("kiosk-999", 11, "reboot"), "wrong_device"),
        "unknown_name": (signer.cmd(DEV, 11, "format.disk"), "invalid"),
        "bad_args": (signer.cmd(DEV, 11, "service.restart", {"service": "sshd"}), "invalid"),
        "same_id": (None, "replay"),
    }[case]
    if payload is None:  # a new seq, but a command id central used already
        first = link.results[0][1]["command_id"]
        payload = signer.cmd(DEV, 11, "reboot", command_id=first)
    before = r.state.last(DEV, "cmd")
    await run(r, payload)
    final = link.results[-1][1]
    assert (final["state"], final["code"]) == ("rejected", code)
    assert rig.executor.calls == [] and r.state.last(DEV, "cmd") == before


# --------------------------------------------------------------------------- crashes


class PowerCut(BaseException):
    """The process dies here."""


async def test_a_crash_between_receiving_and_executing_never_runs_it_twice(
        rig: Rig, link: Any, signer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r1 = rig.runner()
    await r1.recover()
    cmd = signer.cmd(DEV, 5, "reboot", command_id=CID)
    older = signer.cmd(DEV, 4, "reboot")

    async def die(*a: Any, **kw: Any) -> None:
        raise PowerCut()

    monkeypatch.setattr(r1, "_execute", die)
    with pytest.raises(PowerCut):
        await r1.handle(cmd)  # received, recorded (fsynced), then the power went
    assert rig.executor.calls == []
    rig.states[0].close()
    # The new process: reports what happened to it, and it is never run.
    r2 = rig.runner()
    await r2.recover()
    assert link.states(CID) == ["delivered", "failed"]
    assert link.results[-1][1]["code"] == "interrupted"
    await run(r2, cmd)  # central re-sends it after the birth
    assert link.states(CID)[-1] == "failed" and rig.executor.calls == []
    await run(r2, older)  # and an older one is still refused
    assert (link.results[-1][1]["state"], link.results[-1][1]["code"]) == ("rejected",
                                                                           "replay")
    assert rig.executor.calls == []


async def test_a_reboot_in_progress_succeeded_once_the_daemon_is_back(
        rig: Rig, link: Any, signer: Any) -> None:
    r1 = rig.runner()
    await r1.recover()

    class Dies(Executor):
        async def reboot(self) -> None:
            raise PowerCut()  # systemctl reboot: the machine goes down right here

    r1.ctx.executor = Dies()
    with pytest.raises(PowerCut):
        await r1.handle(signer.cmd(DEV, 1, "reboot", command_id=CID))
    assert link.states(CID) == ["delivered", "in_progress"]
    r2 = rig.runner()
    await r2.recover()
    assert link.states(CID) == ["delivered", "in_progress", "succeeded"]
    assert r2.state.command(CID).state == "succeeded"


async def test_a_redelivered_command_is_reported_again_not_run_again(
        rig: Rig, link: Any, signer: Any) -> None:
    r = rig.runner()
    cmd = signer.cmd(DEV, 1, "reboot", command_id=CID)
    await run(r, cmd)
    await run(r, cmd)
    assert rig.executor.calls == [("reboot",)]
    assert link.states(CID) == ["delivered", "in_progress", "succeeded", "succeeded"]


def test_signer_clock_is_utc(clock: Any) -> None:
    assert clock().tzinfo is UTC


def test_a_rotation_cut_short_is_settled_at_start(tmp_path: Path, issue: Any,
                                                  fleet_ca: Any) -> None:
    from edge.fleet.identity import new_key

    store, ident = enrolled(tmp_path, issue, fleet_ca)
    key = new_key()
    new = store.rotate(key, issue(make_csr(key, DEV), DEV), fleet_ca.chain_file.read_bytes(),
                       ident)
    store.recover()  # the new set is whole: kept, the old one dropped
    assert store.load() == new and not list(store.dir.glob("*.old"))
    key2 = new_key()
    store.rotate(key2, issue(make_csr(key2, DEV), DEV), fleet_ca.chain_file.read_bytes(), new)
    store.cert_file.write_bytes(b"torn")  # the power went while the new files were written
    store.recover()
    assert store.load() == new and not list(store.dir.glob("*.old"))
