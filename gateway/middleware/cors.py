"""CORS per route policy (App. B): preflights answered before authentication, by the origin
rules of ``gateway.origins`` (which also holds the CSRF rule for cookie tokens).

Origins not listed get no CORS headers at all, so the browser refuses on its own.
"""

from __future__ import annotations

from aiohttp import web
from multidict import istr

from gateway.context import RequestContext
from gateway.origins import origin_allowed, preflight_headers

# istr: multidict looks them up without case-folding the name on every request.
_ORIGIN = istr("Origin")
_REQUEST_METHOD = istr("Access-Control-Request-Method")
_REQUEST_HEADERS = istr("Access-Control-Request-Headers")


def apply_cors(ctx: RequestContext) -> web.StreamResponse | None:
    route = ctx.route
    if route is None or route.cors is None:
        return None
    policy = ctx.runtime.config.cors[route.cors]
    request = ctx.request
    origin = request.headers.get(_ORIGIN)
    ctx.response_headers["Vary"] = "Origin"
    requested_method = request.headers.get(_REQUEST_METHOD)
    if request.method == "OPTIONS" and origin is not None and requested_method is not None:
        headers = {"Vary": "Origin"}
        if origin_allowed(policy, origin):
            requested = request.headers.get(_REQUEST_HEADERS, "")
            headers.update(preflight_headers(policy, origin, requested_method, requested))
        ctx.status = 204
        return web.Response(status=204, headers=headers)
    if origin is not None and origin_allowed(policy, origin):
        ctx.response_headers["Access-Control-Allow-Origin"] = origin
        if policy.credentials:
            ctx.response_headers["Access-Control-Allow-Credentials"] = "true"
        if policy.expose_headers:
            ctx.response_headers["Access-Control-Expose-Headers"] = ", ".join(policy.expose_headers)
    return None
