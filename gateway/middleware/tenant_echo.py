"""SPEC §3.9 / §7 response check: an upstream answer for another tenant (or, where the route
requires an echo, for none) never reaches the client. The rule is
``gateway.tenancy.identity.echo_fault``; the refusal (502, logged and audited) is
``gateway.tenancy.refusals.block_leak``.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext
from gateway.tenancy.identity import TENANT_HEADER, echo_fault
from gateway.tenancy.refusals import block_leak


def check_tenant_echo(
    ctx: RequestContext, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> None:
    """RESPONSE_CHECKS entry, for ``auth: jwt`` routes with an acting tenant. It never waits, so
    it is a plain function (no coroutine to create and finish per answer)."""
    route, tenant = ctx.route, ctx.tenant
    if route is None or route.auth != "jwt" or tenant is None:
        return
    echoes = headers.getall(TENANT_HEADER, ())
    if not echoes and not route.require_tenant_echo:
        return  # echo_fault's answer without the call: no echo, and none required
    fault = echo_fault(tenant, echoes, route.require_tenant_echo)
    if fault is not None:
        block_leak(ctx.runtime.services.audit, ctx, status, fault, echoes)
