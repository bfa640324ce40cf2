"""CORS per route policy (App. B): preflights answered before authentication.

Origins not listed get no CORS headers at all, so the browser refuses on its own.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config.model import CorsPolicy
from gateway.context import RequestContext


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
