"""Signed desired config on the device: verify, record before acting, apply all or nothing.

The test plays central with its own Ed25519 key (``signer``). Most tests drive
:class:`RemoteConfigService` directly with a recording link; the last one runs it behind a
real :class:`Uplink` on Mosquitto (retained ``down/config``, reports on ``up/result``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import Broker, wait_until_async

from edge.fleet.identity import FleetState
from edge.fleet.parts import (
    PartRefused,
    PrinterPoll,
    ScannerSupervisor,
    card_part,
    log_level_part,
    printer_part,
    scanner_part,
    telemetry_part,
    ui_part,
)
from edge.fleet.remote import Part, RemoteConfigService, RunningConfigFile, load_signing_keys
from yikatong.mqtt.session import MqttSession
from yikatong.protocol import topics
from yikatong.protocol.envelope import decode
from yikatong.protocol.fleet import RemoteSettings

DEV = "kiosk-201"


class Recorder:
    """Parts that record what they were given; ``refuse`` makes one of them raise."""

    def __init__(self) -> None:
        self.applied: dict[str, list[dict[str, Any]]] = {"a": [], "b": [], "c": []}
        self.refuse: str | None = None

    def parts(self) -> list[Part]:
        def make(name: str) -> Part:
            def apply(s: RemoteSettings) -> None:
                self.applied[name].append(s.model_dump(exclude_none=True))
                if self.refuse == name and s.telemetry_interval_s == 99:
                    raise PartRefused(f"{name} cannot take 99", "无法应用")
            return Part(name, apply)
        return [make("a"), make("b"), make("c")]

    def last(self, name: str) -> dict[str, Any] | None:
        return self.applied[name][-1] if self.applied[name] else None


class Device:
    """One "process": fleet state, the running-config file, the service (over a data dir)."""

    def __init__(self, data: Path, link: Any, signer: Any, clock: Any, parts: list[Part]) -> None:
        self.state = FleetState(data / "identity" / "fleet-state.db", clock)
        self.file = RunningConfigFile(data / "remote-config.json")
        self.service = RemoteConfigService(link, self.state, self.file, dev=DEV,
                                           keys=[signer.key.public_key()], parts=parts,
                                           clock=clock)

    def close(self) -> None:
        self.state.close()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def device(tmp_path: Path, link: Any, signer: Any, clock: Any, rec: Recorder) -> Any:
    made: list[Device] = []

    async def make() -> Device:
        d = Device(tmp_path / "data", link, signer, clock, rec.parts())
        await d.service.start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


async def test_applied_persisted_and_reported(device: Any, link: Any, signer: Any,
                                              rec: Recorder) -> None:
    d = await device()
    report = await d.service.handle(signer.config(DEV, 5, {"telemetry_interval_s": 60,
                                                           "log_level": "debug"}, version=2))
    assert report is not None and report.status == "applied"
    assert rec.last("c") == {"telemetry_interval_s": 60.0, "log_level": "debug"}
    assert d.state.last(DEV, "config")[0::2] == (5, "applied")
    rc = d.file.load(DEV)
    assert (rc.version, rc.seq, rc.settings.log_level) == (2, 5, "debug")
    [(kind, body, corr)] = link.results
    assert kind == "config.report" and corr is not None
    assert body["status"] == "applied" and body["running_version"] == 2
    assert body["running_hash"] == body["hash"] == rc.hash


async def test_the_retained_copy_after_a_reconnect_is_ignored(device: Any, link: Any,
                                                              signer: Any, rec: Recorder) -> None:
    d = await device()
    msg = signer.config(DEV, 5, {"telemetry_interval_s": 60})
    await d.service.handle(msg)
    calls = len(rec.applied["a"])
    assert await d.service.handle(msg) is None
    assert await d.service.handle(msg) is None
    assert len(link.results) == 1 and len(rec.applied["a"]) == calls


async def test_a_refusing_part_rolls_back_and_reports_failed(device: Any, link: Any,
                                                             signer: Any, rec: Recorder) -> None:
    d = await device()
    await d.service.handle(signer.config(DEV, 1, {"telemetry_interval_s": 60}, version=1))
    rec.refuse = "b"
    report = await d.service.handle(signer.config(DEV, 2, {"telemetry_interval_s": 99},
                                                  version=2))
    assert report is not None and report.status == "failed"
    assert report.code == "apply_refused" and "b cannot take 99" in (report.message or "")
    assert (report.running_version, report.running_hash) == (1, d.file.load().hash)
    # a took the new value, then the previous one again; b refused and was restored; c never
    # saw the new one.
    assert [x.get("telemetry_interval_s") for x in rec.applied["a"]][-2:] == [99, 60]
    assert [x.get("telemetry_interval_s") for x in rec.applied["b"]][-2:] == [99, 60]
    assert [x.get("telemetry_interval_s") for x in rec.applied["c"]] == [None, 60]
    assert d.file.load(DEV).version == 1  # still running version 1
    assert d.state.last(DEV, "config")[0::2] == (2, "failed")  # recorded before acting


async def test_an_invalid_body_is_rejected_and_nothing_changes(device: Any, link: Any,
                                                               signer: Any, rec: Recorder) -> None:
    d = await device()
    await d.service.handle(signer.config(DEV, 1, {"telemetry_interval_s": 60}))
    before = (d.state.last(DEV, "config"), d.file.path.read_bytes(), len(rec.applied["a"]))
    bad_bodies = [
        {"version": 2, "hash": "0" * 64, "settings": {"telemetry_interval_s": 30}},  # hash
        {"version": 2, "hash": "0" * 64, "settings": {"broker_host": "evil"}},  # unknown key
        {"version": 0, "hash": "0" * 64, "settings": {}},
    ]
    for i, body in enumerate(bad_bodies):
        report = await d.service.handle(signer.config(DEV, 2 + i, body=body))
        assert report is not None and (report.status, report.code) == ("rejected", "invalid")
    no_exp = await d.service.handle(signer.config(DEV, 9, exp=False))
    assert no_exp is not None and no_exp.code == "invalid"
    junk = await d.service.handle(b'{"not": "an envelope"}')
    assert junk is not None and junk.code == "invalid"
    after = (d.state.last(DEV, "config"), d.file.path.read_bytes(), len(rec.applied["a"]))
    assert after == before
    assert all(r["running_version"] == 1 for r in link.config_reports()[1:])


@pytest.mark.parametrize("case", ["forged", "unsigned", "replayed", "reordered", "expired",
                                  "wrong_device"])
async def test_untrusted_messages_are_rejected_and_change_nothing(
        case: str, device: Any, link: Any, signer: Any, rec: Recorder) -> None:
    d = await device()
    await d.service.handle(signer.config(DEV, 10, {"telemetry_interval_s": 60}))
    before = (d.state.last(DEV, "config"), d.file.path.read_bytes(), len(rec.applied["a"]))
    msg, code = {
        "forged": (signer.config(DEV, 11, key=Ed25519PrivateKey.generate()), "bad_signature"),
        "unsigned": (signer.config(DEV, 11, signed=False), "bad_signature"),
        "replayed": (signer.config(DEV, 10, {"telemetry_interval_s": 5}), "replay"),
        "reordered": (signer.config(DEV, 9, {"telemetry_interval_s": 5}), "replay"),
        "expired": (signer.config(DEV, 11, exp_s=-60), "expired"),
        "wrong_device": (signer.config("kiosk-999", 11), "wrong_device"),
    }[case]
    report = await d.service.handle(msg)
    assert report is not None and (report.status, report.code) == ("rejected", code)
    assert report.running_version == 10
    after = (d.state.last(DEV, "config"), d.file.path.read_bytes(), len(rec.applied["a"]))
    assert after == before
    # The next genuine config still goes through (a rejection did not move the seq).
    ok = await d.service.handle(signer.config(DEV, 11, {"telemetry_interval_s": 45}))
    assert ok is not None and ok.status == "applied"


async def test_a_restart_keeps_settings_and_seq(device: Any, link: Any, signer: Any,
                                                rec: Recorder) -> None:
    d1 = await device()
    await d1.service.handle(signer.config(DEV, 20, {"telemetry_interval_s": 60}, version=4))
    d1.close()
    rec.applied = {k: [] for k in rec.applied}
    d2 = await device()  # a new process on the same data dir
    assert rec.last("a") == {"telemetry_interval_s": 60.0}  # applied at start
    assert d2.service.current.version == 4
    old = await d2.service.handle(signer.config(DEV, 19, {"telemetry_interval_s": 5}))
    assert old is not None and old.code == "replay"
    same = await d2.service.handle(signer.config(DEV, 20, {"telemetry_interval_s": 5}))
    assert same is not None and same.code == "replay"  # same seq, another message
    assert rec.last("a") == {"telemetry_interval_s": 60.0}


class PowerCut(BaseException):
    """The process dies here (nothing after it runs)."""


async def test_power_cut_before_recording_loses_nothing(
        device: Any, link: Any, signer: Any, rec: Recorder,
        monkeypatch: pytest.MonkeyPatch) -> None:
    d1 = await device()
    msg = signer.config(DEV, 30, {"telemetry_interval_s": 60}, version=7)

    def cut(*a: Any, **kw: Any) -> None:
        raise PowerCut()

    monkeypatch.setattr(d1.state, "accept", cut)
    with pytest.raises(PowerCut):
        await d1.service.handle(msg)
    assert rec.applied["a"] == [{}]  # only the start-up apply: nothing acted on it
    d1.close()
    d2 = await device()
    assert d2.state.last(DEV, "config") == (None, None, None)
    report = await d2.service.handle(msg)  # the retained copy, after the restart
    assert report is not None and report.status == "applied"
    assert d2.file.load(DEV).version == 7


async def test_power_cut_between_recording_and_applying_applies_it_after_the_restart(
        device: Any, link: Any, signer: Any, rec: Recorder) -> None:
    d1 = await device()
    msg = signer.config(DEV, 40, {"telemetry_interval_s": 60}, version=8)
    real = d1.service.parts[1].apply

    def cut(s: RemoteSettings) -> None:
        raise PowerCut()

    d1.service.parts[1] = Part("b", cut)
    with pytest.raises(PowerCut):
        await d1.service.handle(msg)
    d1.service.parts[1] = Part("b", real)
    assert d1.state.last(DEV, "config")[0::2] == (40, "accepted")  # recorded, not finished
    assert not d1.file.path.exists()
    d1.close()
    d2 = await device()
    report = await d2.service.handle(msg)  # the retained copy again: finish what was recorded
    assert report is not None and report.status == "applied"
    assert d2.file.load(DEV).version == 8 and rec.last("c") == {"telemetry_interval_s": 60.0}
    assert await d2.service.handle(msg) is None  # and now it is done
    older = await d2.service.handle(signer.config(DEV, 39))
    assert older is not None and older.code == "replay"


async def test_the_first_config_of_an_enrollment_is_applied_and_reported_at_start(
        tmp_path: Path, link: Any, signer: Any, clock: Any, rec: Recorder) -> None:
    from edge.fleet.remote import store_first_config
    from yikatong.protocol.fleet import ConfigDesired

    env = signer.config_env(DEV, 3, {"log_level": "warning"}, version=1)
    state = FleetState(tmp_path / "fs.db", clock)
    file = RunningConfigFile(tmp_path / "remote-config.json")
    store_first_config(state, file, DEV, env, ConfigDesired.model_validate(env.body))
    svc = RemoteConfigService(link, state, file, dev=DEV, keys=[signer.key.public_key()],
                              parts=rec.parts(), clock=clock)
    await svc.start()
    assert rec.last("a") == {"log_level": "warning"}
    [report] = link.config_reports()
    assert (report["status"], report["version"]) == ("applied", 1)
    assert file.load().reported
    state.close()


def test_signing_keys_load_from_pem(tmp_path: Path, signer: Any) -> None:
    other = Ed25519PrivateKey.generate()
    from yikatong.protocol.signing import public_key_to_pem

    f = tmp_path / "keys.pem"
    f.write_bytes(signer.pub_pem() + public_key_to_pem(other.public_key()))
    assert len(load_signing_keys(f)) == 2


# --------------------------------------------------------------------------- the real parts


class FakeTelemetry:
    interval_s = 30.0


class FakeCards:
    def __init__(self) -> None:
        from edge.devices.card.config import CardConfig

        self.config = CardConfig()

        class W:
            _poll_ms = 500

        self._watcher = W()


class FakeScannerService:
    def __init__(self, cfg: Any) -> None:
        self._config = cfg
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True


async def test_the_running_parts_take_settings_and_give_them_back(tmp_path: Path) -> None:
    from edge.devices.printer.config import PrinterConfig
    from edge.devices.printer.driver import PrinterService
    from edge.devices.scanner.config import ScannerConfig

    telemetry, cards = FakeTelemetry(), FakeCards()
    printer = PrinterService(PrinterConfig(kind="memory", status_poll_s=0), tmp_path / "j.db")
    polls: list[float] = []

    async def on_status(_s: Any) -> None:
        polls.append(printer.config.status_poll_s)

    poll = PrinterPoll(printer, on_status)
    poll_task = asyncio.create_task(poll.run())
    started: list[Any] = []

    async def start_service(cfg: Any) -> Any:
        svc = FakeScannerService(cfg)
        started.append(svc)
        return svc

    async def pump(_svc: Any) -> None:
        await asyncio.Event().wait()

    scanners = ScannerSupervisor(ScannerConfig(enabled=False), start_service=start_service,
                                 pump=pump)

    class Runtime:
        def __init__(self) -> None:
            self.ui_settings: dict[str, Any] = {}

        def set_ui_settings(self, s: dict[str, Any]) -> None:
            self.ui_settings = s

    runtime = Runtime()
    root = logging.getLogger("test.remote.parts")
    root.setLevel(logging.INFO)
    parts = [telemetry_part(telemetry, 30.0), log_level_part("info", root),
             printer_part(printer, poll), scanner_part(scanners), card_part(cards),
             ui_part(runtime)]
    s = RemoteSettings.model_validate({
        "telemetry_interval_s": 120, "log_level": "debug",
        "printer": {"status_poll_s": 0.05, "job_timeout_s": 12, "reconnect_attempts": 1},
        "scanner": {"enabled": True, "dedup_window_s": 3},
        "card": {"poll_interval_s": 0.25, "reject_expired": False},
        "ui": {"language": "en", "idle_timeout_s": 120}})
    try:
        for part in parts:
            await part(s)
        assert telemetry.interval_s == 120 and root.level == logging.DEBUG
        assert (printer.config.job_timeout_s, printer.config.reconnect_attempts) == (12, 1)
        await wait_until_async(lambda: polls, 5)  # the poll started with its new interval
        assert scanners.running and started[-1]._config.dedup_window_s == 3
        assert cards.config.reject_expired is False and cards._watcher._poll_ms == 250
        assert runtime.ui_settings == {"language": "en", "idle_timeout_s": 120}
        # the dedup window alone changes without a restart
        await parts[3](RemoteSettings.model_validate({"scanner": {"enabled": True,
                                                                     "dedup_window_s": 1}}))
        assert len(started) == 1 and started[0]._config.dedup_window_s == 1
        # nothing set: every part back to its own (TOML) value
        for part in parts:
            await part(RemoteSettings())
        assert telemetry.interval_s == 30 and root.level == logging.INFO
        assert printer.config.job_timeout_s == 30 and printer.config.status_poll_s == 0
        assert not scanners.running and started[0].stopped
        assert cards.config.reject_expired is True and cards._watcher._poll_ms == 500
        assert runtime.ui_settings == {}
    finally:
        poll_task.cancel()
        await asyncio.gather(poll_task, return_exceptions=True)
        await scanners.stop()


async def test_scanners_that_cannot_start_refuse_the_setting() -> None:
    from edge.devices.scanner.config import ScannerConfig

    async def cannot(_cfg: Any) -> None:
        return None

    async def pump(_svc: Any) -> None:
        return None

    sup = ScannerSupervisor(ScannerConfig(enabled=False), start_service=cannot, pump=pump)
    with pytest.raises(PartRefused):
        await sup.apply(RemoteSettings.model_validate({"scanner": {"enabled": True}}))
    assert not sup.running and sup.cfg.enabled is False
    # a device without [scanner] ignores scanner settings
    none = ScannerSupervisor(None, start_service=cannot, pump=pump)
    await none.apply(RemoteSettings.model_validate({"scanner": {"enabled": True}}))


# --------------------------------------------------------------------------- over MQTT


async def test_over_mosquitto_retained_config_is_applied_and_reported(
        tmp_path: Path, broker: Broker, signer: Any, rec: Recorder) -> None:
    from edge.uplink.client import Uplink

    cfg = broker.add_device(DEV, tmp_path)
    uplink = Uplink(cfg, DEV, role="kiosk", version="1")
    state = FleetState(tmp_path / "fs.db")
    svc = RemoteConfigService(uplink, state, RunningConfigFile(tmp_path / "rc.json"), dev=DEV,
                              keys=[signer.key.public_key()], parts=rec.parts())
    svc.attach(uplink)
    results: asyncio.Queue[Any] = asyncio.Queue()
    central = MqttSession("central", host="127.0.0.1", port=broker.port, username="central",
                          password=broker.central_password,
                          subscriptions=[(topics.up(DEV, "result"), 1)],
                          on_message=lambda m: results.put_nowait(decode(m.payload)))
    await central.start()
    assert await central.wait_connected(10)
    from datetime import UTC, datetime

    signer.clock.t = datetime.now(UTC)  # the uplink's clock is the real one
    # Published (retained) while the device is offline: it gets it when it connects.
    await central.publish(topics.down(DEV, "config"),
                          signer.config(DEV, 3, {"telemetry_interval_s": 60}, version=3),
                          qos=1, retain=True, timeout_s=5)
    try:
        await uplink.start()
        await svc.start()
        got = await asyncio.wait_for(results.get(), 10)
        assert (got.type, got.body["status"], got.body["version"]) == ("config.report",
                                                                       "applied", 3)
        # a forged one is answered rejected
        await central.publish(topics.down(DEV, "config"),
                              signer.config(DEV, 4, key=Ed25519PrivateKey.generate()),
                              qos=1, timeout_s=5)
        got = await asyncio.wait_for(results.get(), 10)
        assert (got.body["status"], got.body["code"]) == ("rejected", "bad_signature")
        # a reconnect brings the retained copy again: no new report
        await uplink.stop()
        await uplink.start()
        assert await uplink.wait_connected(10)
        await asyncio.sleep(0.5)
        assert results.empty()
        assert [x.get("telemetry_interval_s") for x in rec.applied["a"]] == [None, 60]
    finally:
        await svc.stop()
        await uplink.stop()
        await central.stop()
        state.close()
