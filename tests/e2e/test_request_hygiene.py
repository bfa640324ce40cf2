"""Appendix C through the real CLI and raw sockets: singletons, TRACE/TRACK/CONNECT, WebSocket
handshakes, transfer codings, forwarding and override headers (SPEC §10, App. B, App. C)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.e2e.test_proxy_basics import header
from tests.support.gateway_proc import GatewayProc, free_port
from tests.support.raw_http import raw_request
from tests.support.upstream import Upstream

WS_HEAD = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example: base64 of 16 bytes
CHUNKED_BODY = "5\r\nhello\r\n0\r\n\r\n"


def assert_problem(head: str, body: bytes, status: int, slug: str) -> None:
    # Status from the head: parser refusals still say HTTP/1.0 (another item of issue 14).
    assert head.split(" ", 2)[1] == str(status), head[:40]
    assert "application/problem+json" in head
    assert json.loads(body)["type"] == f"urn:shopino-gateway:{slug}"


def refused_unforwarded(
    gw: GatewayProc, upstream: Upstream, text: str, status: int, slug: str
) -> tuple[str, bytes]:
    """Sends ``text``; the gateway's own ``status`` problem ``slug``, and nothing reached the upstream."""
    got, head, body = raw_request(gw.port, text)
    assert got == status
    assert_problem(head, body, status, slug)
    assert upstream.requests == []
    return head, body


@pytest.fixture
def hygiene_gateway(gateway_factory, upstream: Upstream) -> GatewayProc:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: contacting it would be a 502
    return gateway_factory(
        {
            "listen": {"limits": {"header_timeout": "2s"}},
            "upstreams": {
                "app": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": "2s"},
                "dead": {"urls": [dead], "connect_timeout": "1s", "read_timeout": "1s"},
            },
            "auth": {"token_cookie": "sid"},
            "routes": [
                {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
                {"name": "gone", "prefix": "/gone", "upstream": "dead", "auth": "none"},
                {"name": "post", "prefix": "/orders", "upstream": "app", "auth": "none", "methods": ["POST"]},
                {
                    "name": "diag",
                    "prefix": "/diag",
                    "upstream": "app",
                    "auth": "none",
                    "methods": ["GET", "TRACE"],
                },
            ],
        }
    )


# --- singletons --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param("Authorization: Bearer zzz\r\nAuthorization: Bearer yyy\r\n", id="two-authorization"),
        pytest.param(
            "authorization: Bearer zzz\r\nAUTHORIZATION: Basic Yjpj\r\n", id="authorization-any-case"
        ),
        pytest.param("Host: y\r\n", id="two-host"),
        pytest.param("Content-Length: 3\r\nContent-Length: 4\r\n", id="content-length-differing"),
        pytest.param("Cookie: sid=zzz; sid=yyy\r\n", id="token-cookie-twice-in-one-line"),
        pytest.param("Cookie: a=1; sid=zzz\r\nCookie: sid=yyy\r\n", id="token-cookie-across-lines"),
    ],
)
def test_singletons_refused_before_forwarding(
    hygiene_gateway: GatewayProc, upstream: Upstream, fields: str
) -> None:
    text = f"POST /echo HTTP/1.1\r\nHost: x\r\n{fields}Content-Length: 4\r\n\r\nabcd"
    _, body = refused_unforwarded(hygiene_gateway, upstream, text, 400, "bad-request")
    # Not hex: the body carries a random request id, in which "aaa" can occur by chance.
    assert b"zzz" not in body and b"yyy" not in body


def test_single_fields_and_other_cookies_pass(hygiene_gateway: GatewayProc, upstream: Upstream) -> None:
    fields = "Authorization: Bearer aaa\r\nCookie: sid=aaa; other=1\r\nCookie: other=2\r\n"
    status, _, body = raw_request(hygiene_gateway.port, f"GET /echo HTTP/1.1\r\nHost: x\r\n{fields}\r\n")
    assert status == 200
    assert header(json.loads(body), "Authorization") == ["Bearer aaa"]


# --- TRACE, TRACK, CONNECT ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    ["TRACE /echo HTTP/1.1", "TRACK /echo HTTP/1.1", "CONNECT /echo HTTP/1.1", "CONNECT x:443 HTTP/1.1"],
)
def test_trace_track_connect_refused_with_allow(
    hygiene_gateway: GatewayProc, upstream: Upstream, line: str
) -> None:
    text = f"{line}\r\nHost: x\r\nCookie: sid=s3cret\r\n\r\n"
    head, body = refused_unforwarded(hygiene_gateway, upstream, text, 405, "method-not-allowed")
    assert "\r\nAllow: DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT" in head
    assert b"s3cret" not in body


