"""The rate-limit stages are plain functions (``gateway.pipeline``): they return a coroutine only
when they have to wait for the store, and nothing at all on the paths that never wait — a
deferred pre_auth hit, a route with nothing to count. What they decide is the other tests'."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.middleware.rate_limit import limit_pre_auth, limit_route
from gateway.ratelimit.limiter import RateLimitBackend, _strictest
from gateway.ratelimit.model import RateLimitRule, RateLimitsConfig
from gateway.ratelimit.policies import compile_limits

API = SimpleNamespace(name="api", rate_limit=("api",), auth="jwt", login=False, tenant_from=None)
# tenant_from: a route whose pre_auth hit is not deferred (policies.compile_limits)
SPLIT = SimpleNamespace(name="split", rate_limit=("api",), auth="jwt", login=False, tenant_from="header")
# a route counting a sliding-window counter: not deferred (policies.compile_limits)
COUNTER = SimpleNamespace(name="counter", rate_limit=("counter",), auth="jwt", login=False, tenant_from=None)
SWC = "sliding-window-counter"
BARE = SimpleNamespace(name="bare", rate_limit=(), auth="jwt", login=False, tenant_from=None)
CONFIG = SimpleNamespace(
    rate_limits=RateLimitsConfig(
        pre_auth=(RateLimitRule(key="ip", limit="1000/minute", strategy="fixed-window"),),
        policies={"api": (RateLimitRule(key="user", limit="50/minute"),)},
    ),
    routes=(API, SPLIT, BARE),
)


def context(backend: RateLimitBackend, route: Any) -> Any:
    rate_limits = SimpleNamespace(compiled=compile_limits(CONFIG), backend=backend, lockouts=None)
    return SimpleNamespace(
        runtime=SimpleNamespace(rate_limits=rate_limits),
        route=route,
        request=SimpleNamespace(method="GET", headers={}),
        client_ip="203.0.113.9",
        claims=None,
        user=None,
        tenant=None,
        deferred_pre_auth=None,
        response_headers={},
        ratelimit=None,
        body=None,
    )


def authenticated(ctx: Any, user: str) -> None:
    ctx.claims = SimpleNamespace(issuer="https://idp.example", subject=user, tenant="acme")
    ctx.user, ctx.tenant = user, "acme"


async def test_a_deferred_hit_returns_at_once_and_the_route_stage_waits_for_both(redis_url: str) -> None:
    backend = RateLimitBackend(redis_url)
    try:
        ctx = context(backend, API)
        assert limit_pre_auth(ctx) is None  # deferred: nothing to wait for
        assert ctx.deferred_pre_auth is not None
        authenticated(ctx, "alice")
        waiting = limit_route(ctx)
        assert asyncio.iscoroutine(waiting)
        assert await waiting is None
        assert ctx.deferred_pre_auth is None
        assert ctx.response_headers["RateLimit-Policy"] == '"api";q=50;w=60'
        assert ctx.response_headers["RateLimit"] == '"api";r=49;t=60'
    finally:
        await backend.close()


async def test_nothing_to_count_returns_none(redis_url: str) -> None:
    backend = RateLimitBackend(redis_url)
    try:
        bare = context(backend, BARE)
        waiting = limit_pre_auth(bare)  # no route policy: not deferred, sent now
        assert asyncio.iscoroutine(waiting)
        await waiting
        anonymous = context(backend, API)
        anonymous.deferred_pre_auth = None
        assert limit_route(anonymous) is None  # a user key on an anonymous request: no item
        assert limit_route(bare) is None and bare.response_headers == {}
    finally:
        await backend.close()


async def test_a_hit_sent_now_is_a_coroutine(redis_url: str) -> None:
    backend = RateLimitBackend(redis_url)
    try:
        ctx = context(backend, SPLIT)
        waiting = limit_pre_auth(ctx)
        assert asyncio.iscoroutine(waiting)
        assert await waiting is None and ctx.deferred_pre_auth is None
        authenticated(ctx, "bob")
        waiting = limit_route(ctx)
        assert asyncio.iscoroutine(waiting)
        await waiting
        assert ctx.response_headers["RateLimit"] == '"api";r=49;t=60'
    finally:
        await backend.close()


def test_only_routes_whose_items_the_stage_script_takes_are_deferrable() -> None:
    """A sliding-window counter is not a script item: a route counting one (or any route, when
    pre_auth counts one) keeps two stages, so the deferred pair's path never asks per request
    whether the script takes its items (``RateLimitBackend.decide_in_order``)."""
    counter = SimpleNamespace(
        name="counter", rate_limit=("counter",), auth="jwt", login=False, tenant_from=None
    )
    policies = {
        "api": (RateLimitRule(key="user", limit="50/minute"),),
        "counter": (
            RateLimitRule(key="user", limit="50/minute"),
            RateLimitRule(key="tenant", limit="500/minute", strategy="sliding-window-counter"),
        ),
    }
    rules = RateLimitsConfig(pre_auth=CONFIG.rate_limits.pre_auth, policies=policies)
    compiled = compile_limits(SimpleNamespace(rate_limits=rules, routes=(API, counter)))
    assert compiled.deferrable == frozenset({"api"})
    pre_auth = (RateLimitRule(key="ip", limit="1000/minute", strategy="sliding-window-counter"),)
    rules = RateLimitsConfig(pre_auth=pre_auth, policies=policies)
    assert compile_limits(SimpleNamespace(rate_limits=rules, routes=(API, counter))).deferrable == frozenset()


async def test_a_route_counting_a_sliding_window_counter_sends_pre_auth_at_once(redis_url: str) -> None:
    counter = SimpleNamespace(
        name="counter", rate_limit=("counter",), auth="jwt", login=False, tenant_from=None
    )
    config = SimpleNamespace(
        rate_limits=RateLimitsConfig(
            pre_auth=CONFIG.rate_limits.pre_auth,
            policies={
                "counter": (RateLimitRule(key="user", limit="2/minute", strategy="sliding-window-counter"),)
            },
        ),
        routes=(counter,),
    )
    backend = RateLimitBackend(redis_url)
    try:
        ctx = context(backend, counter)
        ctx.runtime.rate_limits.compiled = compile_limits(config)
        waiting = limit_pre_auth(ctx)
        assert asyncio.iscoroutine(waiting)  # sent now, not deferred
        assert await waiting is None and ctx.deferred_pre_auth is None
        authenticated(ctx, "carol")
        assert await limit_route(ctx) is None
        assert ctx.response_headers["RateLimit"].startswith('"counter";r=1')
    finally:
        await backend.close()


def test_each_routes_precomputed_strictest_item_is_the_limiters_own_choice() -> None:
    """``CompiledLimits.strictest`` stands in for ``limiter._strictest`` when every item of the
    route applies: the same index, ties (the first) and shadow items included."""
    policies = {
        "api": (
            RateLimitRule(key="user", limit="50/second;2000/minute"),
            RateLimitRule(key="tenant", limit="1000/second"),
        ),
        "tie": (RateLimitRule(key="user", limit="5/minute"), RateLimitRule(key="tenant", limit="5/minute")),
        "window": (RateLimitRule(key="user", limit="5/second"), RateLimitRule(key="tenant", limit="5/hour")),
        "shadowed": (
            RateLimitRule(key="user", limit="1/second", mode="shadow"),
            RateLimitRule(key="tenant", limit="9/hour"),
        ),
    }
    routes = tuple(
        SimpleNamespace(name=name, rate_limit=(name,), auth="jwt", login=False, tenant_from=None)
        for name in policies
    )
    compiled = compile_limits(SimpleNamespace(rate_limits=RateLimitsConfig(policies=policies), routes=routes))
    for name, items in compiled.by_route.items():
        assert compiled.strictest[name] == _strictest([(item, "v") for item in items]), name
    assert [compiled.strictest[name] for name in policies] == [0, 0, 1, 1]
