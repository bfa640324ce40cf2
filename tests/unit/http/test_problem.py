"""gateway/http/problem.py, the one problem+json renderer (SPEC §13, App. B): the document, its type
URIs and headers; and every public refusal counted, whichever listener answers it (the aiohttp
and the lean public listeners, their HTTP parsers; the admin API renders alike but is not
public traffic), over real sockets to a real gateway."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway import errors
from gateway.errors import Isolated, MethodNotAllowed, RateLimited
from gateway.http.problem import PROBLEM_CONTENT_TYPE, TYPE_PREFIX, problem_body, problem_headers
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.raw_http import raw_request
from tests.support.upstream import Upstream
from tests.unit.test_errors import CLASSES, SPEC_PROBLEM_TYPES


def test_the_type_uri_and_content_type_are_appendix_bs() -> None:
    assert TYPE_PREFIX == "urn:shopino-gateway:"
    assert PROBLEM_CONTENT_TYPE == "application/problem+json"


def test_problem_body_shape() -> None:
    error = RateLimited("Slow down", extensions={"retry_after": 30})
    body = orjson.loads(problem_body(error, "req-123"))
    assert body == {
        "type": "urn:shopino-gateway:rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "Slow down",
        "request_id": "req-123",
        "retry_after": 30,
    }


def test_problem_body_without_request_id_is_null() -> None:
    body = orjson.loads(problem_body(errors.NotReady(), None))
    assert body["request_id"] is None
    assert body["type"] == "urn:shopino-gateway:not-ready"
    assert body["status"] == 503


@pytest.mark.parametrize("slug", sorted(SPEC_PROBLEM_TYPES))
def test_problem_body_type_is_the_urn_of_the_slug(slug: str) -> None:
    class_name = next(name for name, s in CLASSES.items() if s == slug)
    body = orjson.loads(problem_body(getattr(errors, class_name)(), "r"))
    assert body["type"] == f"urn:shopino-gateway:{slug}"
    assert body["status"] == SPEC_PROBLEM_TYPES[slug]
    assert set(body) == {"type", "title", "status", "detail", "request_id"}


def test_extensions_cannot_override_standard_members() -> None:
    error = Isolated(
        "Tenant isolated",
        extensions={
            "type": "urn:evil",
            "title": "Fine",
            "status": 200,
            "detail": "<stack trace>",
            "request_id": "forged",
            "incident": "INC-42",
        },
    )
    body = orjson.loads(problem_body(error, "req-1"))
    assert body == {
        "type": "urn:shopino-gateway:isolated",
        "title": "Isolated by an incident response switch",
        "status": 503,
        "detail": "Tenant isolated",
        "request_id": "req-1",
        "incident": "INC-42",
    }


def test_problem_headers_content_type_and_no_store() -> None:
    assert problem_headers(errors.NotFound()) == {
        "Content-Type": "application/problem+json",
        "Cache-Control": "no-store",
    }


def test_problem_headers_include_the_errors_headers() -> None:
    limited = problem_headers(RateLimited(headers={"Retry-After": "30"}))
    assert limited["Retry-After"] == "30"
    assert limited["Content-Type"] == "application/problem+json"
    assert limited["Cache-Control"] == "no-store"
    refused = problem_headers(MethodNotAllowed(headers={"Allow": "GET, HEAD"}))
    assert refused["Allow"] == "GET, HEAD"


# -- every refusal counted, on every path, over real sockets -----------------------------------
def _config(upstream: Upstream, server: str) -> dict[str, object]:
    return {
        "listen": {"tls": "off", "server": server, "limits": {"max_header_line": "1KiB"}},
        "upstreams": {"app": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": "1s"}},
        "routes": [{"name": "open", "prefix": "/open", "upstream": "app", "auth": "none"}],
    }


def _refusals(gw: GatewayProc) -> dict[str, float]:
    request = urllib.request.Request(
        f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        lines = response.read().decode().splitlines()
    prefix = 'shopino_gateway_refusals_total{type="'
    return {
        line[len(prefix) :].partition('"')[0]: float(line.split()[-1])
        for line in lines
        if line.startswith(prefix)
    }


def _problem_type(body: bytes) -> str:
    return str(orjson.loads(body)["type"]).removeprefix(TYPE_PREFIX)


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
def test_every_public_refusal_is_counted_once_whichever_path_answers_it(
    server: str, upstream: Upstream, gateway_factory: Callable[..., GatewayProc], tmp_path: Path
) -> None:
    gw = gateway_factory(_config(upstream, server))
    before = _refusals(gw)
    answers = [
        # A pipeline stage's refusal (no route).
        raw_request(gw.port, "GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n"),
        # The HTTP parser's refusals: an unparsable request line, a header line over the limit.
        raw_request(gw.port, "GET /open HTTP/1.1 junk\r\nHost: gw\r\n\r\n"),
        raw_request(gw.port, f"GET /open HTTP/1.1\r\nHost: gw\r\nX-Big: {'a' * 4096}\r\n\r\n"),
    ]
    assert [(status, _problem_type(body)) for status, _, body in answers] == [
        (404, "not-found"),
        (400, "bad-request"),
        (431, "headers-too-large"),
    ]
    # The admin API's refusal (no token): the same document, not counted as public traffic.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{gw.admin_url}/admin/config", timeout=5)
    assert refused.value.code == 401
    assert refused.value.headers["Content-Type"] == PROBLEM_CONTENT_TYPE
    assert _problem_type(refused.value.read()) == "missing-token"
    after = _refusals(gw)
    for slug in ("not-found", "bad-request", "headers-too-large"):
        assert after.get(slug, 0) - before.get(slug, 0) == 1, (slug, before, after)
    assert after.get("missing-token", 0) == before.get("missing-token", 0)


def test_a_refusal_before_a_request_was_parsed_is_counted_when_the_client_has_gone(
    upstream: Upstream, gateway_factory: Callable[..., GatewayProc]
) -> None:
    # The lean listener's parser refusal is written raw (no Response): counted all the same.
    gw = gateway_factory(_config(upstream, "lean"))
    before = _refusals(gw).get("bad-request", 0)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"\x00\x01 garbage\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    assert _refusals(gw).get("bad-request", 0) - before == 1
