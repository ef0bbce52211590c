"""``[fleet]`` in central.toml and ``ykt central`` running with it: the enrollment broker,
the device listener on certificates from the fleet CA, and a device enrolled end to end."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fleet_support import RawClient, csr_envelope, key_pem, make_csr
from pydantic import ValidationError
from support import wait_until_async

import central.app as central_app
from central.app import device_tls_listener
from central.broker import free_port
from central.config import BrokerTlsSection, CentralConfig
from central.fleet.service import FleetService
from central.registry import RegistryError

pytestmark = pytest.mark.stack


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"central": {"data_dir": str(tmp_path / "central")}, **extra}


def test_fleet_section_defaults_and_the_tls_files_rule(tmp_path: Path) -> None:
    plain = CentralConfig.model_validate(config(tmp_path))
    assert plain.fleet is None and plain.broker.legacy_passwords is False
    cfg = CentralConfig.model_validate(config(tmp_path, fleet={}, broker={
        "tls": {"require_certificate": True}}))
    assert cfg.fleet is not None
    assert (cfg.fleet.enroll_host, cfg.fleet.enroll_port) == ("127.0.0.1", 8884)
    assert cfg.fleet.server_names == ["127.0.0.1", "localhost"]
    assert cfg.fleet.enroll_ttl_s == 86_400 and cfg.fleet.command_exp_s == 600
    assert cfg.fleet.config_exp_s == 30 * 86_400
    # Without [fleet] the TLS listener needs its files.
    with pytest.raises(ValidationError, match="fleet"):
        CentralConfig.model_validate(config(tmp_path, broker={"tls": {}}))
    with pytest.raises(ValidationError):
        CentralConfig.model_validate(config(tmp_path, fleet={"enroll_ttl_s": 1}))
    with pytest.raises(ValidationError):
        CentralConfig.model_validate(config(tmp_path, fleet={"server_names": []}))
    # Certificates need the listener that asks for them, and its CRL is the fleet CA's.
    with pytest.raises(ValidationError, match="require_certificate"):
        CentralConfig.model_validate(config(tmp_path, fleet={}))
    with pytest.raises(ValidationError, match="revocation list"):
        CentralConfig.model_validate(config(tmp_path, fleet={}, broker={"tls": {
            "cafile": "/c.pem", "certfile": "/s.pem", "keyfile": "/s.key",
            "require_certificate": True}}))
    legacy = CentralConfig.model_validate(config(tmp_path, fleet={}, broker={
        "legacy_passwords": True}))
    assert legacy.fleet is not None  # an old site moving over: passwords still work


def test_the_shipped_config_runs_on_certificates() -> None:
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "config" / "central.toml").read_text()
    cfg = CentralConfig.model_validate(tomllib.loads(text))
    assert cfg.fleet is not None and cfg.fleet.enroll_port == 8884
    assert cfg.fleet.server_names == ["central.hospital.lan"]
    assert cfg.broker.tls is not None and cfg.broker.tls.require_certificate
    assert cfg.broker.legacy_passwords is False


@pytest.fixture
async def central(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[FleetService, CentralConfig]]:
    """``central.app.run`` in this process with ``[fleet]`` and a certificate-only listener."""
    made: list[FleetService] = []

    class Recorded(FleetService):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(central_app, "FleetService", Recorded)
    cfg = CentralConfig.model_validate(config(
        tmp_path,
        broker={"port": free_port(), "tls": {"host": "127.0.0.1", "port": free_port(),
                                             "require_certificate": True}},
        fleet={"enroll_port": free_port()},
        platform={"base_url": f"http://127.0.0.1:{free_port()}"},
        dashboard={"port": free_port()},
        forwarder={"client_id": "central-fleet-app"},
    ))
    stop = asyncio.Event()
    task = asyncio.create_task(central_app.run(cfg, secrets.token_urlsafe(18), stop=stop))
    try:
        await wait_until_async(lambda: (made and made[0].enroll_connected
                               and made[0].publisher is not None
                               and made[0].publisher.connected) or task.done(), 20,
                               what="central with fleet trust")
        assert not task.done(), task.exception()
        yield made[0], cfg
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
        broker = made[0].enroll_broker.mosquitto if made else None
        assert broker is None or not broker.leftovers()


async def test_central_runs_enrollment_and_a_certificate_only_device_listener(
        central: tuple[FleetService, CentralConfig], tmp_path: Path) -> None:
    fleet, cfg = central
    assert cfg.broker.tls is not None and cfg.fleet is not None
    data = cfg.central.data_dir
    conf = (data / "broker" / "mosquitto.conf").read_text()
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf
    assert f"crlfile {fleet.ca.crl_file}" in conf
    assert f"certfile {data / 'fleet' / 'broker-server.pem'}" in conf
    # No device passwords with legacy_passwords off.
    with pytest.raises(RegistryError):
        fleet.registry.register("kiosk-x01", "kiosk")

    bundle = fleet.claim_bundle()
    serial = "10000000feedbeef"
    csr, key = make_csr(serial)
    claim = RawClient(serial, port=bundle["enroll_port"], username="claim",
                      password=bundle["claim_password"], cafile=data / "fleet" / "ca" /
                      "chain.pem")
    try:
        assert await asyncio.to_thread(claim.connect)
        assert await asyncio.to_thread(claim.subscribe, f"ykt/v1/enroll/{serial}/cert") == 1
        await asyncio.to_thread(claim.publish, f"ykt/v1/enroll/{serial}/csr",
                                csr_envelope(serial, csr))
        pending = await asyncio.to_thread(claim.get_env, 10)
        assert pending is not None and pending.body["status"] == "pending"
        await fleet.approve(pending.body["code"], device_id="kiosk-app1", role="kiosk",
                            site="门诊楼", actor="tech-wang")
        approved = await asyncio.to_thread(claim.get_env, 10)
        assert approved is not None and approved.body["status"] == "approved"
    finally:
        await asyncio.to_thread(claim.close)

    d = tmp_path / "dev"
    d.mkdir()
    (d / "key.pem").write_bytes(key_pem(key))
    (d / "cert.pem").write_text(approved.body["cert"])
    (d / "chain.pem").write_text(approved.body["chain"])
    dev = RawClient("kiosk-app1", port=cfg.broker.tls.port, cafile=d / "chain.pem",
                    certfile=d / "cert.pem", keyfile=d / "key.pem")
    nocert = RawClient("kiosk-app1", port=cfg.broker.tls.port, cafile=d / "chain.pem")
    try:
        assert not await asyncio.to_thread(nocert.connect)
        assert await asyncio.to_thread(dev.connect)
        await asyncio.to_thread(dev.subscribe, "ykt/v1/dev/kiosk-app1/down/#")
        sent = await fleet.send_command("kiosk-app1", "hotlist.refresh", {}, actor="tech")
        while (msg := await asyncio.to_thread(dev.get, 10)) is not None:
            if msg.topic.endswith("/down/cmd"):
                break
        assert msg is not None and sent["command_id"] in msg.payload.decode()
    finally:
        await asyncio.to_thread(dev.close)
        await asyncio.to_thread(nocert.close)


def test_explicit_tls_files_keep_working_without_a_crl(tmp_path: Path) -> None:
    t = BrokerTlsSection(cafile=tmp_path / "ca.pem", certfile=tmp_path / "b.pem",
                         keyfile=tmp_path / "b.key")
    lst = device_tls_listener(t, None)
    assert (lst.cafile, lst.require_certificate, lst.crlfile) == (tmp_path / "ca.pem", False,
                                                                  None)
