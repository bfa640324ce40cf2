"""One client connection of the lean listener: llhttp (httptools) parsing, keep-alive,
pipelined requests answered strictly in order, and the listener's hardening.

Properties kept from the guarded aiohttp listener (gateway/listener.py), each for the same
attack: the connection cap, the header deadline (slowloris), the keep-alive timeout, hard
header limits above the gateway's own (memory: llhttp has none), the body deadline (408),
smuggling guards (llhttp strict: TE with CL, two CLs, bad chunking → 400; a coding other than
a lone chunked → 501; singletons as aiohttp refuses them), parser refusals answered as the
gateway's problem+json, hang-ups recorded, one bounded drain.

Requests are queued as their heads complete (each with its own body stream) and handled one
at a time by one task per connection; while one waits behind another, reading pauses, so a
pipelining client cannot queue without bound. A WebSocket upgrade or CONNECT hands the rest of
the connection to aiohttp's guarded handler, which serves it as before.

This module is the per-request path: the connection's callbacks, the parser's callbacks, flow
control and the queue. The cold parts sit beside it: the factory and the drain (``server.py``),
the timers (``deadlines.py``), the hand-over to aiohttp (``upgrade.py``) and the answer to a
parser refusal (``refusals.py``); the timer and hand-over methods are mixed into the connection
class, so no call layer is added.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from typing import TYPE_CHECKING, Protocol, cast

import httptools
import structlog
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.auth.jwt import TokenMemo
from gateway.bounded_memo import remember
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, NotImplementedCoding
from gateway.http1.deadlines import ConnectionDeadlines
from gateway.http1.refusals import ParserRefusal, Refused, answer_refusal, parser_error
from gateway.http1.request import LeanRequest
from gateway.http1.upgrade import Upgrade, UpgradeHandOver

if TYPE_CHECKING:
    from gateway.listener import GuardedServer

log = structlog.get_logger("gateway.listener")

BODY_BUFFER = 2**16  # a body stream pauses reading above twice this (aiohttp's default)
# RFC 9110 singletons aiohttp's strict parser refuses twice (400); llhttp itself refuses a second
# Content-Length and Transfer-Encoding, the rest are checked here.
_SINGLETONS = frozenset(
    (
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    )
)
# Each singleton's bit in the mask of those a head has shown (an int per head, not a set).
_SINGLETON_BITS = {name: 1 << index for index, name in enumerate(sorted(_SINGLETONS))}
_HOST_BIT = _SINGLETON_BITS[b"host"]
_CONTENT_LENGTH_BIT = _SINGLETON_BITS[b"content-length"]
_TRANSFER_ENCODING_BIT = _SINGLETON_BITS[b"transfer-encoding"]
# Not singletons (they may repeat): the bit only records that the head had a field llhttp reads
# as Connection. Without one, llhttp keeps a connection alive for HTTP/1.1 only (1.0, 0.9 and 2.0
# need "keep-alive") and upgrades only CONNECT, so such a head's version and upgrade are known
# from should_keep_alive() and the method: get_http_version() formats a string per call (~2.8k
# instructions). tests/unit/http1/test_protocol.py holds llhttp to this.
_CONNECTION_BIT = 1 << len(_SINGLETON_BITS)
_FIELD_BITS = {**_SINGLETON_BITS, b"connection": _CONNECTION_BIT, b"proxy-connection": _CONNECTION_BIT}
# The usual methods' text, looked up rather than decoded per request (llhttp's others are decoded).
_METHODS = {
    method.encode(): method for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")
}
_VERSIONS = {"1.1": HttpVersion11, "1.0": HttpVersion10}
_new_request = object.__new__
_CONTENT_LENGTH = istr("Content-Length")  # an istr: looked up without lower-casing it each time
# A header name as the client spelt it → its key in the request's headers and its _FIELD_BITS bit
# (0: none). Names repeat from request to request: one lookup per field instead of decoding the
# name, lower-casing it for the singleton check and a multidict folding it again; an istr key is
# one the multidict takes as it is. SECURITY: memory — client-chosen names, so bounded (only
# names up to _NAME_MEMO_LENGTH bytes are held, at most _NAME_MEMO_LIMIT of them).
_NAMES: dict[bytes, tuple[istr, int]] = {}
_NAME_MEMO_LIMIT = 1024
_NAME_MEMO_LENGTH = 64


def _learn_name(name: bytes) -> tuple[istr, int]:
    # Header names are tokens (llhttp refuses anything else), so ASCII: the escape is never used.
    known = (istr(name.decode("utf-8", "surrogateescape")), _FIELD_BITS.get(name.lower(), 0))
    if len(name) <= _NAME_MEMO_LENGTH:
        remember(_NAMES, _NAME_MEMO_LIMIT, name, known)
    return known


class RequestHandler(Protocol):
    async def handle(self, request: LeanRequest) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        ...


class Listener(Protocol):
    """What a connection reads of its listener (``server.LeanServer``)."""

    handler: RequestHandler
    guarded: GuardedServer
    keepalive_timeout: float
    max_line_size: int
    max_field_size: int
    max_unframed: int
    max_headers: int
    connections: set[LeanProtocol]
    closing: bool


class LeanProtocol(ConnectionDeadlines, UpgradeHandOver, asyncio.Protocol):
    _server: Listener  # all of it; each base class names the part it reads

    def __init__(self, server: Listener) -> None:
        self._server = server
        self._guard = server.guarded
        # read for every header field: fixed for the listener's life, so kept here
        self._max_field_size = server.max_field_size
        self._max_headers = server.max_headers
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[LeanRequest | ParserRefusal | Upgrade] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        # the head being parsed
        self._url = b""
        # The head's fields decoded as they arrive (UTF-8, surrogate escapes for other bytes, so
        # the wire bytes are recovered exactly: ``request.encoded``).
        self._header_pairs: list[tuple[str, str]] = []
        self._header_size = 0  # the head's names and values, in bytes (LeanRequest.header_size)
        self._fields_seen = 0  # _FIELD_BITS of the fields seen in this head
        self._parsing: LeanRequest | None = None  # the request whose body is arriving
        self._upgrade: Upgrade | None = None
        self._dead = False  # a parser refusal is queued: nothing more is read
        self._head_open = False  # a head has begun and is not complete yet
        # Bytes fed since the parser last showed progress (a new message, a body piece, a chunk):
        # llhttp hands a header or trailer field over only once its line ends, so an endless line
        # is bounded here, while it grows.
        self._unframed = 0
        self._lingering = False  # answered; the rest of the body is read and dropped
        self._idle_since = 0.0  # when the last answer ended (the keep-alive timer checks it)
        # flow control
        # a plain attribute (read after every answer write: no property call)
        self.writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._body_paused = False
        self._queue_paused = False
        # timers
        self._head_timer: asyncio.TimerHandle | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0
        self.current: LeanRequest | None = None
        self.client_gone = False  # the client hung up while a request was being handled
        self.drain_cut = False  # the request was cut at the end of the drain
        self.token_memo: TokenMemo | None = None  # the authentication stage's, per connection

    # -- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.transport = transport
        guard = self._guard
        guard.open_connections += 1
        # SECURITY: connection exhaustion — refuse past listen.limits.max_connections.
        if guard.open_connections > guard.max_connections or self._server.closing:
            guard.refused_connections += 1
            transport.close()
            return
        self._server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, list | tuple) else (str(peer) if peer else None)
        self.token_memo = TokenMemo()
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.transport is None:
            return
        self.transport = None
        self._guard.open_connections -= 1
        self._server.connections.discard(self)
        self._cancel_timers()
        current = self.current
        if current is not None:
            self.client_gone = True  # Appendix C: logged as 499 client-closed, never as a 5xx
        for request in (current, self._parsing):
            content = request.content if request is not None else None
            if content is not None and content is not EMPTY_PAYLOAD and not content.is_eof():
                content.set_exception(ConnectionResetError("Connection lost"))
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Connection lost"))
        if current is None and self._task is not None:
            self._task.cancel()  # idle, or waiting behind nothing: no answer is owed

    @property
    def connected(self) -> bool:  # read by aiohttp's StreamReader
        return self.transport is not None

    @property
    def in_request(self) -> bool:
        return self.current is not None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- writing -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Connection lost")
        transport.writelines(data)

    async def drain(self) -> None:
        if not self.writing_paused:
            return
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        await self._drain_waiter

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def may_keep_alive(self, request: LeanRequest) -> bool:
        """Whether the connection can carry another request after this one's answer."""
        content = request.content
        return (
            request.keep_alive
            and not self._server.closing
            # a body not read to its end leaves the stream out of step (no body: nothing to ask)
            and (content is EMPTY_PAYLOAD or (content.is_eof() and content.exception() is None))
        )

    # -- reading (aiohttp's StreamReader calls these for body backpressure) ------------------
    def pause_reading(self) -> None:
        self._body_paused = True
        self._update_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._body_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            if self._body_paused or self._queue_paused or self._dead or self._upgrade is not None:
                transport.pause_reading()
            else:
                transport.resume_reading()
        except (AttributeError, NotImplementedError, RuntimeError):
            pass

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        if self._upgrade is not None:
            self._upgrade.tail += data  # waits for its turn, then goes to aiohttp as it came
            return
        if self._body_timer is not None:
            # Body bytes arrived: the client has another full interval (the timer re-arms lazily).
            self._body_deadline = self._loop.time() + self._guard.body_timeout
        counting = self._head_open or self._parsing is not None
        if counting:
            self._unframed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_at(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._refuse_parse(exc, data)
        else:
            if counting and self._unframed > self._server.max_unframed:
                # SECURITY: memory and CPU exhaustion — one header or trailer line that never
                # ends (llhttp copies the growing field on every read) is refused as too large.
                self._refuse(HeadersTooLarge("The request head is too large"), "LineTooLong")
                return
            # A head begun and not finished in this read starts its deadline now; a head that
            # arrives whole (nearly every request) never costs a timer.
            if self._head_open and self._head_timer is None:
                self._arm_head_timer()

    # -- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_open = True
        self._unframed = 0
        self._url = b""
        self._header_pairs = []
        self._header_size = 0
        self._fields_seen = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._server.max_line_size:
            raise Refused(HeadersTooLarge("The request head is too large"))

    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.rstrip(b" \t")  # llhttp strips the OWS before a value, not after
        # Last-resort limits (the gateway's own, lower ones answer first in the pipeline): llhttp
        # has none, and a head must not grow without bound while its deadline runs.
        size = len(name) + len(value)
        if size > self._max_field_size:
            raise Refused(HeadersTooLarge("The request head is too large"))
        self._header_size += size  # the header limits stage reads the sum (no second pass)
        known = _NAMES.get(name)
        if known is None:
            known = _learn_name(name)
        key, bit = known
        if bit:
            # SECURITY: a second Host/Content-Type/... is read differently by each hop.
            if self._fields_seen & bit and bit != _CONNECTION_BIT:
                if bit == _TRANSFER_ENCODING_BIT:  # App. C: codings beyond one chunked → 501
                    raise Refused(NotImplementedCoding("Only the chunked transfer coding is supported"))
                raise Refused(BadRequest("The request could not be parsed"))
            self._fields_seen |= bit
        # Decoded here, in the call each field costs anyway (at the head's end it took a
        # comprehension, a frame per head). A strict decode first: the same text for valid UTF-8
        # (nearly every value), and cheaper per call than naming the codec and error handler.
        try:
            text = value.decode()
        except UnicodeDecodeError:
            text = value.decode("utf-8", "surrogateescape")
        pairs = self._header_pairs
        pairs.append((key, text))
        if len(pairs) > self._max_headers:
            raise Refused(HeadersTooLarge("The request head is too large"))

    def on_headers_complete(self) -> None:
        self._head_open = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parser = self._parser
        seen = self._fields_seen
        keep_alive = parser.should_keep_alive()
        raw_method = parser.get_method()
        if keep_alive and not seen & _CONNECTION_BIT and raw_method != b"CONNECT":
            version = HttpVersion11  # see _CONNECTION_BIT; nearly every request
            upgrade = False
        else:
            read = _VERSIONS.get(parser.get_http_version())
            if read is None:
                raise Refused(BadRequest("The request could not be parsed"))
            version = read
            upgrade = parser.should_upgrade()
        if version is HttpVersion11 and not seen & _HOST_BIT:
            raise Refused(BadRequest("The request could not be parsed"))  # as aiohttp: Host is required
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        if upgrade:
            self._upgrade = Upgrade(self._head_bytes(method, version), b"")
            return
        headers = CIMultiDictProxy(CIMultiDict(self._header_pairs))
        # The singleton check saw every Content-Length and Transfer-Encoding (one each at most):
        # a set lookup instead of a case-insensitive search of the headers.
        length = headers[_CONTENT_LENGTH] if seen & _CONTENT_LENGTH_BIT else None
        content = EMPTY_PAYLOAD
        if seen & _TRANSFER_ENCODING_BIT or (length is not None and length != "0"):
            content = StreamReader(self, BODY_BUFFER, loop=self._loop)  # type: ignore[arg-type]
        url = self._url
        try:
            target = url.decode()
        except UnicodeDecodeError:
            target = url.decode("utf-8", "surrogateescape")
        # Every field of the request (LeanRequest has no __init__: no frame per request).
        request = _new_request(LeanRequest)
        request.protocol = self
        request.transport = self.transport
        request.remote = self.remote
        request.method = method
        request.raw_path = target
        request.version = version
        request.headers = headers
        request.content = content
        request.keep_alive = keep_alive
        # The parser has checked it is digits only (llhttp is strict), so int() cannot fail.
        request.content_length = None if length is None else int(length)
        request.header_size = self._header_size
        request.ctx = None
        if content is not EMPTY_PAYLOAD:
            self._parsing = request
        self._enqueue(request)

    def on_chunk_header(self) -> None:
        self._unframed = 0

    def on_body(self, body: bytes) -> None:
        self._unframed = 0
        if self._lingering:
            return
        if self._parsing is not None:
            self._parsing.content.feed_data(body)

    def on_message_complete(self) -> None:
        if self._lingering:
            # The whole body is in: the answer is safe, the connection ends. Nothing after it in
            # this read may start another request on a closing connection.
            self._dead = True
            self._close()
            return
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.content.feed_eof()

    def _refuse_parse(self, exc: Exception, data: bytes) -> None:
        self._refuse(parser_error(exc, data), type(exc).__name__)

    def _refuse(self, error: GatewayError, cause: str) -> None:
        # SECURITY: never log or echo the parser's message: it can quote a header value.
        log.warning("request_rejected_by_parser", status=error.status, error_class=cause)
        self._dead = True
        self._update_reading()
        parsing, self._parsing = self._parsing, None
        if parsing is not None and parsing is not self.current and parsing in self._queue:
            # Its head completed in this very read (llhttp checks the framing just after): it was
            # never started, the refusal takes its place.
            self._queue.remove(parsing)
        elif parsing is not None:
            # A body that broke off mid-way (bad chunking, an endless trailer): its reader gets
            # the error and the connection closes after whatever answer that request gets.
            body_error = (
                error
                if isinstance(error, HeadersTooLarge)
                else BadRequest("The request body could not be parsed")
            )
            parsing.content.set_exception(body_error)
            return
        self._enqueue(ParserRefusal(error))

    # -- the queue and the connection's task --------------------------------------------------
    def _enqueue(self, item: LeanRequest | ParserRefusal | Upgrade) -> None:
        self._queue.append(item)
        if len(self._queue) > 1 and not self._queue_paused:
            # Pipelining: one request waits, reading stops until its turn.
            self._queue_paused = True
            self._update_reading()
        if self._task is None:
            self._task = self._loop.create_task(self._serve())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _serve(self) -> None:
        queue = self._queue
        loop = self._loop
        # Fixed for the listener's life: read once per task, not once per request.
        handle = self._server.handler.handle
        body_timeout = self._guard.body_timeout
        keepalive_timeout = self._server.keepalive_timeout
        try:
            while self.transport is not None:
                if not queue:
                    self._wakeup = wakeup = loop.create_future()
                    await wakeup
                    self._wakeup = None
                    continue
                item = queue[0]
                if isinstance(item, LeanRequest):
                    # One request, handled here rather than in a helper coroutine: a coroutine
                    # layer costs on its creation and on every resumption of the request.
                    self.current = item
                    if self._head_timer is not None:  # nearly always cancelled at the head's end
                        self._cancel_head_timer()
                    content = item.content
                    if body_timeout > 0 and content is not EMPTY_PAYLOAD and not content.is_eof():
                        self._body_deadline = loop.time() + body_timeout
                        self._body_timer = loop.call_at(self._body_deadline, self._body_timer_fired)
                    keep = False
                    try:
                        keep = await handle(item)
                    finally:
                        self.current = None
                        if self._body_timer is not None:
                            self._body_timer.cancel()
                            self._body_timer = None
                        if self._done is not None:
                            done, self._done = self._done, None
                            if not done.done():
                                done.set_result(None)
                    if not keep or self.transport is None:
                        if self._parsing is item and self._may_linger(item):
                            self._linger()
                        else:
                            self._close()
                        return
                    queue.popleft()
                    if self._queue_paused and len(queue) <= 1:
                        self._queue_paused = False
                        self._update_reading()
                    if not queue and self._parsing is None and keepalive_timeout > 0:
                        # _arm_keepalive_timer, inline (every request): the idle period starts
                        # now; the one lazy timer is armed only when none is.
                        self._idle_since = now = loop.time()
                        if self._keepalive_timer is None:
                            self._keepalive_timer = loop.call_at(
                                now + keepalive_timeout, self._keepalive_expired
                            )
                elif isinstance(item, ParserRefusal):
                    self._answer_refusal(item.error)
                    return
                else:
                    self._hand_over(item)
                    return
        except asyncio.CancelledError:
            if self.transport is not None and not self.drain_cut:
                raise
        finally:
            self._task = None

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after what is buffered has been written

    def close_when_idle(self) -> None:
        """The drain began: an idle connection closes now, a busy one after its answer."""
        if self.current is None and not self._queue:
            self._close()

    def request_done(self) -> asyncio.Future[None]:
        if self._done is None:
            self._done = self._loop.create_future()
            if self.current is None:
                self._done.set_result(None)
        return self._done

    def cut_for_drain(self) -> None:
        """The drain is over: the request in progress is cancelled (its handler logs it)."""
        if self.current is not None and self._task is not None:
            self.drain_cut = True
            self._task.cancel()

    def _answer_refusal(self, error: GatewayError) -> None:
        answer_refusal(self.transport, error, self._guard.identity_headers)
        self._close()
