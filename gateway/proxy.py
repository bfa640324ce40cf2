"""Forwarding one request to its upstream and streaming the answer back (SPEC §10).

Bodies stream both ways in chunks (constant memory); the upstream header hooks add to what is
sent, and the response checks run on the upstream's status and headers before a single byte of
its body reaches the client. Both lists live in ``gateway.pipeline``; the listener hands them
in, so the proxy imports no stage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from operator import itemgetter
from typing import Any, cast

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.bounded_memo import remember
from gateway.context import RequestContext
from gateway.errors import InternalError, PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.exchange import AnswerWriter, ServerRequest
from gateway.header_lines import header_line, line_name
from gateway.http.expect_continue import send_continue
from gateway.killswitch.streams import STREAMS
from gateway.metrics import METRICS
from gateway.tracing.context import TRACEPARENT, TRACESTATE
from gateway.upstream.forwarding import (
    UpstreamHeaders,
    downstream_response_headers,
    upstream_request_headers,
    wants_websocket,
)
from gateway.upstream.pools import IDEMPOTENT_METHODS, UpstreamResponse

CHUNK = 64 * 1024
# istr: multidict looks these up (and sets them) without case-folding the name on every request.
_CONTENT_LENGTH = istr("Content-Length")
_TRANSFER_ENCODING = istr("Transfer-Encoding")
_CACHE_CONTROL = istr("Cache-Control")
_CONNECTION = istr("Connection")
# The trace's header lines up to their value: one concatenation per request each.
_TRACEPARENT_PREFIX = header_line("traceparent", "")
_TRACESTATE_PREFIX = header_line("tracestate", "")
ResponseCheck = Callable[
    [RequestContext, int, "CIMultiDict[str] | CIMultiDictProxy[str]"], "Coroutine[Any, Any, None] | None"
]
"""Runs on the upstream's status and headers before a byte of its body reaches the client;
raising a ``GatewayError`` withholds the body (the upstream connection is then closed). Like a
pipeline stage (``gateway.pipeline``), a check that never waits is a plain function returning
None; one that has to wait (the store) returns a coroutine, which the proxy awaits for the same
outcome: a plain call costs far less than a coroutine created, awaited and finished."""
UpstreamHeaderHook = Callable[[RequestContext, UpstreamHeaders], None]
"""Appends to the ``Name: value`` lines sent upstream (the verified identity, SPEC §7); the list
is ``gateway.pipeline.UPSTREAM_HEADER_HOOKS``, handed in by the listener. A hook only appends,
and only names the gateway owns (every client copy is gone already, ``Runtime.never_forwarded``),
never Content-Length or Transfer-Encoding: ``UpstreamHeaders.framed`` does not look at them."""


class _HeadWithBodyResponse(web.StreamResponse):
    """A StreamResponse whose head waits for the body: used only when the whole upstream body
    is already here, so ``write_eof(body)`` sends head and body in one write (aiohttp's
    ``Response`` does the same). Streamed answers keep the head-first default, so a client of a
    slow or endless body (SSE, long poll) still sees the head at once."""

    _send_headers_immediately = False


class _BodyLimit:
    """Counts streamed request bytes; remembers that the limit was hit for the 413 answer."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.exceeded = False

    async def stream(self, request: ServerRequest) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            seen += len(chunk)
            if self.limit is not None and seen > self.limit:
                self.exceeded = True
                raise PayloadTooLarge("The request body is larger than this route allows")
            yield chunk


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


def _has_body(request: ServerRequest) -> bool:
    coding = request.headers.get(_TRANSFER_ENCODING)
    if coding is not None and coding.lower().strip() == "chunked":
        return True
    return request.content_length not in (None, 0)


def _set_content_length(headers: UpstreamHeaders, value: str) -> None:
    """What a CIMultiDict set does: the first Content-Length (any letter case) takes ``value``,
    the others go; none there, it is appended. Only bodies read whole (webhooks) come here."""
    headers.framed = True
    first = -1
    host_at = headers.host_at
    kept: list[str] = []
    for index, line in enumerate(headers):
        if line_name(line).lower() == "content-length":
            if first >= 0:
                if index < headers.host_at:
                    host_at -= 1  # Host's place stays before the same line
                continue
            first = len(kept)
        kept.append(line)
    own = header_line(_CONTENT_LENGTH, value)
    if first < 0:
        headers.append(own)
        return
    kept[first] = own
    headers[:] = kept
    headers.host_at = host_at


