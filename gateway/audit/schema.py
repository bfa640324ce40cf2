"""The ``audit`` section builder (called by ``gateway.config_schema``)."""

from __future__ import annotations

from gateway.config.model import AuditConfig
from gateway.config.reader import Node


def build_audit(node: Node) -> AuditConfig:
    result = AuditConfig(
        retention=node.duration("retention", 400 * 86400.0),
        spool_dir=node.string("spool_dir", "./var/audit-spool"),
        anchor_every=node.duration("anchor_every", 3600.0),
        queue_size=node.integer("queue_size", 10_000, minimum=100, maximum=1_000_000),
        write_timeout=node.duration("write_timeout", 1.0),
    )
    if result.retention < 86400:
        node.report.error(node.child_path("retention"), "must be at least 1d")
    if not 1 <= result.anchor_every <= 86400:
        node.report.error(node.child_path("anchor_every"), "must be between 1s and 1d")
    if not 0.05 <= result.write_timeout <= 30:
        node.report.error(node.child_path("write_timeout"), "must be between 50ms and 30s")
    node.done()
    return result
