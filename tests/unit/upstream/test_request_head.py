"""The request head the httptools transport writes: framing is the gateway's alone, and no CR, LF
or NUL reaches the wire (the transport's round trips: test_transport_httptools.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.upstream.request_head import request_head


def test_forwarded_framing_is_replaced_by_the_gateways_own() -> None:
    # SECURITY: request smuggling — a forwarded Transfer-Encoding beside our Content-Length.
    headers = CIMultiDict([("X-A", "1"), ("Transfer-Encoding", "chunked"), ("Content-Length", "5")])
    head, length = request_head("POST", "/p", headers, has_body=True)
    assert (head, length) == (b"POST /p HTTP/1.1\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n", 5)
    assert "Transfer-Encoding" in headers  # the caller's headers are left alone


def test_a_body_without_a_usable_length_is_sent_chunked() -> None:
    for declared in ([], ["5", "5"], ["+5"]):
        headers = CIMultiDict([("Content-Length", value) for value in declared])
        head, length = request_head("PUT", "/", headers, has_body=True)
        assert (head, length) == (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None)


def test_a_bodyless_post_declares_an_empty_body_and_a_get_does_not() -> None:
    assert request_head("POST", "/", CIMultiDict(), has_body=False) == (
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        None,
    )
    assert request_head("GET", "/", CIMultiDict([("Content-Length", "3")]), has_body=False) == (
        b"GET / HTTP/1.1\r\n\r\n",
        None,
    )


def test_crlf_in_a_header_value_or_the_target_is_refused() -> None:
    with pytest.raises(ValueError, match="CR, LF"):
        request_head("GET", "/", CIMultiDict({"X-Evil": "a\r\nX-Injected: 1"}), has_body=False)
    with pytest.raises(ValueError, match="CR, LF"):
        request_head("GET", "/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /b", CIMultiDict(), has_body=False)
    with pytest.raises(ValueError, match="stray space"):
        request_head("GET", "/a HTTP/1.0", CIMultiDict(), has_body=False)


@pytest.mark.parametrize(
    "headers",
    [{"X-Evil": "a\rb"}, {"X-Evil": "a\nb"}, {"X-Evil": "a\x00b"}, {"X-E\nvil": "a"}, {"X-Evil": "\r\n"}],
)
def test_a_lone_cr_lf_or_nul_anywhere_in_the_head_is_refused(headers: dict[str, str]) -> None:
    # SECURITY: header injection (CWE-113) — a bare CR or LF is a line break to lenient servers.
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        request_head("GET", "/", CIMultiDict(headers), has_body=False)


def test_surrogate_escaped_bytes_are_restored() -> None:
    # aiohttp decodes incoming heads as UTF-8 with surrogateescape; the upstream gets the bytes.
    value = b"caf\xe9".decode("utf-8", "surrogateescape")
    head, _ = request_head("GET", "/", CIMultiDict({"X-Name": value}), has_body=False)
    assert b"X-Name: caf\xe9\r\n" in head
