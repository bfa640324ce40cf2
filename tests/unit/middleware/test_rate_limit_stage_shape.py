"""The rate-limit stages are plain functions (``gateway.pipeline``): they return a coroutine only
when they have to wait for the store, and nothing at all on the paths that never wait — a
deferred pre_auth hit, a route with nothing to count. What they decide is the other tests'."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from gateway.middleware.rate_limit import limit_pre_auth, limit_route
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.model import RateLimitRule, RateLimitsConfig
from gateway.ratelimit.policies import compile_limits

API = SimpleNamespace(name="api", rate_limit=("api",), auth="jwt", login=False, tenant_from=None)
# tenant_from: a route whose pre_auth hit is not deferred (policies.compile_limits)
SPLIT = SimpleNamespace(name="split", rate_limit=("api",), auth="jwt", login=False, tenant_from="header")
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
