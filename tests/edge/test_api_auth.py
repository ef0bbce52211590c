"""The daemon's local API refuses a caller without the token before it reads any body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from edge.api import TokenGate, create_api
from yikatong.protocol.messages import DepartmentList

TOKEN = "k" * 32


class Runtime:
    """Just enough of ``EdgeRuntime`` for the routes these tests reach."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def health(self) -> dict[str, Any]:
        return {"ok": True}

    async def request(self, type_: str, body: dict[str, Any], timeout_s: Any, id_: Any) -> Any:
        self.requests.append((type_, body))
        return DepartmentList(departments=[])  # a result model, as the real runtime returns


@pytest.fixture
def runtime() -> Runtime:
    return Runtime()


def client(runtime: Runtime, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    app = create_api(runtime, TOKEN)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge",
                             headers=headers or {})


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.json()["error"]["message_zh"]
    assert r.headers["www-authenticate"] == "Bearer"


BAD_HEADERS = [
    None,
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": TOKEN},
    {"Authorization": f"bearer {TOKEN[:-1]}"},
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
async def test_without_the_token_an_invalid_body_gets_401_not_422(runtime, headers):
    async with client(runtime, headers) as http:
        for body in (b"{not json", b'{"type": 5, "extra": true}', b"\xff\xfe" * 10):
            r = await http.post("/v1/request", content=body,
                                headers={"content-type": "application/json"})
            assert_unauthorized(r)
        r = await http.get("/v1/health")
        assert_unauthorized(r)
    assert runtime.requests == []


async def test_a_huge_streamed_body_is_never_consumed(runtime):
    pulled: list[int] = []

    async def huge() -> AsyncIterator[bytes]:
        for i in range(10_000):  # 640 MB if anyone read it
            pulled.append(i)
            yield b"x" * 65536

    async with client(runtime, {"Authorization": "Bearer nope"}) as http:
        r = await http.post("/v1/request", content=huge(),
                            headers={"content-type": "application/json"})
    assert_unauthorized(r)
    # httpx's ASGI transport only pulls the stream when the app calls receive().
    assert pulled == []

    async def small() -> AsyncIterator[bytes]:
        for i in range(3):
            pulled.append(i)
            yield b"{broken"

    # Control: with the token the same kind of stream is read (and refused as invalid JSON).
    async with client(runtime, {"Authorization": f"Bearer {TOKEN}"}) as http:
        r = await http.post("/v1/request", content=small(),
                            headers={"content-type": "application/json"})
    assert r.status_code == 422 and pulled == [0, 1, 2]


async def test_the_gate_never_calls_receive_and_never_reaches_the_app():
    reached: list[Any] = []
    received: list[str] = []
    sent: list[dict[str, Any]] = []

    async def inner(scope, receive, send):  # pragma: no cover - must not run
        reached.append(scope)

    async def receive() -> dict[str, Any]:
        received.append("receive")
        return {"type": "http.request", "body": b"{broken", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = TokenGate(inner, TOKEN)
    for headers in ([], [(b"authorization", b"Bearer bad")],
                    # two headers, one right: ambiguous, refused
                    [(b"authorization", f"Bearer {TOKEN}".encode()),
                     (b"authorization", b"Bearer bad")]):
        scope = {"type": "http", "method": "POST", "path": "/v1/request", "headers": headers}
        await gate(scope, receive, send)
    assert received == [] and reached == []
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [401] * 3


async def test_with_the_token_requests_work_and_bodies_are_validated(runtime):
    async with client(runtime, {"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.get("/v1/health")).json() == {"ok": True}
        r = await http.post("/v1/request", content=b"{not json",
                            headers={"content-type": "application/json"})
        assert r.status_code == 422  # only an authenticated caller sees validation errors
        r = await http.post("/v1/request", json={"type": "reg.list", "body": {"a": 1}})
        assert r.json() == {"result": {"departments": []}}
    assert runtime.requests == [("reg.list", {"a": 1})]


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_no_schema_or_docs_are_served(runtime, path):
    async with client(runtime) as http:
        assert_unauthorized(await http.get(path))
    async with client(runtime, {"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.get(path)).status_code == 404


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/api/docs",
                                  "/api/openapi.json"])
async def test_the_kiosk_ui_and_central_dashboard_serve_no_schema(tmp_path, path):
    from central.dashboard.app import create_dashboard
    from central.registry import Registry
    from central.store import open_store
    from kiosk.app import create_app
    from kiosk.config import KioskConfig
    from kiosk.edge_client import EdgeClient

    store = open_store(tmp_path / "c.db")
    apps = {"kiosk": create_app(KioskConfig(), EdgeClient("http://127.0.0.1:9", "x")),
            "dashboard": create_dashboard(store, Registry(store, tmp_path / "broker"), TOKEN,
                                          site_name="t")}
    for name, app in apps.items():
        assert app.openapi_url is None and app.docs_url is None and app.redoc_url is None
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://ui") as http:
            r = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code in (401, 404), (name, path, r.status_code)
        assert "openapi" not in r.text.lower() and "swagger" not in r.text.lower(), (name, path)
