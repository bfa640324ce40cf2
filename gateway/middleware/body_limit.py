"""``max_body`` per route (SPEC §10): a declared length over the limit is refused up front.

Chunked bodies are counted while they stream (``gateway.upstream.proxy._BodyLimit``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import BadRequest, PayloadTooLarge


async def enforce_body_limit(ctx: RequestContext) -> web.StreamResponse | None:
    request = ctx.request
    # SECURITY: request smuggling — a body framed two ways is refused, not guessed at.
    if "Content-Length" in request.headers and "Transfer-Encoding" in request.headers:
        raise BadRequest("Conflicting body framing")
    limit = ctx.route.max_body if ctx.route else None
    if limit is not None and (request.content_length or 0) > limit:
        raise PayloadTooLarge("The request body is larger than this route allows")
    return None
