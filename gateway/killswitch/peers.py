"""Every instance's kill-switch state as this instance sees it in the heartbeats, for
Prometheus (``shopino_gateway_killswitch_instances{state}``): a crashed or hung instance cannot
be scraped, so its peers report it (the alert rules in deploy/prometheus/ read this).

States as the admin API's instance list names them (App. C): ``enforcing`` (live, with the
newest switch-set version any live instance has applied), ``lagging`` (live, an older one),
``silent`` (no heartbeat for 3 periods; an instance that stops gracefully removes its entry,
and entries older than an hour are forgotten).
"""

from __future__ import annotations

from collections.abc import Mapping

STATES = ("enforcing", "lagging", "silent")


def peer_states(
    beats: Mapping[str, tuple[int, float, bool]], now: float, live_window: float
) -> dict[str, int]:
    """Instances per state, from ``{instance: (version, heartbeat time, stale)}``."""
    live = {i: version for i, (version, at, _) in beats.items() if now - at <= live_window}
    newest = max(live.values(), default=0)
    counts = dict.fromkeys(STATES, 0)
    counts["silent"] = len(beats) - len(live)
    for version in live.values():
        counts["enforcing" if version >= newest else "lagging"] += 1
    return counts