async def proxy_request(
    ctx: RequestContext, checks: Sequence[ResponseCheck], header_hooks: Sequence[UpstreamHeaderHook]
) -> web.StreamResponse | AnswerWriter:
    """Forward ``ctx``'s request upstream and stream the answer back. ``checks`` and
    ``header_hooks`` are ``pipeline.RESPONSE_CHECKS`` and ``pipeline.UPSTREAM_HEADER_HOOKS``, and
    required: a caller that forgot the hooks would forward without the identity headers."""
    assert ctx.route is not None and ctx.target is not None
    request = ctx.request
    runtime = ctx.runtime
    transport = runtime.upstreams[ctx.route.upstream]
    # ``Name: value`` lines in wire order, not a CIMultiDict: each header below is a list append,
    # and the transport joins them once (request_head).
    headers = upstream_request_headers(
        request.headers,
        peer_ip=ctx.peer_ip,
        peer_trusted=ctx.peer_trusted,
        scheme=runtime.scheme,
        host=request.host,
        request_id=ctx.request_id,
        # SECURITY: identity spoofing — client-supplied identity headers (the built-in four and
        # tenancy.strip_headers) never reach an upstream (SPEC §7), in any letter case and
        # however often repeated (the set is lower-case, the match case-insensitive): the
        # runtime's set holds them, built once from strip_headers (never_forwarded_names).
        never_forwarded=runtime.never_forwarded,
    )
    # App. C: the trace goes on with the gateway's own span as the upstream's parent (the
    # client's traceparent and tracestate are never forwarded: appended, not set).
    trace = ctx.trace
    headers.append(_TRACEPARENT_PREFIX + trace[TRACEPARENT])
    if (state := trace[TRACESTATE]) is not None:
        headers.append(_TRACESTATE_PREFIX + state)
    # The identity the upstream acts on comes from the verified token (and a grant), never the
    # client (gateway.pipeline.UPSTREAM_HEADER_HOOKS).
    for hook in header_hooks:
        hook(ctx, headers)
    if ctx.route.websocket and wants_websocket(request):  # the route's flag first: one load
        # SPEC §9: cut when a switch engages; App. C: closed (1008) when its session ends.
        with STREAMS.track(
            ctx, runtime.services, runtime.config, request.transport, websocket=True
        ) as stream:
            return await _proxy_websocket(ctx, headers, stream.attach)

    if ctx.route.auth == "webhook" and ctx.body is None:
        # SECURITY: fail closed should the signature stage ever be skipped (it once was, in dev).
        raise InternalError("The webhook signature was not checked")
    has_body = _has_body(request)
    limit = _BodyLimit(ctx.route.max_body) if has_body else None  # nothing to count without a body
    body_source: AsyncIterable[bytes] | None = limit.stream(request) if limit is not None else None
    if ctx.body is not None:  # already read (and verified) whole: forward the same bytes
        _set_content_length(headers, str(len(ctx.body)))
        body_source = _once(ctx.body)
    if has_body:
        # RFC 9110 §10.1.1: a server may skip the 100 where the framing says there is no content
        # (as read_body_fields does): the usual bodiless request costs no look for Expect.
        send_continue(ctx)
    try:
        upstream = await transport.send(
            request.method,
            ctx.target.upstream_target,
            headers,
            body_source,
            retryable=request.method in IDEMPOTENT_METHODS and not has_body,
        )
    except (UpstreamUnavailable, UpstreamTimeout) as error:
        if limit is not None and limit.exceeded:
            raise PayloadTooLarge("The request body is larger than this route allows") from None
        if (body_error := request.content.exception()) is not None:
            # The client's body failed (body_timeout, a hang-up), not the upstream: say so.
            raise body_error from None
        METRICS.upstream_errors.labels(ctx.route.upstream, error.slug).inc()
        raise
    try:
        # SPEC §9: re-checked now, and cut if a switch engages mid-stream
        with STREAMS.track(ctx, runtime.services, runtime.config, request.transport):
            return await _stream_response(ctx, upstream, checks)
    finally:
        upstream.release()


