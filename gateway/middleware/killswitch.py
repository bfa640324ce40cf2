"""SPEC §3 steps 3 and 6½: kill switches, from memory (no store round trip per request).

``check_killswitch`` runs right after route matching and covers the scopes that need no
identity (global, module, route, integration, endpoint); ``check_tenant_killswitch`` runs once
the acting tenant is known (after tenancy, so support users under a grant are covered).
The gateway's own endpoints are checked by ``gateway.killswitch.checks`` directly:
``check_gateway_endpoint`` in ``resolve_route`` (a global switch spares only health and ready),
``check_endpoint_tenant`` where those acting for a tenant verify the token (Appendix C).
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.context import RequestContext
from gateway.killswitch.checks import (
    acting_tenants,
    loaded_index,
    refusal_for,
    refuse_unidentified,
    wants_websocket,
)
from gateway.killswitch.model import isolated_error


def check_killswitch(ctx: RequestContext) -> web.StreamResponse | None:
    index = loaded_index(ctx.runtime.services.killswitches.index)
    ctx.killswitch_index = index  # later checks skip what this set already cleared
    if index.unidentified:  # a global, route-field or endpoint switch: else nothing can match
        refuse_unidentified(
            index, ctx, ctx.route, case_insensitive=ctx.runtime.config.routes_case_insensitive
        )
    return None


def check_tenant_killswitch(ctx: RequestContext) -> web.StreamResponse | None:
    index = loaded_index(ctx.runtime.services.killswitches.index)
    same_set = index is ctx.killswitch_index
    if same_set and (index.empty or not (tenants := acting_tenants(ctx)) or not index.names_tenant(tenants)):
        return None  # the common case: nothing to check, so no clock or header work either
    now = time.time()
    websocket = wants_websocket(ctx.request.headers)
    if not same_set:
        # A new set was applied since check_killswitch: check every scope against it.
        case_insensitive = ctx.runtime.config.routes_case_insensitive
        switch = refusal_for(index, ctx, websocket=websocket, now=now, case_insensitive=case_insensitive)
        ctx.killswitch_index = index
    else:
        switch = index.tenant_refusal(tenants, ctx.request.method, websocket=websocket, now=now)
    if switch is not None:
        raise isolated_error(switch, now)
    return None
