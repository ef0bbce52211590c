"""A lean HTTP/1.1 keep-alive transport for the platform adapter (httpx's transport API).

Why not httpx's default transport (httpcore): on central it cost 1.5–3 ms of CPU per
platform call, more than the rest of the forwarder's request path together
(docs/performance.md, "Uplink"). Its pool re-checks every idle connection's socket and
wakes every waiting request on each call; installing ``sniffio`` (without it httpcore
retries a failing ``import`` on every call) still left 2.5 ms at 32 concurrent calls. This
transport does the same job for one hospital platform in about 0.4 ms: idle connections
over asyncio streams, reused last-in first-out, at most ``max_connections`` open. The HTTP
itself — request serialisation, the response's status line, headers and body framing
(Content-Length, chunked, end of connection), interim 1xx answers, keep-alive — is h11's,
the state machine httpcore uses too: nothing here parses HTTP by hand. On top of h11 it
refuses a response carrying both Content-Length and Transfer-Encoding (RFC 9112 §6.3: a
sign of smuggling or response splitting, to be treated as an error; h11 alone would let the
chunked framing win), a head beyond ``_HEAD_LIMIT`` and a body beyond ``max_body_bytes``.

It keeps the contract :class:`~central.platform.reference.ReferenceAdapter` maps failures
from — the same httpx exception types as httpcore raises:

* no connection (refused, unreachable, TLS handshake failed) → ``httpx.ConnectError``;
  connect timeout → ``httpx.ConnectTimeout``; no free connection in time →
  ``httpx.PoolTimeout`` — the request never left, the platform is "unavailable";
* the request went out, then the link broke, the answer is not HTTP (or ambiguous, or too
  large), or it did not arrive in time → ``httpx.RemoteProtocolError`` /
  ``httpx.ReadError`` / ``httpx.WriteError`` / ``httpx.ReadTimeout`` /
  ``httpx.WriteTimeout`` — the outcome is unknown;
* a request h11 will not put on the wire (a header value with a line break, which would
  inject headers) → ``httpx.LocalProtocolError`` before any byte is sent; the adapter reads
  it, like every other transport error, as an unknown outcome (the cautious side).

Nothing is ever retried here (a call that may have reached the platform is the adapter's
to judge). The read timeout bounds the whole answer, not each socket read. A connection is
reused only when h11 left both sides of the exchange ``DONE`` (so not after
``Connection: close``, an HTTP/1.0 answer or a body framed by the end of the connection),
while it is younger than ``keepalive_expiry_s`` idle (shorter than common server
keep-alive timeouts, uvicorn's 5 s) and the server has not closed it; anything left in an
unknown state (an error, a cancellation) is closed instead.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import h11
import httpx

__all__ = ["KeepAliveTransport"]

#: Largest response head (status line and headers) h11 buffers: a head still incomplete
#: beyond it (give or take one read) is refused.
_HEAD_LIMIT = 64 * 1024
#: Largest response body read by default. The platform's answers are a few KB of JSON (a
#: report with its items is the largest); anything near this is not an answer to act on.
MAX_BODY_BYTES = 16 * 1024 * 1024
_READ_SIZE = 64 * 1024


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
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
    """HTTP/1.1 (h11) with keep-alive over asyncio streams (see the module docstring)."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry_s: float = 4.0,
                 max_body_bytes: int = MAX_BODY_BYTES,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._max = max_connections
        self._expiry = keepalive_expiry_s
        self._max_body = max_body_bytes
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
                response = await _exchange(conn, request, timeouts, self._max_body)
                keep = _ready_for_next(conn.http)
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
                    host, port, ssl=context, server_hostname=host if context else None)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out",
                                       request=request) from None
        except OSError as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}",
                                     request=request) from exc
        return _Conn(reader, writer,
                     h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT))

    async def aclose(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().writer.close()


def _ready_for_next(http: h11.Connection) -> bool:
    """Whether the exchange ended cleanly and the connection may carry another one.

    Both sides ``DONE`` means h11 saw a complete, keep-alive answer; bytes after it that
    nobody asked for would be read as the next request's answer, so they end the connection.
    """
    if http.our_state is not h11.DONE or http.their_state is not h11.DONE:
        return False
    if http.trailing_data[0]:
        return False
    http.start_next_cycle()
    return True


async def _exchange(conn: _Conn, request: httpx.Request, timeouts: dict[str, float | None],
                    max_body: int) -> httpx.Response:
    """One request and its whole response on ``conn``."""
    data = await request.aread()
    try:
        out = conn.http.send(h11.Request(method=request.method, target=request.url.raw_path,
                                         headers=request.headers.raw))
        if data:
            out += conn.http.send(h11.Data(data=data))
        out += conn.http.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:  # e.g. a header value h11 will not put on the wire
        raise httpx.LocalProtocolError(f"cannot send this request: {exc}",
                                       request=request) from exc
    try:
        async with asyncio.timeout(timeouts.get("write")):
            conn.writer.write(out)
            await conn.writer.drain()
    except TimeoutError:
        raise httpx.WriteTimeout("sending to the platform timed out", request=request) from None
    except OSError as exc:
        raise httpx.WriteError(f"sending to the platform failed: {exc}",
                               request=request) from exc
    try:
        async with asyncio.timeout(timeouts.get("read")):
            return await _read_response(conn, request, max_body)
    except TimeoutError:
        raise httpx.ReadTimeout("no answer from the platform in time",
                                request=request) from None
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(f"the platform's answer is not valid HTTP/1.1: {exc}",
                                        request=request) from exc
    except OSError as exc:
        raise httpx.ReadError(f"reading from the platform failed: {exc}",
                              request=request) from exc


async def _read_response(conn: _Conn, request: httpx.Request,
                         max_body: int) -> httpx.Response:
    head: h11.Response | None = None
    body: list[bytes] = []
    size = 0
    while True:
        event = conn.http.next_event()
        if event is h11.NEED_DATA:
            # b"" at the end of the stream: h11 frames an HTTP/1.0-style body by it, and
            # raises RemoteProtocolError if the answer is cut short.
            conn.http.receive_data(await conn.reader.read(_READ_SIZE))
        elif isinstance(event, h11.Response):
            if b"content-length" in (names := {name for name, _ in event.headers}) \
                    and b"transfer-encoding" in names:
                raise httpx.RemoteProtocolError(
                    "the platform's answer has both Content-Length and Transfer-Encoding",
                    request=request)
            head = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:
                raise httpx.RemoteProtocolError(
                    f"the platform's answer is larger than {max_body} bytes", request=request)
            body.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None  # h11 yields the head before any end of message
            return httpx.Response(
                head.status_code, headers=head.headers.raw_items(), content=b"".join(body),
                extensions={"http_version": b"HTTP/" + head.http_version,
                            "reason_phrase": head.reason})
        elif isinstance(event, h11.ConnectionClosed):
            raise httpx.RemoteProtocolError("the platform closed the connection mid-answer",
                                            request=request)
        # InformationalResponse (1xx, interim: the real answer follows) needs nothing.
