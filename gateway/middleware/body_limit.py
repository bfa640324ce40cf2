"""``max_body`` per route (SPEC §10): framing and a declared length over the limit are refused
up front (``gateway.http.request_body``, the one bounded body reader).

Chunked bodies are counted while they stream (``gateway.proxy._BodyLimit``).
"""

from __future__ import annotations

from aiohttp import web
from multidict import istr

from gateway.context import RequestContext
from gateway.http.request_body import refuse_unframed_or_oversized

_CONTENT_LENGTH = istr("Content-Length")  # an istr: looked up without case-folding it


def enforce_body_limit(ctx: RequestContext) -> web.StreamResponse | None:
    request = ctx.request
    # Both rules need a Content-Length (a second framing, a declared size): without one, as on
    # most requests, there is nothing to refuse here and no call is made.
    if _CONTENT_LENGTH in request.headers:
        refuse_unframed_or_oversized(request, ctx.route.max_body if ctx.route else None)
    return None
