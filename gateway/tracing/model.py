"""The frozen ``observability`` config (SPEC Appendix C). No gateway imports here:
``gateway.config_model`` imports this module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObservabilityConfig:
    # OTLP/HTTP traces endpoint; None: no span export (and opentelemetry is never imported).
    otlp_endpoint: str | None = None
