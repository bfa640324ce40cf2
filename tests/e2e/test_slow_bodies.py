"""SPEC Appendix C: ``listen.limits.body_timeout`` and ``max_header_line``, from a raw socket."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.gateway_proc import GatewayProc
from tests.support.raw_http import connect, exchange, read_response
from tests.support.timing import wait_for
from tests.support.upstream import Upstream

BODY_TIMEOUT = 1.0
WEBHOOK_SECRET = "wc-secret-for-slow-body-tests-0123"


def slow_body_config(upstream: Upstream, transport: str = "httptools") -> dict[str, Any]:
    return {
        "listen": {"limits": {"body_timeout": f"{BODY_TIMEOUT}s", "max_header_bytes": "32KiB"}},
        "integrations": {"woo": {"scheme": "woocommerce", "secret": "${WC_SECRET}"}},
        "upstreams": {"app": {"urls": [upstream.url], "read_timeout": "30s", "transport": transport}},
        "routes": [
            {"name": "hook", "prefix": "/hook", "upstream": "app", "auth": "webhook", "integration": "woo"},
            {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
        ],
    }


@pytest.fixture
def slow_gateway(request, gateway_factory, upstream: Upstream) -> Iterator[tuple[GatewayProc, Upstream]]:
    transport = getattr(request, "param", "httptools")
    config = slow_body_config(upstream, transport)
    yield gateway_factory(config, env={"WC_SECRET": WEBHOOK_SECRET}), upstream


@pytest.mark.parametrize(
    ("path", "slow_gateway"),
    [("/sink", "httptools"), ("/sink", "aiohttp"), ("/hook/order", "httptools")],
    indirect=["slow_gateway"],
)
def test_stalled_body_is_408_and_releases_the_upstream(slow_gateway, path: str) -> None:
    gw, upstream = slow_gateway
    with connect(gw.port) as sock:
        started = time.monotonic()
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab".encode())
        if path == "/sink":
            # The proxy streams the upload: the upstream holds a connection while the body stalls.
            assert wait_for(lambda: upstream.open_connections() == 1, BODY_TIMEOUT / 2)
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
        assert status.startswith("HTTP/1.1 408"), status
        assert BODY_TIMEOUT * 0.8 <= elapsed < BODY_TIMEOUT + 1.5
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["type"] == "urn:shopino-gateway:request-timeout"
        # The rest of the body is never waited for: the connection is closed, not kept alive.
        assert sock.recv(1024) == b""
    # SECURITY: the stalled client no longer pins an upstream connection.
    assert wait_for(lambda: upstream.open_connections() == 0, 2.0)
    assert "request_failed" not in gw.logs()


def test_slow_but_steady_body_passes(slow_gateway) -> None:
    gw, _ = slow_gateway
    body = bytes(range(100))
    with connect(gw.port) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        for offset in range(0, 100, 20):  # a piece every 0.3 s: 1.5 s in all, past body_timeout
            time.sleep(0.3)
            sock.sendall(body[offset : offset + 20])
        assert time.monotonic() - started > BODY_TIMEOUT
        status, _, answer = read_response(sock)
    assert status.startswith("HTTP/1.1 200"), status
    assert json.loads(answer)["bytes"] == 100


def test_one_oversized_header_field_is_431_without_echo(slow_gateway) -> None:
    gw, upstream = slow_gateway
    value = "S3CRET" * 1500  # 9 KB: under max_header_bytes (32 KiB), over max_header_line (8 KiB)
    status, headers, body = exchange(
        gw.port, f"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {value}\r\n\r\n".encode()
    )
    assert status.startswith("HTTP/1.1 431"), status
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"] == "urn:shopino-gateway:headers-too-large"
    assert b"S3CRET" not in body and b"X-Big" not in body
    assert not upstream.requests
    # Just under the limit (name + value = 8 KiB) still passes.
    fits = "v" * (8 * 1024 - len("X-Big"))
    status, _, _ = exchange(gw.port, f"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {fits}\r\n\r\n".encode())
    assert status.startswith("HTTP/1.1 200"), status
