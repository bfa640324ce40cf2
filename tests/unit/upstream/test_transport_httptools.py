"""HttptoolsTransport against real servers on 127.0.0.1.

aiohttp apps stand in for a well-behaved upstream; raw ``asyncio.start_server`` scripts answer
with the exact bytes an edge case needs (interim responses, stalls, smuggling attempts, servers
that close kept-alive connections). A connection's identity is its client port as the server
sees it, so "reused" and "fresh" are observed from the server side.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict, istr

from gateway.config.model import UpstreamConfig, UpstreamTls
from gateway.errors import BadRequest, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.transport_httptools import HttptoolsResponse, HttptoolsTransport

MiB = 1024 * 1024
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakeTransport = Callable[..., HttptoolsTransport]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# ---------------------------------------------------------------- helpers and fixtures
@pytest.fixture
async def make_transport() -> AsyncIterator[MakeTransport]:
    made: list[HttptoolsTransport] = []

    def make(*urls: str, **options: Any) -> HttptoolsTransport:
        options.setdefault("connect_timeout", 1.0)
        options.setdefault("read_timeout", 2.0)
        transport = HttptoolsTransport(UpstreamConfig(name="test", urls=urls, **options))
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


@pytest.fixture(autouse=True)
async def no_callback_errors() -> AsyncIterator[None]:
    """Fail on any error asyncio would only log (an exception inside a protocol callback)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    await asyncio.sleep(0.01)  # let pending connection_lost callbacks run
    loop.set_exception_handler(None)
    assert not errors


class RawServer:
    """A loopback server running ``handler`` per connection; remembers every connection and the
    raw requests its handler records."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, handler: RawHandler) -> RawServer:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # the client went away, or the test is over
            finally:
                writer.close()
                self._tasks.discard(task)

        self._server = await asyncio.start_server(run, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One whole request (head and Content-Length or chunked body), recorded raw."""
        raw = await reader.readuntil(b"\r\n\r\n")
        head = raw.lower()
        if b"content-length:" in head:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            raw += await reader.readexactly(length)
        elif b"transfer-encoding: chunked" in head:
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.strip(), 16)
                raw += line + await reader.readexactly(size + 2)
                if size == 0:
                    break
        self.requests.append(raw)
        return raw

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(handler: RawHandler) -> RawServer:
        servers.append(server := RawServer())
        return await server.start(handler)

    yield start
    for server in servers:
        await server.stop()


def answer_each(response: bytes) -> Callable[[RawServer], RawHandler]:
    """A handler answering every request on a connection with the same bytes."""

    def bind(server: RawServer) -> RawHandler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(response)
                await writer.drain()

        return handler

    return bind


async def raw(
    start: Callable[[RawHandler], Awaitable[RawServer]], bind: Callable[[RawServer], RawHandler]
) -> RawServer:
    """Start a raw server whose handler needs the server itself (to record requests)."""
    bound: list[RawHandler] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await bound[0](reader, writer)

    server = await start(handler)
    bound.append(bind(server))
    return server


async def fetch(
    transport: HttptoolsTransport,
    target: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: AsyncIterator[bytes] | None = None,
    retryable: bool = True,
) -> tuple[HttptoolsResponse, bytes]:
    response = await transport.send(
        method, target, UpstreamHeaders.of((headers or {}).items()), body, retryable=retryable
    )
    try:
        return response, b"".join([chunk async for chunk in response.iter_chunks()])
    finally:
        response.release()


async def chunks_of(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": dict(request.headers),
                "body": body.decode(),
                "peer": request.transport.get_extra_info("peername")[1] if request.transport else None,
            }
        )

    async def sink(request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {"bytes": size, "sha256": digest.hexdigest(), "chunked": "Transfer-Encoding" in request.headers}
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"alpha-", b"beta-", b"gamma"):
            await response.write(part)
        await response.write_eof()
        return response

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"z" * int(request.query["bytes"]))

    async def head_only(request: web.Request) -> web.Response:
        return web.Response(body=b"h" * 1000)

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type == WSMsgType.TEXT:
                await socket_.send_str("echo:" + message.data)
        return socket_

    app = web.Application()
    app.router.add_route("*", "/sink", sink)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/big", big)
    app.router.add_get("/head", head_only)  # aiohttp answers HEAD with the length and no body
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def app_upstream(aiohttp_server: Any) -> str:
    server = await aiohttp_server(upstream_app())
    return f"http://127.0.0.1:{server.port}"


