"""The ``killswitch`` section builder (called by ``gateway.config_schema``)."""

from __future__ import annotations

from gateway.config.model import KillSwitchConfig
from gateway.config.reader import Node


def build_killswitch(node: Node) -> KillSwitchConfig:
    result = KillSwitchConfig(resync=node.duration("resync", 5.0))
    if not 0.1 <= result.resync <= 60:
        # SPEC §9: a lost pub/sub message must not delay a switch for long; too short floods the store.
        node.report.error(node.child_path("resync"), "must be between 100ms and 60s")
    node.done()
    return result
