"""The ``logging`` section builder, redaction settings included (called by
``gateway.config_schema``)."""

from __future__ import annotations

import re

from gateway.config.model import DEFAULT_MAX_SCAN, LoggingConfig, RedactConfig
from gateway.config.reader import Node

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Appendix C: below 256 a field is cut before typical values end; above 1 MiB one field could
# again hold the event loop (redaction is linear, not free).
MAX_SCAN_MIN, MAX_SCAN_MAX = 256, 1024 * 1024


def build_logging(node: Node) -> LoggingConfig:
    redact = node.child("redact")
    patterns = redact.string_list("extra_patterns")
    for index, pattern in enumerate(patterns):
        where = f"{redact.child_path('extra_patterns')}[{index}]"
        try:
            if re.compile(pattern).fullmatch(""):
                node.report.error(
                    where, "must not match the empty string (it would mask between every character)"
                )
        except re.error as exc:
            node.report.error(where, f"invalid regex: {exc.msg}")
    max_scan = redact.size("max_scan", DEFAULT_MAX_SCAN)
    if isinstance(max_scan, int) and not MAX_SCAN_MIN <= max_scan <= MAX_SCAN_MAX:
        node.report.error(
            redact.child_path("max_scan"), f"must be between {MAX_SCAN_MIN} and {MAX_SCAN_MAX} bytes"
        )
    redact_config = RedactConfig(
        extra_keys=redact.string_list("extra_keys"), extra_patterns=patterns, max_scan=max_scan
    )
    redact.done()
    result = LoggingConfig(
        level=node.string("level", "info", choices=LOG_LEVELS),
        pseudonymize=node.boolean("pseudonymize", True),
        access_log=node.boolean("access_log", True),
        redact=redact_config,
    )
    node.done()
    return result
