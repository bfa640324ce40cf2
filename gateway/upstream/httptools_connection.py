"""One keep-alive connection of the httptools upstream transport: an ``asyncio.Protocol`` whose
llhttp (httptools) callbacks fill in the response and wake the one coroutine waiting on it.

Rules that keep a reused connection in step with its responses (a desynchronised pool hands one
client's answer to another):
- a connection may return to the pool (``reusable``) only if its response was received and
  consumed to the end, the request body was sent whole, the server allows keep-alive and nothing
  failed;
- bytes arriving while idle, or after a complete response, close the connection;
- HEAD: llhttp cannot be told the request method, so the parser is stopped right after the head
  and the connection is never reused: an upstream that sends a body to HEAD anyway (aiohttp's
  ``StreamResponse.write`` does) may send it in a later segment, after the connection went back
  to the pool, where it would be read as the next request's response;
- the head is capped (``MAX_HEADERS`` headers, ``MAX_HEAD_BYTES`` bytes, 1xx heads included) as
  it is parsed; an answer whose first buffer holds a head too small to reach either cap skips
  the per-header count (``_SMALL_HEAD``);
- a reused connection that dies before any response byte (the server closed it between requests,
  a race every keep-alive client has) raises ``StaleConnection``, which the transport retries
  once on a fresh connection when it is safe (``gateway.upstream.transport_httptools``).

The pool of these connections: ``gateway.upstream.httptools_pool``.
"""

from __future__ import annotations

import asyncio
import http
from collections import deque
from collections.abc import AsyncIterable
from typing import Protocol

import httptools
from multidict import CIMultiDict, istr

from gateway.bounded_memo import remember
from gateway.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
READ_HIGH_WATER = 256 * 1024  # unread body above this pauses the socket: constant memory

