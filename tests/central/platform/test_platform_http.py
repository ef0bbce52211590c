"""KeepAliveTransport (central/platform/http.py) against scripted loopback servers: reuse,
framing, and every failure mapped to the httpx error the adapter reads."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from central.platform.http import KeepAliveTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        s = Server(handler)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


async def _request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: (head, body) — the body framed by Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def _answer(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + b"".join(x + b"\r\n" for x in extra)
            + b"\r\n" + body)


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: answer every request on the connection with its own body."""
    while True:
        head, body = await _request(reader)
        key = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"idempotency-key")]
        writer.write(_answer(json.dumps({"echo": body.decode(), "key": key[0].decode()
                                         if key else None}).encode()))
        await writer.drain()


def _client(url: str, transport: KeepAliveTransport, read: float = 2.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, transport=transport,
                             timeout=httpx.Timeout(read, connect=1.0))


async def test_sequential_and_concurrent_requests_share_kept_alive_connections(serve) -> None:
    server = await serve(echo_forever)
    transport = KeepAliveTransport(max_connections=4)
    async with _client(server.url, transport) as c:
        for i in range(5):
            r = await c.post("/x", json={"n": i}, headers={"Idempotency-Key": f"k{i}"})
            assert r.status_code == 200
            assert r.json() == {"echo": json.dumps({"n": i}, separators=(",", ":")),
                                "key": f"Idempotency-Key: k{i}"}
        assert server.connections == 1
        rs = await asyncio.gather(*(c.post("/x", json={"n": i}) for i in range(20)))
        assert [json.loads(r.json()["echo"])["n"] for r in rs] == list(range(20))
        assert server.connections <= 4  # never more open than max_connections
    await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve) -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(_answer(b"{}"))
        await writer.drain()  # then close: a server's keep-alive timeout ran out

    server = await serve(one_then_close)
    async with _client(server.url, KeepAliveTransport()) as c:
        assert (await c.get("/a")).json() == {}
        await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
        assert (await c.get("/b")).json() == {}
    assert server.connections == 2


async def test_idle_connections_expire_before_the_server_would_close_them(serve) -> None:
    server = await serve(echo_forever)
    async with _client(server.url, KeepAliveTransport(keepalive_expiry_s=0.05)) as c:
        await c.post("/a", json={})
        await asyncio.sleep(0.1)
        await c.post("/b", json={})
    assert server.connections == 2


async def test_connection_close_chunked_gzip_and_interim_answers(serve) -> None:
    payload = json.dumps({"departments": ["心血管内科"]}, ensure_ascii=False).encode()

    async def varied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await _request(reader)
        path = head.split(b" ")[1]
        if path == b"/chunked":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), 7):
                part = payload[i:i + 7]
                writer.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
            writer.write(b"0\r\ntrailer: x\r\n\r\n")
        elif path == b"/gzip":
            writer.write(_answer(gzip.compress(payload), b"content-encoding: gzip"))
        elif path == b"/close":
            writer.write(_answer(payload, b"connection: close"))
        else:  # no length: the end of the connection frames the body
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + payload)
            await writer.drain()
            return
        await writer.drain()
        await varied(reader, writer)

    server = await serve(varied)
    async with _client(server.url, KeepAliveTransport()) as c:
        for path in ("/chunked", "/gzip", "/chunked"):
            assert (await c.get(path)).content == payload
        assert server.connections == 1
        assert (await c.get("/close")).content == payload
        assert (await c.get("/eof")).content == payload
        assert (await c.get("/gzip")).content == payload
    assert server.connections == 3  # /close and /eof each ended their connection


