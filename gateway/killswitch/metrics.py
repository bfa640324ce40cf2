"""Kill switch gauges (SPEC §9: an instance says in its metrics when it enforces a stale set)."""

from __future__ import annotations


class KillSwitchGauges:
    """Created on first use, not at import: ``gateway.runtime`` imports this module, and with
    several workers prometheus-client must not be imported before its multiprocess dir is set."""

    def __init__(self) -> None:
        from prometheus_client import Gauge

        self.version = Gauge(
            "shopino_gateway_killswitch_version",
            "Kill switch set version applied",
            multiprocess_mode="livemin",
        )
        self.stale = Gauge(
            "shopino_gateway_killswitch_stale",
            "1 while the store is unreachable and the last known switch set is enforced",
            multiprocess_mode="livemax",
        )
        self.active = Gauge(
            "shopino_gateway_killswitch_active", "Switches applied", multiprocess_mode="livemax"
        )
        self.instances = Gauge(
            "shopino_gateway_killswitch_instances",
            "Instances in the heartbeats, by state (enforcing, lagging, silent), as this one sees them",
            ("state",),
            multiprocess_mode="livemax",
        )


_gauges: KillSwitchGauges | None = None


def gauges() -> KillSwitchGauges:
    global _gauges
    if _gauges is None:
        _gauges = KillSwitchGauges()
    return _gauges
