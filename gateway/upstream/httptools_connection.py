"""One keep-alive connection of the httptools upstream transport: an ``asyncio.Protocol`` whose
llhttp (httptools) callbacks fill in the response and wake the one coroutine waiting on it.

Rules that keep a reused connection in step with its responses (a desynchronised pool hands one
client's answer to another):
- a connection may return to the pool (``reusable``) only if its response was received and
  consumed to the end, the request body was sent whole, the server allows keep-alive and nothing
  failed;
- bytes arriving while idle, or after a complete response, close the connection;
- HEAD: llhttp cannot be told the request method, so the parser is stopped right after the head
  and replaced; the connection is reused only if the head ended exactly where the received bytes
  end (nothing that could be a body followed it);
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

from gateway.errors import BadRequest, UpstreamTimeout, UpstreamUnavailable

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 200
READ_HIGH_WATER = 256 * 1024  # unread body above this pauses the socket: constant memory
IDLE_TTL = 30.0  # like AiohttpTransport's keepalive_timeout: retire before most servers do

_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}
_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
# istr: multidict looks these up without case-folding the name on every response.
_CONTENT_LENGTH = istr("Content-Length")
_TRANSFER_ENCODING = istr("Transfer-Encoding")
_LAST_CHUNK = b"0\r\n\r\n"


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
        "_body_sent", "_buffered", "_chunks", "_complete", "_deadline", "_error", "_got_bytes",
        "_head_bytes", "_head_done", "_head_log", "_header_bytes", "_header_count", "_keep_alive",
        "_loop", "_messages", "_parser", "_pool", "_read_timeout", "_reading_paused", "_reason",
        "_timer", "_until_close", "_waiter", "_writing_paused", "alive", "headers", "idle",
        "idle_since", "reason", "reused", "status", "transport",
    )  # fmt: skip
    transport: asyncio.Transport

    def __init__(self, pool: ConnectionOwner, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._pool, self._loop, self._read_timeout = pool, loop, read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self.alive = self.idle = self.reused = False
        self.idle_since = self._deadline = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = self._reading_paused = False
        self._chunks: deque[bytes] = deque()
        self.begin(head_request=False)

    def begin(self, *, head_request: bool) -> None:
        """Forget the previous exchange before a request is written."""
        self.idle = False
        self.status, self.reason, self._reason = 0, "", b""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._head_done = self._complete = self._keep_alive = self._until_close = False
        self._body_sent = self._got_bytes = False
        self._error: Exception | None = None
        self._head_bytes = self._header_bytes = self._header_count = self._messages = 0
        self._head_log = bytearray() if head_request else None
        self._chunks.clear()
        self._buffered = 0

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
            if self._head_done and self._until_close and exc is None:
                self._finish()  # RFC 9112 §6.3 (8): the close is this body's only delimiter
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
        if self._head_log is not None:
            self._head_log += data
        if not self._head_done:
            self._head_bytes += len(data)
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
        self._wake()

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
            self.headers, self._reason = CIMultiDict(), b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > MAX_HEADERS or self._header_bytes > MAX_HEAD_BYTES:
            self._error = UpstreamUnavailable("The upstream response head is too large")
            raise _StopParsing
        # llhttp keeps trailing whitespace; RFC 9110 §5.5 excludes it from the value. Added one
        # by one: measured cheaper than collecting the pairs and building the dict at the end.
        # The name is a token (llhttp refuses any other byte, test_transport_httptools pins it),
        # so ASCII: the default codec's fast path reads it as latin-1 would, without the codec
        # name being parsed per header. Values may hold any byte: latin-1 keeps each as is.
        self.headers.add(name.decode(), value.rstrip(b" \t").decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final response follows
        headers = self.headers
        length = headers.get(_CONTENT_LENGTH)
        coding = headers.get(_TRANSFER_ENCODING)
        if length is not None and (
            coding is not None
            or len(headers.getall(_CONTENT_LENGTH)) > 1
            or not (length.isascii() and length.isdigit())
        ):
            # SECURITY: an ambiguous body length is how response smuggling desyncs a pool
            # (RFC 9112 §6.3); llhttp refuses these too, this holds if it ever grows lenient.
            self._error = UpstreamUnavailable("The upstream sent an ambiguous response length")
            raise _StopParsing
        self.status = status
        self.reason = self._reason.decode("latin-1") or _PHRASES.get(status, "")
        self._keep_alive = self._parser.should_keep_alive()
        chunked = coding is not None and coding.rstrip(" \t").lower().endswith("chunked")
        self._until_close = length is None and not chunked
        self._head_done = True
        if self._head_log is not None:
            # HEAD: llhttp would wait for the body Content-Length announces. Stop it here, use a
            # fresh parser next time, and reuse the connection only if no byte followed the head.
            self._keep_alive = self._keep_alive and _head_ends_data(self._head_log, self._messages)
            self._head_log = None
            self._parser = httptools.HttpResponseParser(self)
            self._finish()
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._head_done:  # else an interim 1xx ended
            self._finish()

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

    def _finish(self) -> None:
        # The timer stays armed: the next exchange on this connection moves ``_deadline`` and
        # reuses it, so a kept-alive connection costs one timer per ``read_timeout``, not one per
        # request. Fired with nobody waiting, it just lapses; close() cancels it.
        self._complete = True

    # ---------------------------------------------------------------- the exchange
    def send_head(self, head: bytes) -> None:
        """Write a bodiless request: no coroutine, the head is all there is."""
        if self.alive and not self.transport.is_closing():  # else connection_lost says why
            self.transport.write(head)  # one piece: writelines would copy it in a join first
        self._body_sent = True

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

    def park(self) -> float:
        """Mark the connection idle; returns the loop time it was parked at."""
        self.idle = self.reused = True
        now = self.idle_since = self._loop.time()
        return now

    def expired(self, now: float | None = None) -> bool:
        """Idle longer than IDLE_TTL (at ``now``, a loop time the caller read already)."""
        return (self._loop.time() if now is None else now) - self.idle_since > IDLE_TTL

    def close(self) -> None:
        self._cancel_timer()
        if self.alive:
            self.transport.close()


def _head_ends_data(data: bytearray, heads: int) -> bool:
    """Whether the ``heads``-th blank line ends ``data`` exactly.

    A head holds no empty line, so the n-th CRLFCRLF from the start lies at or before the end of
    the n-th head; landing on the end of ``data`` proves no byte followed the final head."""
    end = 0
    for _ in range(heads):
        found = data.find(_HEAD_END, end)
        if found < 0:
            return False
        end = found + len(_HEAD_END)
    return end == len(data)
