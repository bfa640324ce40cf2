"""Attacks on the public listener from a raw socket, on both servers (``listen.server: lean`` and
``aiohttp``): what the lean listener must keep of the guarded aiohttp listener's hardening."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import standard_config
from tests.support.gateway_proc import GatewayProc
from tests.support.raw_http import connect, read_head, read_response
from tests.support.upstream import Upstream

HEADER_TIMEOUT = 5.0  # long enough that an answer well before it is the parser limit's, not the deadline's
SECRET = b"s3cr3t-header-value"
WEBSOCKET = (
    b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def listener(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_upstream: Upstream
) -> Iterator[GatewayProc]:
    config = standard_config(shared_upstream.url, server=request.param)
    config["listen"]["limits"]["header_timeout"] = f"{HEADER_TIMEOUT:g}s"
    proc = GatewayProc(tmp_path_factory.mktemp("attacks"), config).start()
    yield proc
    proc.stop()


def _send_unterminated(sock: socket.socket, start: bytes, size: int) -> None:
    """``start`` then ``size`` more bytes of its last line, which never ends; the gateway may
    refuse and close before all of it is sent."""
    sock.sendall(start)
    block = SECRET * 4096
    try:
        for _ in range(size // len(block)):
            sock.sendall(block)
    except OSError:
        pass  # refused mid-way: the answer is what counts


HEAD = b"GET / HTTP/1.1\r\nHost: gw\r\n"
CHUNKED = b"POST /p HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"


# A trailer line is worse than a head line on the lean listener: body bytes keep arriving, so
# the body deadline keeps moving and no deadline ever ends it (memory grows for as long as the
# client sends).
@pytest.mark.parametrize(
    "start",
    [HEAD + b"X-Big: ", HEAD + b"X-", CHUNKED + b"X-Trailer: "],
    ids=["value", "name", "trailer"],
)
def test_a_header_line_over_the_limit_is_refused_before_it_ends(listener: GatewayProc, start: bytes) -> None:
    """SECURITY: memory exhaustion — a header line that never ends must be refused once it is
    past the parser's limit, not buffered until the head deadline (llhttp hands a field over
    only when its line is complete: the limit has to be applied while it grows)."""
    started = time.monotonic()
    with connect(listener.port, timeout=HEADER_TIMEOUT + 2) as sock:
        _send_unterminated(sock, start, 1024 * 1024)
        try:
            status, headers, body = read_response(sock)
        except ConnectionResetError:
            status, headers, body = "", {}, b""
    elapsed = time.monotonic() - started
    assert status.startswith("HTTP/1.1 431"), f"no 431 (got {status!r} after {elapsed:.1f}s)"
    assert elapsed < HEADER_TIMEOUT / 2, f"431 only after {elapsed:.1f}s: the line was buffered"
    assert headers["content-type"] == "application/problem+json"
    assert headers["server"] == "shopino-gateway"
    assert SECRET not in body


def test_a_websocket_handshake_answer_is_the_gateways(listener: GatewayProc) -> None:
    """App. C "Every answer is the gateway's": the 101 of a WebSocket upgrade is a proxied answer
    too; it must not name aiohttp's or Python's version (fingerprinting) and carries nosniff."""
    with connect(listener.port) as sock:
        sock.sendall(WEBSOCKET)
        status, headers, _ = read_head(sock)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers.get("server", "shopino-gateway") == "shopino-gateway"
    assert headers.get("x-content-type-options") == "nosniff"


def test_a_websocket_handshake_over_http_1_0_is_refused(listener: GatewayProc) -> None:
    """RFC 6455 §4.1: the opening handshake is HTTP/1.1; a 1.0 upgrade is a malformed request,
    refused before any upstream is contacted."""
    with connect(listener.port) as sock:
        sock.sendall(WEBSOCKET.replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, headers, _ = read_head(sock)
    assert status.startswith("HTTP/1.1 400") or status.startswith("HTTP/1.0 400"), status
    assert headers.get("server") == "shopino-gateway"
