"""SPEC §3, §4, §10, §13 through the real CLI: routing, header hygiene, forwarding, errors."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from yarl import URL

from tests.support.gateway_proc import GatewayProc
from tests.support.raw_http import connect, raw_request, read_head, read_response
from tests.support.upstream import Upstream


def header(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


async def test_upstream_receives_canonical_path_and_query(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    raw = URL(f"{shared_gateway.url}/a/./b//c/../d%41?x=1&y=%2F", encoded=True)  # sent as is
    async with http.get(raw) as response:
        assert response.status == 200
        record = await response.json()
    assert record["path_qs"] == "/a/b/dA?x=1&y=%2F"


@pytest.mark.parametrize(
    "path",
    ["/a/..%2F..%2Fetc", "/a%5Cb", "/a%00b", "/a;jsessionid=1", "/a\\b", "/%2e%2e/x", "/a%zz", "/../x"],
)
def test_attack_paths_refused_with_problem_json(shared_gateway: GatewayProc, path: str) -> None:
    # Raw socket: HTTP clients would normalise these paths before sending them.
    status, head, body = raw_request(shared_gateway.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert "application/problem+json" in head
    assert b"urn:shopino-gateway:bad-request" in body
    assert path.encode() not in body


async def test_hop_by_hop_and_spoofed_forwarding_headers_removed(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
        "X-Forwarded-Host": "evil.example",
        "X-Real-IP": "6.6.6.6",
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "1",
        "Proxy-Authorization": "Basic abc",
        "TE": "trailers",
    }
    async with http.get(f"{shared_gateway.url}/echo", headers=spoofed) as response:
        record = await response.json()
    assert header(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(record, "X-Forwarded-Host") == [f"127.0.0.1:{shared_gateway.port}"]
    assert header(record, "X-Forwarded-Proto") == ["http"]
    assert header(record, "Forwarded") == [f'for=127.0.0.1;proto=http;host="127.0.0.1:{shared_gateway.port}"']
    for name in ("X-Real-IP", "X-Drop-Me", "Proxy-Authorization", "TE"):
        assert header(record, name) == [], name


async def test_response_hygiene(shared_gateway: GatewayProc, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{shared_gateway.url}/leaky") as response:
        assert response.status == 200
        assert response.headers["Server"] == "shopino-gateway"
        assert "X-Powered-By" not in response.headers
        assert "X-Internal" not in response.headers
        assert "Keep-Alive" not in response.headers
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_head_answer_keeps_the_upstream_content_length_and_no_body(shared_gateway: GatewayProc) -> None:
    """A HEAD answer announces the length a GET would get, sends no body, and the next answer on
    the same connection is read in step."""
    with connect(shared_gateway.port) as sock:
        sock.sendall(b"HEAD /stream?bytes=1234 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, rest = read_head(sock)
        assert status.startswith("HTTP/1.1 200 ")
        assert headers["content-length"] == "1234"
        assert rest == b""
        sock.sendall(b"GET /stream?bytes=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)  # a leaked HEAD body would be read here
        assert status.startswith("HTTP/1.1 200 ")
        assert body == b"s" * 5


async def test_request_id_kept_when_safe_and_replaced_otherwise(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{shared_gateway.url}/echo", headers={"X-Request-ID": "abc-123"}) as response:
        record = await response.json()
        assert response.headers["X-Request-ID"] == "abc-123"
    assert header(record, "X-Request-ID") == ["abc-123"]
    async with http.get(f"{shared_gateway.url}/echo", headers={"X-Request-ID": "<script>" * 3}) as response:
        assert response.headers["X-Request-ID"] != "<script>" * 3
        assert len(response.headers["X-Request-ID"]) == 36


async def test_auth_routes_fail_closed(shared_gateway: GatewayProc, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{shared_gateway.url}/api/ledger") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="shopino"'
        body = await response.json()
        assert body["type"] == "urn:shopino-gateway:missing-token"
        assert body["request_id"] == response.headers["X-Request-ID"]
    token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    async with http.get(
        f"{shared_gateway.url}/api/ledger", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert token not in await response.text()


async def test_method_not_allowed_has_allow_and_does_not_fall_through(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{shared_gateway.url}/readonly/x") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert (await response.json())["type"] == "urn:shopino-gateway:method-not-allowed"


async def test_max_body_by_length_and_by_chunked_stream(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{shared_gateway.url}/sink", data=b"x" * 2048) as response:
        assert response.status == 413
        assert (await response.json())["type"] == "urn:shopino-gateway:payload-too-large"

    async def chunks():  # no Content-Length: the limit is counted while streaming
        for _ in range(4):
            yield b"y" * 512

    async with http.post(f"{shared_gateway.url}/sink", data=chunks()) as response:
        assert response.status == 413
    async with http.post(f"{shared_gateway.url}/sink", data=b"z" * 1000) as response:
        assert response.status == 200
        assert (await response.json())["bytes"] == 1000


def test_header_limits_answered_by_gateway_without_echo(shared_gateway: GatewayProc) -> None:
    secret = "Bearer " + "S3CRET" * 300  # 1.8 KB value in an 8 KiB budget: the total is what counts
    many = "".join(f"X-H{i}: {secret}\r\n" for i in range(5))
    status, head, body = raw_request(shared_gateway.port, f"GET /echo HTTP/1.1\r\nHost: x\r\n{many}\r\n")
    assert status == 431
    assert "application/problem+json" in head
    assert b"S3CRET" not in body
    count = "".join(f"X-N{i}: 1\r\n" for i in range(45))
    status, _, body = raw_request(shared_gateway.port, f"GET /echo HTTP/1.1\r\nHost: x\r\n{count}\r\n")
    assert status == 431
    # Past aiohttp's own parser limit too: still problem+json, still no echo of the value.
    huge = "Authorization: Bearer " + "T0KEN" * 4000 + "\r\n"
    status, head, body = raw_request(shared_gateway.port, f"GET /echo HTTP/1.1\r\nHost: x\r\n{huge}\r\n")
    assert status == 431
    assert "application/problem+json" in head
    assert b"T0KEN" not in body
    assert "T0KEN" not in shared_gateway.logs()


def test_slowloris_connection_closed_after_header_timeout(shared_gateway: GatewayProc) -> None:
    with socket.create_connection(("127.0.0.1", shared_gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        sock.sendall(b"X-Slow: 1\r\n")
        # header_timeout is 1 s in this config; the server must hang up well before our 5 s.
        assert sock.recv(1024) == b""


async def test_cors_preflight_answered_before_auth(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    headers = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{shared_gateway.url}/web/items", headers=headers) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
    evil = {**headers, "Origin": "https://evil.example"}
    async with http.options(f"{shared_gateway.url}/web/items", headers=evil) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.get(
        f"{shared_gateway.url}/web/items", headers={"Origin": "https://app.example"}
    ) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"


async def test_expect_continue_refused_before_upload(shared_gateway: GatewayProc) -> None:
    with socket.create_connection(("127.0.0.1", shared_gateway.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nExpect: 100-continue\r\n\r\n"
        )
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 401"), data[:40]
    assert b"100 Continue" not in data


async def test_expect_continue_sent_once_checks_pass(shared_gateway: GatewayProc) -> None:
    with socket.create_connection(("127.0.0.1", shared_gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        rest = sock.recv(65536)
    assert b"200 OK" in first + rest


async def test_expect_continue_skipped_without_content(shared_gateway: GatewayProc) -> None:
    """RFC 9110 §10.1.1: no content framed, no 100 (Continue): the final answer alone."""
    with socket.create_connection(("127.0.0.1", shared_gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200"), data[:40]
    assert b"100 Continue" not in data


async def test_websocket_echo_through_gateway(
    shared_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    ws_url = shared_gateway.url.replace("http", "ws") + "/ws"
    async with http.ws_connect(ws_url, protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        message = await asyncio.wait_for(ws.receive(), 5)
        assert message.data == "echo:hello"
        await ws.send_bytes(b"\x00\x01")
        assert (await asyncio.wait_for(ws.receive(), 5)).data == b"\x00\x01"


async def test_no_route_is_404_problem(
    tmp_path, gateway_factory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(
        {
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "fin", "prefix": "/api/fin", "upstream": "app", "auth": "none"}],
        }
    )
    async with http.get(f"{gw.url}/api/finance") as response:  # segment boundary: no match
        assert response.status == 404
        assert (await response.json())["type"] == "urn:shopino-gateway:not-found"
    async with http.get(f"{gw.url}/api/fin/x") as response:
        assert response.status == 200


def test_connections_over_the_cap_are_closed(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(
        {
            "listen": {"limits": {"max_connections": 2}},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
        }
    )
    held = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    try:
        extra = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        with extra:
            try:
                extra.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = extra.recv(1024)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # closed (or reset) without an answer
        for sock in held:  # the first two still work
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("host", ['shop.example";for=6.6.6.6;x="', "a b", "evil.example\tx", ""])
def test_malformed_host_header_refused(shared_gateway: GatewayProc, host: str) -> None:
    status, _, body = raw_request(shared_gateway.port, f"GET /echo HTTP/1.1\r\nHost: {host}\r\n\r\n")
    assert status == 400
    assert b"6.6.6.6" not in body


def test_duplicate_host_header_refused(shared_gateway: GatewayProc) -> None:
    status, _, _ = raw_request(shared_gateway.port, "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert status == 400
