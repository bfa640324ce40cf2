"""The lean listener's response head (gateway.http1.downstream.LeanDownstream._head): framing is
the writer's, order is kept, and a line break inside a header is refused (response splitting).
The protocol and request stand-ins carry only what the head reads; no socket is involved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import HttpVersion11
from multidict import CIMultiDict

from gateway.http1.downstream import LeanDownstream


class _KeepAliveProtocol:
    def may_keep_alive(self, request: Any) -> bool:
        return True


@dataclass
class _Request:
    method: str = "GET"
    version: Any = HttpVersion11


def _head(headers: Any, content_length: int | None = 3, method: str = "GET") -> tuple[bytes, LeanDownstream]:
    down = LeanDownstream(_KeepAliveProtocol(), _Request(method))  # type: ignore[arg-type]
    return down._head(200, None, headers, content_length), down


def test_headers_keep_their_order_and_framing_is_the_writers() -> None:
    head, down = _head(
        {"date": "Mon, 07 Dec 2026 10:00:00 GMT", "X-B": "2", "content-length": "999", "X-A": "1"}
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\ndate: Mon, 07 Dec 2026 10:00:00 GMT\r\nX-B: 2\r\nX-A: 1\r\n"
        b"Content-Length: 3\r\n\r\n"
    )
    assert down.keep_alive


def test_a_connection_close_header_ends_keep_alive_in_any_letter_case() -> None:
    head, down = _head(CIMultiDict([("connection", "Close"), ("Date", "x")]), content_length=None)
    assert head == b"HTTP/1.1 200 OK\r\nconnection: Close\r\nDate: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert not down.keep_alive


@pytest.mark.parametrize(
    "headers", [{"X-A": "1\r\nSet-Cookie: s=1"}, {"X-A": "a\nb"}, {"X-A": "a\rb"}, {"X\r\nY": "1"}]
)
def test_a_line_break_in_a_header_is_refused(headers: dict[str, str]) -> None:
    # SECURITY: response splitting — a CR or LF would start a forged header or body.
    with pytest.raises(ValueError, match="line break"):
        _head(headers)
