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

from gateway.bounded_memo import remember
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


# A head's shape by its header names in order (``LeanDownstream._head``): the pieces around the
# values ([status line slot, "\r\nName: ", value slot, ..., "\r\n"]) and whether a Date is
# among them; None for names with a framing or Connection line. The names come from upstream
# answers and stages, so the cache is bounded (cleared when full) and a long set of names is
# never kept: SECURITY: memory exhaustion.
_Shape = tuple[list[str], bool]
_SHAPES: dict[tuple[str, ...], _Shape | None] = {}
_SHAPES_LIMIT = 256
_SHAPE_NAMES_MAX = 2048  # characters of names a cached shape may hold


def _shape_for(names: tuple[str, ...]) -> _Shape | None:
    # The same case-insensitive lookups the general path makes on the answer's headers.
    by_name = CIMultiDict([(name, "") for name in names])
    # SECURITY: response splitting — a CR or LF in a name (never cached, refused every time).
    joined = "".join(names)
    if "\n" in joined or "\r" in joined:
        raise ValueError("a response header contains a line break")
    shape: _Shape | None = None
    if not (_CONTENT_LENGTH in by_name or _TRANSFER_ENCODING in by_name or _CONNECTION in by_name):
        pieces = [""]  # "": a slot, filled per answer
        for name in names:
            pieces += ("\r\n" + name + ": ", "")
        pieces.append("\r\n")
        shape = (pieces, _DATE in by_name)
    if len(joined) <= _SHAPE_NAMES_MAX:
        remember(_SHAPES, _SHAPES_LIMIT, names, shape)
    return shape


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
        if not isinstance(headers, _MULTIDICTS):
            headers = CIMultiDict(headers)  # a plain mapping: its names become case-insensitive
        # The names in order pick the head's shape (made once per set of names): the lines with
        # a slot for each value, and whether a Date is among them; the values go in by one slice
        # assignment and the head is one join (no string made per header, no lookup by name).
        names = tuple(headers.keys())
        # A name more than once (keys() gives each once): the general path, in wire order.
        if len(names) == len(headers):
            try:
                shape = _SHAPES[names]
            except KeyError:
                shape = _shape_for(names)
            if shape is not None:  # else a framing or Connection line: the general path decides
                return self._shaped_head(
                    status, reason, shape, tuple(headers.values()), content_length, force_close
                )
        request = self._request
        empty = status in _EMPTY_BODY_STATUS or status < 200 or request.method == "HEAD"
        keep_alive = self._protocol.may_keep_alive(request) and not force_close
        return self._head_general(status, reason, headers, content_length, keep_alive, empty)

    def _shaped_head(
        self,
        status: int,
        reason: str | None,
        shape: _Shape,
        values: tuple[str, ...],
        content_length: int | None,
        force_close: bool,
    ) -> bytes:
        """The head of ``shape``'s names with ``values`` in their slots (one value per name)."""
        request = self._request
        version = request.version
        empty = status in _EMPTY_BODY_STATUS or status < 200 or request.method == "HEAD"
        keep_alive = self._protocol.may_keep_alive(request) and not force_close
        pieces, has_date = shape
        # SECURITY: response splitting — a CR or LF inside a value would start a new header (or
        # body); the names were checked when their shape was made. Two memchr scans.
        probe = "".join(values)
        if "\n" in probe or "\r" in probe:
            raise ValueError("a response header contains a line break")
        first = _STATUS_LINES_11.get(status) if version is HttpVersion11 else None
        if first is None or (reason is not None and reason != REASONS[status]):
            first = f"HTTP/{version.major}.{version.minor} {status} {reason or REASONS.get(status, '')}"
            if "\n" in first or "\r" in first:
                raise ValueError("a response header contains a line break")
        parts = pieces.copy()
        parts[0] = first
        parts[2::2] = values
        if has_date and keep_alive and content_length is not None and status not in _EMPTY_BODY_STATUS:
            # _closing_lines' answer for a kept-alive answer of known length carrying its Date
            # (nearly every proxied one), without the call: its length line, and Connection
            # only on HTTP/1.0; then the blank line.
            if version < (1, 1):
                parts.append(f"Content-Length: {content_length}\r\nConnection: keep-alive\r\n\r\n")
            else:
                parts.append(f"Content-Length: {content_length}\r\n\r\n")
        else:
            tail, keep_alive = self._closing_lines(status, content_length, empty, has_date, keep_alive, False)
            parts += tail
            parts.append("\r\n")
        self.status = status
        self.keep_alive = keep_alive
        self._empty = empty
        return "".join(parts).encode("utf-8", "surrogateescape")

    def _closing_lines(
        self,
        status: int,
        content_length: int | None,
        empty: bool,
        has_date: bool,
        keep_alive: bool,
        connection_given: bool,
    ) -> tuple[list[str], bool]:
        """The head's last lines, each ending in CRLF, that this writer owns whatever path built
        the rest: the body's framing, a Date when the headers carry none, and a Connection line
        when they carry none; with ``keep_alive`` as the framing leaves it."""
        version = self._request.version
        tail: list[str] = []
        if content_length is not None:
            if status not in _EMPTY_BODY_STATUS:
                tail.append(f"Content-Length: {content_length}\r\n")
        elif not empty:
            if version >= (1, 1):
                tail.append("Transfer-Encoding: chunked\r\n")
                self._chunked = True
            else:
                keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if not has_date:
            tail.append(f"Date: {rfc822_formatted_time()}\r\n")
        if not connection_given:
            if not keep_alive:
                tail.append("Connection: close\r\n")
            elif version < (1, 1):
                tail.append("Connection: keep-alive\r\n")
        return tail, keep_alive

    def _head_general(
        self,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str] | CIMultiDictProxy[str],
        content_length: int | None,
        keep_alive: bool,
        empty: bool,
    ) -> bytes:
        """A head with a name more than once, or with framing (dropped: it is this writer's)
        or Connection among its headers."""
        version = self._request.version
        # Case-insensitive lookups in C, and the lines joined by one map(): no Python-level
        # lower() and formatting per header.
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
        # SECURITY: response splitting — a CR or LF inside a name or value would start a new
        # header (or body). The lines are checked before they are joined by CRLF: two memchr
        # scans of one string, cheaper than counting the line breaks of the joined head.
        probe = "".join(lines)
        if "\n" in probe or "\r" in probe:
            raise ValueError("a response header contains a line break")
        tail, keep_alive = self._closing_lines(
            status, content_length, empty, has_date, keep_alive, bool(connection)
        )
        lines.append("")  # the CRLF after the last header line comes out of the one join
        text = "\r\n".join(lines) + "".join(tail) + "\r\n"
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
        if self.write_whole(status, reason, headers, body, force_close=force_close):
            await self._protocol.drain()

    def write_whole(
        self,
        status: int,
        reason: str | None,
        headers: Headers,
        body: bytes,
        *,
        force_close: bool = False,
    ) -> bool:
        """``send_whole`` without its coroutine: head and body in one write; True when the
        transport's buffer is over its high mark, and the caller awaits ``drain()`` before
        writing to this connection again."""
        return self._write(self._head(status, reason, headers, len(body), force_close=force_close), body)

    def write_whole_pairs(
        self, status: int, reason: str | None, names: tuple[str, ...], values: tuple[str, ...], body: bytes
    ) -> bool:
        """``write_whole`` of the headers ``names[i]: values[i]`` in that order (a name may come
        more than once): a proxied answer's, whose merge with the gateway's own headers the
        proxy planned once per set of names (``gateway.proxy``), so no multidict is built."""
        if self.status:
            raise ResponseStarted("response already started")
        try:
            shape = _SHAPES[names]
        except KeyError:
            shape = _shape_for(names)
        if shape is None:  # a framing or Connection line among them: the general path decides
            return self.write_whole(status, reason, CIMultiDict(zip(names, values, strict=True)), body)
        return self._write(self._shaped_head(status, reason, shape, values, len(body), False), body)

    def _write(self, head: bytes, body: bytes) -> bool:
        """A whole answer's head and body in one write; True when the transport's buffer is over
        its high mark (nearly never for a small answer)."""
        if self._empty or not body:
            self._protocol.write(head)
        else:
            self.body_length = len(body)
            self._protocol.write(head + body)
        return self._protocol.writing_paused

    async def drain(self) -> None:
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
