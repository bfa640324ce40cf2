"""What one runtime holds for rate limiting: its compiled items, the process's backend, and
the lockout service (thresholds are config, the store and backend are per process)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit import AuditTrail
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.lockout import LockoutService
from gateway.ratelimit.lockout_memory import LockoutMemory
from gateway.ratelimit.policies import CompiledLimits, LimitedConfig, compile_limits
from gateway.state import StateStore
from gateway.state.generation import StoreGeneration


@dataclass(frozen=True)
class RateLimitRuntime:
    compiled: CompiledLimits
    backend: RateLimitBackend
    lockouts: LockoutService


def build_rate_limit_runtime(
    config: LimitedConfig,
    backend: RateLimitBackend,
    store: StateStore,
    audit: AuditTrail,
    *,
    memory: LockoutMemory | None = None,
    generation: StoreGeneration | None = None,
) -> RateLimitRuntime:
    compiled = compile_limits(config)
    lockouts = LockoutService(
        store,
        audit,
        backend,
        compiled.login,
        mode=compiled.on_store_failure,
        timeout=compiled.store_timeout,
        memory=memory,  # the process's: lockouts seen outlive a reload (and a store reset)
        generation=generation,
    )
    return RateLimitRuntime(compiled=compiled, backend=backend, lockouts=lockouts)
