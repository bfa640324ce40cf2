"""CORS per route policy (App. B): preflights answered before authentication; and the CSRF
rule for cookie tokens, which judges origins by the same lists.

Origins not listed get no CORS headers at all, so the browser refuses on its own.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config.model import CorsPolicy
from gateway.context import RequestContext
from gateway.errors import Forbidden
from gateway.metrics import METRICS

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
# Never a write origin: "null" is what sandboxed frames, file: pages and some redirects send
# (any site can produce it), and "*" is a wildcard in a policy, not an origin.
_NOT_ORIGINS = frozenset(("null", "*"))


def _preflight_headers(policy: CorsPolicy, origin: str, method: str, requested: str) -> dict[str, str]:
    if method.upper() not in policy.methods:
        return {}
    allowed = {h.lower() for h in policy.headers}
    wanted = [h.strip() for h in requested.split(",") if h.strip()]
    if any(h.lower() not in allowed for h in wanted):
        return {}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join(policy.methods),
        "Access-Control-Allow-Headers": ", ".join(policy.headers),
        "Access-Control-Max-Age": str(int(policy.max_age)),
    }
    if policy.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    return origin in policy.origins or ("*" in policy.origins and not policy.credentials)


async def apply_cors(ctx: RequestContext) -> web.StreamResponse | None:
    route = ctx.route
    if route is None or route.cors is None:
        return None
    policy = ctx.runtime.config.cors[route.cors]
    request = ctx.request
    origin = request.headers.get("Origin")
    ctx.response_headers["Vary"] = "Origin"
    requested_method = request.headers.get("Access-Control-Request-Method")
    if request.method == "OPTIONS" and origin is not None and requested_method is not None:
        headers = {"Vary": "Origin"}
        if _origin_allowed(policy, origin):
            requested = request.headers.get("Access-Control-Request-Headers", "")
            headers.update(_preflight_headers(policy, origin, requested_method, requested))
        ctx.status = 204
        return web.Response(status=204, headers=headers)
    if origin is not None and _origin_allowed(policy, origin):
        ctx.response_headers["Access-Control-Allow-Origin"] = origin
        if policy.credentials:
            ctx.response_headers["Access-Control-Allow-Credentials"] = "true"
        if policy.expose_headers:
            ctx.response_headers["Access-Control-Expose-Headers"] = ", ".join(policy.expose_headers)
    return None


def check_cookie_origin(ctx: RequestContext) -> None:
    """App. B CSRF: a request authenticated by the token cookie that changes something (an
    unsafe method, or a WebSocket upgrade) needs an ``Origin`` listed in the route's ``cors``
    policy; a route without one accepts no origin. Called by authentication when it takes the
    token from the cookie (a token in ``Authorization`` is exempt: a browser never attaches it
    to a cross-site request by itself).
    """
    request = ctx.request
    # SECURITY: cross-site WebSocket hijacking: the browser sends the cookie on a cross-site
    # upgrade (a GET) as well, and the socket then reads and writes as the user.
    if request.method in SAFE_METHODS and "websocket" not in request.headers.get("Upgrade", "").lower():
        return
    route = ctx.route
    policy = ctx.runtime.config.cors.get(route.cors) if route is not None and route.cors else None
    origins = request.headers.getall("Origin", ())
    # SECURITY: CSRF. No Origin (Referer is not consulted: it is stripped by policies and
    # proxies, and a fallback would be a second, weaker rule), several, "null" or one not listed.
    if (
        policy is not None
        and len(origins) == 1
        and origins[0] not in _NOT_ORIGINS
        and origins[0] in policy.origins
    ):
        return
    METRICS.auth_failures.labels("csrf_origin").inc()
    raise Forbidden("A cookie-authenticated request that changes data needs an allowed Origin")
