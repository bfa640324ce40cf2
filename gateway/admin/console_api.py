"""What the incident console reads besides the SPEC §12 endpoints (Appendix C):

* ``GET /admin/whoami`` — the caller's actor and roles, so the console draws only the buttons
  the role matrix allows (the API refuses the rest anyway);
* ``GET /admin/instances`` — every instance heartbeating into the store, with its applied
  switch-set version, heartbeat age, store state and ``enforcing`` / ``lagging`` / ``silent``;
* ``GET /admin/killswitch/targets`` — the engage pickers, from the running config;
* ``GET /admin/traffic`` — the last 15 minutes of this process's traffic (``gateway.traffic``),
  with what each ``mode: shadow`` policy would have refused (``shadow_refusals``) and the
  running config's shadow policies (``shadow_policies``), so one that never fired shows 0.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.context import ActorKey, RolesKey, RuntimeKey
from gateway.config_model import GatewayConfig
from gateway.http.json_body import json_response
from gateway.killswitch.model import MODES
from gateway.killswitch.registry import HEARTBEAT, LIVE_WINDOW
from gateway.killswitch.scopes import SCOPES, known_targets
from gateway.ratelimit.policies import PRE_AUTH_POLICY
from gateway.traffic.recorder import TRAFFIC


async def whoami(request: web.Request) -> web.Response:
    # Read first: inside the dict literal mypy would infer each key's type from the other value.
    actor, roles = request[ActorKey], request[RolesKey]
    return json_response({"actor": actor, "roles": sorted(roles)})


async def list_instances(request: web.Request) -> web.Response:
    registry = request.app[RuntimeKey]().services.killswitches
    version, instances = await registry.instance_states()  # StoreUnavailable → 503 problem
    return json_response(
        {
            "version": version,
            "instances": instances,
            "heartbeat_s": HEARTBEAT,
            "silent_after_s": LIVE_WINDOW,
        }
    )


async def get_targets(request: web.Request) -> web.Response:
    targets = known_targets(request.app[RuntimeKey]().config)
    return json_response({"scopes": list(SCOPES), "modes": list(MODES), **targets})


def shadow_policies(config: GatewayConfig) -> list[str]:
    """The policies with a ``mode: shadow`` rule (``pre_auth`` for the pre-auth rules): the
    names the shadow refusal counter is labelled with."""
    limits = config.rate_limits
    names = {name for name, rules in limits.policies.items() if any(r.mode == "shadow" for r in rules)}
    if any(rule.mode == "shadow" for rule in limits.pre_auth):
        names.add(PRE_AUTH_POLICY)
    return sorted(names)


async def get_traffic(request: web.Request) -> web.Response:
    runtime = request.app[RuntimeKey]()
    report = TRAFFIC.report(runtime.access_log.pseudonym)
    report["shadow_policies"] = shadow_policies(runtime.config)
    return json_response(report)


def add_console_api_routes(app: web.Application) -> None:
    app.router.add_get("/admin/whoami", whoami)
    app.router.add_get("/admin/instances", list_instances)
    app.router.add_get("/admin/killswitch/targets", get_targets)
    app.router.add_get("/admin/traffic", get_traffic)
