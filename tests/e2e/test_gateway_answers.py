"""SPEC Appendix C "every answer is the gateway's": parser refusals, the gateway's own endpoints
and proxied answers carry Server: shopino-gateway, nosniff and (on TLS) HSTS; authenticated
proxied answers without Cache-Control get ``private``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.gateway_proc import GatewayProc, insecure_client_context, running_gateway
from tests.support.issuers import TENANT_IDP, issuer_entries, mint, operator_and_tenant_issuers
from tests.support.raw_http import exchange
from tests.support.upstream import Upstream

PARSER_REFUSALS = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad header line": b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    "header past the parser's limit": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"z" * 40000 + b"\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.fixture(scope="module", params=["off", "self-signed"])
def answers_gateway(request, tmp_path_factory) -> Iterator[tuple[GatewayProc, Any]]:
    upstream = Upstream("erp").start()
    tmp = tmp_path_factory.mktemp("answers")
    issuers = operator_and_tenant_issuers()
    config = {
        "listen": {"tls": request.param},
        "auth": {"issuers": issuer_entries(issuers, tmp)},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [
            {"name": "api", "prefix": "/api", "upstream": "app"},
            {"name": "cached", "prefix": "/cached", "upstream": "app"},
            {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
        ],
    }
    with running_gateway(tmp, config, upstream) as gw:
        yield gw, issuers["tenant"]


def assert_gateways_answer(headers: Any, *, tls: bool) -> None:
    assert headers.get("server") == "shopino-gateway" or headers.get("Server") == "shopino-gateway"
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-content-type-options"] == "nosniff"
    assert ("strict-transport-security" in lower) is tls
    if tls:
        assert lower["strict-transport-security"].startswith("max-age=")


@pytest.mark.parametrize("name", sorted(PARSER_REFUSALS))
def test_parser_refusals_are_the_gateways(answers_gateway, name: str) -> None:
    gw, _ = answers_gateway
    tls = gw.scheme == "https"
    status, headers, body = exchange(gw.port, PARSER_REFUSALS[name], tls=tls)
    assert status.split(" ")[0] == "HTTP/1.1", status
    assert status.split(" ")[1] in ("400", "431"), status
    assert headers["content-type"] == "application/problem+json"
    assert "aiohttp" not in str(headers) and "Python" not in str(headers)
    assert_gateways_answer(headers, tls=tls)
    assert b"zzzz" not in body  # not hex: the body carries a random request id


def client(answers_gateway: tuple[GatewayProc, Any]) -> tuple[GatewayProc, Any, dict[str, str], bool]:
    gw, tenant_idp = answers_gateway
    assert tenant_idp.issuer == TENANT_IDP
    auth = {"Authorization": f"Bearer {mint(tenant_idp, 'acme', ['user'])}"}
    tls = gw.scheme == "https"
    return gw, insecure_client_context() if tls else None, auth, tls


async def test_gateway_endpoints_are_the_gateways(answers_gateway) -> None:
    gw, ssl, auth, tls = client(answers_gateway)
    async with aiohttp.ClientSession() as http:
        for path in ("/_gateway/health", "/_gateway/ready", "/.well-known/jwks.json", "/_gateway/grants"):
            async with http.get(f"{gw.url}{path}", ssl=ssl, headers=auth) as response:
                assert response.status < 500, path
                assert_gateways_answer(response.headers, tls=tls)


async def test_authenticated_answers_are_private(answers_gateway) -> None:
    gw, ssl, auth, tls = client(answers_gateway)
    async with aiohttp.ClientSession() as http:
        # An authenticated proxied answer without Cache-Control is private...
        async with http.get(f"{gw.url}/api/echo", ssl=ssl, headers=auth) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "private"
            assert_gateways_answer(response.headers, tls=tls)
        # ...an upstream's own Cache-Control is kept...
        async with http.get(f"{gw.url}/cached?value=max-age=60", ssl=ssl, headers=auth) as response:
            assert response.status == 200
            assert response.headers.getall("Cache-Control") == ["max-age=60"]
        # ...and an unauthenticated route gets none added.
        async with http.get(f"{gw.url}/echo", ssl=ssl) as response:
            assert response.status == 200
            assert "Cache-Control" not in response.headers
            assert_gateways_answer(response.headers, tls=tls)
