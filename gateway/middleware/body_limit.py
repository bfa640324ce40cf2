"""``max_body`` per route (SPEC §10): framing and a declared length over the limit are refused
up front (``gateway.http.request_body``, the one bounded body reader).

Chunked bodies are counted while they stream (``gateway.proxy._BodyLimit``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.http.request_body import refuse_unframed_or_oversized


def enforce_body_limit(ctx: RequestContext) -> web.StreamResponse | None:
    refuse_unframed_or_oversized(ctx.request, ctx.route.max_body if ctx.route else None)
    return None
