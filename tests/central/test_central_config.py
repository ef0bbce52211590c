"""``[forwarder]`` settings: a client id per instance, lease longer than a platform call."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from central.config import ForwarderSection, forwarder_client_id


def test_client_id_defaults_to_host_and_instance() -> None:
    host = "his-app-01.example.cn"
    assert forwarder_client_id(ForwarderSection(), host) == "central-his-app-01-0"
    assert forwarder_client_id(ForwarderSection(instance=2), host) == "central-his-app-01-2"
    assert forwarder_client_id(ForwarderSection(client_id="c-a"), "x") == "c-a"


def test_odd_host_names_still_give_a_valid_short_client_id() -> None:
    for host in ("机房 服务器", "", "a" * 200, "we!rd#host"):
        cid = forwarder_client_id(ForwarderSection(instance=999), host)
        assert len(cid) <= 58 and cid.endswith("-999")
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in cid), cid


def test_two_instances_on_one_host_get_different_ids() -> None:
    ids = {forwarder_client_id(ForwarderSection(instance=i), "node1") for i in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("bad", [
    {"lease_s": 30, "call_timeout_s": 60},
    {"client_id": "has space"},
    {"client_id": "x" * 59},
    {"lease_s": 0.1},
])
def test_bad_forwarder_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ForwarderSection(**bad)


def test_site_time_zone_defaults_to_beijing_and_is_checked(tmp_path) -> None:
    from central.config import CentralSection

    assert CentralSection(data_dir=tmp_path).timezone == "Asia/Shanghai"
    assert CentralSection(data_dir=tmp_path, timezone="Asia/Urumqi").timezone == "Asia/Urumqi"
    with pytest.raises(ValidationError, match="unknown time zone"):
        CentralSection(data_dir=tmp_path, timezone="Beijing/Time")
