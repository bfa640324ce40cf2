"""Shadow limits (SPEC Appendix C): a ``mode: shadow`` rule is counted exactly like an enforced
one — same keys, same data — and reported when over, but never refuses a stage, never binds
its RateLimit headers and never lands in the deny cache. On both storages and on the one-call
stage script."""

from __future__ import annotations

import pytest
import redis.asyncio
import yaml

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config
from gateway.ratelimit.limiter import KEY_PREFIX, RateLimitBackend
from gateway.ratelimit.metrics import DECISIONS, SHADOW_REFUSALS, publish_decisions
from gateway.ratelimit.model import RateLimitRule
from gateway.ratelimit.policies import LimitItem, compile_limits, compile_rule
from tests.unit.ratelimit.conftest import settings, without_stage_script

BASE = {
    "upstreams": {"erp": {"urls": ["http://127.0.0.1:9000"]}},
    "routes": [{"name": "api", "prefix": "/api", "upstream": "erp", "auth": "none", "rate_limit": ["api"]}],
}


def _rule(
    limit: str, *, mode: str, key: str = "ip", index: int = 0, strategy: str = "moving-window"
) -> LimitItem:
    rule = RateLimitRule(key=key, limit=limit, strategy=strategy, mode=mode)  # type: ignore[arg-type]
    return compile_rule("policy:test", "test", index, rule)[0]


def _shadow_refusals(stage: str) -> float:
    publish_decisions()  # what a scrape reads (render_metrics publishes first)
    return DECISIONS.labels(stage, "shadow_refused")._value.get()


def test_mode_is_validated_with_its_key_path() -> None:
    data = {
        **BASE,
        "rate_limits": {"policies": {"api": [{"key": "ip", "limit": "1/second", "mode": "bogus"}]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data))
    assert caught.value.errors == ["rate_limits.policies.api[0].mode: must be one of enforce, shadow"]
    data["rate_limits"] = {"pre_auth": [{"key": "ip", "limit": "1/second", "mode": "Shadow"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data))
    assert caught.value.errors[0].startswith("rate_limits.pre_auth[0].mode: ")


def test_shadow_rule_compiles_to_the_enforced_rules_buckets() -> None:
    def compiled(mode: str) -> LimitItem:
        rules = {"policies": {"api": [{"key": "ip", "limit": "2/minute", "mode": mode}]}}
        return compile_limits(parse_config(yaml.safe_dump({**BASE, "rate_limits": rules}))).by_route["api"][0]

    shadow, enforced, default = compiled("shadow"), compiled("enforce"), _rule("2/minute", mode="enforce")
    assert shadow.shadow and not enforced.shadow and not default.shadow
    # Same keys: a watched rule switched to enforce keeps its counts.
    assert shadow.key_head == enforced.key_head and shadow.key_tail == enforced.key_tail
    assert shadow.store_args[0] == "M" and enforced.store_args[0] == "m"
    assert shadow.store_args[1:] == enforced.store_args[1:]


async def test_shadow_item_never_refuses_and_is_reported(backend: RateLimitBackend, store_url: str) -> None:
    shadow = _rule("2/minute", mode="shadow")
    enforced = _rule("5/minute", mode="enforce", index=1)
    before = _shadow_refusals("route")
    by_policy = SHADOW_REFUSALS.labels("test")._value.get()
    verdicts = [await backend.check([(shadow, "v"), (enforced, "v")], settings(), "route") for _ in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2  # only the enforced rule refuses
    # The 7th is refused from the deny cache (the enforced bucket is known full): no store call,
    # so nothing is counted at all, as for the enforced items of such a stage.
    assert [v.shadow for v in verdicts] == [False, False] + [True] * 4 + [False]
    assert verdicts[6].source == "cache"
    # Headers speak for the enforced item only, on admission and on refusal.
    assert all(v.item is enforced for v in verdicts)
    assert verdicts[4].remaining == 0
    assert _shadow_refusals("route") - before == 4
    assert SHADOW_REFUSALS.labels("test")._value.get() - by_policy == 4  # once per request and policy
    # A stage of shadow items only: admitted, flagged, and never remembered as full.
    alone = [await backend.check([(shadow, "w")], settings(), "route") for _ in range(4)]
    assert all(v.allowed for v in alone) and [v.shadow for v in alone] == [False, False, True, True]
    assert not any(key[0] == shadow.prefix for key in backend._full_until)


async def test_shadow_counts_are_the_enforced_rules_counts(redis_url: str) -> None:
    """Same store keys and data on the stage script and on redis-py, as an enforced rule writes."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for script in (True, False):
            backend = RateLimitBackend(redis_url)
            if not script:
                await without_stage_script(backend)
            try:
                for strategy in ("moving-window", "fixed-window"):
                    shadow = _rule("3/minute", mode="shadow", strategy=strategy)
                    enforced = _rule("3/minute", mode="enforce", strategy=strategy)
                    value = f"same-{script}-{strategy}"
                    key = f"{KEY_PREFIX}:{shadow.key_head}{value}{shadow.key_tail}"
                    # Four hits each: a fifth enforced one would be answered from the deny cache.
                    for _ in range(4):
                        assert (await backend.check([(shadow, value)], settings(), "route")).allowed
                    shadow_data = await (
                        client.lrange(key, 0, -1) if strategy == "moving-window" else client.get(key)
                    )
                    await client.delete(key)
                    outcomes = [
                        (await backend.check([(enforced, value)], settings(), "route")).allowed
                        for _ in range(4)
                    ]
                    assert outcomes == [True, True, True, False]
                    enforced_data = await (
                        client.lrange(key, 0, -1) if strategy == "moving-window" else client.get(key)
                    )
                    assert len(shadow_data) == len(enforced_data)  # type: ignore[arg-type]
                    if strategy == "fixed-window":
                        assert shadow_data == enforced_data == b"4"
            finally:
                await backend.close()
    finally:
        await client.aclose()


async def test_a_shadow_pre_auth_rule_over_its_limit_does_not_stop_the_route_stage(redis_url: str) -> None:
    """The one-call path (pre_auth and route in one script call, a barrier between them): a
    shadow pre_auth item over its limit neither trips the barrier nor refuses."""
    backend = RateLimitBackend(redis_url)
    try:
        first = [(_rule("1/minute", mode="shadow", index=7), "client")]
        route = _rule("3/minute", mode="enforce", key="user", index=8)
        second = [(route, "alice")]
        results = [await backend.check_in_order(first, second, settings()) for _ in range(4)]
        befores = [before for before, _ in results]
        afters = [after for _, after in results]
        assert all(b is not None and b.allowed for b in befores)
        assert [b.shadow for b in befores if b is not None] == [False, True, True, True]
        assert [a is not None and a.allowed for a in afters] == [True, True, True, False]
        assert afters[3] is not None and afters[3].item is route and not afters[3].shadow
    finally:
        await backend.close()
