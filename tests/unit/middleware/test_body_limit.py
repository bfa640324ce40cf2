"""``max_body`` per route (SPEC §10): the body stage, after the route stage as in the pipeline,
refuses a declared length over the route's limit (413 ``payload-too-large``) before any body
is read, and a body framed two ways (400 ``bad-request``, request smuggling)."""

from __future__ import annotations

import os
import types
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.errors import BadRequest, GatewayError
from gateway.http.request_body import refuse_unframed_or_oversized
from gateway.middleware.body_limit import enforce_body_limit
from gateway.middleware.route import resolve_route
from tests.support.stage_server import AiohttpClient, send_raw, stage_client, stage_runtime

MAX_BODY = 100
CONFIG = (
    "routes:\n"
    f"  - {{name: upload, prefix: /upload, upstream: erp, max_body: {MAX_BODY}}}\n"
    "  - {name: api, prefix: /api, upstream: erp}\n"
)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await stage_client(aiohttp_client, CONFIG, resolve_route, enforce_body_limit)


async def test_a_body_at_the_limit_passes(client: TestClient[Any, Any]) -> None:
    async with client.post("/upload/file", data=b"x" * MAX_BODY) as response:
        assert response.status == 200


async def test_a_declared_length_over_the_limit_is_refused_up_front(client: TestClient[Any, Any]) -> None:
    # Only the head is sent: the refusal comes from the declared length, no body byte is awaited.
    answer = await send_raw(
        client, f"POST /upload/file HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {MAX_BODY + 1}"
    )
    assert answer.status == 413
    assert answer.json()["type"] == "urn:shopino-gateway:payload-too-large"
    assert answer.json()["detail"] == "The request body is larger than this route allows"


async def test_a_route_without_max_body_takes_any_declared_length(client: TestClient[Any, Any]) -> None:
    async with client.post("/api/file", data=b"x" * 10 * MAX_BODY) as response:
        assert response.status == 200


async def test_a_chunked_body_is_left_to_the_streaming_count(client: TestClient[Any, Any]) -> None:
    # No declared length to judge: the proxy counts chunked bodies while they stream.
    chunk = b"x" * (MAX_BODY + 1)
    answer = await send_raw(
        client,
        "POST /upload/file HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked",
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk),
    )
    assert answer.status == 200


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 6",
    ],
)
async def test_a_body_framed_two_ways_never_reaches_the_route(
    client: TestClient[Any, Any], framing: str
) -> None:
    # SECURITY: request smuggling. aiohttp's parser refuses these heads itself (a plain 400)
    # before any stage runs; the stage's own check below is the second line.
    answer = await send_raw(
        client, f"POST /api/file HTTP/1.1\r\nHost: shop.example\r\n{framing}", b"0\r\n\r\n"
    )
    assert answer.status == 400


async def test_the_stage_refuses_a_body_framed_two_ways_itself() -> None:
    # The parsers in front of it refuse this shape, so a socket cannot deliver it: aiohttp's own
    # request object carries it to the stage, as a parser that let it through would.
    headers = CIMultiDict({"Host": "shop.example", "Content-Length": "5", "Transfer-Encoding": "chunked"})
    request = make_mocked_request("POST", "/api/file", headers=headers)
    ctx = RequestContext(request, stage_runtime(CONFIG), "rid", "127.0.0.1", "127.0.0.1", False)
    with pytest.raises(BadRequest) as refused:
        enforce_body_limit(ctx)
    assert refused.value.slug == "bad-request"
    assert refused.value.detail == "Conflicting body framing"


MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300
_FRAMING = st.lists(
    st.tuples(
        st.sampled_from(
            ["Content-Length", "content-length", "Transfer-Encoding", "TRANSFER-ENCODING", "Host"]
        ),
        st.sampled_from(["0", "5", "100", "101", "chunked", "x"]),
    ),
    max_size=3,
)


def _decision(check: Any, *args: Any) -> tuple[str, str] | None:
    try:
        check(*args)
    except GatewayError as refused:
        return refused.slug, refused.detail
    return None


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(framing=_FRAMING, limit=st.sampled_from([None, 0, 5, 100]))
def test_the_stage_decides_as_the_full_check(framing: list[tuple[str, str]], limit: int | None) -> None:
    """The stage skips the check when no Content-Length is declared: it must refuse exactly
    what ``refuse_unframed_or_oversized`` refuses, for any framing headers and limit."""
    headers = CIMultiDictProxy(CIMultiDict(framing))
    declared = headers.get("Content-Length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    request = types.SimpleNamespace(headers=headers, content_length=length)
    route = None if limit is None else types.SimpleNamespace(max_body=limit)
    ctx = types.SimpleNamespace(request=request, route=route)
    assert _decision(enforce_body_limit, ctx) == _decision(refuse_unframed_or_oversized, request, limit)
