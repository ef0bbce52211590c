"""TLS listener of central's broker (real Mosquitto): devices verify the broker's certificate.

Certificates come from :mod:`central.tlsgen`. A device whose ``cafile`` is the site CA
connects over TLS; with another CA, or a certificate for another name, it never completes
CONNECT and logs the TLS verification error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from central.broker import Listener, Mosquitto, TlsListener
from central.config import BrokerSection
from central.registry import Registry
from central.tlsgen import BrokerTlsFiles, write_broker_tls
from edge.uplink.config import TlsConfig
from yikatong.mqtt.session import MqttSession

# Stack tests by their fixtures (make_site → make_broker); the config checks below are not.


@dataclass
class TlsSite:
    """A central site whose broker has a second, TLS listener with certificates for ``hosts``."""

    registry: Registry
    broker: Mosquitto
    tls: BrokerTlsFiles

    @property
    def tls_port(self) -> int:
        return self.broker.cfg.listeners[1].port


@pytest.fixture
def make_tls_site(make_site: Callable[..., Any], tmp_path: Path
                  ) -> Callable[[tuple[str, ...]], TlsSite]:
    """``make_tls_site(hosts)``: a started site (stopped after the test) with a TLS listener."""
    def make(hosts: tuple[str, ...]) -> TlsSite:
        tls = write_broker_tls(tmp_path / "tls", hosts)
        site = make_site(accounts=("central-test",), persistence=False, listeners=[
            Listener(host="127.0.0.1", port=0),
            Listener(host="127.0.0.1", port=0, tls=TlsListener(
                cafile=tls.cafile, certfile=tls.certfile, keyfile=tls.keyfile))])
        return TlsSite(site.registry, site.broker, tls)
    return make


@pytest.fixture
def tls_site(make_tls_site: Callable[[tuple[str, ...]], TlsSite]) -> TlsSite:
    return make_tls_site(("localhost", "127.0.0.1"))


async def _try(site: TlsSite, tmp: Path, cafile: Path, dev: str, host: str = "127.0.0.1",
               wait_s: float = 10) -> bool:
    pw = site.registry.register(dev, "kiosk").password
    session = MqttSession(dev, host=host, port=site.tls_port, username=dev, password=pw,
                          tls=TlsConfig(cafile=cafile), backoff_min_s=0.05,
                          backoff_max_s=0.2)
    await session.start()
    try:
        return await session.wait_connected(wait_s)
    finally:
        await session.stop()


async def test_device_connects_over_tls_with_the_site_ca(tls_site: TlsSite, tmp_path: Path
                                                        ) -> None:
    for host in ("127.0.0.1", "localhost"):  # IP and DNS subjectAltName both match
        assert await _try(tls_site, tmp_path, tls_site.tls.cafile, f"kiosk-t{len(host):02d}",
                          host)
    assert "as kiosk-t09 " in tls_site.broker.log_path.read_text()


async def test_device_refuses_a_broker_signed_by_another_ca(
    tls_site: TlsSite, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    other = write_broker_tls(tmp_path / "other", ("127.0.0.1",), ca_name="Rogue CA")
    with caplog.at_level(logging.INFO, logger="yikatong.mqtt.session"):
        assert await _try(tls_site, tmp_path, other.cafile, "kiosk-r01", wait_s=1.5) is False
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "as kiosk-r01" not in tls_site.broker.log_path.read_text()  # never got to CONNECT


async def test_device_refuses_a_certificate_for_another_name(
    make_tls_site: Callable[[tuple[str, ...]], TlsSite], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = make_tls_site(("central.hospital.lan",))  # right CA, wrong name
    with caplog.at_level(logging.INFO, logger="yikatong.mqtt.session"):
        assert await _try(wrong, tmp_path, wrong.tls.cafile, "kiosk-n01", wait_s=1.5) is False
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "mismatch" in caplog.text.lower()
    assert "as kiosk-n01" not in wrong.broker.log_path.read_text()


def test_tls_section_is_typed_and_keeps_ports_apart() -> None:
    ok = BrokerSection.model_validate({"host": "127.0.0.1", "port": 1883, "tls": {
        "cafile": "/etc/yikatong/tls/ca.pem", "certfile": "/etc/yikatong/tls/broker.pem",
        "keyfile": "/etc/yikatong/tls/broker.key"}})
    assert ok.tls is not None and ok.tls.port == 8883 and ok.tls.host == "0.0.0.0"
    with pytest.raises(ValueError, match="differ"):
        BrokerSection.model_validate({"port": 8883, "tls": {
            "cafile": "/c", "certfile": "/c", "keyfile": "/k"}})
    # Mutual TLS is a choice now (devices enroll for certificates, docs/fleet-trust.md) ...
    mtls = BrokerSection.model_validate({"tls": {"cafile": "/c", "certfile": "/c",
                                                 "keyfile": "/k", "require_certificate": True}})
    assert mtls.tls is not None and mtls.tls.require_certificate
    # ... and a certificate needs its key.
    with pytest.raises(ValueError, match="together"):
        BrokerSection.model_validate({"tls": {"cafile": "/c", "certfile": "/c"}})


def test_shipped_configs_agree() -> None:
    import tomllib
    root = Path(__file__).resolve().parents[2] / "config"
    central = tomllib.loads((root / "central.toml").read_text())["broker"]
    assert central["host"] == "127.0.0.1"  # plain listener: central itself only
    assert central["tls"]["host"] == "0.0.0.0" and central["tls"]["port"] == 8883
    # On certificates: the fleet CA makes the listener's files; devices trust its chain,
    # which comes in the claim bundle they enroll with.
    assert central["tls"]["require_certificate"] is True and "cafile" not in central["tls"]
    fleet = tomllib.loads((root / "central.toml").read_text())["fleet"]
    for name in ("edge-kiosk.toml", "edge-cashier.toml"):
        edge = tomllib.loads((root / name).read_text())
        assert edge["uplink"]["port"] == central["tls"]["port"]
        assert edge["uplink"]["tls"]["cafile"] == edge["enrollment"]["cafile"]
        assert edge["enrollment"]["port"] == fleet["enroll_port"]
        assert edge["uplink"]["host"] in fleet["server_names"]
        assert edge["enrollment"]["host"] in fleet["server_names"]
