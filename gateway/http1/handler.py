"""The public request handler of the lean listener: the same request id, pipeline, proxy and
one error renderer as ``gateway.app.PublicHandler``, answering through a ``LeanDownstream``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import ClientConnectionResetError, web

from gateway.app import CLIENT_GONE, new_context, observe_answer
from gateway.context import RequestContext
from gateway.errors import GatewayError, InternalError
from gateway.exchange import AnswerWriter
from gateway.http1.downstream import LeanDownstream
from gateway.http1.problem import send_problem
from gateway.http1.request import LeanRequest
from gateway.logs.access_audit import audit_access
from gateway.pipeline import RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS, run_stages
from gateway.proxy import proxy_request
from gateway.runtime import Runtime

log = structlog.get_logger("gateway.public")


class LeanPublicHandler:
    def __init__(self, current_runtime: Callable[[], Runtime]) -> None:
        self._current_runtime = current_runtime

    async def handle(self, request: LeanRequest) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        ctx = request.ctx = new_context(request, self._current_runtime(), request.protocol.token_memo)
        down = ctx.downstream = LeanDownstream(request.protocol, request)
        try:
            protocol = request.protocol
            try:
                # The pipeline and the proxy, here rather than in a helper coroutine: a coroutine
                # layer costs on its creation and on every resumption of the request.
                early = await run_stages(ctx)
                if early is not None:
                    await _send_early(ctx, down, early)
                else:
                    answer = await proxy_request(ctx, RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS)
                    if answer is not down:  # a WebSocket is aiohttp's; anything else was written already
                        await _send_early(ctx, down, answer)
            except asyncio.CancelledError:
                if protocol.drain_cut:
                    ctx.status, ctx.outcome = CLIENT_GONE, "drain-timeout"
                    observe_answer(ctx, CLIENT_GONE, down.body_length)
                raise
            except GatewayError as error:
                if not protocol.client_gone and not await self._refuse(error, ctx, down):
                    return False
            except (ConnectionResetError, ClientConnectionResetError):
                if not protocol.client_gone:
                    # A response had begun and broke off: the connection is cut, nothing to answer.
                    log.debug("response_cut", request_id=ctx.request_id)
                    down.abort()
                    return False
            except Exception:
                if not protocol.client_gone:
                    log.exception("request_failed", request_id=ctx.request_id)
                    if not await self._refuse(InternalError(), ctx, down):
                        return False
            if protocol.client_gone:
                self._client_gone(ctx)  # an answer nobody will read: logged as what it was
            status = CLIENT_GONE if protocol.client_gone else down.status
            observe_answer(ctx, status, down.body_length)
            if ctx.route is not None and ctx.route.audit:
                audit_access(ctx, status, ctx.runtime.services.audit)
            return down.keep_alive and not protocol.client_gone
        finally:
            # The context and the request point at each other (and the answer writer at the
            # request): a cycle per request that only the cyclic GC could free, ~3 % of a
            # full-chain request's instructions. Nothing reads these two after the answer; the
            # request keeps its context (a body still arriving asks it about 100-continue).
            ctx.downstream = None
            ctx.request = None  # type: ignore[assignment]

    @staticmethod
    def _client_gone(ctx: RequestContext) -> None:
        """The client hung up: 499 ``client-closed`` in the access line, no refusal counted."""
        ctx.status = CLIENT_GONE
        ctx.outcome = "client-closed"
        log.debug("client_disconnected", request_id=ctx.request_id)

    @staticmethod
    async def _refuse(error: GatewayError, ctx: RequestContext, down: LeanDownstream) -> bool:
        """False when a response had begun: a second head would corrupt it, so the connection
        is cut (the only signal left)."""
        if down.started:
            log.debug("response_cut", request_id=ctx.request_id)
            down.abort()
            return False
        try:
            await send_problem(error, ctx, down)
        except ConnectionResetError:
            return False
        return True


async def _send_early(
    ctx: RequestContext, down: LeanDownstream, early: web.StreamResponse | AnswerWriter
) -> None:
    if not isinstance(early, web.StreamResponse):
        return  # streamed by the endpoint itself (through ctx.downstream)
    for name, value in ctx.response_headers.items():
        early.headers.setdefault(name, value)
    ctx.status = early.status
    await down.send_response(early)
