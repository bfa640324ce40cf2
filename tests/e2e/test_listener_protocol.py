"""The public listener's HTTP/1.1 behaviour on raw sockets, the same on both servers
(``listen.server: lean`` and ``aiohttp``): keep-alive, pipelining strictly in order, the
last-resort head limits, refusals of a pipelined request, HTTP/1.0 framing, request bodies
streamed with backpressure."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import standard_config
from tests.support.gateway_proc import GatewayProc
from tests.support.raw_http import ResponseReader, connect, read_response
from tests.support.upstream import Upstream


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def listener(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_upstream: Upstream
) -> Iterator[GatewayProc]:
    config = standard_config(shared_upstream.url, server=request.param)
    config["routes"].append({"name": "big", "prefix": "/sink-big", "upstream": "app", "auth": "none"})
    proc = GatewayProc(tmp_path_factory.mktemp("listener"), config).start()
    yield proc
    proc.stop()


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n".encode()


def test_pipelined_requests_are_answered_in_order(listener: GatewayProc) -> None:
    body = b'{"n": 1}'
    post = b"POST /two HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    with connect(listener.port) as sock:
        sock.sendall(_get("/one") + post + _get("/three?x=1"))  # one write: all three queued
        reader = ResponseReader(sock)
        answers = [reader.read() for _ in range(3)]
    paths = [json.loads(body)["path_qs"] for _, _, body in answers]
    assert [status for status, _, _ in answers] == ["HTTP/1.1 200 OK"] * 3
    assert paths == ["/one", "/two", "/three?x=1"]
    assert json.loads(answers[1][2])["body_length"] == len(body)


def test_keep_alive_carries_sequential_requests(listener: GatewayProc) -> None:
    with connect(listener.port) as sock:
        for index in range(5):
            sock.sendall(_get(f"/seq/{index}"))
            status, headers, body = read_response(sock)
            assert status == "HTTP/1.1 200 OK"
            assert headers.get("connection") != "close"
            assert json.loads(body)["path_qs"] == f"/seq/{index}"


def test_pipelined_garbage_after_a_good_request_is_refused_in_turn(listener: GatewayProc) -> None:
    """The lean listener answers the good request first, then refuses the bad one and closes;
    aiohttp's parser refuses the whole read (both are safe: nothing bad is forwarded)."""
    with connect(listener.port) as sock:
        sock.sendall(_get("/first") + b"GET /second HTTP/1.1\r\nHost: gw\r\nBad Header: x\r\n\r\n")
        reader = ResponseReader(sock)
        if listener.config["listen"]["server"] == "lean":
            assert reader.read()[0] == "HTTP/1.1 200 OK"
        status, headers, body = reader.read()
        assert reader.read()[0] == ""  # the connection closes after the refusal
    assert status.startswith("HTTP/1.1 400")
    assert headers["content-type"] == "application/problem+json"
    assert headers["server"] == "shopino-gateway"
    assert b"Bad Header" not in body


def test_a_head_over_the_parser_limits_is_431_without_echo(listener: GatewayProc) -> None:
    # Far past max_headers (40) + the parser's margin: refused before the pipeline, no echo.
    secret = "s3cr3t-token-value"
    fields = "".join(f"X-Field-{i}: {secret}\r\n" for i in range(80))
    with connect(listener.port) as sock:
        sock.sendall(_get("/many", fields))
        status, headers, body = read_response(sock)
    assert status.startswith("HTTP/1.1 431")
    assert headers["content-type"] == "application/problem+json"
    assert secret.encode() not in body


def test_http10_request_is_answered_and_closed(listener: GatewayProc) -> None:
    with connect(listener.port) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\nHost: gw\r\n\r\n")
        status, _, body = read_response(sock)
        rest = sock.recv(1)
    assert status == "HTTP/1.0 200 OK"
    assert json.loads(body)["path_qs"] == "/old"
    assert rest == b""


def test_http11_without_host_is_400(listener: GatewayProc) -> None:
    with connect(listener.port) as sock:
        sock.sendall(b"GET /nohost HTTP/1.1\r\n\r\n")
        status, headers, _ = read_response(sock)
    assert status.startswith("HTTP/1.1 400")
    assert headers["server"] == "shopino-gateway"


def test_a_large_upload_streams_through_a_slow_reader(listener: GatewayProc) -> None:
    """The client's socket blocks while the gateway holds back (backpressure), and every byte
    arrives: 8 MiB sent in 64 KiB writes, counted at the upstream."""
    chunk = b"x" * 65536
    count = 128
    head = b"POST /sink-big HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * count)
    with connect(listener.port, timeout=30) as sock:
        sock.sendall(head)
        for _ in range(count):
            sock.sendall(chunk)
        status, _, body = read_response(sock)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body)["body_length"] == len(chunk) * count


def test_a_client_that_does_not_read_is_not_buffered_without_bound(listener: GatewayProc) -> None:
    """A pipelining client that never reads its answers: the gateway stops reading too (its
    socket buffers fill), instead of queueing every request in memory."""
    request = _get("/flood")
    sent = 0
    with connect(listener.port, timeout=2) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(0.5)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                sent += sock.send(request * 64)
        except (TimeoutError, BlockingIOError):
            pass
    # Had the gateway kept reading, all 10 s of sending would have been swallowed.
    assert sent < 64 * 1024 * 1024


def test_a_connection_closing_after_an_early_answer_serves_nothing_more(
    listener: GatewayProc, shared_upstream: Upstream
) -> None:
    """After an early answer that says ``Connection: close`` (413 on the declared length, lean
    listener) the rest of the body is read and dropped; a head following the body's end in the
    same read must not start another request on the closing connection. (aiohttp's listener
    keeps such a connection alive, and the next request is then an honest pipelined one.)"""
    body = b"a" * 2000
    head = b"POST /sink HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
    with connect(listener.port) as sock:
        sock.sendall(head)
        status, headers, _ = read_response(sock)
        assert status.startswith("HTTP/1.1 413")
        closing = headers.get("connection") == "close"
        try:
            sock.sendall(body + _get("/after-the-close"))  # the body's end and a head in one read
            # Wait for the gateway's last word, not a fixed time: the honest pipelined request's
            # answer (the upstream served it before), or the close (nothing more was served).
            if closing:
                while sock.recv(65536):
                    pass
            else:
                read_response(sock)
        except OSError:
            pass  # closed already: nothing more can be served either
    served = any("after-the-close" in str(r) for r in shared_upstream.requests)
    assert served is not closing