async def _stream_response(
    ctx: RequestContext, upstream: UpstreamResponse, checks: Sequence[ResponseCheck]
) -> web.StreamResponse | AnswerWriter:
    ctx.status = upstream.status
    try:
        for check in checks:
            waiting = check(ctx, upstream.status, upstream.headers)
            if waiting is not None:  # the check has to wait (a login route's outcome)
                await waiting
    except BaseException:
        # SECURITY: a withheld body (another tenant's data) must not stay on a pooled connection
        # where anything could read it: the connection is closed, never reused.
        upstream.discard()
        raise
    whole = upstream.whole_body()
    received, own = upstream.headers, ctx.response_headers
    private, tls = ctx.claims is not None, ctx.runtime.tls
    if (down := ctx.downstream) is not None:
        if whole is not None and ctx.request.method != "HEAD":
            # The common answer, head and body in one write, without a coroutine for it; its
            # headers by the plan for its names (_plan_for): no multidict built, no name looked up.
            names = tuple(received.keys())
            if len(names) == len(received):  # each name once: the values line up with the names
                key = (names, received.get(_CONNECTION), tuple(own), private, tls)
                try:
                    plan = _PLANS[key]
                except KeyError:
                    plan = _plan_for(key)
                if plan is not None:
                    out, pick, constants = plan
                    values = pick((*received.values(), *own.values(), *constants))
                    if down.write_whole_pairs(upstream.status, upstream.reason or None, out, values, whole):
                        await down.drain()
                    return down
            headers = _answer_headers(received, own, private, tls)
            if down.write_whole(upstream.status, upstream.reason or None, headers, whole):
                await down.drain()
            return down
        return await _stream_lean(ctx, down, upstream, _answer_headers(received, own, private, tls), whole)
    headers = _answer_headers(received, own, private, tls)
    kind = web.StreamResponse if whole is None else _HeadWithBodyResponse
    response = kind(status=upstream.status, reason=upstream.reason or None, headers=headers)
    length = upstream.headers.get(_CONTENT_LENGTH)
    if length is not None and length.isdigit():
        response.content_length = int(length)
    ctx.status = upstream.status
    # cast: ``ctx.downstream`` is None, so this is aiohttp's listener and its ``web.BaseRequest``.
    await response.prepare(cast(web.BaseRequest, ctx.request))
    if whole is not None:
        await response.write_eof(whole)
        return response
    try:
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
    except (UpstreamTimeout, UpstreamUnavailable):
        # Headers are gone already: the only honest signal left is a cut connection.
        if ctx.request.transport is not None:
            ctx.request.transport.abort()
        raise
    await response.write_eof()
    return response


def _answer_headers(
    received: CIMultiDict[str] | CIMultiDictProxy[str], own: Mapping[str, str], private: bool, tls: bool
) -> CIMultiDict[str]:
    """A proxied answer's headers for the client: the upstream's that may pass, then the
    gateway's own (``ctx.response_headers``) in their place or after them, and on an
    authenticated answer (``private``) a Cache-Control unless the upstream sent one."""
    headers = downstream_response_headers(received, tls=tls)
    headers.update(own)
    if private:
        # SECURITY: a shared cache must not keep one user's answer for the next (App. C). One
        # call: added at the end unless a Cache-Control is there (the upstream's is kept).
        headers.setdefault(_CACHE_CONTROL, "private")
    return headers


# A proxied answer's headers depend on its values only as copies: which headers pass, in what
# order, under which spelling, and what the gateway adds, is decided by the upstream's names in
# order, its Connection value (the names it lists are dropped), the gateway's own names and the
# two facts above. So ``_answer_headers`` runs once per such key, on stand-in values, and leaves a
# plan: the names out, and which value goes with each (an upstream's, an own one, or a constant
# the merge set), picked per answer by one C call. The upstream's names and Connection value are
# in the key, so it is bounded, and a key too long is never kept: SECURITY: memory exhaustion.
_PlanKey = tuple[tuple[str, ...], "str | None", tuple[str, ...], bool, bool]
_Plan = tuple[tuple[str, ...], Callable[[tuple[str, ...]], tuple[str, ...]], tuple[str, ...]]
_PLANS: dict[_PlanKey, _Plan | None] = {}
_PLANS_LIMIT = 256
_PLAN_KEY_MAX = 4096  # characters of names and Connection value a remembered key may hold


