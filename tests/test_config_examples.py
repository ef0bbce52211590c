"""Every example config in config/ loads into its strict model."""

from pathlib import Path

import pytest

from central.config import CentralConfig
from central.platform.sim.config import load_sim_settings
from edge.config import EdgeConfig
from kiosk.config import KioskConfig
from yikatong.common.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize(("name", "model"), [
    ("edge-kiosk.toml", EdgeConfig), ("edge-cashier.toml", EdgeConfig),
    ("kiosk.toml", KioskConfig), ("cashier-ui.toml", KioskConfig),
    ("central.toml", CentralConfig), ("central-cluster.toml", CentralConfig),
])
def test_example_loads(name, model):
    cfg = load_config(CONFIG / name, model)
    assert cfg is not None


def test_edge_examples_enroll_by_claim():
    """The shipped device configs carry no identity: central gives it at enrollment."""
    for name in ("edge-kiosk.toml", "edge-cashier.toml"):
        cfg = load_config(CONFIG / name, EdgeConfig)
        assert cfg.device.id is None and cfg.device.role is None
        assert cfg.enrollment is not None and cfg.uplink.username is None
        assert cfg.uplink.tls is not None and cfg.uplink.tls.certfile is not None
        assert str(cfg.uplink.tls.certfile).startswith(str(cfg.device.data_dir))


def test_cluster_example_is_one_instance_of_several():
    """docs/scaling.md: PostgreSQL, an external broker, shared subscriptions, certificates."""
    cfg = load_config(CONFIG / "central-cluster.toml", CentralConfig)
    assert cfg.store.url is not None and "@" in cfg.store.url
    assert cfg.store.password_file is not None
    assert cfg.broker.mode == "external" and cfg.broker.tls is None
    assert cfg.forwarder.share_group is not None and cfg.forwarder.client_id is not None
    assert cfg.fleet is not None and cfg.broker.legacy_passwords is False
    # The instance's own accounts and the others' are all in the ACL it writes.
    own = {cfg.broker.username, cfg.broker.fleet_username}
    assert own.isdisjoint(cfg.broker.other_central_users)
    assert all("_" in u for u in (*own, *cfg.broker.other_central_users))


def test_platform_sim_example_loads():
    s = load_sim_settings(CONFIG / "platform-sim.toml")
    assert s.admin_enabled is False


def test_no_secret_values_in_examples():
    import re

    secret_key = re.compile(r"^\s*(password|pin|sam_pin|token|api_token|secret)\s*=", re.M)
    for f in CONFIG.glob("*.toml"):
        assert not secret_key.search(f.read_text()), f"{f.name} holds a secret value"
