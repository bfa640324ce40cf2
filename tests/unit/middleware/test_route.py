"""SPEC §3 step 2 (§4): the route stage on a loopback server matches the canonical path to its
route and refuses what has no route (404 ``not-found``), a method the route does not list
(405), a non-canonical target and an invalid Host (400 ``bad-request``); and the Host check's
memo of valid values stays bounded whatever a client sends, and is never a way around it."""

from __future__ import annotations

import types
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest
from gateway.middleware import route
from gateway.middleware.route import VALID_HOSTS_MAX, checked_host, resolve_route
from tests.support.stage_server import AiohttpClient, send_raw, stage_client

CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp}\n"
    "  - {name: reports, prefix: /api/reports, upstream: erp, methods: [GET]}\n"
)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await stage_client(aiohttp_client, CONFIG, resolve_route)


def get(target: str, host: str = "shop.example") -> str:
    return f"GET {target} HTTP/1.1\r\nHost: {host}"


def _request(*hosts: str) -> types.SimpleNamespace:
    headers = CIMultiDictProxy(CIMultiDict([("Host", host) for host in hosts]))
    return types.SimpleNamespace(headers=headers, version=(1, 1))


def test_valid_hosts_are_remembered_and_the_memo_stays_bounded() -> None:
    for n in range(3 * VALID_HOSTS_MAX):
        host = f"h{n}.example:{n % 65536}"
        assert checked_host(_request(host)) == host  # type: ignore[arg-type]
        assert len(route._VALID_HOSTS) <= VALID_HOSTS_MAX
    assert "api.example" not in route._VALID_HOSTS
    assert checked_host(_request("api.example")) == "api.example"  # type: ignore[arg-type]
    assert "api.example" in route._VALID_HOSTS


@pytest.mark.parametrize("bad", ['a"b', "a b", "a\tb", "host:1:2", "x" * 254, "[::1]x", "é.example"])
def test_invalid_hosts_are_refused_every_time_and_never_remembered(bad: str) -> None:
    checked_host(_request("api.example"))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(BadRequest):
            checked_host(_request(bad))  # type: ignore[arg-type]
    assert bad not in route._VALID_HOSTS


def test_a_remembered_host_twice_is_still_refused() -> None:
    checked_host(_request("api.example"))  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        checked_host(_request("api.example", "api.example"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("target", "name", "path"),
    [
        ("/api/orders", "api", "/api/orders"),
        ("/api/reports/q1?x=1", "reports", "/api/reports/q1"),  # the longest prefix wins
        ("/api//orders/./7", "api", "/api/orders/7"),  # matched on the canonical path
        ("/api/%6Frders", "api", "/api/orders"),  # unreserved characters decoded
    ],
)
async def test_a_target_is_matched_by_its_canonical_path(
    client: TestClient[Any, Any], target: str, name: str, path: str
) -> None:
    answer = await send_raw(client, get(target))
    assert answer.status == 200
    assert answer.json() == {"route": name, "path": path}


@pytest.mark.parametrize("target", ["/nope", "/apiary", "/api/%2e%2e/admin"])
async def test_a_path_without_a_route_is_not_found(client: TestClient[Any, Any], target: str) -> None:
    # "/api/%2e%2e/admin" is "/admin" once canonical: the raw prefix never decides the route.
    answer = await send_raw(client, get(target))
    assert answer.status == 404
    assert answer.json()["type"] == "urn:shopino-gateway:not-found"


async def test_a_method_the_route_does_not_list_is_405_with_allow(client: TestClient[Any, Any]) -> None:
    async with client.post("/api/reports/q1", data=b"{}") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET"
        assert (await response.json())["type"] == "urn:shopino-gateway:method-not-allowed"


@pytest.mark.parametrize(
    ("target", "phrase"),
    [
        ("/../etc/passwd", "escapes the root"),
        ("/api/a%2Fb", "encoded slash"),
        ("/api/a%5cb", "encoded backslash"),
        ("/api/a%00b", "control character"),
        ("/api/a;jsessionid=x", "semicolon"),
        ("/api/a%zz", "invalid percent-encoding"),
    ],
)
async def test_a_non_canonical_target_is_refused_without_echoing_it(
    client: TestClient[Any, Any], target: str, phrase: str
) -> None:
    answer = await send_raw(client, get(target))
    assert answer.status == 400
    problem = answer.json()
    assert problem["type"] == "urn:shopino-gateway:bad-request"
    assert phrase in problem["detail"]
    assert target not in answer.body.decode()


@pytest.mark.parametrize("host", ['shop.example"x', "shop.example:1:2", "[::1]x"])
async def test_an_invalid_host_is_refused(client: TestClient[Any, Any], host: str) -> None:
    answer = await send_raw(client, get("/api/orders", host=host))
    assert answer.status == 400
    assert answer.json()["detail"] == "Invalid Host header"


async def test_an_authority_form_connect_is_refused_as_an_open_proxy(client: TestClient[Any, Any]) -> None:
    answer = await send_raw(client, "CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443")
    assert answer.status == 405
    assert answer.json()["type"] == "urn:shopino-gateway:method-not-allowed"


def _ctx(*hosts: str, target: str = "/api/orders") -> Any:
    from tests.support.stage_server import stage_runtime

    request = _request(*hosts)
    request.method, request.raw_path = "GET", target
    return types.SimpleNamespace(request=request, runtime=stage_runtime(CONFIG), target=None, route=None)


def test_the_stage_refuses_two_hosts_even_when_each_value_is_remembered() -> None:
    """The stage checks a remembered Host inline; a second Host line still goes to the full
    check (aiohttp's parser refuses it first; a listener that did not would meet this)."""
    checked_host(_request("api.example"))  # type: ignore[arg-type]
    assert "api.example" in route._VALID_HOSTS
    ctx = _ctx("api.example")
    assert resolve_route(ctx) is None and ctx.route.name == "api"
    with pytest.raises(BadRequest, match="More than one Host"):
        resolve_route(_ctx("api.example", "api.example"))
    with pytest.raises(BadRequest, match="Invalid Host"):
        resolve_route(_ctx('api.example"x'))


def test_no_gateway_endpoint_is_hidden_by_the_stages_first_look() -> None:
    """The stage looks a path up among the gateway's endpoints only when its second character
    can start one: every endpoint (and item endpoint, with an id) passes that look."""
    from gateway.endpoints.table import GATEWAY_ENDPOINTS, GATEWAY_ITEM_ENDPOINTS, is_gateway_endpoint

    paths = [*GATEWAY_ENDPOINTS, *(prefix + "some-id" for prefix in GATEWAY_ITEM_ENDPOINTS)]
    assert paths and all(is_gateway_endpoint(path) for path in paths)
    assert all(path[1:2] in route._ENDPOINT_SECOND for path in paths)
    assert "/api/orders"[1:2] not in route._ENDPOINT_SECOND