# ---------------------------------------------------------------- round trips and framing
async def test_get_round_trip_with_headers_and_body(app_upstream: str, make_transport: MakeTransport) -> None:
    transport = make_transport(app_upstream)
    response, body = await fetch(transport, "/orders?page=2", headers={"X-Tenant": "acme", "Accept": "*/*"})
    assert (response.status, response.reason) == (200, "OK")
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    seen = json.loads(body)
    assert seen["method"] == "GET" and seen["path_qs"] == "/orders?page=2" and seen["body"] == ""
    assert seen["headers"]["X-Tenant"] == "acme"
    assert seen["headers"]["Host"] == app_upstream.removeprefix("http://")


async def test_exact_request_bytes_on_the_wire(raw_server: Any, make_transport: MakeTransport) -> None:
    server = await raw(raw_server, answer_each(OK))
    transport = make_transport(server.url)
    headers = UpstreamHeaders.of([("X-A", "1"), ("X-A", "2"), ("Content-Length", "5")])
    response = await transport.send("POST", "/p?q=1", headers, chunks_of(b"hello", 2), retryable=False)
    response.release()
    await fetch(transport, "/g")
    await fetch(transport, "/empty", method="POST")
    host = server.url.removeprefix("http://")
    assert server.requests == [
        f"POST /p?q=1 HTTP/1.1\r\nX-A: 1\r\nX-A: 2\r\nHost: {host}\r\n".encode()
        + b"Content-Length: 5\r\n\r\nhello",
        f"GET /g HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        f"POST /empty HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode(),
    ]


async def test_chunked_upload_without_content_length(raw_server: Any, make_transport: MakeTransport) -> None:
    server = await raw(raw_server, answer_each(OK))
    transport = make_transport(server.url)
    # A forwarded Transfer-Encoding is dropped: framing is the transport's alone.
    headers = {"Transfer-Encoding": "gzip, chunked"}
    await fetch(transport, "/up", method="PUT", headers=headers, body=chunks_of(b"abcdefghij", 4))
    host = server.url.removeprefix("http://")
    assert server.requests == [
        f"PUT /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"4\r\nabcd\r\n4\r\nefgh\r\n2\r\nij\r\n0\r\n\r\n"
    ]


@pytest.mark.parametrize("declare_length", [True, False])
async def test_post_body_reaches_an_aiohttp_upstream(
    app_upstream: str, make_transport: MakeTransport, declare_length: bool
) -> None:
    data = bytes(range(256)) * 1000
    headers = {"Content-Length": str(len(data))} if declare_length else {}
    _, body = await fetch(
        make_transport(app_upstream), "/sink", method="POST", headers=headers, body=chunks_of(data, 10_000)
    )
    assert json.loads(body) == {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "chunked": not declare_length,
    }


async def test_body_longer_than_its_content_length_is_refused(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    server = await raw(raw_server, answer_each(OK))
    transport = make_transport(server.url)
    with pytest.raises(BadRequest):
        await fetch(transport, "/", method="POST", headers={"Content-Length": "3"}, body=chunks_of(b"12345"))


async def test_crlf_in_a_header_value_is_refused_before_sending(make_transport: MakeTransport) -> None:
    transport = make_transport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="CR, LF"):
        await fetch(transport, "/", headers={"X-Evil": "a\r\nX-Injected: 1"})
    with pytest.raises(ValueError, match="CR, LF"):
        await fetch(transport, "/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b")
    with pytest.raises(ValueError, match="stray space"):
        await fetch(transport, "/a HTTP/1.0")


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\rb"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\x00b"}, {"X-E\nvil": "a"}, {"X-Evil": "\r\n"}],
)
async def test_a_lone_cr_lf_or_nul_anywhere_in_the_head_is_refused(
    make_transport: MakeTransport, headers: dict[str, str]
) -> None:
    # SECURITY: header injection (CWE-113) — a bare CR or LF is a line break to lenient servers.
    transport = make_transport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        await fetch(transport, "/", headers=headers)


