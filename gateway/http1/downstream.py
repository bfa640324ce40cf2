"""Writing one answer to a lean connection: head and a whole small body in one write, streamed
bodies with backpressure (the writer waits while the transport's buffer is over its high
mark), and the framing rules aiohttp's ``StreamResponse`` applies (Content-Length when known,
else chunked on HTTP/1.1 or close-delimited on HTTP/1.0; no body for HEAD, 1xx, 204, 304).
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.exchange import Headers

if TYPE_CHECKING:
    from gateway.http1.request import LeanConnection, LeanRequest

REASONS = {status.value: status.phrase for status in HTTPStatus}
# The usual status lines, made once: no number formatting per answer (anything else is formatted).
_STATUS_LINES_11 = {status: f"HTTP/1.1 {status} {phrase}" for status, phrase in REASONS.items()}
_MULTIDICTS = (CIMultiDict, CIMultiDictProxy)  # a tuple: isinstance with a union rebuilds it
_EMPTY_BODY_STATUS = frozenset((204, 304))
_FRAMING = frozenset(("content-length", "transfer-encoding"))
# istr keys: a multidict looks them up without lower-casing the name on every call
_CONTENT_LENGTH, _TRANSFER_ENCODING = istr("Content-Length"), istr("Transfer-Encoding")
_DATE, _CONNECTION = istr("Date"), istr("Connection")


class ResponseStarted(ConnectionResetError):
    """A second head was asked for after the first went out: only a cut connection is left."""


class LeanDownstream:
    """One request's answer. ``status`` and ``body_length`` are what the access line records."""

    __slots__ = ("_chunked", "_empty", "_protocol", "_request", "body_length", "keep_alive", "status")

    def __init__(self, protocol: LeanConnection, request: LeanRequest) -> None:
        self._protocol = protocol
        self._request = request
        self.status = 0  # 0: nothing sent yet
        self.body_length = 0
        self.keep_alive = True
        self._chunked = False
        self._empty = False

    @property
    def started(self) -> bool:
        return self.status != 0

    @property
    def protocol(self) -> LeanConnection:
        return self._protocol

    @property
    def request(self) -> LeanRequest:
        return self._request

    def started_as(self, status: int, keep_alive: bool) -> None:
        """A whole answer with a body was written by someone else (``gateway.http1.problem``)."""
        if self.status:
            raise ResponseStarted("response already started")
        self.status = status
        self.keep_alive = keep_alive

    def _head(
        self,
        status: int,
        reason: str | None,
        headers: Headers,
        content_length: int | None,
        *,
        force_close: bool = False,
    ) -> bytes:
        if self.status:
            raise ResponseStarted("response already started")
        request = self._request
        version = request.version
        empty = status in _EMPTY_BODY_STATUS or status < 200 or request.method == "HEAD"
        keep_alive = self._protocol.may_keep_alive(request) and not force_close
        if not isinstance(headers, _MULTIDICTS):
            headers = CIMultiDict(headers)  # a plain mapping: its names become case-insensitive
        # Case-insensitive lookups in C, and the lines joined by one map(): no Python-level
        # lower() and formatting per header (the upstream's answer passes here on every request).
        pairs: Iterable[tuple[str, str]] = headers.items()
        if _CONTENT_LENGTH in headers or _TRANSFER_ENCODING in headers:
            # framing is this writer's, never a stage's or an upstream's
            pairs = [(name, value) for name, value in pairs if name.lower() not in _FRAMING]
        has_date = _DATE in headers
        connection = headers.getall(_CONNECTION, ())
        if connection:
            keep_alive = keep_alive and not any("close" in value.lower() for value in connection)
        first = _STATUS_LINES_11.get(status) if version is HttpVersion11 else None
        if first is None or (reason is not None and reason != REASONS[status]):
            first = f"HTTP/{version.major}.{version.minor} {status} {reason or REASONS.get(status, '')}"
        lines = [first]
        lines += map(": ".join, pairs)
        if content_length is not None:
            if status not in _EMPTY_BODY_STATUS:
                lines.append(f"Content-Length: {content_length}")
        elif not empty:
            if version >= (1, 1):
                lines.append("Transfer-Encoding: chunked")
                self._chunked = True
            else:
                keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if not has_date:
            lines.append(f"Date: {rfc822_formatted_time()}")
        if not connection:
            if not keep_alive:
                lines.append("Connection: close")
            elif version < (1, 1):
                lines.append("Connection: keep-alive")
        # SECURITY: response splitting — a CR or LF inside a name or value would start a new
        # header (or body). The lines are checked before they are joined by CRLF: two memchr
        # scans of one string, cheaper than counting the line breaks of the joined head.
        probe = "".join(lines)
        if "\n" in probe or "\r" in probe:
            raise ValueError("a response header contains a line break")
        lines += ("", "")  # the head's closing CRLF CRLF comes out of the one join
        text = "\r\n".join(lines)
        self.status = status
        self.keep_alive = keep_alive
        self._empty = empty
        return text.encode("utf-8", "surrogateescape")

    async def send_whole(
        self,
        status: int,
        reason: str | None,
        headers: Headers,
        body: bytes,
        *,
        force_close: bool = False,
    ) -> None:
        """Head and body in one write (one system call for a small answer)."""
        head = self._head(status, reason, headers, len(body), force_close=force_close)
        if self._empty or not body:
            self._protocol.write(head)
        else:
            self.body_length = len(body)
            self._protocol.write(head + body)
        if self._protocol.writing_paused:  # nearly never for a small answer: no coroutine for nothing
            await self._protocol.drain()

    async def start(
        self, status: int, reason: str | None, headers: Headers, content_length: int | None
    ) -> None:
        self._protocol.write(self._head(status, reason, headers, content_length))

    async def write(self, chunk: bytes) -> None:
        if self._empty or not chunk:
            return
        self.body_length += len(chunk)
        if self._chunked:
            self._protocol.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self._protocol.write(chunk)
        await self._protocol.drain()

    async def end(self) -> None:
        if self._chunked:
            self._protocol.write(b"0\r\n\r\n")
        await self._protocol.drain()

    async def send_response(self, response: web.StreamResponse) -> None:
        """An early answer a stage or a gateway endpoint built as an aiohttp ``Response``."""
        body = getattr(response, "body", None)
        if body is not None and not isinstance(body, bytes | bytearray):
            raise TypeError("only bytes bodies are served on the lean listener")
        await self.send_whole(
            response.status,
            response.reason,
            response.headers,
            bytes(body or b""),
            force_close=response.keep_alive is False,
        )

    def abort(self) -> None:
        self._protocol.abort()
