"""The request head the httptools transport writes: framing is the gateway's alone, and no CR, LF
or NUL reaches the wire (the transport's round trips: test_transport_httptools.py)."""

from __future__ import annotations

import pytest

from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.request_head import request_head


def test_forwarded_framing_is_replaced_by_the_gateways_own() -> None:
    # SECURITY: request smuggling — a forwarded Transfer-Encoding beside our Content-Length.
    headers = [("X-A", "1"), ("Transfer-Encoding", "chunked"), ("Content-Length", "5")]
    head, length = request_head("POST", "/p", UpstreamHeaders.of(headers), "up", has_body=True)
    assert (head, length) == (b"POST /p HTTP/1.1\r\nX-A: 1\r\nHost: up\r\nContent-Length: 5\r\n\r\n", 5)
    assert ("Transfer-Encoding", "chunked") in headers  # the caller's headers are left alone


def test_a_body_without_a_usable_length_is_sent_chunked() -> None:
    for declared in ([], ["5", "5"], ["+5"]):
        headers = [("Content-Length", value) for value in declared]
        head, length = request_head("PUT", "/", UpstreamHeaders.of(headers), "up", has_body=True)
        assert (head, length) == (b"PUT / HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n", None)


def test_a_bodyless_post_declares_an_empty_body_and_a_get_does_not() -> None:
    assert request_head("POST", "/", UpstreamHeaders.of([]), "up", has_body=False) == (
        b"POST / HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n",
        None,
    )
    assert request_head("GET", "/", UpstreamHeaders.of([("Content-Length", "3")]), "up", has_body=False) == (
        b"GET / HTTP/1.1\r\nHost: up\r\n\r\n",
        None,
    )


def test_crlf_in_a_header_value_or_the_target_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        request_head("GET", "/", UpstreamHeaders.of([("X-Evil", "a\r\nX-Injected: 1")]), "up", has_body=False)
    with pytest.raises(ValueError, match="CR, LF"):
        request_head(
            "GET", "/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b", UpstreamHeaders.of([]), "up", has_body=False
        )
    with pytest.raises(ValueError, match="stray space"):
        request_head("GET", "/a HTTP/1.0", UpstreamHeaders.of([]), "up", has_body=False)


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\rb"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\x00b"}, {"X-E\nvil": "a"}, {"X-Evil": "\r\n"}],
)
def test_a_lone_cr_lf_or_nul_anywhere_in_the_head_is_refused(headers: dict[str, str]) -> None:
    # SECURITY: header injection (CWE-113) — a bare CR or LF is a line break to lenient servers.
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        request_head("GET", "/", UpstreamHeaders.of(headers.items()), "up", has_body=False)


def test_surrogate_escaped_bytes_are_restored() -> None:
    # aiohttp decodes incoming heads as UTF-8 with surrogateescape; the upstream gets the bytes.
    value = b"caf\xe9".decode("utf-8", "surrogateescape")
    head, _ = request_head("GET", "/", UpstreamHeaders.of([("X-Name", value)]), "up", has_body=False)
    assert b"X-Name: caf\xe9\r\n" in head


def test_host_is_written_where_its_place_is() -> None:
    for framing in ([], [("Content-Length", "2")]):
        headers = UpstreamHeaders.of([("X-A", "1"), ("X-B", "2"), *framing], host_at=1)
        head, _ = request_head("GET", "/", headers, "erp.internal:9000", has_body=False)
        assert head == b"GET / HTTP/1.1\r\nX-A: 1\r\nHost: erp.internal:9000\r\nX-B: 2\r\n\r\n"


@pytest.mark.parametrize(
    "name", ["content-length", "CONTENT-LENGTH", "Transfer-encoding", "TRANSFER-ENCODING"]
)
def test_framing_headers_in_any_letter_case_are_the_gateways_own(name: str) -> None:
    # SECURITY: request smuggling — a second framing header in another spelling never goes out.
    headers = UpstreamHeaders.of([(name, "chunked"), ("X-A", "1")])
    head, length = request_head("POST", "/", headers, "up", has_body=True)
    assert (head, length) == (
        b"POST / HTTP/1.1\r\nX-A: 1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n",
        None,
    )


def test_crlf_in_the_host_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        request_head("GET", "/", UpstreamHeaders.of([]), "up\r\nX-Injected: 1", has_body=False)