async def test_body_stream_errors_propagate_unchanged(
    app_upstream: str, make_transport: MakeTransport
) -> None:
    async def too_large() -> AsyncIterator[bytes]:
        yield b"x" * 100
        raise PayloadTooLarge("limit")

    transport = make_transport(app_upstream)
    with pytest.raises(PayloadTooLarge):
        await fetch(transport, "/sink", method="POST", body=too_large())
    assert transport.balancer.endpoints[0].failures == 0
    _, body = await fetch(transport, "/after")
    assert json.loads(body)["path_qs"] == "/after"


# ---------------------------------------------------------------- responses
async def test_chunked_response(app_upstream: str, make_transport: MakeTransport) -> None:
    response, body = await fetch(make_transport(app_upstream), "/chunked")
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert body == b"alpha-beta-gamma"


async def test_close_delimited_response(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Fine\r\nConnection: close\r\n\r\n" + b"until-the-end" * 1000)
        await writer.drain()

    server = await raw_server(handler)
    transport = make_transport(server.url)
    for _ in range(2):
        response, body = await fetch(transport, "/")
        assert (response.status, response.reason, body) == (200, "Fine", b"until-the-end" * 1000)
    assert server.connections == 2


async def test_head_response_has_no_body_and_its_connection_is_not_reused(
    app_upstream: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(app_upstream)
    response, body = await fetch(transport, "/head", method="HEAD")
    assert response.headers["Content-Length"] == "1000" and body == b""
    _, after = await fetch(transport, "/after-head")
    _, again = await fetch(transport, "/again")
    first, second = json.loads(after), json.loads(again)
    assert first["path_qs"] == "/after-head" and second["path_qs"] == "/again"
    assert first["peer"] == second["peer"]  # the GETs share a connection: the pool still reuses


async def test_head_response_followed_by_stray_bytes_is_not_reused(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    # SECURITY: a body sent after a HEAD answer must not become the next request's response.
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nforged!"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    server = await raw(raw_server, answer_each(head + smuggled))
    transport = make_transport(server.url)
    response, body = await fetch(transport, "/", method="HEAD")
    assert response.status == 200 and body == b""
    response, body = await fetch(transport, "/")
    assert body == smuggled  # read as the GET's own body, on a fresh connection
    assert server.connections == 2


async def test_head_body_sent_in_a_later_segment_never_reaches_the_next_request(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    """SECURITY: the head alone arrives first, so nothing in it shows a body will follow; the
    forged answer comes once the next request is on its way. (Seen with aiohttp upstreams, whose
    ``StreamResponse.write`` sends a HEAD's body in its own segment.)"""
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nforged!"
    genuine = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngenuine"

    def bind(server: RawServer) -> RawHandler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                request = await server.read_request(reader)
                if request.startswith(b"HEAD "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(forged))
                    await writer.drain()
                    await asyncio.sleep(0.2)  # the client's next request is written by now
                    writer.write(forged)
                else:
                    writer.write(genuine)
                await writer.drain()

        return handler

    server = await raw(raw_server, bind)
    transport = make_transport(server.url)
    response, body = await fetch(transport, "/", method="HEAD")
    assert response.status == 200 and body == b""
    for _ in range(3):
        response, body = await fetch(transport, "/")
        assert body == b"genuine"
    assert server.connections == 2  # the HEAD's own, then one kept alive for the three GETs


@pytest.mark.parametrize("code", [204, 304])
async def test_bodyless_statuses(app_upstream: str, make_transport: MakeTransport, code: int) -> None:
    transport = make_transport(app_upstream)
    response, body = await fetch(transport, f"/status/{code}")
    assert (response.status, body) == (code, b"")
    _, after = await fetch(transport, "/after")
    assert json.loads(after)["path_qs"] == "/after"


async def test_interim_responses_are_skipped(raw_server: Any, make_transport: MakeTransport) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    final = b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 4\r\n\r\ndone"
    server = await raw(raw_server, answer_each(interim + final))
    transport = make_transport(server.url)
    response, body = await fetch(transport, "/", method="POST", body=chunks_of(b"data"))
    assert (response.status, response.reason, body) == (201, "Created", b"done")
    assert "Link" not in response.headers and response.headers["X-Final"] == "yes"
    await fetch(transport, "/")
    assert server.connections == 1


async def test_interim_heads_count_towards_the_header_cap(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    """MAX_HEADERS caps the whole answer: 1xx heads cannot each bring 200 more headers."""
    interim = b"HTTP/1.1 103 Early Hints\r\n" + b"Link: </a.css>\r\n" * 150 + b"\r\n"
    final = b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 60 + b"Content-Length: 0\r\n\r\n"
    server = await raw(raw_server, answer_each(interim + final))
    with pytest.raises(UpstreamUnavailable, match="too large"):
        await fetch(make_transport(server.url))


def interim_then(final_headers: int) -> bytes:
    """A small 103 (one header: it skips the per-header count) and a final head holding
    ``final_headers`` headers besides its Content-Length."""
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    return interim + b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * final_headers + b"Content-Length: 0\r\n\r\n"


async def test_a_small_interim_head_still_counts_towards_the_header_cap(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    """The interim head is too small to be counted as it is parsed; the final head is, from the
    interim's own count: 1 + 199 + 1 headers are one too many, 1 + 198 + 1 are not."""
    server = await raw(raw_server, answer_each(interim_then(199)))
    with pytest.raises(UpstreamUnavailable, match="too large"):
        await fetch(make_transport(server.url))
    server = await raw(raw_server, answer_each(interim_then(198)))
    response, _ = await fetch(make_transport(server.url))
    assert response.status == 200 and len(response.headers) == 199


async def test_blank_lines_before_a_head_do_not_pass_it_off_as_small(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    """llhttp skips CR LF before a status line: an empty line at the start must not count as the
    end of a small head (no header of the long one would be counted)."""
    too_many = b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 201 + b"Content-Length: 0\r\n\r\n"
    server = await raw(raw_server, answer_each(b"\r\n\r\n" + too_many))
    with pytest.raises(UpstreamUnavailable, match="too large"):
        await fetch(make_transport(server.url))


@pytest.mark.parametrize(("later", "refused"), [(50, True), (49, False)])
async def test_a_head_spread_over_reads_is_counted_from_its_first_bytes(
    raw_server: Any, make_transport: MakeTransport, later: int, refused: bool
) -> None:
    """The first read (150 headers in under _SMALL_HEAD bytes) is not counted as it is parsed;
    the next one is, from what the first held: 150 + ``later`` + Content-Length."""
    first = b"HTTP/1.1 200 OK\r\n" + b"X:a\r\n" * 150
    assert len(first) <= 12 + 4 * 200

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.05)  # two reads on the client's side
        writer.write(b"X:a\r\n" * later + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    server = await raw_server(handler)
    if refused:
        with pytest.raises(UpstreamUnavailable, match="too large"):
            await fetch(make_transport(server.url))
    else:
        response, body = await fetch(make_transport(server.url))
        assert (len(response.headers), body) == (200, b"ok")


@pytest.mark.parametrize(("size", "refused"), [(64700, True), (64500, False)])
async def test_a_head_spread_over_reads_is_capped_in_bytes_from_its_first_bytes(
    raw_server: Any, make_transport: MakeTransport, size: int, refused: bool
) -> None:
    """A first read of 99 short headers (809 bytes, not counted as parsed), then one of ``size``
    bytes: the bytes the first read held still count towards MAX_HEAD_BYTES (≈ 915 + size)."""
    first = b"HTTP/1.1 200 OK\r\n" + b"X:aaaa\r\n" * 99
    assert len(first) <= 12 + 4 * 200

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.05)  # two reads on the client's side
        writer.write(b"Y:" + b"y" * size + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    server = await raw_server(handler)
    if refused:
        with pytest.raises(UpstreamUnavailable, match="too large"):
            await fetch(make_transport(server.url))
    else:
        _, body = await fetch(make_transport(server.url))
        assert body == b"ok"


async def test_missing_reason_falls_back_to_the_standard_phrase(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    server = await raw(raw_server, answer_each(b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n"))
    response, _ = await fetch(make_transport(server.url))
    assert (response.status, response.reason) == (404, "Not Found")


async def test_response_headers_decode_as_latin1(raw_server: Any, make_transport: MakeTransport) -> None:
    server = await raw(
        raw_server, answer_each(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n")
    )
    response, _ = await fetch(make_transport(server.url))
    assert response.headers["X-Name"] == "café"


@pytest.mark.parametrize("name", [b"X-Caf\xe9", b"X-Caf\xc3\xa9", b"X-\x7f", b"X-A B"])
async def test_a_header_name_outside_the_token_characters_is_refused(
    raw_server: Any, make_transport: MakeTransport, name: bytes
) -> None:
    """Names are read with the default codec (UpstreamConnection.on_header), which equals latin-1
    only for ASCII: llhttp must go on refusing any non-token byte in a name (RFC 9110 §5.1)."""
    server = await raw(
        raw_server, answer_each(b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nContent-Length: 0\r\n\r\n")
    )
    with pytest.raises(UpstreamUnavailable, match="malformed"):
        await fetch(make_transport(server.url))


# ---------------------------------------------------------------- keep-alive pool
async def test_keep_alive_reuses_one_connection(app_upstream: str, make_transport: MakeTransport) -> None:
    transport = make_transport(app_upstream)
    peers = set()
    for index in range(20):
        _, body = await fetch(transport, f"/n/{index}")
        seen = json.loads(body)
        assert seen["path_qs"] == f"/n/{index}"
        peers.add(seen["peer"])
    assert len(peers) == 1


async def test_idle_connections_beyond_pool_size_are_closed(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    gate = asyncio.Event()

    def bind(server: RawServer) -> RawHandler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                await gate.wait()
                writer.write(OK)
                await writer.drain()

        return handler

    server = await raw(raw_server, bind)
    transport = make_transport(server.url, pool_size=2)
    for _ in range(2):
        gate.clear()
        batch = [asyncio.ensure_future(fetch(transport)) for _ in range(5)]
        while len(server.requests) % 5:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*batch)
    assert server.connections == 5 + 3  # two parked connections were reused, three were closed


async def test_server_closing_an_idle_connection_is_survived(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    def bind(server: RawServer) -> RawHandler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)  # keep-alive allowed, then the server's idle timeout closes it
            await writer.drain()
            await asyncio.sleep(0.05)

        return handler

    server = await raw(raw_server, bind)
    transport = make_transport(server.url)
    await fetch(transport)
    await asyncio.sleep(0.2)
    response, body = await fetch(transport)
    assert (response.status, body) == (200, b"ok")
    assert server.connections == 2


async def test_connections_idle_too_long_are_retired_not_reused(
    raw_server: Any, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.upstream.httptools_pool.IDLE_TTL", 0.05)
    server = await raw(raw_server, answer_each(OK))
    transport = make_transport(server.url)
    await asyncio.gather(fetch(transport), fetch(transport))  # two parked connections
    await asyncio.sleep(0.1)
    _, body = await fetch(transport)
    assert body == b"ok"
    assert server.connections == 3


def close_on_second_request(server: RawServer) -> RawHandler:
    """Serves one request per connection, then closes when the next arrives: the keep-alive race
    where the server gives up on an idle connection just as the client reuses it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    return handler


async def test_reused_connection_closed_before_answering_is_retried_when_bodyless(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    server = await raw(raw_server, close_on_second_request)
    transport = make_transport(server.url)
    await fetch(transport, "/one")
    response, body = await fetch(transport, "/two", retryable=False)  # retry is not failover
    assert (response.status, body) == (200, b"ok")
    assert server.connections == 2
    assert transport.balancer.endpoints[0].failures == 0


@pytest.mark.parametrize(("method", "body"), [("POST", b"payload"), ("POST", None), ("PUT", b"payload")])
async def test_reused_connection_closed_before_answering_is_not_replayed(
    raw_server: Any, make_transport: MakeTransport, method: str, body: bytes | None
) -> None:
    server = await raw(raw_server, close_on_second_request)
    transport = make_transport(server.url)
    await fetch(transport, "/one")
    with pytest.raises(UpstreamUnavailable, match="kept-alive"):
        await fetch(transport, "/two", method=method, body=chunks_of(body) if body else None)
    assert server.connections == 1


async def test_half_read_response_is_never_reused(app_upstream: str, make_transport: MakeTransport) -> None:
    transport = make_transport(app_upstream)
    response = await transport.send("GET", "/big?bytes=2000000", UpstreamHeaders.of(()), None, retryable=True)
    stream = response.iter_chunks()
    assert (await anext(stream)).startswith(b"z")
    response.release()
    await stream.aclose()
    _, first = await fetch(transport, "/next")
    _, second = await fetch(transport, "/next2")
    assert json.loads(first)["path_qs"] == "/next"  # not corrupted by the unread remainder
    assert json.loads(first)["peer"] == json.loads(second)["peer"]


async def test_unread_small_body_is_not_reused_either(raw_server: Any, make_transport: MakeTransport) -> None:
    server = await raw(raw_server, answer_each(OK))
    transport = make_transport(server.url)
    response = await transport.send("GET", "/", UpstreamHeaders.of(()), None, retryable=True)
    response.release()  # the body may sit complete in our buffer: unread is unread, not reused
    _, body = await fetch(transport)
    assert body == b"ok"
    assert server.connections == 2


async def test_bytes_arriving_on_an_idle_connection_retire_it(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    # SECURITY: a response pushed while idle must not answer the next request.
    def bind(server: RawServer) -> RawHandler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
            while True:
                await server.read_request(reader)
                writer.write(OK)

        return handler

    server = await raw(raw_server, bind)
    transport = make_transport(server.url)
    await fetch(transport)
    await asyncio.sleep(0.2)
    _, body = await fetch(transport)
    assert body == b"ok"
    assert server.connections == 2


async def test_second_response_to_one_request_closes_the_connection(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    # SECURITY: an unsolicited extra response must not answer the next request.
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
    server = await raw(raw_server, answer_each(OK + forged))
    transport = make_transport(server.url)
    for _ in range(3):
        _, body = await fetch(transport)
        assert body == b"ok"
    assert server.connections == 3


async def test_early_response_stops_the_upload(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(10)  # never reads the body

    async def endless() -> AsyncIterator[bytes]:
        block = b"u" * 65536
        while True:
            yield block

    server = await raw_server(handler)
    transport = make_transport(server.url)
    response, _ = await fetch(transport, "/", method="POST", body=endless())
    assert response.status == 413
    await fetch(transport, "/", method="GET")  # the half-sent connection was not reused
    assert server.connections == 2


# ---------------------------------------------------------------- timeouts and failures
async def test_slow_head_times_out(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(10)

    server = await raw_server(handler)
    transport = make_transport(server.url, read_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await fetch(transport)
    assert time.monotonic() - started < 1.5
    assert transport.balancer.endpoints[0].failures == 0  # slow is not down


async def test_slow_body_times_out_from_iter_chunks(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(10)

    server = await raw_server(handler)
    transport = make_transport(server.url, read_timeout=0.2)
    response = await transport.send("GET", "/", UpstreamHeaders.of(()), None, retryable=True)
    received = []
    with pytest.raises(UpstreamTimeout, match="mid-response"):
        async for chunk in response.iter_chunks():
            received.append(chunk)
    response.release()
    assert received == [b"hello"]


async def test_read_timeout_restarts_with_each_exchange_on_a_kept_alive_connection(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    # The read timer outlives an exchange (one timer per connection, not per request): an earlier
    # exchange's deadline must neither cut a later one short nor leave it unbounded. The second
    # exchange (0.3 s after the first, 0.25 s long) ends 0.15 s past the first one's deadline and
    # 0.15 s before its own: either margin survives a late timer on a loaded host (0.35 s long,
    # it had 0.05 s to its own deadline).
    delays = [0.0, 0.25, 10.0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for delay in delays:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(delay)
            writer.write(OK)
            await writer.drain()

    server = await raw_server(handler)
    transport = make_transport(server.url, read_timeout=0.4)
    assert (await fetch(transport))[1] == b"ok"
    await asyncio.sleep(0.3)
    assert (await fetch(transport))[1] == b"ok"  # 0.55 s after the first exchange began
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await fetch(transport)
    assert 0.35 < time.monotonic() - started < 1.5
    assert server.connections == 1  # all three on the one kept-alive connection


async def test_connection_broken_mid_body(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await writer.drain()

    server = await raw_server(handler)
    response = await make_transport(server.url).send("GET", "/", UpstreamHeaders.of(()), None, retryable=True)
    with pytest.raises(UpstreamUnavailable, match="broke"):
        async for _ in response.iter_chunks():
            pass
    response.release()


async def test_connection_refused_fails_over_when_retryable(
    app_upstream: str, make_transport: MakeTransport
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    transport = make_transport(dead, app_upstream)
    response, body = await fetch(transport, "/x", retryable=True)
    assert response.status == 200 and json.loads(body)["path_qs"] == "/x"
    assert [e.failures for e in transport.balancer.endpoints] == [1, 0]


async def test_connection_refused_without_failover_when_not_retryable(
    app_upstream: str, make_transport: MakeTransport
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    transport = make_transport(dead, app_upstream)
    with pytest.raises(UpstreamUnavailable, match="No upstream"):
        await fetch(transport, "/x", method="POST", body=chunks_of(b"once"), retryable=False)
    assert [e.failures for e in transport.balancer.endpoints] == [1, 0]


async def test_connect_timeout_is_a_connect_failure_not_a_504(make_transport: MakeTransport) -> None:
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the accept queue is now full: SYNs go unanswered
        transport = make_transport(f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.2)
        with pytest.raises(UpstreamUnavailable):
            await fetch(transport)
    assert transport.balancer.endpoints[0].failures == 1


BAD_RESPONSES = {
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked-then-content-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "invalid-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    "two-content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 201 + b"Content-Length: 0\r\n\r\n",
    "head-too-large": b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * (70 * 1024) + b"\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_RESPONSES))
async def test_malformed_or_ambiguous_responses_are_refused(
    raw_server: Any, make_transport: MakeTransport, name: str
) -> None:
    server = await raw(raw_server, answer_each(BAD_RESPONSES[name]))
    transport = make_transport(server.url)
    with pytest.raises(UpstreamUnavailable):
        await fetch(transport)
    assert transport.balancer.endpoints[0].failures == 1


async def test_endless_header_line_is_cut_off(raw_server: Any, make_transport: MakeTransport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(100):  # 6.4 MB of one header value, never terminated
            writer.write(b"e" * 65536)
            await writer.drain()

    server = await raw_server(handler)
    with pytest.raises(UpstreamUnavailable, match="too large"):
        await fetch(make_transport(server.url))


# ---------------------------------------------------------------- constant memory
async def test_50_mb_download_and_upload_in_constant_memory(
    raw_server: Any, make_transport: MakeTransport
) -> None:
    size, block = 50 * MiB, b"d" * 65536

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()
                continue
            received = 0
            while received < size:
                received += len(await reader.read(65536))
            answer = b"%d" % received
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    server = await raw_server(handler)
    transport = make_transport(server.url)
    tracemalloc.start()
    try:
        response = await transport.send("GET", "/", UpstreamHeaders.of(()), None, retryable=True)
        downloaded = 0
        await asyncio.sleep(0.2)  # a slow client: the upstream must wait, not fill our memory
        async for chunk in response.iter_chunks():
            downloaded += len(chunk)
        response.release()
        headers = CIMultiDict({"Content-Length": str(size)})
        response, body = await fetch(transport, "/", method="POST", headers=headers, body=upload())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert downloaded == size and int(body) == size
    assert peak < 16 * MiB, f"peak {peak / MiB:.1f} MiB"


# ---------------------------------------------------------------- TLS
def write_ca_and_leaf(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a leaf certificate for 127.0.0.1 signed by it: (ca, leaf cert, leaf key)."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test private CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture
async def tls_upstream(aiohttp_server: Any, tmp_path: Path) -> tuple[str, Path]:
    ca, cert, key = write_ca_and_leaf(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await aiohttp_server(upstream_app(), ssl=context)
    return f"https://127.0.0.1:{server.port}", ca


async def test_tls_upstream_verified_with_a_private_ca(
    tls_upstream: tuple[str, Path], make_transport: MakeTransport
) -> None:
    url, ca = tls_upstream
    transport = make_transport(url, tls=UpstreamTls(ca_file=str(ca)))
    peers = set()
    for _ in range(3):
        response, body = await fetch(transport, "/secure")
        assert response.status == 200 and json.loads(body)["path_qs"] == "/secure"
        peers.add(json.loads(body)["peer"])
    assert len(peers) == 1


async def test_tls_upstream_with_an_untrusted_certificate_is_refused(
    tls_upstream: tuple[str, Path], make_transport: MakeTransport
) -> None:
    url, _ = tls_upstream
    transport = make_transport(url)  # system trust store only: the private CA is unknown
    with pytest.raises(UpstreamUnavailable) as caught:
        await fetch(transport, "/secure")
    assert isinstance(caught.value.__cause__.__cause__, ssl.SSLCertVerificationError)  # type: ignore[union-attr]


# ---------------------------------------------------------------- WebSocket delegation
async def test_websocket_is_delegated_to_aiohttp_with_the_same_balancer(
    app_upstream: str, make_transport: MakeTransport
) -> None:
    transport = make_transport(app_upstream)
    socket_ = await transport.websocket("/ws", CIMultiDict(), ())
    try:
        await socket_.send_str("hi")
        assert (await socket_.receive()).data == "echo:hi"
    finally:
        await socket_.close()
    assert transport._websockets is not None and transport._websockets.balancer is transport.balancer


def test_the_header_name_memo_stays_bounded() -> None:
    """Header names are the upstream's to invent: their memo cannot grow without end."""
    from gateway.upstream import httptools_connection as module

    for i in range(3 * module._NAMES_LIMIT):
        key = module._name_key(b"X-N%d" % i)
        assert key == f"X-N{i}" and isinstance(key, istr)
        assert len(module._NAMES) <= module._NAMES_LIMIT


def test_the_header_value_memo_stays_bounded_and_keeps_the_text() -> None:
    """Header values are the upstream's to invent: their memo holds at most its bound of short
    values, and a value's text is the same whether it came from the memo or not."""
    from gateway.upstream import httptools_connection as module

    for i in range(3 * module._VALUES_LIMIT):
        raw = b"v%d" % i + bytes([0xE9]) + b" \t"
        for _ in range(2):  # a miss, then (unless just emptied) a hit
            text = module._VALUES.get(raw) or module._value_text(b"X-V", raw)
            assert text == raw.rstrip(b" \t").decode("latin-1")
        assert len(module._VALUES) <= module._VALUES_LIMIT
    long_value = b"x" * (module._VALUE_MEMO_MAX + 1)
    assert module._value_text(b"X-V", long_value) == long_value.decode()
    assert long_value not in module._VALUES  # a long value is never kept


@pytest.mark.parametrize("name", [b"Set-Cookie", b"set-cookie", b"SET-COOKIE"])
def test_a_cookie_value_is_never_kept_in_the_value_memo(name: bytes) -> None:
    """SECURITY: a session cookie lives as long as its answer, not in a memo that outlives it."""
    from gateway.upstream import httptools_connection as module

    cookie = b"sid=4f1c9e2a; HttpOnly"
    assert module._value_text(name, cookie) == cookie.decode()
    assert cookie not in module._VALUES
    assert module._value_text(b"Content-Type", b"text/plain") == "text/plain"
    assert b"text/plain" in module._VALUES  # other short values are kept
