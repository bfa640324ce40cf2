"""The frozen ``rate_limits`` config objects (SPEC §8, Appendix A). No gateway imports here:
``gateway.config_model`` imports this module, so it must not import the config package back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

StoreFailureMode = Literal["local", "allow", "deny"]
STRATEGIES = ("moving-window", "sliding-window-counter", "fixed-window")
RuleMode = Literal["enforce", "shadow"]
RULE_MODES = ("enforce", "shadow")


@dataclass(frozen=True)
class RateLimitRule:
    """One ``{key, limit, methods?, cost?, strategy?, mode?}`` entry; ``limit`` may hold several
    items. A ``shadow`` rule is counted like an enforced one but only reported, never refuses."""

    key: str  # ip | user | tenant | route | header:NAME | body:FIELD
    limit: str  # the limits notation, e.g. "5/minute;100/hour" (validated at load)
    methods: frozenset[str] | None = None
    cost: int = 1
    strategy: str = "moving-window"
    mode: RuleMode = "enforce"


@dataclass(frozen=True)
class LoginProtectionConfig:
    username_field: str = "username"
    failures_per_ip: int = 20
    failures_per_username: int = 5
    window: float = 900.0
    base_lockout: float = 60.0
    max_lockout: float = 86400.0


@dataclass(frozen=True)
class RateLimitsConfig:
    on_store_failure: StoreFailureMode = "local"
    pre_auth: tuple[RateLimitRule, ...] = ()
    policies: Mapping[str, tuple[RateLimitRule, ...]] = field(default_factory=lambda: MappingProxyType({}))
    login: LoginProtectionConfig = field(default_factory=LoginProtectionConfig)
    store_timeout: float = 0.3  # the longest a request waits on the shared store before falling back
