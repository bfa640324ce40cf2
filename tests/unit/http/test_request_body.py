"""gateway/http/request_body.py, the one bounded body reader: at every place that used to read or
refuse a body on its own (the route's max_body stage, the webhook signature stage, counted body
fields, the JSON calls of the admin API), an oversized body is refused 413 with that place's
detail, declared or chunked, and a stalled body 408; over real sockets, on both listeners."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway.http.request_body import TOO_LARGE_FOR_ROUTE
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.raw_http import raw_request
from tests.support.upstream import Upstream

WEBHOOK_TOO_LARGE = "The webhook body is larger than this route allows"
JSON_TOO_LARGE = "The request body is too large"
LIMIT = 1024  # every public route below: max_body 1KiB
ADMIN_JSON_LIMIT = 4096  # gateway.http.json_body.MAX_JSON_BODY


def _config(upstream: Upstream, server: str) -> dict[str, object]:
    small = {"max_body": "1KiB"}
    routes = [
        {"name": "sink", "prefix": "/sink", "auth": "none", **small},
        {"name": "woo", "prefix": "/woo/", "auth": "webhook", "integration": "woo", **small},
        {"name": "woo-default", "prefix": "/woo-default", "auth": "webhook", "integration": "woo"},
        {"name": "counted", "prefix": "/counted/", "auth": "none", "rate_limit": ["per-name"], **small},
        {"name": "counted-default", "prefix": "/counted-default", "auth": "none", "rate_limit": ["per-name"]},
    ]
    return {
        "listen": {"tls": "off", "server": server, "limits": {"body_timeout": "1s"}},
        "integrations": {"woo": {"scheme": "woocommerce", "secret": "wc-secret-for-tests-0123456789"}},
        "upstreams": {"app": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": "2s"}},
        "routes": [{"upstream": "app", **route} for route in routes],
        "rate_limits": {"policies": {"per-name": [{"key": "body:username", "limit": "100/minute"}]}},
    }


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProc]:
    upstream = Upstream().start()
    gw = GatewayProc(tmp_path_factory.mktemp(request.param), _config(upstream, request.param)).start()
    try:
        yield gw
    finally:
        gw.stop()
        upstream.stop()


def _post(path: str, body: bytes, *, chunked: bool = False, extra: str = "") -> str:
    if chunked:  # two chunks: the declared-length check cannot see it, only counting can
        half = len(body) // 2
        framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
        return f"POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n{extra}\r\n" + (
            framed + b"0\r\n\r\n"
        ).decode("latin-1")
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head + body.decode("latin-1")


def _problem(port: int, text: str) -> tuple[int, str, str]:
    status, _, body = raw_request(port, text)
    problem = orjson.loads(body) if body.startswith(b"{") else {}
    return (
        status,
        str(problem.get("type", "")).removeprefix("urn:shopino-gateway:"),
        str(problem.get("detail")),
    )


def _form(size: int) -> bytes:
    return b"username=alice&pad=" + b"x" * (size - 19)


# Where a body is refused for its declared length, with that place's detail and limit: the
# route stage (max_body), and the readers' own defaults where the route sets none.
DECLARED = [
    pytest.param("/sink/x", TOO_LARGE_FOR_ROUTE, LIMIT, id="route-max-body"),
    pytest.param("/woo-default/order", WEBHOOK_TOO_LARGE, 1024 * 1024, id="webhook-signature"),
    pytest.param("/counted-default/login", TOO_LARGE_FOR_ROUTE, 64 * 1024, id="counted-body-field"),
]
# Where a chunked body is counted while a stage reads it.
CHUNKED = [
    pytest.param("/woo/order", WEBHOOK_TOO_LARGE, LIMIT, id="webhook-signature"),
    pytest.param("/counted/login", TOO_LARGE_FOR_ROUTE, LIMIT, id="counted-body-field"),
]
FORM = "Content-Type: application/x-www-form-urlencoded\r\n"


@pytest.mark.parametrize(("path", "detail", "limit"), DECLARED)
def test_a_declared_length_over_the_limit_is_refused_413_before_reading(
    gateway: GatewayProc, path: str, detail: str, limit: int
) -> None:
    assert _problem(gateway.port, _post(path, _form(limit + 1), extra=FORM)) == (
        413,
        "payload-too-large",
        detail,
    )
    status, slug, _ = _problem(gateway.port, _post(path, _form(limit), extra=FORM))
    assert slug != "payload-too-large" and status in (200, 401)  # 401: the webhook is unsigned


@pytest.mark.parametrize(("path", "detail", "limit"), CHUNKED)
def test_a_chunked_body_over_the_limit_is_refused_413_while_counting(
    gateway: GatewayProc, path: str, detail: str, limit: int
) -> None:
    answer = _problem(gateway.port, _post(path, _form(limit + 1), chunked=True, extra=FORM))
    assert answer == (413, "payload-too-large", detail)
    status, slug, _ = _problem(gateway.port, _post(path, _form(limit), chunked=True, extra=FORM))
    assert slug != "payload-too-large" and status in (200, 401)


def test_the_admin_apis_json_bodies_are_bounded_declared_and_chunked(gateway: GatewayProc) -> None:
    auth = f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
    big = orjson.dumps({"tenant": "acme", "pad": "x" * ADMIN_JSON_LIMIT})
    for chunked in (False, True):
        text = _post("/admin/sessions/revoke", big, chunked=chunked, extra=auth)
        assert _problem(gateway.admin_port, text) == (413, "payload-too-large", JSON_TOO_LARGE)
    # Under the limit, a body split over chunks is read whole (not only its first chunk).
    fits = orjson.dumps({"tenant": "acme", "pad": "x" * (ADMIN_JSON_LIMIT - 64)})
    status, _, body = raw_request(
        gateway.admin_port, _post("/admin/sessions/revoke", fits, chunked=True, extra=auth)
    )
    assert status != 413 and b"must be a JSON object" not in body, body


def test_framing_two_ways_is_refused_400(gateway: GatewayProc) -> None:
    text = _post("/sink/x", b"0\r\n\r\n", extra="Transfer-Encoding: chunked\r\n")
    status, slug, _ = _problem(gateway.port, text)
    assert (status, slug) == (400, "bad-request")


@pytest.mark.parametrize("path", ["/woo/order", "/counted/login"])
def test_a_body_that_stalls_while_a_stage_reads_it_is_answered_408(gateway: GatewayProc, path: str) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\n{FORM}Content-Length: 100\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"username=al")  # 11 of 100 bytes, then nothing
        started = time.monotonic()
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"request-timeout" in answer and time.monotonic() - started < 4
