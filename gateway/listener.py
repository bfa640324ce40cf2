"""aiohttp's low-level server, guarded: connection cap, header and body deadlines, safe parser
errors, one bounded drain.

aiohttp has no deadline for receiving a request head (slowloris holds a connection open
for its whole keep-alive timeout) or its body (a declared length never sent pins the
connection and the upstream one behind it), no connection cap, its parser errors are plain
text that can quote the offending header line (a token), and its shutdown applies its timeout
twice. This subclass closes those gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import structlog
from aiohttp import http_exceptions, web
from aiohttp.http import HttpVersion11
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from gateway.auth.jwt import TokenMemo
from gateway.context import request_id_for
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, RequestTimeout
from gateway.http.answer_headers import identity_headers
from gateway.http.body_deadline import body_deadline
from gateway.http.problem import problem_headers, problem_response
from gateway.middleware.request_hygiene import parser_refusal

log = structlog.get_logger("gateway.listener")


class GuardedRequestHandler(RequestHandler):
    """One client connection."""

    _guard_server: GuardedServer
    _head_timer: asyncio.TimerHandle | None = None
    _in_request: bool = False
    _request: web.BaseRequest | None = None  # the request being handled
    _body_timer: asyncio.TimerHandle | None = None
    _body_deadline: float = 0.0
    _done: asyncio.Future[None] | None = None  # resolved when the current request is finished
    client_gone: bool = False  # the client hung up while a request was being handled
    drain_cut: bool = False  # the request was cut at the end of the drain
    token_memo: TokenMemo | None = None  # the authentication stage's, per connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.token_memo = TokenMemo()
        server = self._guard_server
        server.open_connections += 1
        # SECURITY: connection exhaustion — refuse past listen.limits.max_connections.
        if server.open_connections > server.max_connections:
            server.refused_connections += 1
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard_server.open_connections -= 1
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._in_request:
            self.client_gone = True  # Appendix C: logged as 499 client-closed, never as a 5xx
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body_timer is not None:
            # Body bytes arrived: the client has another full interval (the timer re-arms lazily).
            self._body_deadline = self._loop.time() + self._guard_server.body_timeout
        elif not self._in_request and self._head_timer is None and data:
            self._arm_head_timer()
        super().data_received(data)

    @property
    def in_request(self) -> bool:
        return self._in_request

    def request_started(self, request: web.BaseRequest) -> None:
        self._in_request = True
        self._request = request
        self._cancel_head_timer()
        timeout = self._guard_server.body_timeout
        if timeout > 0 and not request.content.is_eof():
            self._body_deadline = self._loop.time() + timeout
            self._body_timer = self._loop.call_at(self._body_deadline, self._body_timer_fired)

    def request_finished(self) -> None:
        self._in_request = False
        self._request = None
        self._cancel_body_timer()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        self._done = None

    def request_done(self) -> asyncio.Future[None]:
        """A future resolved once the request in progress (if any) is finished."""
        if self._done is None:
            self._done = self._loop.create_future()
            if not self._in_request:
                self._done.set_result(None)
        return self._done

    def cut_for_drain(self) -> None:
        """The drain is over: the request in progress is cancelled (its handler logs it)."""
        if self._in_request and self._task_handler is not None:
            self.drain_cut = True
            self._task_handler.cancel()

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timer_fired(self) -> None:
        self._body_timer = None
        request = self._request
        if request is None:
            return
        payload = request.content
        now = self._loop.time()
        due = body_deadline(
            request,
            payload,
            held_back=self._reading_paused,
            deadline=self._body_deadline,
            timeout=self._guard_server.body_timeout,
            now=now,
        )
        if due is None:
            return
        self._body_deadline = due
        if now < due:
            self._body_timer = self._loop.call_at(due, self._body_timer_fired)
            return
        # SECURITY: slow body (slowloris on the body) — see gateway.http.body_deadline.
        # Whichever reader waits (the proxy's upload, a stage reading the body) gets the error,
        # the answer is 408, and the rest of the body is not waited for (no lingering).
        self._guard_server.body_timeouts += 1
        self._lingering_time = 0.0
        if isinstance(payload, StreamReader):
            payload.set_exception(RequestTimeout("The request body did not arrive in time"))

    def _arm_head_timer(self) -> None:
        timeout = self._guard_server.header_timeout
        if timeout > 0:
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # SECURITY: slowloris — a request head must arrive whole within header_timeout.
        if not self._in_request and not self._messages and self.transport is not None:
            self._guard_server.header_timeouts += 1
            self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer is not None and request.writer.output_size > 0:
            # A response has begun: a second head would corrupt it; the only signal left is a
            # cut connection (aiohttp closes it on this error).
            raise ConnectionResetError("response already started")
        # SECURITY: never log or echo the parser's message: it can quote a header value.
        error: GatewayError
        too_many = isinstance(exc, http_exceptions.BadHttpMessage) and "Too many headers" in str(exc)
        if isinstance(exc, http_exceptions.LineTooLong) or too_many:
            error = HeadersTooLarge("The request head is too large")
        elif (refusal := parser_refusal(exc)) is not None:
            error = refusal  # App. C: TRACK → 405, transfer codings → 501
        elif status == 400:
            error = BadRequest("The request could not be parsed")
        else:
            error = GatewayError()
        log.warning("request_rejected_by_parser", status=error.status, error_class=type(exc).__name__)
        request_id = request_id_for(None)
        headers = problem_headers(error)
        headers["X-Request-ID"] = request_id
        headers.update(self._guard_server.identity_headers)
        # aiohttp answers an unparsed request as HTTP/1.0 (it never learnt the version): the
        # gateway speaks HTTP/1.1 on every answer (App. C: every answer is the gateway's).
        request._cache.pop("version", None)
        request._version = HttpVersion11
        headers["Connection"] = "close"
        response = problem_response(error, request_id, headers)
        response.force_close()
        return response


CUT_GRACE = 0.5  # seconds cut requests get to unwind (their upstream exchange is cancelled)


class Drainable(Protocol):
    @property
    def in_request(self) -> bool: ...

    def request_done(self) -> asyncio.Future[None]: ...

    def cut_for_drain(self) -> None: ...


async def drain(connections: Iterable[Drainable], timeout: float | None, cut_grace: float) -> None:
    """Busy connections get ``timeout`` in all to finish their request; what is still running
    then is cut (logged 499 ``drain-timeout``) and given ``cut_grace`` to unwind."""
    busy = [c for c in connections if c.in_request]
    if busy and timeout:
        await asyncio.wait([c.request_done() for c in busy], timeout=timeout)
    cut = [c for c in busy if c.in_request]
    for connection in cut:
        connection.cut_for_drain()
    if cut:
        await asyncio.wait([c.request_done() for c in cut], timeout=cut_grace)


class GuardedServer(web.Server):
    def __init__(
        self,
        handler: Any,
        *,
        max_connections: int,
        header_timeout: float,
        body_timeout: float,
        tls: bool,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        # What every answer carries, the parser's refusals included (App. C).
        self.identity_headers = identity_headers(tls=tls)
        self.open_connections = 0
        self.refused_connections = 0
        self.header_timeouts = 0
        self.body_timeouts = 0

    async def shutdown(self, timeout: float | None = None) -> None:
        """One drain: in-flight requests get ``timeout`` in all, then what is left is cut.

        aiohttp's own shutdown waits ``timeout`` for a handler, then cancels it and waits up to
        ``timeout`` again, so ``drain_timeout: 3s`` took 6 s; and a cut request left no access
        line. Here the wait happens once; cut requests are cancelled (their handler logs them
        as 499 ``drain-timeout``) and aiohttp's shutdown only closes what is left."""
        handlers = [h for h in self._connections if isinstance(h, GuardedRequestHandler)]
        await drain(handlers, timeout, CUT_GRACE)
        await super().shutdown(CUT_GRACE)

    def __call__(self) -> RequestHandler:
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler._guard_server = self
        return handler
