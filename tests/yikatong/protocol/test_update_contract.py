"""The update contract: manifest shape and canonical form, version order, update.install args."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from yikatong.protocol.envelope import Envelope
from yikatong.protocol.errors import InvalidBody
from yikatong.protocol.fleet import Command, parse_fleet_body
from yikatong.protocol.update import (
    Manifest,
    UpdateStatus,
    compare_versions,
    manifest_bytes,
    parse_manifest,
    parse_signature,
)

SHA = "ab" * 32


def _manifest(**over: object) -> Manifest:
    base: dict[str, object] = {
        "version": "1.5.0", "min_version": "1.2.0", "built_at": "2026-12-05T08:00:00.000Z",
        "models": ["*"], "architectures": ["x86_64", "aarch64"], "python": "3.11",
        "files": [
            {"path": "wheels/yikatong-1.5.0-py3-none-any.whl", "sha256": SHA, "size": 10},
            {"path": "wheels/pyscard-2.2.1-cp311-cp311-linux_x86_64.whl", "sha256": SHA,
             "size": 20, "arch": ["x86_64"]},
        ],
    }
    base.update(over)
    return Manifest.model_validate(base)


def test_manifest_round_trips_through_its_canonical_bytes() -> None:
    m = _manifest()
    data = manifest_bytes(m)
    assert parse_manifest(data) == m


def test_a_respelled_manifest_is_refused_even_when_it_means_the_same() -> None:
    data = manifest_bytes(_manifest())
    respelled = json.dumps(json.loads(data), indent=1).encode()
    with pytest.raises(InvalidBody) as exc:
        parse_manifest(respelled)
    assert "canonical" in str(exc.value.errors)
    with pytest.raises(InvalidBody):
        parse_manifest(data + b" ")
    with pytest.raises(InvalidBody):
        parse_manifest(b"\xff\xfe")


@pytest.mark.parametrize(("over", "why"), [
    ({"min_version": "1.6.0"}, "min_version"),
    ({"files": [{"path": "wheels/other-1.0-py3-none-any.whl", "sha256": SHA, "size": 1}]},
     "no yikatong wheel"),
    ({"files": [{"path": "../etc/passwd", "sha256": SHA, "size": 1}]}, "path"),
    ({"files": [{"path": "/wheels/yikatong-1.whl", "sha256": SHA, "size": 1}]}, "path"),
    ({"files": [{"path": "manifest.json", "sha256": SHA, "size": 1},
                {"path": "wheels/yikatong-1.5.0-py3-none-any.whl", "sha256": SHA, "size": 1}]},
     "itself"),
    ({"architectures": ["aarch64"]}, "architecture"),
    ({"version": "1.5"}, None),
    ({"version": "latest"}, "version"),
])
def test_inconsistent_manifests_are_refused(over: dict[str, object], why: str | None) -> None:
    if why is None:  # two-part versions are fine
        _manifest(**over)
        return
    with pytest.raises(ValidationError):
        _manifest(**over)


def test_a_file_listed_twice_is_refused() -> None:
    f = {"path": "wheels/yikatong-1.5.0-py3-none-any.whl", "sha256": SHA, "size": 10}
    with pytest.raises(ValidationError, match="twice"):
        _manifest(files=[f, f])


def test_signature_record_is_strict() -> None:
    ok = {"alg": "Ed25519", "kid": "0123456789abcdef", "sig": "A" * 86}
    assert parse_signature(json.dumps(ok).encode()).kid == "0123456789abcdef"
    for bad in ({**ok, "alg": "RS256"}, {**ok, "sig": "A" * 85}, {**ok, "extra": 1}):
        with pytest.raises(InvalidBody):
            parse_signature(json.dumps(bad).encode())


@pytest.mark.parametrize(("a", "b", "want"), [
    ("1.5.0", "1.5.0", 0), ("1.5.0rc1", "1.5.0", -1), ("1.10.0", "1.9.9", 1),
    ("1.5.0.post1", "1.5.0", 1), ("1.5.0.dev1", "1.5.0a1", -1), ("1.5", "1.5.0", 0),
])
def test_versions_order_as_pep_440(a: str, b: str, want: int) -> None:
    assert compare_versions(a, b) == want


def _install(**args: object) -> dict[str, object]:
    base: dict[str, object] = {
        "rollout": "b" * 32, "version": "1.5.0", "url": "https://central.local:8443/api/fleet/"
        "bundles/1.5.0", "token": "tok_" + "x" * 20, "manifest_sha256": SHA}
    base.update(args)
    return {"command_id": "a" * 32, "name": "update.install", "args": base}


def test_update_install_takes_its_arguments() -> None:
    cmd = Command.model_validate(_install(allow_downgrade=1))
    assert cmd.args["version"] == "1.5.0"


@pytest.mark.parametrize("bad", [
    {"version": "1.5.0; rm -rf /"}, {"url": "file:///etc/passwd"},
    {"url": "https://x/a b"}, {"manifest_sha256": "AB" * 32}, {"allow_downgrade": 2},
    {"token": "short"}, {"rollout": "nope"}, {"shell": "1"},
])
def test_update_install_refuses_arguments_outside_their_shape(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Command.model_validate(_install(**bad))


def test_update_install_needs_its_required_arguments() -> None:
    body = _install()
    del body["args"]["token"]  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="needs"):
        Command.model_validate(body)


def test_update_status_is_a_fleet_result_body() -> None:
    body = {"rollout_id": "c" * 32, "version": "1.5.0", "state": "rolled_back",
            "running_version": "1.4.0", "code": "health_failed",
            "message": "printer did not answer", "message_zh": "打印机无应答"}
    env = Envelope(v=1, id="d" * 32, ts="2026-12-05T08:00:00.000Z", dev="kiosk-001",
                   type="update.status", body=body)
    assert isinstance(parse_fleet_body(env), UpdateStatus)
    with pytest.raises(InvalidBody):
        parse_fleet_body(env.model_copy(update={"body": {**body, "state": "exploded"}}))
