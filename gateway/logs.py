"""structlog setup: JSON lines on stdout (SPEC §11)."""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _dumps(data: object, **_: object) -> str:
    return orjson.dumps(data, default=str).decode()


def configure_logging(level: str = "info") -> None:
    numeric = _LEVELS.get(level, 20)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    # aiohttp's own loggers would print free text (parser errors can quote headers): keep them
    # quiet; the gateway logs what matters itself.
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
