"""``POST /admin/killswitch?dry_run=true`` (Appendix C): how many of the requests this process
answered in the last 5 minutes a proposed switch would have refused.

The per-second counts of ``TrafficRecorder`` are summed per (route, tenant, method, path) and
each key is put through the real ``SwitchIndex`` — the same matcher that enforces switches — so
the answer cannot drift from what engaging would do (WebSocket upgrades count as their GET).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config_model import GatewayConfig
from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.model import Switch
from gateway.killswitch.scopes import SCOPE_BY_NAME
from gateway.routing import PROBE_PATHS
from gateway.traffic.recorder import DRY_RUN_WINDOW, UNTRACKED, Key, TrafficRecorder


@dataclass(frozen=True, slots=True)
class DryRun:
    would_refuse: int
    requests: int  # every request counted in the window, refused or not
    untracked: int  # requests counted without the key (or path) this switch needs to place them
    window_s: int = DRY_RUN_WINDOW

    def to_json(self) -> dict[str, object]:
        return {
            "would_refuse": self.would_refuse,
            "window_s": self.window_s,
            "requests": self.requests,
            "untracked": self.untracked,
            "scope": "this process",
        }


def _totals(recorder: TrafficRecorder) -> dict[Key, int]:
    totals: dict[Key, int] = {}
    for key, n in recorder.seconds(DRY_RUN_WINDOW):
        totals[key] = totals.get(key, 0) + n
    return totals


def dry_run(switch: Switch, config: GatewayConfig, recorder: TrafficRecorder, now: float) -> DryRun:
    index = SwitchIndex([switch], version=0)
    matching = SCOPE_BY_NAME[switch.scope].matching
    routes = {r.name: r for r in config.routes}
    refused = requests = untracked = 0
    for (route_name, tenant, method, path), n in _totals(recorder).items():
        requests += n
        if path in PROBE_PATHS:  # a global switch spares the probes (SPEC §9)
            continue
        if not method or (path == UNTRACKED and matching == "path glob"):
            untracked += n  # counted without its key (or its path): no scope (or no glob) can place it
            continue
        if matching == "acting tenant":
            hit = tenant and index.tenant_refusal((tenant,), method, websocket=False, now=now)
        else:
            route = routes.get(route_name) if route_name else None
            hit = index.refusal(
                method, path, route, websocket=False, now=now, case_insensitive=config.routes_case_insensitive
            )
        if hit:
            refused += n
    return DryRun(refused, requests, untracked)
