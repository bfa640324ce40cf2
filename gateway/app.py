"""The public request handler: request id, the pipeline, the proxy; refusals through the one
renderer (``gateway.http.problem``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import structlog
from aiohttp import ClientConnectionResetError, web
from multidict import istr

from gateway.auth.jwt import TokenMemo
from gateway.context import ContextKey, RequestContext, request_id_for
from gateway.errors import GatewayError, InternalError
from gateway.exchange import ServerRequest
from gateway.http.answer_headers import IDENTITY_BY_TLS
from gateway.http.problem import render_problem
from gateway.listener import GuardedRequestHandler
from gateway.logs import context as log_context
from gateway.logs.access_audit import audit_access
from gateway.metrics import METRICS
from gateway.pipeline import RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS, run_stages
from gateway.proxy import proxy_request
from gateway.runtime import Runtime
from gateway.tracing.context import continued_trace, new_trace

log = structlog.get_logger("gateway.public")
# istr names: a multidict looks them up without lower-casing them on every request
_REQUEST_ID, _FORWARDED_FOR = istr("X-Request-ID"), istr("X-Forwarded-For")
_TRACEPARENT, _TRACESTATE = istr("traceparent"), istr("tracestate")
# Each answer's own headers (App. C): the request id first (gateway.http1.problem relies on it),
# then the identity headers; a copy per request, its id filled in.
_OWN_BY_TLS: dict[bool, dict[str, str]] = {
    tls: {_REQUEST_ID: "", **identity} for tls, identity in IDENTITY_BY_TLS.items()
}


def begin_request(
    request: web.BaseRequest | ServerRequest, runtime: Runtime, token_memo: TokenMemo | None
) -> RequestContext:
    """The request's context, bound to the request and to this task's log lines; ``token_memo``
    is the connection's (its listener keeps one per connection) for the authentication stage."""
    ctx = new_context(request, runtime, token_memo)
    request[ContextKey] = ctx
    return ctx


def new_context(
    request: web.BaseRequest | ServerRequest, runtime: Runtime, token_memo: TokenMemo | None
) -> RequestContext:
    """``begin_request`` without binding the context to the request: the lean listener sets its
    request's ``ctx`` slot itself (no ``__setitem__`` call per request)."""
    headers = request.headers
    request_id = request_id_for(headers.get(_REQUEST_ID))
    peer = request.remote or ""
    proxies = runtime.trusted_proxies
    trusted = peer in proxies
    # SECURITY: IP spoofing past limits — only a trusted peer's X-Forwarded-For is read at all.
    client_ip = proxies.client_ip(peer, headers.getall(_FORWARDED_FOR, ())) if trusted else peer
    # App. C: every answer (gateway endpoints, early answers, refusals, proxied ones) carries
    # its request id (first: gateway.http1.problem relies on it), the gateway's Server, nosniff
    # and, on TLS, HSTS — neither aiohttp's nor the upstream's version is disclosed.
    own = _OWN_BY_TLS[runtime.tls].copy()  # the request id's place first, its value set here
    own[_REQUEST_ID] = request_id
    # App. C: a trusted peer's trace is continued; anyone else's traceparent is never read.
    trace = (
        continued_trace(headers.getall(_TRACEPARENT, ()), headers.getall(_TRACESTATE, ()))
        if trusted
        else new_trace()
    )
    ctx = RequestContext(request, runtime, request_id, client_ip, peer, trusted, own, trace, token_memo)
    # Every log line of this request carries its id (requests on one keep-alive connection
    # share a task, so the previous request's bindings are cleared first).
    log_context.begin_request(request_id)
    return ctx


CLIENT_GONE = 499  # nginx's "client closed request": not an answer anyone received, never a 5xx


def observe_answer(ctx: RequestContext, status: int, body_length: int | None) -> None:
    """What both listeners record of every answered request: metrics, then the span (App. C:
    off by default, and then the ``None`` test is all it costs), then, given the answer's
    ``body_length``, the access line (the lean listener's; aiohttp's listener passes None, its
    access logger writes the line). One call at the end of a request, not one per record."""
    runtime = ctx.runtime
    METRICS.observe_request(ctx)
    spans = runtime.spans
    if spans is not None:
        spans.record(ctx, status)
    if body_length is not None:
        writer = runtime.access_log
        if writer.enabled:
            writer.write_entry(ctx, status, body_length, time.monotonic() - ctx.started)


