"""``/_gateway/health`` (live) and ``/_gateway/ready`` (SPEC §11) on the public listener."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import NotReady
from gateway.http.json_body import json_response


async def health(ctx: RequestContext) -> web.StreamResponse:
    return json_response({"status": "ok", "instance": ctx.runtime.status.instance_id})


async def ready(ctx: RequestContext) -> web.StreamResponse:
    status = ctx.runtime.status
    if not status.snapshot_loaded:
        # SPEC App. B: without a first snapshot of shared state the gateway cannot enforce it.
        raise NotReady("The gateway has not loaded its state yet", headers={"Retry-After": "1"})
    switches = ctx.runtime.services.killswitches
    # SPEC §9: an instance cut off from the store enforces its last known switches and says so.
    stale = not switches.healthy
    # App. C: after a store reset, degraded until this instance has written its state back.
    ready_now = status.store_healthy and not stale and not status.store_restoring
    return json_response(
        {
            "state": "ready" if ready_now else "degraded",
            "instance": status.instance_id,
            "config_generation": ctx.runtime.generation,
            "store": {
                "healthy": status.store_healthy,
                "checked_ago_s": round(time.time() - status.store_checked_at, 3),
                "restoring": status.store_restoring,
            },
            "killswitch": {"version": switches.version, "stale": stale},
        },
    )