_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
# istr: multidict looks these up without case-folding the name on every response.
_CONTENT_LENGTH = istr("Content-Length")
_TRANSFER_ENCODING = istr("Transfer-Encoding")
_LAST_CHUNK = b"0\r\n\r\n"
# A head within this many bytes cannot reach either cap: a header line takes 4 bytes at least
# ("X:" CRLF) after a status line of 12 ("HTTP/1.1 200"), and its count below stays under
# MAX_HEAD_BYTES. Such a head is parsed without counting (``UpstreamConnection.data_received``).
_SMALL_HEAD = 12 + 4 * MAX_HEADERS
# Header names (bytes as received) → their ``istr``: no decode per header, and a CIMultiDict takes
# an ``istr`` without case-folding it. Bounded: an upstream inventing names cannot grow it.
_NAMES: dict[bytes, istr] = {}
_NAMES_LIMIT = 1024
# Header values as received → their text (trailing whitespace dropped): most of an answer's values
# repeat answer after answer (Server, Content-Type, Connection, a fixed page's Content-Length), and
# a lookup costs less than the strip and decode (~300 instructions a header). Bounded, and short
# values only: an upstream inventing values cannot make it hold more than _VALUES_LIMIT values of
# _VALUE_MEMO_MAX bytes.
_VALUES: dict[bytes, str] = {}
_VALUES_LIMIT = 1024
_VALUE_MEMO_MAX = 64
_SET_COOKIE = b"set-cookie"
# The usual reason phrases, decoded once: the bytes of an answer's reason usually are one of these.
_REASONS = {status.phrase.encode(): status.phrase for status in http.HTTPStatus}


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp mid-buffer; the reason is on the connection."""


class StaleConnection(Exception):
    """A reused connection died before any response byte: the server closed it while idle."""


class ConnectionOwner(Protocol):
    """What a connection tells its pool (``httptools_pool.EndpointPool``) of its life."""

    live: set[UpstreamConnection]

    def forget(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection. The callbacks fill in the response and wake the one coroutine waiting on
    it (sending the body, awaiting the head or the next body chunk)."""

    __slots__ = (
        "_body_sent", "_buffered", "_chunks", "_complete", "_counting", "_deadline", "_error",
        "_got_bytes", "_head_bytes", "_head_done", "_head_request", "_header_bytes", "_header_count",
        "_keep_alive", "_loop", "_messages", "_parser", "_pool", "_read_timeout", "_reading_paused",
        "_reason", "_timer", "_waiter", "_writing_paused", "alive", "headers", "idle", "idle_until",
        "reason", "reused", "status", "transport",
    )  # fmt: skip
    transport: asyncio.Transport

    def __init__(self, pool: ConnectionOwner, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._pool, self._loop, self._read_timeout = pool, loop, read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self.alive = self.idle = self.reused = False
        self.idle_until = self._deadline = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = self._reading_paused = False
        self._chunks: deque[bytes] = deque()
        self._error: Exception | None = None
        self._buffered = self.status = 0
        self.reason = ""
        self._counting = True
        self._header_bytes = self._header_count = 0
        self.begin(head_request=False)

    def begin(self, *, head_request: bool) -> None:
        """Forget the previous exchange before a request is written. (What a reusable exchange
        leaves as it found it, ``reusable`` checks: no error, no body left. ``status``, ``reason``
        and the head caps' counts are set before they are read.)"""
        self.idle = False
        self._reason = b""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._head_done = self._complete = self._keep_alive = self._body_sent = self._got_bytes = False
        self._error = None
        self._head_bytes = self._messages = 0
        self._head_request = head_request
        if self._chunks:
            self._chunks.clear()
            self._buffered = 0

    def start(self, head: bytes, *, head_request: bool) -> asyncio.Future[None]:
        """``begin`` and write a bodiless request (the head is all there is); returns what to
        await before asking ``head_pending``. Nothing can have answered yet: no check first."""
        self.begin(head_request=head_request)
        if self.alive and not self.transport.is_closing():  # else connection_lost says why
            self.transport.write(head)  # one piece: writelines would copy it in a join first
        self._body_sent = True
        loop = self._loop  # _wait, inlined: once per request
        self._deadline = loop.time() + self._read_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._on_timer)
        waiter = self._waiter = loop.create_future()
        return waiter

    # ---------------------------------------------------------------- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # create_connection: a Transport
        self.alive = True
        self._pool.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        was_idle = self.idle
        self._pool.forget(self)
        if not self._complete and not was_idle:
            if self._head_done and exc is None and _close_delimited(self.headers):
                self._complete = True  # RFC 9112 §6.3 (8): the close is this body's only delimiter
            elif self._error is None:
                self._error = (
                    StaleConnection()
                    if self.reused and not self._got_bytes
                    else UpstreamUnavailable("The upstream connection broke mid-response")
                )
        self._cancel_timer()
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self.idle or self._complete:
            # SECURITY: bytes nobody asked for would be read as the next request's response
            # (response desync / smuggling): this connection is never used again.
            self._keep_alive = False
            self.transport.close()
            return
        self._got_bytes = True
        if not self._head_done:
            seen = self._head_bytes
            self._head_bytes = seen + len(data)
            if seen:  # the head goes on in this buffer
                if not self._counting:
                    self._count_from_here(seen)
            elif len(data) <= _SMALL_HEAD or (
                data.find(_HEAD_END, 0, _SMALL_HEAD) >= 0 and data[0] > 13  # no CR/LF before it
            ):
                # The first head ends within _SMALL_HEAD bytes: it cannot reach a cap, so its
                # headers are not counted (on_message_begin starts counting at a second head).
                self._counting = False
            else:
                self._counting, self._header_count, self._header_bytes = True, 0, 0
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._keep_alive = False  # 101: what follows is another protocol, never our next answer
        except httptools.HttpParserError:
            if self._error is None and not self._complete:
                self._error = UpstreamUnavailable("The upstream sent a malformed response")
        if self._error is None and not self._head_done and self._head_bytes > MAX_HEAD_BYTES:
            # llhttp buffers a header line until it ends: cap what an endless head can cost.
            self._error = UpstreamUnavailable("The upstream response head is too large")
        if self._error is not None:
            self.transport.close()
        waiter = self._waiter  # _wake, inlined: once per buffer
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _count_from_here(self, seen: int) -> None:
        """Count the head's headers from now on (a second head, or one spread over buffers).
        What came before fitted in _SMALL_HEAD bytes: its headers are in ``headers`` (a header
        llhttp still holds is counted when it comes), its bytes at most ``seen`` and that bound,
        plus 1 per header for the counting's separators (``on_header``)."""
        count = len(self.headers)
        self._counting, self._header_count = True, count
        self._header_bytes = min(seen, _SMALL_HEAD) + count

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # ---------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        if self._complete:
            # SECURITY: a second response to one request means the stream is out of step.
            self._keep_alive = False
            raise _StopParsing
        self._messages += 1
        if self._messages > 1:  # the previous message was an interim 1xx
            if not self._counting:  # its head was small; this one may not be
                self._count_from_here(self._head_bytes)
            self.headers, self._reason = CIMultiDict(), b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._counting:
            self._header_count += 1
            self._header_bytes += len(name) + len(value) + 4
            if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEAD_BYTES:
                self._error = UpstreamUnavailable("The upstream response head is too large")
                raise _StopParsing
        # Added one by one: measured cheaper than collecting the pairs and building the dict at
        # the end. The memos by subscript: cheaper than a .get call (no miss is the usual case).
        try:
            key = _NAMES[name]
        except KeyError:
            key = _name_key(name)
        try:
            text = _VALUES[value]
        except KeyError:
            text = _value_text(name, value)
        self.headers.add(key, text)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final response follows
        headers = self.headers
        lengths = headers.getall(_CONTENT_LENGTH, None)
        if lengths is not None and (
            len(lengths) > 1
            # isdecimal: 0-9 alone within latin-1 (isdigit would take '²'), as isascii+isdigit
            or not lengths[0].isdecimal()
            or _TRANSFER_ENCODING in headers
        ):
            # SECURITY: an ambiguous body length is how response smuggling desyncs a pool
            # (RFC 9112 §6.3); llhttp refuses these too, this holds if it ever grows lenient.
            self._error = UpstreamUnavailable("The upstream sent an ambiguous response length")
            raise _StopParsing
        self.status = status
        reason = self._reason
        self.reason = _REASONS.get(reason) or reason.decode("latin-1") or _PHRASES.get(status, "")
        self._keep_alive = self._parser.should_keep_alive()
        self._head_done = True
        if self._head_request:
            # HEAD: llhttp would wait for the body Content-Length announces. Stop it here and
            # close the connection after this answer. SECURITY: whether a body follows the head
            # cannot be known from the bytes received so far; a later segment would be read as
            # the next request's response on a reused connection (response desync).
            self._keep_alive = False
            self._complete = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        # The timer stays armed: the next exchange on this connection moves ``_deadline`` and
        # reuses it, so a kept-alive connection costs one timer per ``read_timeout``, not one per
        # request. Fired with nobody waiting, it just lapses; close() cancels it.
        if self._head_done:  # else an interim 1xx ended
            self._complete = True

    # ---------------------------------------------------------------- waiting
    def _wait(self) -> asyncio.Future[None]:
        """A future the next event resolves (awaited directly: no coroutine frame per wait);
        ``read_timeout`` of silence sets an ``UpstreamTimeout``."""
        loop = self._loop
        self._deadline = loop.time() + self._read_timeout
        if self._timer is None:  # one timer per connection, re-armed lazily: no handle per wait
            self._timer = loop.call_at(self._deadline, self._on_timer)
        waiter = self._waiter = loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # the waiter is answered: nobody waits on the upstream any more
            if not waiter.done():
                waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._complete:
            # Nobody waits on the upstream (a slow client is not the upstream's fault); a done
            # waiter was cancelled, and its exchange closes the connection.
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if self._error is None:
            self._error = UpstreamTimeout(
                "The upstream stalled mid-response"
                if self._head_done
                else "The upstream did not answer in time"
            )
        self.transport.close()
        self._wake()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- the exchange
    async def send_request(self, head: bytes, body: AsyncIterable[bytes], length: int | None) -> None:
        """Write the head and stream the body (``length`` None: chunked), honouring flow control."""
        pending: bytes | None = head  # rides in the same write as the first chunk
        sent = 0
        async for chunk in body:
            if self._head_done or self._error is not None:
                return  # answered early, or broken: stop uploading; the connection is not reused
            if not chunk:
                continue  # SECURITY: an empty chunk would frame as the last-chunk marker
            sent += len(chunk)
            if length is not None and sent > length:
                # SECURITY: bytes past the declared length would be parsed by the upstream as a
                # second request (request smuggling).
                raise BadRequest("The request body is longer than its Content-Length")
            pieces = [chunk] if length is not None else [b"%x\r\n" % len(chunk), chunk, _CRLF]
            if pending is not None:
                pieces.insert(0, pending)
                pending = None
            self._write(pieces)
            while self._writing_paused and not self._head_done and self._error is None:
                await self._wait()  # the socket buffer is full: never queue a 1 GB upload
        if self._head_done or self._error is not None:
            return
        if length is not None and sent != length:
            raise BadRequest("The request body is shorter than its Content-Length")
        tail = _LAST_CHUNK if length is None else b""
        self._write([tail] if pending is None else [pending, tail])
        self._body_sent = True

    def _write(self, pieces: list[bytes]) -> None:
        if self.alive and not self.transport.is_closing():  # else connection_lost says why
            self.transport.writelines(pieces)

    def head_pending(self) -> asyncio.Future[None] | None:
        """``None`` once the response head is here; else what to await before asking again.
        Raises what broke the exchange. (A loop over this in the caller: one coroutine frame
        fewer per request than an ``async def read_head``.)"""
        if self._head_done:
            return None
        if self._error is not None:
            raise self._error
        return self._wait()

    async def read_chunk(self) -> bytes:
        """The next piece of body; ``b""`` at its end."""
        while True:
            if self._chunks:
                return self._take_buffered()
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    def take_complete_body(self) -> bytes | None:
        """Everything of the body, if the message is complete already; else ``None``."""
        if not self._complete or self._error is not None:
            return None
        chunks = self._chunks
        if len(chunks) == 1 and not self._reading_paused:  # the usual small answer: one piece
            self._buffered = 0
            return chunks.popleft()
        return self._take_buffered()

    def _take_buffered(self) -> bytes:
        """All body bytes received so far (``b""`` if none); reading resumes if it was paused."""
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        return body

    def reusable(self) -> bool:
        return (
            self._complete
            and self._keep_alive
            and self._body_sent
            and self._error is None
            and not self._chunks  # the consumer read the whole body
            and self.alive
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self._cancel_timer()
        if self.alive:
            self.transport.close()


def _name_key(name: bytes) -> istr:
    """The ``istr`` of a header name llhttp passed. A name is a token (llhttp refuses any other
    byte, test_transport_httptools pins it), so ASCII: the default codec reads it as latin-1
    would."""
    return remember(_NAMES, _NAMES_LIMIT, name, istr(name.decode()))  # names are the upstream's


def _value_text(name: bytes, value: bytes) -> str:
    """The text of a header value llhttp passed. llhttp keeps trailing whitespace; RFC 9110 §5.5
    excludes it from the value. Values may hold any byte: latin-1 keeps each as is."""
    text = value.rstrip(b" \t").decode("latin-1")
    # SECURITY: a cookie is a session secret: it lives as long as its answer, never in a memo
    # that outlives it (a memory dump would find the last 1,024 of them).
    if len(value) <= _VALUE_MEMO_MAX and name.lower() != _SET_COOKIE:
        remember(_VALUES, _VALUES_LIMIT, value, text)  # the upstream's values
    return text


def _close_delimited(headers: CIMultiDict[str]) -> bool:
    """Whether the body ends only when the connection does (no length, not chunked): asked only
    when the connection is lost, so the head's parse does not work it out for every answer."""
    coding = headers.get(_TRANSFER_ENCODING)
    chunked = coding is not None and coding.rstrip(" \t").lower().endswith("chunked")
    return _CONTENT_LENGTH not in headers and not chunked
