"""The limiter's tests run on both storages: memory (local state) and a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import MappingProxyType

import pytest

from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.model import LoginProtectionConfig, RateLimitRule
from gateway.ratelimit.policies import CompiledLimits, LimitItem, compile_rule


@pytest.fixture
async def backend(store_url: str) -> AsyncIterator[RateLimitBackend]:
    created = RateLimitBackend(store_url)
    yield created
    await created.close()


def settings(mode: str = "local", timeout: float = 0.3) -> CompiledLimits:
    return CompiledLimits(
        pre_auth=(),
        by_route=MappingProxyType({}),
        counted_fields=MappingProxyType({}),
        login=LoginProtectionConfig(),
        on_store_failure=mode,  # type: ignore[arg-type]
        store_timeout=timeout,
    )


ItemFactory = Callable[..., list[LimitItem]]


@pytest.fixture
def items() -> ItemFactory:
    def make(limit: str, *, key: str = "ip", strategy: str = "moving-window", index: int = 0, cost: int = 1):
        rule = RateLimitRule(key=key, limit=limit, strategy=strategy, cost=cost)
        return compile_rule("policy:test", "test", index, rule)

    return make


async def without_stage_script(backend: RateLimitBackend) -> None:
    """Send this backend's Redis stages through redis-py again (the path sentinel URLs take)."""
    fast = backend._stage_script
    backend._stage_script = None
    if fast is not None:
        await fast.client.close()
