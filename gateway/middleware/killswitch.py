"""SPEC §3 steps 3 and 6½: kill switches, from memory (no store round trip per request).

``check_killswitch`` runs right after route matching and covers the scopes that need no
identity (global, module, route, integration, endpoint); ``check_tenant_killswitch`` runs once
the acting tenant is known (after tenancy, so support users under a grant are covered).
The gateway's own endpoints are answered inside ``resolve_route``; it calls
``check_gateway_endpoint`` first, so a global switch spares only health and ready. Those that
act for a tenant (grants, MFA, the tenant's audit export) learn the tenant only when they verify
the token; ``check_endpoint_tenant`` is called there, once, for all of them (Appendix C).
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import NotReady
from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.model import isolated_error
from gateway.killswitch.streams import acting_tenants, refusal_for
from gateway.routing import PROBE_PATHS


def _index(ctx: RequestContext) -> SwitchIndex:
    index = ctx.runtime.services.killswitches.index
    if index is None:
        # SECURITY: fail closed - before the first load this instance cannot know which
        # switches survived the restart (SPEC §14), and "no switches" would be a guess.
        raise NotReady("The kill switch set is not loaded yet", headers={"Retry-After": "1"})
    return index


def wants_websocket(request: web.BaseRequest) -> bool:
    # SECURITY: any upgrade asking for websocket counts, whatever else Connection says, so a
    # read-only switch cannot be dodged by a header the proxy would still upgrade on.
    return "websocket" in request.headers.get("Upgrade", "").lower()


async def check_killswitch(ctx: RequestContext) -> web.StreamResponse | None:
    index = _index(ctx)
    ctx.killswitch_index = index  # later checks skip what this set already cleared
    if index.empty:
        return None
    assert ctx.target is not None
    now = time.time()
    request = ctx.request
    switch = index.refusal(
        request.method,
        ctx.target.path,
        ctx.route,
        websocket=wants_websocket(request),
        now=now,
        case_insensitive=ctx.runtime.config.routes_case_insensitive,
    )
    if switch is not None:
        raise isolated_error(switch, now)
    return None


def check_gateway_endpoint(ctx: RequestContext) -> None:
    """Global and endpoint switches on the gateway's own endpoints, except health and ready."""
    assert ctx.target is not None
    if ctx.target.path in PROBE_PATHS:
        return
    index = _index(ctx)
    if index.empty:
        return
    now = time.time()
    switch = index.refusal(
        ctx.request.method,
        ctx.target.path,
        None,
        websocket=wants_websocket(ctx.request),
        now=now,
        case_insensitive=ctx.runtime.config.routes_case_insensitive,
    )
    if switch is not None:
        raise isolated_error(switch, now)


def check_endpoint_tenant(ctx: RequestContext, tenant: str) -> None:
    """Appendix C: a tenant switch covers that tenant's calls to ``/_gateway/*`` as well.

    SECURITY: without it an isolated tenant's admin could plant persistence during the isolation
    (a 24 h support grant, a re-enrolled second factor) or export the trail being investigated.
    ``read-only`` lets their GETs through (grant list, audit export), like everywhere else.
    """
    index = _index(ctx)
    if index.empty:
        return
    now = time.time()
    switch = index.tenant_refusal((tenant,), ctx.request.method, websocket=False, now=now)
    if switch is not None:
        raise isolated_error(switch, now)


async def check_tenant_killswitch(ctx: RequestContext) -> web.StreamResponse | None:
    index = _index(ctx)
    same_set = index is ctx.killswitch_index
    if same_set and (index.empty or not (tenants := acting_tenants(ctx))):
        return None  # the common case: nothing to check, so no clock or header work either
    now = time.time()
    websocket = wants_websocket(ctx.request)
    if not same_set:
        # A new set was applied since check_killswitch: check every scope against it.
        switch = refusal_for(index, ctx, websocket=websocket, now=now)
        ctx.killswitch_index = index
    else:
        switch = index.tenant_refusal(tenants, ctx.request.method, websocket=websocket, now=now)
    if switch is not None:
        raise isolated_error(switch, now)
    return None
