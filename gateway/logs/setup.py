"""structlog setup: JSON lines on stdout, every event through one redaction processor (SPEC §11).

Library loggers (stdlib ``logging``: asyncio, redis, aiohttp's client) are routed through the
same chain, so nothing reaches stdout without passing redaction.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from gateway.config.model import LoggingConfig
from gateway.logs.context import merge_request_fields
from gateway.redaction.processor import RedactionProcessor, Redactor

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _dumps(data: object, **_: object) -> str:
    return orjson.dumps(data, default=str).decode()


def configure_logging(config: LoggingConfig | None = None) -> Redactor:
    """Install the chain; returns the redactor for callers that log typed records themselves."""
    config = config or LoggingConfig()
    redactor = Redactor.from_config(config.redact)
    redaction = RedactionProcessor(redactor)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    numeric = _LEVELS.get(config.level, 20)
    structlog.configure(
        processors=[
            merge_request_fields,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            redaction,  # last before the renderer, after tracebacks are text
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                merge_request_fields,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redaction,
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    # aiohttp's server loggers print parser errors that quote header lines; the gateway logs
    # those events itself (without the input), so these stay silent.
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    return redactor