class PublicHandler:
    """Called by aiohttp's low-level server for every request on the public listener."""

    def __init__(self, current_runtime: Callable[[], Runtime]) -> None:
        self._current_runtime = current_runtime

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        guarded: GuardedRequestHandler | None  # the same connection, None when unguarded
        if isinstance(protocol, GuardedRequestHandler):
            guarded, memo = protocol, protocol.token_memo
        else:
            guarded, memo = None, None
        ctx = begin_request(request, self._current_runtime(), memo)
        if guarded is not None:
            guarded.request_started(request)
        try:
            response = await self._run(ctx)
        except asyncio.CancelledError:
            if guarded is not None and guarded.drain_cut:
                self._log_cut(ctx, guarded, request, "drain-timeout")
            raise
        except GatewayError as error:
            response = self._client_gone(ctx) if _gone(protocol) else self._refuse(error, ctx, request)
        except (ConnectionResetError, ClientConnectionResetError):
            if not _gone(protocol):
                # A response had begun and broke off: the connection is cut, nothing to answer.
                log.debug("response_cut", request_id=ctx.request_id)
                raise
            response = self._client_gone(ctx)
        except Exception:
            if _gone(protocol):
                response = self._client_gone(ctx)
            else:
                log.exception("request_failed", request_id=ctx.request_id)
                response = self._refuse(InternalError(), ctx, request)
        finally:
            if guarded is not None:
                guarded.request_finished()
        if _gone(protocol) and response.status != CLIENT_GONE:
            response = self._client_gone(ctx)  # an answer nobody will read: logged as what it was
        observe_answer(ctx, response.status, None)
        if ctx.route is not None and ctx.route.audit:
            audit_access(ctx, response.status, ctx.runtime.services.audit)
        return response

    @staticmethod
    def _client_gone(ctx: RequestContext) -> web.StreamResponse:
        """The client hung up: aiohttp's write of this fails and logs it (status 499), which is
        the access line; no refusal is counted and nothing alarms (App. C)."""
        ctx.status = CLIENT_GONE
        ctx.outcome = "client-closed"
        log.debug("client_disconnected", request_id=ctx.request_id)
        return web.Response(status=CLIENT_GONE)

    @staticmethod
    def _log_cut(
        ctx: RequestContext, protocol: GuardedRequestHandler, request: web.BaseRequest, reason: str
    ) -> None:
        """A request cancelled at the end of the drain: aiohttp logs nothing for it, so here.
        ``request`` is ``ctx.request``, as aiohttp's type (its access logger wants that)."""
        ctx.status = CLIENT_GONE
        ctx.outcome = reason
        METRICS.observe_request(ctx)
        protocol.log_access(request, web.Response(status=CLIENT_GONE), ctx.started)

    @staticmethod
    def _refuse(error: GatewayError, ctx: RequestContext, request: web.BaseRequest) -> web.StreamResponse:
        """``request`` is ``ctx.request``, as aiohttp's type: its writer shows a begun answer."""
        if ctx.status and request.writer is not None and request.writer.output_size > 0:
            raise ConnectionResetError("response already started")
        return render_problem(error, ctx, ctx.request_id)

    @staticmethod
    async def _run(ctx: RequestContext) -> web.StreamResponse:
        early = await run_stages(ctx)
        if early is not None:
            for name, value in ctx.response_headers.items():
                early.headers.setdefault(name, value)
            return early
        # cast: on this listener ``ctx.downstream`` is None, so the proxy answers with aiohttp's
        # ``StreamResponse``, never the lean listener's ``AnswerWriter``.
        return cast(web.StreamResponse, await proxy_request(ctx, RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS))


def _gone(protocol: object) -> bool:
    return isinstance(protocol, GuardedRequestHandler) and protocol.client_gone
