"""SPEC §3 step 2: canonical path (§4) and route match; the gateway's own endpoints."""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.health import GATEWAY_ENDPOINTS, serve_gateway_endpoint
from gateway.routing import normalise_target


async def resolve_route(ctx: RequestContext) -> web.StreamResponse | None:
    request = ctx.request
    ctx.target = normalise_target(request.raw_path, host=request.headers.get("Host"))
    if ctx.target.path in GATEWAY_ENDPOINTS:
        return await serve_gateway_endpoint(ctx)
    ctx.route = ctx.runtime.routes.match(ctx.target.path, request.method)
    return None
