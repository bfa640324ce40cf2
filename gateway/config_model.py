"""``GatewayConfig``: the whole validated configuration, one frozen object.

It holds the core sections (``gateway.config.model``) and every feature's own section type, so
it sits above the features; ``gateway.config_schema`` builds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.auth.webhooks import IntegrationConfig
from gateway.config.model import (
    AdminConfig,
    AuditConfig,
    AuthConfig,
    CorsPolicy,
    IPNetwork,
    KillSwitchConfig,
    ListenConfig,
    LoggingConfig,
    MfaConfig,
    RouteConfig,
    StateConfig,
    UpstreamConfig,
)
from gateway.ratelimit.model import RateLimitsConfig
from gateway.tenancy.model import TenancyConfig
from gateway.tracing.model import ObservabilityConfig


@dataclass(frozen=True)
class GatewayConfig:
    listen: ListenConfig
    admin: AdminConfig
    state: StateConfig
    trusted_proxies: tuple[IPNetwork, ...]
    upstreams: Mapping[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...]
    routes_case_insensitive: bool
    cors: Mapping[str, CorsPolicy]
    logging: LoggingConfig
    audit: AuditConfig = field(default_factory=AuditConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    integrations: Mapping[str, IntegrationConfig] = field(default_factory=dict)
    mfa: MfaConfig = field(default_factory=MfaConfig)
    killswitch: KillSwitchConfig = field(default_factory=KillSwitchConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    tenancy: TenancyConfig = field(default_factory=TenancyConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    source: str = "<memory>"
    secret_paths: frozenset[str] = frozenset()
    secret_values: frozenset[str] = field(default=frozenset(), repr=False)
