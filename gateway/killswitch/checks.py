"""Checking one request against the switch set in memory (SPEC §9): what the pipeline's two
kill-switch stages, the gateway's own endpoints and the stream registry all call.

Plain functions over ``RequestFacts`` and a ``SwitchIndex``: no aiohttp, no per-request
objects. A refusal is raised as the ``Isolated`` error ``model.isolated_error`` builds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from multidict import istr

from gateway.errors import NotReady
from gateway.facts import RequestFacts
from gateway.killswitch.matcher import RouteFacts, SwitchIndex
from gateway.killswitch.model import Switch, isolated_error
from gateway.routing import PROBE_PATHS

_UPGRADE = istr("Upgrade")  # istr: a multidict looks it up without case folding


def loaded_index(index: SwitchIndex | None) -> SwitchIndex:
    if index is None:
        # SECURITY: fail closed - before the first load this instance cannot know which
        # switches survived the restart (SPEC §14), and "no switches" would be a guess.
        raise NotReady("The kill switch set is not loaded yet", headers={"Retry-After": "1"})
    return index


def wants_websocket(headers: Mapping[str, str]) -> bool:
    # SECURITY: any upgrade asking for websocket counts, whatever else Connection says, so a
    # read-only switch cannot be dodged by a header the proxy would still upgrade on.
    return "websocket" in headers.get(_UPGRADE, "").lower()


def refuse_unidentified(
    index: SwitchIndex, facts: RequestFacts, route: RouteFacts | None, *, case_insensitive: bool
) -> None:
    """Raise for the first switch among the scopes that need no identity refusing this request."""
    assert facts.target is not None
    request = facts.request
    now = time.time()
    switch = index.refusal(
        request.method,
        facts.target.path,
        route,
        websocket=wants_websocket(request.headers),
        now=now,
        case_insensitive=case_insensitive,
    )
    if switch is not None:
        raise isolated_error(switch, now)


def check_gateway_endpoint(index: SwitchIndex | None, facts: RequestFacts, *, case_insensitive: bool) -> None:
    """Global and endpoint switches on the gateway's own endpoints, except health and ready."""
    assert facts.target is not None
    if facts.target.path in PROBE_PATHS:  # SPEC §9: probes keep answering
        return
    index = loaded_index(index)
    if index.unidentified:
        refuse_unidentified(index, facts, None, case_insensitive=case_insensitive)


def check_endpoint_tenant(index: SwitchIndex | None, method: str, tenant: str) -> None:
    """Appendix C: a tenant switch covers that tenant's calls to ``/_gateway/*`` as well.

    SECURITY: without it an isolated tenant's admin could plant persistence during the isolation
    (a 24 h support grant, a re-enrolled second factor) or export the trail being investigated.
    ``read-only`` lets their GETs through (grant list, audit export), like everywhere else.
    """
    index = loaded_index(index)
    if index.empty:
        return
    now = time.time()
    switch = index.tenant_refusal((tenant,), method, websocket=False, now=now)
    if switch is not None:
        raise isolated_error(switch, now)


def acting_tenants(facts: RequestFacts) -> tuple[str, ...]:
    """The acting tenant and, when different, the token's own tenant: isolating a tenant covers
    its users acting elsewhere under a grant as well as anyone acting in it."""
    claims_tenant = facts.claims.tenant if facts.claims is not None else None
    if facts.tenant is None:
        return (claims_tenant,) if claims_tenant else ()
    if claims_tenant is None or claims_tenant == facts.tenant:
        return (facts.tenant,)
    return (facts.tenant, claims_tenant)


def refusal_for(
    index: SwitchIndex, facts: RequestFacts, *, websocket: bool, now: float, case_insensitive: bool
) -> Switch | None:
    """Every scope at once (a new set applied mid-pipeline; requests already past the pipeline)."""
    if facts.target is None or index.empty:
        return None
    method = facts.request.method
    hit = index.refusal(
        method,
        facts.target.path,
        facts.route,
        websocket=websocket,
        now=now,
        case_insensitive=case_insensitive,
    )
    return hit or index.tenant_refusal(acting_tenants(facts), method, websocket=websocket, now=now)


__all__ = [
    "acting_tenants",
    "check_endpoint_tenant",
    "check_gateway_endpoint",
    "loaded_index",
    "refusal_for",
    "refuse_unidentified",
    "wants_websocket",
]
