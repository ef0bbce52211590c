"""A lean HTTP/1.1 keep-alive transport for the platform adapter (httpx's transport API).

Why not httpx's default transport (httpcore): on central it cost 1.5–3 ms of CPU per
platform call, more than the rest of the forwarder's request path together
(docs/performance.md, "Uplink"). Its pool re-checks every idle connection's socket and
wakes every waiting request on each call, and without the optional ``sniffio`` package it
retries a failing ``import`` several times per call. This transport does the same job for
one hospital platform in a few hundred microseconds: HTTP/1.1 over asyncio streams, idle
connections reused last-in first-out, at most ``max_connections`` open.

It keeps the contract :class:`~central.platform.reference.ReferenceAdapter` maps failures
from — the same httpx exception types as httpcore raises:

* no connection (refused, unreachable, TLS handshake failed) → ``httpx.ConnectError``;
  connect timeout → ``httpx.ConnectTimeout``; no free connection in time →
  ``httpx.PoolTimeout`` — the request never left, the platform is "unavailable";
* the request went out, then the link broke, the answer is not HTTP, or it did not arrive
  in time → ``httpx.RemoteProtocolError`` / ``httpx.ReadError`` / ``httpx.WriteError`` /
  ``httpx.ReadTimeout`` / ``httpx.WriteTimeout`` — the outcome is unknown.

Nothing is ever retried here (a call that may have reached the platform is the adapter's
to judge). The read timeout bounds the whole answer, not each socket read. A connection is
reused only while it is younger than ``keepalive_expiry_s`` idle (shorter than common
server keep-alive timeouts, uvicorn's 5 s) and the server has not closed it; anything left
in an unknown state (an error, a cancellation, ``Connection: close``) is closed instead.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import httpx

__all__ = ["KeepAliveTransport"]

_HEAD_END = b"\r\n\r\n"
#: Largest response head (status line and headers) read; beyond it the reply is refused.
_HEAD_LIMIT = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def reusable(self, now: float, expiry: float) -> bool:
        return (now - self.idle_since < expiry and not self.reader.at_eof()
                and not self.writer.is_closing())


@dataclass(slots=True)
class _Pool:
    """Connections to one origin: idle ones, and the permits that bound how many are open."""

    permits: asyncio.Semaphore
    idle: list[_Conn] = field(default_factory=list)


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive over asyncio streams (see the module docstring)."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry_s: float = 4.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._max = max_connections
        self._expiry = keepalive_expiry_s
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on an idle or a new connection and read the whole answer."""
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        https = url.scheme == "https"
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}",
                                            request=request)
        key = (url.scheme, url.host, url.port or (443 if https else 80))
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(asyncio.Semaphore(self._max))
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await pool.permits.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no free connection to the platform in time",
                                    request=request) from None
        try:
            conn = self._idle(pool) or await self._connect(key, https, timeouts, request)
            keep = False
            try:
                response, keep = await _exchange(conn, request, timeouts)
            finally:
                if keep:
                    conn.idle_since = time.monotonic()
                    pool.idle.append(conn)
                else:
                    conn.writer.close()
        finally:
            pool.permits.release()
        return response

    def _idle(self, pool: _Pool) -> _Conn | None:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()
            if conn.reusable(now, self._expiry):
                return conn
            conn.writer.close()
        return None

    async def _connect(self, key: tuple[str, str, int], https: bool,
                       timeouts: dict[str, float | None], request: httpx.Request) -> _Conn:
        _scheme, host, port = key
        context: ssl.SSLContext | None = None
        if https:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None,
                    limit=_HEAD_LIMIT)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out",
                                       request=request) from None
        except OSError as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}",
                                     request=request) from exc
        return _Conn(reader, writer)

    async def aclose(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().writer.close()


async def _exchange(conn: _Conn, request: httpx.Request,
                    timeouts: dict[str, float | None]) -> tuple[httpx.Response, bool]:
    """One request and its whole response on ``conn``; (response, connection reusable)."""
    data = await request.aread()
    if request.headers.get("transfer-encoding", "").lower() == "chunked":
        data = (f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n") if data else \
            b"0\r\n\r\n"
    head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    try:
        async with asyncio.timeout(timeouts.get("write")):
            conn.writer.write(b"".join(head) + data)
            await conn.writer.drain()
    except TimeoutError:
        raise httpx.WriteTimeout("sending to the platform timed out", request=request) from None
    except OSError as exc:
        raise httpx.WriteError(f"sending to the platform failed: {exc}",
                               request=request) from exc
    try:
        async with asyncio.timeout(timeouts.get("read")):
            return await _read_response(conn.reader, request)
    except TimeoutError:
        raise httpx.ReadTimeout("no answer from the platform in time",
                                request=request) from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise httpx.RemoteProtocolError(
            "the platform closed the connection or sent an oversized head mid-answer",
            request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(f"reading from the platform failed: {exc}",
                              request=request) from exc


async def _read_response(reader: asyncio.StreamReader,
                         request: httpx.Request) -> tuple[httpx.Response, bool]:
    while True:
        status, reason, version, headers = _parse_head(await reader.readuntil(_HEAD_END),
                                                      request)
        if not 100 <= status < 200 or status == 101:
            break  # 1xx are interim: the real answer follows on the same connection
    fields = {name.lower(): value for name, value in headers}
    keep = version == b"HTTP/1.1" and b"close" not in fields.get(b"connection", b"").lower()
    if request.headers.get("connection", "").lower() == "close":
        keep = False
    coding = fields.get(b"transfer-encoding", b"").lower()
    if request.method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
        body = b""
    elif coding:
        if coding.rsplit(b",", 1)[-1].strip() != b"chunked":
            body, keep = await reader.read(), False  # framed by the end of the connection
        else:
            body = await _read_chunked(reader, request)
    elif b"content-length" in fields:
        try:
            length = int(fields[b"content-length"])
        except ValueError:
            length = -1
        if length < 0:
            raise httpx.RemoteProtocolError("invalid Content-Length from the platform",
                                            request=request)
        body = await reader.readexactly(length)
    else:
        body, keep = await reader.read(), False
    response = httpx.Response(status, headers=headers, content=body,
                              extensions={"http_version": version, "reason_phrase": reason})
    return response, keep


def _parse_head(raw: bytes, request: httpx.Request
                ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
    lines = raw[:-len(_HEAD_END)].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError("the platform's answer is not HTTP/1.x",
                                        request=request)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError("malformed header from the platform",
                                            request=request)
        headers.append((name, value.strip()))
    return int(code), reason, version, headers


async def _read_chunked(reader: asyncio.StreamReader, request: httpx.Request) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            size = -1
        if size < 0:
            raise httpx.RemoteProtocolError("malformed chunk from the platform",
                                            request=request)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields: not used
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("malformed chunk from the platform",
                                            request=request)
