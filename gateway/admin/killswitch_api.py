"""``POST|GET /admin/killswitch``, ``DELETE /admin/killswitch/{id}`` (SPEC §9, App. B).

``POST`` answers only when every live instance has applied the new switch set, or after 2 s
naming the ones that have not: a responder must know whether the isolation is really in force.
Engage and release are audited with actor, reason, incident, scope and target — in ``_system``,
and for a tenant switch also in the tenant's own trail (so the tenant sees it in its export).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RuntimeKey
from gateway.config_model import GatewayConfig
from gateway.errors import BadRequest, NotFound, StoreUnavailable
from gateway.http.json_body import json_response, read_json_object
from gateway.killswitch.model import Switch, audit_trails, parse_ttl, validate_spec
from gateway.killswitch.registry import KillSwitchRegistry
from gateway.killswitch.scopes import SCOPE_BY_NAME
from gateway.traffic.dry_run import dry_run
from gateway.traffic.recorder import TRAFFIC


def _registry(request: web.Request) -> KillSwitchRegistry:
    return request.app[RuntimeKey]().services.killswitches


def _check_target_exists(config: GatewayConfig, switch: Switch) -> None:
    """A typo must not "isolate" nothing: module, route and integration targets name something
    the running config has (the answer lists what exists)."""
    rule = SCOPE_BY_NAME[switch.scope]
    known = None if rule.known_targets is None else rule.known_targets(config)
    if known is not None and switch.target not in known:
        raise BadRequest(f"No {switch.scope} of that name", extensions={"known": known})


async def _audit(request: web.Request, event: str, switch: Switch, reason: str | None, **extra: Any) -> None:
    tenants = audit_trails(switch)
    await request.app[AuditKey].record(
        event,
        tenants=tenants,
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        incident=switch.incident,
        details={
            "id": switch.id,
            "scope": switch.scope,
            "target": switch.target,
            "mode": switch.mode,
            "reason": reason,
            **extra,
        },
    )


def _dry_run(request: web.Request) -> bool:
    value = request.query.get("dry_run", "false").lower()
    if value not in ("true", "1", "false", "0"):
        raise BadRequest("dry_run must be true or false")
    return value in ("true", "1")


async def engage(request: web.Request) -> web.Response:
    data = await read_json_object(request)
    try:
        spec = validate_spec(data)
        ttl = parse_ttl(data.get("ttl"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    config = request.app[RuntimeKey]().config
    _check_target_exists(config, spec)
    if _dry_run(request):
        # Appendix C: what it would have refused, from this process's own counters; nothing is
        # engaged, stored or audited.
        return json_response(dry_run(spec, config, TRAFFIC, time.time()).to_json())
    registry = _registry(request)
    switch = await registry.engage(spec, ttl=ttl, actor=request[ActorKey])
    await _audit(
        request, "killswitch.engaged", switch, switch.reason, expires_at=switch.to_json()["expires_at"]
    )
    acknowledged, lagging = await registry.wait_acknowledged(switch.version)
    body = {**switch.to_json(), "acknowledged": acknowledged, "lagging": lagging}
    return json_response(body, status=201)


async def list_switches(request: web.Request) -> web.Response:
    registry = _registry(request)
    try:
        switches, instances, stale = await registry.stored_switches(), await registry.instances(), False
    except StoreUnavailable:
        # An operator during an outage still needs to see what this instance enforces.
        index = registry.index
        switches, instances, stale = list(index.switches) if index else [], [], True
    return json_response(
        {
            "switches": [s.to_json() for s in switches],
            "version": registry.version,
            "instances": instances,
            "stale": stale,
        }
    )


async def release(request: web.Request) -> web.Response:
    data = await read_json_object(request) if request.can_read_body else {}
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise BadRequest("reason must be a string of at most 500 characters")
    registry = _registry(request)
    released = await registry.release(request.match_info["id"])
    if released is None:
        raise NotFound("No active kill switch with that id")
    switch, version = released
    await _audit(request, "killswitch.released", switch, reason, engaged_reason=switch.reason)
    acknowledged, lagging = await registry.wait_acknowledged(version)
    body = {**switch.to_json(), "released_version": version, "acknowledged": acknowledged, "lagging": lagging}
    return json_response(body)


async def extend(request: web.Request) -> web.Response:
    """``PATCH /admin/killswitch/{id}`` ``{"ttl": "2h", "reason"?}``: a new expiry from now."""
    data = await read_json_object(request)
    try:
        ttl = parse_ttl(data.get("ttl"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if ttl is None:
        raise BadRequest("ttl is required")
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
        raise BadRequest("reason must be a string of at most 500 characters")
    registry = _registry(request)
    switch = await registry.extend(request.match_info["id"], ttl)
    if switch is None:
        raise NotFound("No active kill switch with that id")
    expires_at = switch.to_json()["expires_at"]
    await _audit(request, "killswitch.extended", switch, reason, expires_at=expires_at)
    acknowledged, lagging = await registry.wait_acknowledged(switch.version)
    return json_response({**switch.to_json(), "acknowledged": acknowledged, "lagging": lagging})


def add_killswitch_routes(app: web.Application) -> None:
    app.router.add_post("/admin/killswitch", engage)
    app.router.add_get("/admin/killswitch", list_switches)
    app.router.add_delete("/admin/killswitch/{id}", release)
    app.router.add_patch("/admin/killswitch/{id}", extend)
