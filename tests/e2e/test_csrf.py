"""App. B CSRF through a real gateway with ``auth.token_cookie``: a cookie-authenticated unsafe
request (or WebSocket upgrade) needs an Origin from the route's ``cors`` origins; a token in the
``Authorization`` header is exempt, and then the cookie is not used at all."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import GatewayProc, running_gateway
from tests.support.tenancy import AUD, ISS, TenantUpstream, raw_request, token

COOKIE = "shopino_session"
APP = "https://app.shopino.test"
FORBIDDEN = "urn:shopino-gateway:forbidden"


@pytest.fixture(scope="module")
def issuer() -> DemoIssuer:
    return DemoIssuer(issuer=ISS, audience=AUD)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, issuer: DemoIssuer) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("csrf")
    upstream = TenantUpstream().start()
    config = {
        "auth": {
            "issuers": [
                {"issuer": ISS, "audience": AUD, "jwks_file": str(issuer.write_jwks(tmp / "idp.json"))}
            ],
            "token_cookie": COOKIE,
        },
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [
            {"name": "api", "prefix": "/api", "upstream": "app", "cors": "app"},
            {"name": "plain", "prefix": "/plain", "upstream": "app"},  # no cors policy: no origin
        ],
        "cors": {"app": {"origins": [APP], "credentials": True}},
    }
    with running_gateway(tmp, config, upstream) as proc:
        yield proc


def send(
    gw: GatewayProc, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None = b"{}"
) -> tuple[int, bytes]:
    status, _, data = raw_request(gw, method, path, headers, body)
    return status, data


def problem_type(data: bytes) -> str | None:
    try:
        return str(json.loads(data).get("type"))
    except ValueError:
        return None


@pytest.fixture(scope="module")
def cookie(issuer: DemoIssuer) -> tuple[str, str]:
    return ("Cookie", f"{COOKIE}={token(issuer)}")


@pytest.mark.parametrize(
    "origin",
    [
        [],  # no Origin at all
        [("Referer", f"{APP}/orders")],  # a Referer does not stand in for the Origin
        [("Origin", "https://evil.example")],
        [("Origin", "null")],  # sandboxed frames, file: pages
        [("Origin", f"{APP}.evil.example")],
        [("Origin", APP), ("Origin", "https://evil.example")],
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_cookie_writes_without_an_allowed_origin_are_refused(
    gw: GatewayProc, cookie: tuple[str, str], origin: list[tuple[str, str]], method: str
) -> None:
    status, data = send(gw, method, "/api/orders", [cookie, *origin])
    assert (status, problem_type(data)) == (403, FORBIDDEN)


def test_cookie_writes_from_an_allowed_origin_and_cookie_reads_pass(
    gw: GatewayProc, cookie: tuple[str, str]
) -> None:
    assert send(gw, "POST", "/api/orders", [cookie, ("Origin", APP)])[0] == 200
    assert send(gw, "GET", "/api/orders", [cookie], body=None)[0] == 200
    assert send(gw, "HEAD", "/api/orders", [cookie], body=None)[0] == 200


def test_a_route_without_cors_accepts_no_origin_for_cookie_writes(
    gw: GatewayProc, cookie: tuple[str, str]
) -> None:
    for origin in ([], [("Origin", APP)]):
        status, data = send(gw, "POST", "/plain/x", [cookie, *origin])
        assert (status, problem_type(data)) == (403, FORBIDDEN)
    assert send(gw, "GET", "/plain/x", [cookie], body=None)[0] == 200


def test_cookie_websocket_upgrades_need_an_allowed_origin(gw: GatewayProc, cookie: tuple[str, str]) -> None:
    upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    for origin in ([], [("Origin", "https://evil.example")]):
        status, data = send(gw, "GET", "/api/ws", [cookie, *upgrade, *origin], body=None)
        assert (status, problem_type(data)) == (403, FORBIDDEN)


def test_the_authorization_header_is_exempt_and_then_the_cookie_is_unused(
    gw: GatewayProc, issuer: DemoIssuer, cookie: tuple[str, str]
) -> None:
    bearer = ("Authorization", f"Bearer {token(issuer)}")
    assert send(gw, "POST", "/api/orders", [bearer])[0] == 200
    assert send(gw, "POST", "/plain/x", [bearer, ("Origin", "https://evil.example")])[0] == 200
    # Both: the header authenticates; a junk cookie beside it is never read...
    assert send(gw, "POST", "/api/orders", [bearer, ("Cookie", f"{COOKIE}=junk")])[0] == 200
    # ...and a refused header token never falls back to a valid cookie.
    status, _ = send(gw, "POST", "/api/orders", [("Authorization", "Bearer junk"), cookie, ("Origin", APP)])
    assert status == 401
