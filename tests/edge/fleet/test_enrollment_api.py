"""The local API of a device waiting for enrollment, and its hand-over to the full API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx

from edge.api import SwitchableApp, create_api, create_enrollment_api
from edge.fleet.enrollment import EnrollmentState
from edge.runtime import EdgeRuntime
from yikatong.protocol.messages import PaymentResult

TOKEN = "k" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Uplink:
    connected = True
    answer: Any = None
    durable: list[str] = []  # noqa: RUF012 - set per test

    def unresolved_payments(self) -> list[str]:
        return list(self.durable)

    async def request(self, type_: str, body: dict[str, Any], **kw: Any) -> Any:
        return self.answer

    async def publish_event(self, type_: str, body: dict[str, Any]) -> str:
        return "e"


class Clock:
    def now(self) -> datetime:
        return datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def client(app: Any, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge",
                             headers=AUTH if headers is None else headers)


async def test_the_pairing_api_serves_the_state_and_nothing_else() -> None:
    state = EnrollmentState("SN0001")
    state.update("pending", code="7K3M-Q9XZ", expires_at="2026-03-03T08:00:00.000Z")
    switch = SwitchableApp(create_enrollment_api(state, TOKEN))
    async with client(switch) as c, client(switch, {}) as anon:
        got = (await c.get("/v1/enrollment")).json()
        assert got["state"] == "pending" and got["code"] == "7K3M-Q9XZ"
        assert got["serial"] == "SN0001" and got["message_zh"].startswith("等待管理员批准")
        assert (await c.get("/v1/health")).json()["enrollment"]["code"] == "7K3M-Q9XZ"
        assert (await c.get("/v1/ui-settings")).json() == {"ui": {}}
        for path in ("/v1/session", "/v1/printer/status"):
            r = await c.get(path)
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_enrolled"
        r = await c.post("/v1/pay", json={"id": "x" * 8})
        assert r.status_code == 503
        # the token is required, as everywhere (and no body is read without it)
        assert (await anon.get("/v1/enrollment")).status_code == 401
        assert (await anon.post("/v1/pay", json={})).status_code == 401

        # The event stream tells every change and ends once the device is enrolled.
        async def enroll_later() -> None:
            await asyncio.sleep(0.1)
            state.update("enrolled", device_id="kiosk-101", code=None)

        later = asyncio.create_task(enroll_later())
        r = await c.get("/v1/events")
        await later
        events = [json.loads(line[5:]) for line in r.text.splitlines()
                  if line.startswith("data:")]
        assert [e["data"]["state"] for e in events] == ["pending", "enrolled"]

        # The full API takes over on the same app object (same server, no restart).
        rt = EdgeRuntime(device_id="kiosk-101", role="kiosk", hospital_name="测试医院",
                         uplink=Uplink(), printer=None, clock=Clock())  # type: ignore[arg-type]
        rt.set_ui_settings({"language": "en"})
        switch.swap(create_api(rt, TOKEN, enrollment=state))
        got = (await c.get("/v1/enrollment")).json()
        assert (got["state"], got["device_id"], got["serial"]) == ("enrolled", "kiosk-101",
                                                                   "SN0001")
        assert (await c.get("/v1/session")).json() == {"session": None}
        assert (await c.get("/v1/ui-settings")).json() == {"ui": {"language": "en"}}
        assert (await c.get("/v1/health")).json()["ui"] == {"language": "en"}


async def test_a_device_with_a_preset_identity_says_enrolled() -> None:
    rt = EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="测试医院",
                     uplink=Uplink(), printer=None, clock=Clock())  # type: ignore[arg-type]
    async with client(create_api(rt, TOKEN)) as c:
        got = (await c.get("/v1/enrollment")).json()
    assert (got["state"], got["device_id"], got["code"]) == ("enrolled", "kiosk-001", None)


async def test_busy_while_a_card_session_is_open_or_a_payment_unresolved() -> None:
    up = Uplink()
    rt = EdgeRuntime(device_id="kiosk-001", role="kiosk", hospital_name="测试医院",
                     uplink=up, printer=None, clock=Clock())  # type: ignore[arg-type]
    assert rt.busy_reason() is None
    rt.card_inserted("r")
    assert rt.busy_reason() == "card_session"
    rt.card_removed("r")
    pending = PaymentResult(payment_id="P9", state="pending", amount_fen=1, method="wechat")
    rt.payments.outcome("req-1", pending)
    assert rt.busy_reason() == "payment_unresolved"
    # still pending at pay.status; then declined: resolved (under both of its ids)
    up.answer = pending
    await rt.pay_status("P9")
    assert rt.busy_reason() == "payment_unresolved"
    up.answer = pending.model_copy(update={"state": "declined"})
    await rt.pay_status("P9")
    assert rt.busy_reason() is None and rt.payments.unresolved == []
    # After a restart this run knows nothing; the uplink's outbox still does.
    up.durable = ["req-7"]
    assert rt.busy_reason() == "payment_unresolved"
    up.durable = []
    assert rt.busy_reason() is None


# --------------------------------------------------------------------------- edge.toml


def _raw(tmp: Any, **over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "device": {"hospital_name": "测试医院", "data_dir": str(tmp / "data")},
        "card": {}, "printer": {"kind": "memory"},
        "uplink": {"host": "central.lan", "port": 8883, "outbox_path": str(tmp / "o.db"),
                   "state_path": str(tmp / "s.json")},
        "enrollment": {"host": "central.lan", "cafile": str(tmp / "ca.pem"),
                       "claim_password_file": str(tmp / "claim.password"),
                       "signing_public_key": str(tmp / "central-signing.pub")},
    }
    for key, value in over.items():
        raw[key] = value
    return raw


def test_with_enrollment_the_identity_comes_from_the_certificate(tmp_path: Any) -> None:
    import pytest
    from pydantic import ValidationError

    from edge.config import EdgeConfig
    from edge.fleet.identity import Identity, effective_config

    cfg = EdgeConfig.model_validate(_raw(tmp_path))
    ident = tmp_path / "data" / "identity"
    assert cfg.device.id is None and cfg.uplink.username is None
    assert cfg.uplink.tls is not None and cfg.uplink.tls.certfile == ident / "device.pem"
    assert cfg.uplink.tls.cafile == ident / "chain.pem"
    assert cfg.signing_key_file == tmp_path / "central-signing.pub"
    eff = effective_config(cfg, Identity("kiosk-101", "cashier", None, "ab", "2027"))
    assert (eff.device.id, eff.device.role) == ("kiosk-101", "cashier")
    assert eff.uplink.tls is not None and eff.uplink.tls.keyfile == ident / "device.key"
    # a password login and an enrolled certificate do not mix
    raw = _raw(tmp_path)
    raw["uplink"] = {**raw["uplink"], "username": "kiosk-101",
                     "password_file": str(tmp_path / "pw")}
    with pytest.raises(ValidationError, match=r"remove uplink\.username"):
        EdgeConfig.model_validate(raw)
    # without [enrollment] id and role are required, as before
    raw = _raw(tmp_path)
    del raw["enrollment"]
    raw["uplink"] = {**raw["uplink"], "username": "kiosk-101",
                     "password_file": str(tmp_path / "pw")}
    with pytest.raises(ValidationError, match=r"device\.id and device\.role are required"):
        EdgeConfig.model_validate(raw)
    raw["device"] = {**raw["device"], "id": "kiosk-101", "role": "kiosk"}
    assert EdgeConfig.model_validate(raw).signing_key_file is None
