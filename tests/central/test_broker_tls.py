"""TLS listener of central's broker (real Mosquitto): devices verify the broker's certificate.

Certificates come from :mod:`central.tlsgen`. A device whose ``cafile`` is the site CA
connects over TLS; with another CA, or a certificate for another name, it never completes
CONNECT and logs the TLS verification error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.broker import Listener, Mosquitto, MosquittoConfig, TlsListener
from central.config import BrokerSection
from central.registry import Registry
from central.store import open_store
from central.tlsgen import write_broker_tls
from edge.uplink.config import TlsConfig
from yikatong.mqtt.session import MqttSession

pytestmark = pytest.mark.stack


class TlsSite:
    def __init__(self, tmp: Path, hosts: tuple[str, ...]) -> None:
        self.tls = write_broker_tls(tmp / "tls", hosts)
        self.store = open_store(tmp / "central.db")
        self.registry = Registry(self.store, tmp / "broker")
        self.registry.central_credentials("central-test")
        self.broker = Mosquitto(tmp / "broker", MosquittoConfig(
            listeners=[Listener(host="127.0.0.1", port=0),
                       Listener(host="127.0.0.1", port=0, tls=TlsListener(
                           cafile=self.tls.cafile, certfile=self.tls.certfile,
                           keyfile=self.tls.keyfile))],
            persistence=False, acl_file=self.registry.acl_file,
            password_file=self.registry.password_file))
        self.registry._on_change = self.broker.reload
        self.broker.start()

    @property
    def tls_port(self) -> int:
        return self.broker.cfg.listeners[1].port

    def close(self) -> list[int]:
        self.broker.stop()
        self.store.close()
        return self.broker.leftovers()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TlsSite]:
    s = TlsSite(tmp_path, ("localhost", "127.0.0.1"))
    try:
        yield s
    finally:
        assert not s.close()


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


async def test_device_connects_over_tls_with_the_site_ca(site: TlsSite, tmp_path: Path) -> None:
    for host in ("127.0.0.1", "localhost"):  # IP and DNS subjectAltName both match
        assert await _try(site, tmp_path, site.tls.cafile, f"kiosk-t{len(host):02d}", host)
    assert "as kiosk-t09 " in site.broker.log_path.read_text()


async def test_device_refuses_a_broker_signed_by_another_ca(
    site: TlsSite, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    other = write_broker_tls(tmp_path / "other", ("127.0.0.1",), ca_name="Rogue CA")
    with caplog.at_level(logging.INFO, logger="yikatong.mqtt.session"):
        assert await _try(site, tmp_path, other.cafile, "kiosk-r01", wait_s=1.5) is False
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    assert "as kiosk-r01" not in site.broker.log_path.read_text()  # never got to CONNECT


async def test_device_refuses_a_certificate_for_another_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = TlsSite(tmp_path, ("central.hospital.lan",))  # right CA, wrong name
    try:
        with caplog.at_level(logging.INFO, logger="yikatong.mqtt.session"):
            assert await _try(wrong, tmp_path, wrong.tls.cafile, "kiosk-n01",
                              wait_s=1.5) is False
        assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
        assert "mismatch" in caplog.text.lower()
        assert "as kiosk-n01" not in wrong.broker.log_path.read_text()
    finally:
        assert not wrong.close()


def test_tls_section_is_typed_and_keeps_ports_apart() -> None:
    ok = BrokerSection.model_validate({"host": "127.0.0.1", "port": 1883, "tls": {
        "cafile": "/etc/yikatong/tls/ca.pem", "certfile": "/etc/yikatong/tls/broker.pem",
        "keyfile": "/etc/yikatong/tls/broker.key"}})
    assert ok.tls is not None and ok.tls.port == 8883 and ok.tls.host == "0.0.0.0"
    with pytest.raises(ValueError, match="differ"):
        BrokerSection.model_validate({"port": 8883, "tls": {
            "cafile": "/c", "certfile": "/c", "keyfile": "/k"}})
    with pytest.raises(ValueError):
        BrokerSection.model_validate({"tls": {"cafile": "/c", "certfile": "/c",
                                              "keyfile": "/k", "require_certificate": True}})


def test_shipped_configs_agree() -> None:
    import tomllib
    root = Path(__file__).resolve().parents[2] / "config"
    central = tomllib.loads((root / "central.toml").read_text())["broker"]
    assert central["host"] == "127.0.0.1"  # plain listener: central itself only
    assert central["tls"]["host"] == "0.0.0.0" and central["tls"]["port"] == 8883
    for name in ("edge-kiosk.toml", "edge-cashier.toml"):
        edge = tomllib.loads((root / name).read_text())["uplink"]
        assert edge["port"] == central["tls"]["port"]
        assert edge["tls"]["cafile"] == central["tls"]["cafile"]
