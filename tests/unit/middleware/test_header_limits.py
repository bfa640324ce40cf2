"""``listen.limits`` (App. B, App. C ``max_header_line``): the header stage on a loopback server
refuses too many fields, one field too large and a header section too large, each with 431
``headers-too-large`` and a detail that names no header and no value; at each limit it passes."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.middleware.header_limits import enforce_header_limits
from tests.support.stage_server import AiohttpClient, send_raw, stage_client

MAX_HEADERS, MAX_LINE, MAX_BYTES = 10, 1024, 4096
CONFIG = (
    "routes:\n  - {name: api, prefix: /api, upstream: erp}\n"
    f"listen: {{limits: {{max_headers: {MAX_HEADERS}, max_header_line: {MAX_LINE}, "
    f"max_header_bytes: {MAX_BYTES}}}}}\n"
)
HOST = ("Host", "shop.example")
TOKEN = "eyJhbGciOiJFUzI1NiJ9.SECRET-TOKEN-MARK"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await stage_client(aiohttp_client, CONFIG, enforce_header_limits)


def head(fields: list[tuple[str, str]]) -> str:
    return "GET /api/x HTTP/1.1\r\n" + "\r\n".join(f"{name}: {value}" for name, value in fields)


def section_size(fields: list[tuple[str, str]]) -> int:
    """The header section as the stage counts it: name + ": " + value + CRLF per field."""
    return sum(len(name) + len(value) + 4 for name, value in fields)


async def test_a_request_within_every_limit_passes(client: TestClient[Any, Any]) -> None:
    answer = await send_raw(client, head([HOST, ("Authorization", "Bearer " + TOKEN), ("Accept", "*/*")]))
    assert answer.status == 200


async def test_max_headers_fields_pass_and_one_more_is_refused(client: TestClient[Any, Any]) -> None:
    fields = [HOST] + [(f"X-Field-{i}", "v") for i in range(MAX_HEADERS - 1)]
    assert (await send_raw(client, head(fields))).status == 200
    answer = await send_raw(client, head([*fields, ("X-One-More", "v")]))
    assert answer.status == 431
    assert answer.json()["type"] == "urn:shopino-gateway:headers-too-large"
    assert answer.json()["detail"] == "Too many request header fields"


async def test_a_field_at_max_header_line_passes_and_one_byte_more_is_refused(
    client: TestClient[Any, Any],
) -> None:
    name = "Authorization"
    exact = "Bearer " + TOKEN + "x" * (MAX_LINE - len(name) - len("Bearer " + TOKEN))
    assert len(name) + len(exact) == MAX_LINE  # name + value, as App. C counts a line
    assert (await send_raw(client, head([HOST, (name, exact)]))).status == 200
    answer = await send_raw(client, head([HOST, (name, exact + "x")]))
    assert answer.status == 431
    problem = answer.json()
    assert problem["type"] == "urn:shopino-gateway:headers-too-large"
    assert problem["detail"] == "A request header field is too large"
    # SECURITY: the refusal echoes neither the field nor its value (a token must never be).
    assert b"SECRET-TOKEN-MARK" not in answer.body and b"Authorization" not in answer.body


async def test_a_section_at_max_header_bytes_passes_and_one_byte_more_is_refused(
    client: TestClient[Any, Any],
) -> None:
    # Fields each under max_header_line whose sum reaches max_header_bytes exactly.
    fields = [HOST] + [(f"X-Fill-{i}", "v" * 800) for i in range(4)]
    fields.append(("X-Fill-4", "v" * (MAX_BYTES - section_size(fields) - len("X-Fill-4") - 4)))
    assert section_size(fields) == MAX_BYTES
    assert all(len(name) + len(value) <= MAX_LINE for name, value in fields)
    assert (await send_raw(client, head(fields))).status == 200
    fields[-1] = (fields[-1][0], fields[-1][1] + "v")
    answer = await send_raw(client, head(fields))
    assert answer.status == 431
    assert answer.json()["type"] == "urn:shopino-gateway:headers-too-large"
    assert answer.json()["detail"] == "The request header section is too large"


async def test_a_section_over_max_header_bytes_is_refused_when_a_line_may_be_longer(
    aiohttp_client: AiohttpClient,
) -> None:
    # max_header_line above max_header_bytes: the section limit alone decides, every field fits.
    config = (
        "routes:\n  - {name: api, prefix: /api, upstream: erp}\n"
        "listen: {limits: {max_headers: 10, max_header_line: 8192, max_header_bytes: 1024}}\n"
    )
    client = await stage_client(aiohttp_client, config, enforce_header_limits)
    fields = [HOST, ("X-Fill", "v" * (1024 - section_size([HOST]) - len("X-Fill") - 4))]
    assert section_size(fields) == 1024
    assert (await send_raw(client, head(fields))).status == 200
    answer = await send_raw(client, head([HOST, ("X-Fill", fields[1][1] + "v")]))
    assert answer.status == 431
    assert answer.json()["detail"] == "The request header section is too large"
