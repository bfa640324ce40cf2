"""aiohttp's low-level server, guarded: connection cap, header deadline, safe parser errors.

aiohttp has no deadline for receiving a request head (slowloris holds a connection open
for its whole keep-alive timeout), no connection cap, and its parser errors are plain text
that can quote the offending header line (a token). This subclass closes those gaps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.auth.jwt import TokenMemo
from gateway.context import request_id_for
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, problem_body, problem_headers
from gateway.middleware.request_hygiene import parser_refusal

log = structlog.get_logger("gateway.listener")


class GuardedRequestHandler(RequestHandler):
    """One client connection."""

    _guard_server: GuardedServer
    _head_timer: asyncio.TimerHandle | None = None
    _in_request: bool = False
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
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._head_timer is None and data:
            self._arm_head_timer()
        super().data_received(data)

    def request_started(self) -> None:
        self._in_request = True
        self._cancel_head_timer()

    def request_finished(self) -> None:
        self._in_request = False

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
        response = web.Response(status=error.status, body=problem_body(error, request_id), headers=headers)
        response.force_close()
        return response


class GuardedServer(web.Server):
    def __init__(self, handler: Any, *, max_connections: int, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open_connections = 0
        self.refused_connections = 0
        self.header_timeouts = 0

    def __call__(self) -> RequestHandler:
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler._guard_server = self
        return handler