def test_trace_passes_on_a_route_that_lists_it(hygiene_gateway: GatewayProc, upstream: Upstream) -> None:
    status, _, _ = raw_request(hygiene_gateway.port, "TRACE /diag/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert [r["method"] for r in upstream.requests] == ["TRACE"]
    status, head, _ = raw_request(hygiene_gateway.port, "CONNECT /diag/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405
    assert "\r\nAllow: GET, TRACE" in head


# --- WebSocket handshakes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param("Sec-WebSocket-Version: 13\r\n", id="no-key"),
        pytest.param("Sec-WebSocket-Key: not-base64!!\r\nSec-WebSocket-Version: 13\r\n", id="key-not-base64"),
        pytest.param("Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n", id="key-not-16-bytes"),
        pytest.param(
            f"Sec-WebSocket-Key: {GOOD_KEY}\r\n" * 2 + "Sec-WebSocket-Version: 13\r\n",
            id="two-keys",
        ),
        pytest.param(f"Sec-WebSocket-Key: {GOOD_KEY}\r\n", id="no-version"),
        pytest.param(f"Sec-WebSocket-Key: {GOOD_KEY}\r\nSec-WebSocket-Version: 8\r\n", id="version-8"),
    ],
)
@pytest.mark.parametrize("path", ["/ws", "/gone/ws"])
def test_invalid_websocket_upgrade_is_400_before_the_upstream(
    hygiene_gateway: GatewayProc, fields: str, path: str
) -> None:
    # /gone's upstream is down: reaching it would answer 502, so 400 proves it was never contacted.
    text = WS_HEAD.replace("/ws", path) + fields + "\r\n"
    status, head, body = raw_request(hygiene_gateway.port, text)
    assert status == 400
    assert_problem(head, body, 400, "bad-request")


def test_version_refusal_names_the_supported_version(hygiene_gateway: GatewayProc) -> None:
    text = f"{WS_HEAD}Sec-WebSocket-Key: {GOOD_KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    _, head, _ = raw_request(hygiene_gateway.port, text)
    assert "\r\nSec-WebSocket-Version: 13" in head


async def test_valid_websocket_upgrade_still_proxied(
    hygiene_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(hygiene_gateway.url.replace("http", "ws") + "/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"


# --- transfer codings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codings",
    [
        pytest.param("Transfer-Encoding: gzip, chunked\r\n", id="gzip-chunked"),
        pytest.param("Transfer-Encoding: chunked, identity\r\n", id="chunked-identity"),
        pytest.param("Transfer-Encoding: identity\r\n", id="identity"),
        pytest.param("Transfer-Encoding: gzip\r\n", id="gzip"),
        pytest.param("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", id="two-lines"),
        pytest.param("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", id="two-lines-gzip"),
    ],
)
def test_transfer_codings_other_than_chunked_are_501(
    hygiene_gateway: GatewayProc, upstream: Upstream, codings: str
) -> None:
    # Never forwarded, so never with its body dropped.
    text = f"POST /echo HTTP/1.1\r\nHost: x\r\n{codings}\r\n{CHUNKED_BODY}"
    refused_unforwarded(hygiene_gateway, upstream, text, 501, "not-implemented")


def test_transfer_encoding_with_content_length_stays_400(hygiene_gateway: GatewayProc) -> None:
    fields = "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
    _, head, body = raw_request(
        hygiene_gateway.port, f"POST /echo HTTP/1.1\r\nHost: x\r\n{fields}\r\n{CHUNKED_BODY}"
    )
    assert_problem(head, body, 400, "bad-request")


@pytest.mark.parametrize("coding", ["chunked", "Chunked"])
def test_chunked_body_arrives_whole(hygiene_gateway: GatewayProc, upstream: Upstream, coding: str) -> None:
    text = f"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n{CHUNKED_BODY}"
    status, _, body = raw_request(hygiene_gateway.port, text)
    assert status == 200
    assert json.loads(body)["body_length"] == 5


# --- forwarding and override headers -----------------------------------------------------------


async def test_every_x_forwarded_header_from_an_untrusted_peer_is_dropped(
    hygiene_gateway: GatewayProc, http: aiohttp.ClientSession
) -> None:
    spoofed = {
        "X-Forwarded-Prefix": "/evil",
        "X-Forwarded-Server": "evil.example",
        "X-Forwarded-Port": "8443",
        "X-Forwarded-Ssl": "on",
        "X-Forwarded-Scheme": "https",
        "x-forwarded-for": "6.6.6.6",
        "Forwarded": "for=6.6.6.6",
        "X-Real-IP": "6.6.6.6",
    }
    async with http.get(f"{hygiene_gateway.url}/echo", headers=spoofed) as response:
        record = await response.json()
    names = {name.lower() for name, _ in record["headers"]}
    assert (
        names & {"x-forwarded-prefix", "x-forwarded-server", "x-forwarded-port", "x-forwarded-ssl"} == set()
    )
    assert names & {"x-forwarded-scheme", "x-real-ip"} == set()
    assert header(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert "6.6.6.6" not in json.dumps(record)


def test_method_and_url_overrides_never_reach_the_upstream(
    hygiene_gateway: GatewayProc, upstream: Upstream
) -> None:
    overrides = (
        "X-HTTP-Method-Override: DELETE\r\nx-http-method-override: PUT\r\nX-HTTP-Method: DELETE\r\n"
        "X-METHOD-OVERRIDE: DELETE\r\nX-Original-URL: /admin\r\nx-rewrite-url: /admin\r\n"
    )
    text = f"POST /orders/1 HTTP/1.1\r\nHost: x\r\n{overrides}Content-Length: 2\r\n\r\n{{}}"
    status, _, _ = raw_request(hygiene_gateway.port, text)
    assert status == 200
    [record] = upstream.requests
    assert record["method"] == "POST"
    assert record["path_qs"] == "/orders/1"
    sent = {name.lower() for name, _ in record["headers"]}
    for name in (
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
    ):
        assert name not in sent, name
    # The route allows only POST: the override never made it a DELETE at the gateway either.
    status, _, _ = raw_request(hygiene_gateway.port, "DELETE /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 405