async def test_refused_and_pool_exhausted_mean_never_sent(serve) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    async with _client(f"http://127.0.0.1:{port}", KeepAliveTransport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/x")

    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await release.wait()
        writer.write(_answer(b"{}"))
        await writer.drain()

    server = await serve(slow)
    async with httpx.AsyncClient(base_url=server.url,
                                 transport=KeepAliveTransport(max_connections=1),
                                 timeout=httpx.Timeout(2.0, pool=0.1)) as c:
        first = asyncio.create_task(c.get("/1"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await c.get("/2")
        release.set()
        assert (await first).json() == {}
    assert server.connections == 1


@pytest.mark.parametrize(("reply", "error"), [
    (None, httpx.RemoteProtocolError),  # the connection ends without an answer
    (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", httpx.RemoteProtocolError),
    (b"SSH-2.0-OpenSSH\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\ncontent-length: -3\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
    # Ambiguous framing (request smuggling / response splitting, RFC 9112 §6.3, §11).
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
     b"2\r\n{}\r\n0\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
     httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nbad name: x\r\ncontent-length: 2\r\n\r\n{}",
     httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n", httpx.RemoteProtocolError),
    (b"hang", httpx.ReadTimeout),
])
async def test_a_broken_answer_after_the_request_went_out_is_an_unknown_outcome(
    serve, reply: bytes | None, error: type[Exception],
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        if reply == b"hang":
            await asyncio.sleep(5)
        elif reply is not None:
            writer.write(reply)
            await writer.drain()

    server = await serve(broken)
    transport = KeepAliveTransport()
    async with _client(server.url, transport, read=0.2) as c:
        with pytest.raises(error):
            await c.post("/pay", json={"amount_fen": 1})
    assert transport._pools[("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))].idle == []


async def test_a_header_value_with_a_line_break_is_never_sent(serve) -> None:
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.read())  # everything until the client closes

    server = await serve(record)
    transport = KeepAliveTransport()
    async with _client(server.url, transport) as c:
        with pytest.raises(httpx.LocalProtocolError):
            await c.post("/pay", json={}, headers={"Idempotency-Key": "k\r\nX-Injected: 1"})
    async with asyncio.timeout(5):
        assert await received == b""  # the connection opened, closed with no request on it
    assert transport._pools[("http", "127.0.0.1", int(server.url.rsplit(":", 1)[1]))].idle == []


async def test_a_cancelled_call_closes_its_connection(serve) -> None:
    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        await asyncio.sleep(5)

    server = await serve(hang)
    transport = KeepAliveTransport(max_connections=1)
    async with _client(server.url, transport) as c:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await c.get("/x")
        # The permit came back and the half-used connection was not kept.
        assert not transport._pools[("http", "127.0.0.1",
                                     int(server.url.rsplit(":", 1)[1]))].idle
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await c.get("/y")
    assert server.connections == 2


async def test_other_schemes_are_refused() -> None:
    transport = KeepAliveTransport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))
    with pytest.raises(ValueError, match="max_connections"):
        KeepAliveTransport(max_connections=0)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_oversized_answer_is_an_unknown_outcome_and_its_connection_is_closed(
    serve, framing: str,
) -> None:
    payload = b"x" * 4096

    async def big_then_small(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await _request(reader)
            if head.split(b" ")[1] == b"/small":
                writer.write(_answer(b"{}"))
            elif framing == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             + b"".join(b"400\r\n" + payload[i:i + 1024] + b"\r\n"
                                       for i in range(0, len(payload), 1024))
                             + b"0\r\n\r\n")
            else:
                writer.write(_answer(payload))
            await writer.drain()

    server = await serve(big_then_small)
    transport = KeepAliveTransport(max_body_bytes=2048)
    async with _client(server.url, transport) as c:
        assert (await c.get("/small")).json() == {}
        with pytest.raises(httpx.RemoteProtocolError, match="larger than 2048 bytes"):
            await c.get("/big")
        assert (await c.get("/small")).json() == {}
    assert server.connections == 2  # the connection the big answer was on was not reused


async def test_bytes_after_a_complete_answer_end_the_connection(serve) -> None:
    """A second, unrequested answer must never be taken as the next request's answer."""
    async def extra_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await _request(reader)
            writer.write(_answer(b'{"n": 1}') + _answer(b'{"n": 2}'))
            await writer.drain()

    server = await serve(extra_answer)
    async with _client(server.url, KeepAliveTransport()) as c:
        assert (await c.get("/a")).json() == {"n": 1}
        assert (await c.get("/b")).json() == {"n": 1}
    assert server.connections == 2


async def test_an_http_1_0_answer_is_read_and_its_connection_not_reused(serve) -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()  # the server would keep it open: the client must close it

    server = await serve(http10)
    transport = KeepAliveTransport()
    async with _client(server.url, transport) as c:
        r = await c.get("/a")
        assert (r.json(), r.http_version) == ({}, "HTTP/1.0")
        assert (await c.get("/b")).json() == {}
    assert server.connections == 2