def _plan_for(key: _PlanKey) -> _Plan | None:
    names, connection, own_names, private, tls = key
    width = len(names) + len(own_names)
    # A stand-in names its value's place; the Connection value is the real one (it decides).
    marks = [f"\0{index}" for index in range(width)]
    place = {mark: index for index, mark in enumerate(marks)}
    stand_ins = marks[: len(names)]
    if connection is not None:  # the one name (each is there once) the lookup matched
        stand_ins[place[CIMultiDict(zip(names, stand_ins, strict=True))[_CONNECTION]]] = connection
    received: CIMultiDict[str] = CIMultiDict(zip(names, stand_ins, strict=True))
    merged = _answer_headers(received, dict(zip(own_names, marks[len(names) :], strict=True)), private, tls)
    out: list[str] = []
    sources: list[int] = []
    constants: list[str] = []
    for name, value in merged.items():
        where = place.get(value)
        if where is None:  # a value the merge set itself (nosniff, HSTS, private)
            where = width + len(constants)
            constants.append(value)
        out.append(name)
        sources.append(where)
    # itemgetter of one place gives the value, not a tuple: such an answer keeps the general way
    plan = (tuple(out), itemgetter(*sources), tuple(constants)) if len(sources) > 1 else None
    size = sum(map(len, names)) + sum(map(len, own_names)) + len(connection or "")
    if size <= _PLAN_KEY_MAX:
        remember(_PLANS, _PLANS_LIMIT, key, plan)  # the upstream's names
    return plan


async def _stream_lean(
    ctx: RequestContext,
    down: AnswerWriter,
    upstream: UpstreamResponse,
    headers: CIMultiDict[str],
    whole: bytes | None,
) -> AnswerWriter:
    """The same answer on the lean listener: one write when the body is all here, else the head
    at once and the body as it comes, each chunk waiting for the client to take the last."""
    if whole is not None:  # a HEAD answer (any other whole body is _stream_response's)
        # Content-Length is looked up only where it is used: a HEAD answer, or a streamed body.
        length = upstream.headers.get(_CONTENT_LENGTH)
        if length is not None and length.isdigit():
            await down.start(upstream.status, upstream.reason or None, headers, int(length))
            return down
        await down.send_whole(upstream.status, upstream.reason or None, headers, whole)
        return down
    length = upstream.headers.get(_CONTENT_LENGTH)
    content_length = int(length) if length is not None and length.isdigit() else None
    await down.start(upstream.status, upstream.reason or None, headers, content_length)
    try:
        async for chunk in upstream.iter_chunks():
            await down.write(chunk)
    except (UpstreamTimeout, UpstreamUnavailable):
        # Headers are gone already: the only honest signal left is a cut connection.
        down.abort()
        raise
    await down.end()
    return down


async def _proxy_websocket(
    ctx: RequestContext, headers: UpstreamHeaders, accepted: Callable[[web.WebSocketResponse], None]
) -> web.StreamResponse:
    assert ctx.route is not None and ctx.target is not None
    request = ctx.request
    transport = ctx.runtime.upstreams[ctx.route.upstream]
    offered = tuple(
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    )
    upstream_headers = CIMultiDict(headers.with_host_slot())  # Host in place, as over HTTP
    for name in (
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
    ):
        upstream_headers.popall(name, None)
    upstream = await transport.websocket(ctx.target.upstream_target, upstream_headers, offered)
    downstream = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False,
        max_msg_size=0,
    )
    # App. C "every answer is the gateway's": the 101 too (aiohttp would name its own version).
    downstream.headers.update(ctx.response_headers)
    ctx.status = 101
    # cast: a WebSocket is upgraded by aiohttp's server, so the request is its ``web.BaseRequest``.
    await downstream.prepare(cast(web.BaseRequest, request))
    accepted(downstream)
    try:
        await asyncio.gather(_pump(upstream, downstream), _pump(downstream, upstream))
    finally:
        await upstream.close()
        await downstream.close()
    return downstream


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for message in source:
        if sink.closed:
            break
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type == aiohttp.WSMsgType.PONG:
            await sink.pong(message.data)
    await sink.close()
