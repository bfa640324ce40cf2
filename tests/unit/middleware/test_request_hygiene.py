"""App. C request hygiene: the answers to requests aiohttp's own parsers refuse, then the stage on
a loopback server (what a real request that got past aiohttp's parser is answered). The rules
over header values alone are tested in tests/unit/test_hygiene.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import http_parser
from aiohttp.test_utils import TestClient

from gateway.errors import MethodNotAllowed, NotImplementedCoding
from gateway.middleware.request_hygiene import check_request_hygiene, parser_refusal
from tests.support.stage_server import AiohttpClient, send_raw, stage_client

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def parser_error(raw: bytes, parser: type) -> Exception:
    """What aiohttp's real parser raises for ``raw`` (the listener hands it to parser_refusal)."""
    loop = asyncio.new_event_loop()
    try:
        parser(None, loop, 2**16, max_line_size=8190, max_field_size=8190).feed_data(raw)
    except Exception as error:
        return error
    finally:
        loop.close()
    raise AssertionError("the parser accepted it")


PARSERS = [http_parser.HttpRequestParser, http_parser.HttpRequestParserPy]
HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    "fields",
    [
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_parser_refused_codings_are_501(parser: type, fields: bytes) -> None:
    assert isinstance(
        parser_refusal(parser_error(HEAD + fields + b"\r\n0\r\n\r\n", parser)), NotImplementedCoding
    )


@pytest.mark.parametrize("parser", PARSERS)
def test_smuggling_shapes_stay_the_generic_400(parser: type) -> None:
    both = HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
    assert parser_refusal(parser_error(both, parser)) is None


def test_track_refused_by_the_c_parser_is_405() -> None:
    refusal = parser_refusal(parser_error(b"TRACK /x HTTP/1.1\r\nHost: x\r\n\r\n", PARSERS[0]))
    assert isinstance(refusal, MethodNotAllowed)
    assert refusal.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


@pytest.mark.parametrize(
    "raw",
    [
        b"FOO /x HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"FOO b'TRACK x\r\n",
    ],
)
def test_other_unknown_methods_and_garbage_stay_400(raw: bytes) -> None:
    assert parser_refusal(parser_error(raw, PARSERS[0])) is None


def test_no_exception_no_refusal() -> None:
    assert parser_refusal(None) is None
    assert parser_refusal(ValueError("x")) is None


STAGE_CONFIG = "routes:\n  - {name: api, prefix: /api, upstream: erp}\nauth: {token_cookie: sid}\n"
HANDSHAKE = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await stage_client(aiohttp_client, STAGE_CONFIG, check_request_hygiene)


def request(fields: str, *, method: str = "GET", version: str = "1.1") -> str:
    return f"{method} /api/orders HTTP/{version}\r\nHost: shop.example\r\n{fields}"


@pytest.mark.parametrize(
    "fields",
    [
        "Authorization: Bearer a\r\nCookie: sid=a; theme=dark\r\nCookie: lang=en",
        f"{HANDSHAKE}\r\nSec-WebSocket-Key: {KEY}",
    ],
    ids=["one-credential-each", "valid-websocket-handshake"],
)
async def test_a_clean_request_passes(client: TestClient[Any, Any], fields: str) -> None:
    assert (await send_raw(client, request(fields))).status == 200


async def test_a_lone_chunked_coding_passes(client: TestClient[Any, Any]) -> None:
    answer = await send_raw(client, request("Transfer-Encoding: chunked", method="POST"), b"0\r\n\r\n")
    assert answer.status == 200


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ("Authorization: Bearer a\r\nAuthorization: Bearer b", "More than one Authorization header"),
        ("Cookie: sid=a; sid=b", "The token cookie is present more than once"),
        ("Cookie: sid=a\r\nCookie: theme=dark; sid=b", "The token cookie is present more than once"),
    ],
    ids=["two-authorization", "token-cookie-twice-in-a-line", "token-cookie-across-lines"],
)
async def test_a_second_credential_is_refused(client: TestClient[Any, Any], fields: str, detail: str) -> None:
    # SECURITY: tenant confusion: the gateway would verify one, a backend might act on the other.
    answer = await send_raw(client, request(fields))
    assert answer.status == 400
    assert answer.json()["type"] == "urn:shopino-gateway:bad-request"
    assert answer.json()["detail"] == detail


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "identity, chunked"])
async def test_a_coding_other_than_a_lone_chunked_is_501(client: TestClient[Any, Any], coding: str) -> None:
    answer = await send_raw(client, request(f"Transfer-Encoding: {coding}", method="POST"), b"0\r\n\r\n")
    assert answer.status == 501
    assert answer.json()["type"] == "urn:shopino-gateway:not-implemented"


@pytest.mark.parametrize(
    ("fields", "version", "detail"),
    [
        (f"{HANDSHAKE}\r\nSec-WebSocket-Key: short", "1.1", "Invalid WebSocket handshake: Sec-WebSocket-Key"),
        (HANDSHAKE, "1.1", "Invalid WebSocket handshake: Sec-WebSocket-Key"),
        (f"{HANDSHAKE}\r\nSec-WebSocket-Key: {KEY}", "1.0", "A WebSocket handshake needs HTTP/1.1"),
    ],
    ids=["bad-key", "no-key", "http-1.0"],
)
async def test_a_websocket_handshake_that_cannot_succeed_is_400(
    client: TestClient[Any, Any], fields: str, version: str, detail: str
) -> None:
    answer = await send_raw(client, request(fields, version=version))
    assert answer.status == 400
    assert answer.json()["type"] == "urn:shopino-gateway:bad-request"
    assert answer.json()["detail"] == detail


async def test_an_unsupported_websocket_version_is_told_the_supported_one(
    client: TestClient[Any, Any],
) -> None:
    fields = (
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {KEY}"
    )
    answer = await send_raw(client, request(fields))
    assert answer.status == 400
    assert "\r\nSec-WebSocket-Version: 13" in answer.head
    assert answer.json()["detail"] == "Unsupported WebSocket version"
