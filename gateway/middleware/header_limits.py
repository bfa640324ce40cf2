"""``listen.limits`` header size and count, checked by the gateway itself (App. B).

aiohttp's parser limits sit above these, so an oversized request normally meets this stage's
problem+json 431 rather than the parser's plain-text error; the parser error path is
covered by ``GuardedRequestHandler.handle_error``.
"""

from __future__ import annotations

from itertools import chain

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import HeadersTooLarge


def enforce_header_limits(ctx: RequestContext) -> web.StreamResponse | None:
    limits = ctx.runtime.config.listen.limits
    request = ctx.request
    # One item per field in the headers as in raw_headers (both parsers add to both per line);
    # the lean listener's request keeps no raw fields unless asked (off the common path).
    count = len(request.headers)
    if count > limits.max_headers:
        raise HeadersTooLarge("Too many request header fields")
    # name + ": " + value + CRLF, as on the wire
    line_limit = limits.max_header_line
    # Every name and value summed: when all of them together fit one line's limit, no single
    # line can exceed it, and the total decides alone (the common case: no loop here). The lean
    # listener's request carries the sum, counted while parsing (``header_size``); summing it
    # here again cost about 4,500 instructions per request even done in C.
    total = getattr(request, "header_size", None)
    if total is None:
        total = sum(map(len, chain.from_iterable(request.raw_headers)))
    if total <= line_limit:
        if total + 4 * count > limits.max_header_bytes:
            raise HeadersTooLarge("The request header section is too large")
        return None
    size = 0
    for name, value in request.raw_headers:
        line = len(name) + len(value)
        # SECURITY: one oversized field passes a total budget yet trips (or truncates at) a
        # backend with a smaller per-header limit (App. C max_header_line, name + value).
        if line > line_limit:
            raise HeadersTooLarge("A request header field is too large")
        size += line + 4
    if size > limits.max_header_bytes:
        # SECURITY: the detail names no header and no value (tokens must never be echoed).
        raise HeadersTooLarge("The request header section is too large")
    return None
