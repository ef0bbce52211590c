"""Client of the local ``ykt edge`` API, with errors turned into one typed exception."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

__all__ = ["EdgeClient", "EdgeError"]


class EdgeError(Exception):
    """The edge daemon refused or failed an action; messages are fit for the screen."""

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.message_zh = message_zh

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the browser."""
        return {"code": self.code, "message": self.message, "message_zh": self.message_zh}


class EdgeClient:
    """Thin async client; one instance per kiosk server."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=3.0), transport=transport,
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._client.request(method, path, **kw)
        except httpx.TimeoutException:
            raise EdgeError(504, "edge_timeout", "The terminal did not answer in time.",
                            "终端响应超时。") from None
        except httpx.TransportError:
            raise EdgeError(503, "edge_unavailable", "The terminal service is not running.",
                            "终端服务未运行。") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise EdgeError(resp.status_code, err["code"], err["message"], err["message_zh"])
            except (ValueError, KeyError, TypeError):
                raise EdgeError(resp.status_code, "edge_error",
                                f"Terminal error (HTTP {resp.status_code}).",
                                f"终端错误（HTTP {resp.status_code}）。") from None
        return resp.json()

    async def health(self) -> dict[str, Any]:
        """Daemon health, including the masked session."""
        return await self._call("GET", "/v1/health")

    async def session(self) -> dict[str, Any] | None:
        """The current card session (masked) or None."""
        return (await self._call("GET", "/v1/session"))["session"]

    async def end_session(self) -> None:
        """Wipe the session on the daemon."""
        await self._call("POST", "/v1/session/end")

    async def identify(self) -> dict[str, Any]:
        """Identify the patient of the inserted card at the platform."""
        return (await self._call("POST", "/v1/patient/identify"))["session"]

    async def request(
        self, type_: str, body: dict[str, Any], timeout_s: float | None = None
    ) -> Any:
        """Forward a request to the platform through the uplink."""
        payload: dict[str, Any] = {"type": type_, "body": body}
        if timeout_s is not None:
            payload["timeout_s"] = timeout_s
        return (await self._call("POST", "/v1/request", json=payload))["result"]

    async def print_slip(self, booking: dict[str, Any], *, copy: bool = False) -> dict[str, Any]:
        """Print a registration slip for the current session."""
        return await self._call("POST", "/v1/print",
                                json={"kind": "registration_slip", "data": booking, "copy": copy})

    async def printer_status(self) -> dict[str, Any]:
        """Live printer status."""
        return (await self._call("GET", "/v1/printer/status"))["status"]

    async def events(self) -> AsyncIterator[bytes]:
        """Raw SSE stream from the daemon (relayed to the browser)."""
        async with self._client.stream("GET", "/v1/events", timeout=None) as resp:
            async for chunk in resp.aiter_bytes():
                yield chunk
