"""``policies.identity_checks`` stands in for ``counted_checks`` on routes whose items all count
identity keys (user, tenant) for every method, and ``policies.address_checks`` for pre_auth items
that all count the client's address: the same checks for every request, whatever the method,
claims or other facts, and the remembered ones stay bounded."""

from __future__ import annotations

import os
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.keys import ValueHasher
from gateway.ratelimit.model import RateLimitRule, RateLimitsConfig
from gateway.ratelimit.policies import (
    ADDRESS_MEMO_LIMIT,
    IDENTITY_MEMO_LIMIT,
    address_checks,
    compile_limits,
    counted_checks,
    identity_checks,
)

EXAMPLES = 30 if os.environ.get("CI") == "true" else 200
ROUTE = SimpleNamespace(name="api", rate_limit=("api",), auth="jwt", login=False, tenant_from=None)
POLICIES = {
    "api": (
        RateLimitRule(key="user", limit="50/second;2000/minute"),
        RateLimitRule(key="tenant", limit="1000/second", strategy="fixed-window"),
        RateLimitRule(key="user", limit="9/minute", mode="shadow"),
    )
}
COMPILED = compile_limits(SimpleNamespace(rate_limits=RateLimitsConfig(policies=POLICIES), routes=(ROUTE,)))
HASHER = ValueHasher(b"k" * 32)
names = st.one_of(st.none(), st.sampled_from(["42", "alice", "ü", ""]))


def facts(user: str | None, tenant: str | None, issuer: str | None, method: str, ip: str) -> SimpleNamespace:
    claims = None if issuer is None else SimpleNamespace(issuer=issuer, subject=user, tenant=tenant)
    return SimpleNamespace(
        request=SimpleNamespace(method=method, headers={"x-a": "b"}),
        route=ROUTE,
        client_ip=ip,
        claims=claims,
        user=user,
        tenant=tenant,
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            names,
            names,
            st.one_of(st.none(), st.sampled_from(["https://a.example", "https://b.example"])),
            st.sampled_from(["GET", "POST", "DELETE"]),
            st.sampled_from(["203.0.113.1", "2001:db8::1"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_an_identitys_checks_are_counted_checks(
    requests: list[tuple[str | None, str | None, str | None, str, str]],
) -> None:
    assert "api" in COMPILED.by_identity
    items = COMPILED.by_route["api"]
    memo: dict = {}  # type: ignore[type-arg]
    for request in requests:
        ctx = facts(*request)
        expected = counted_checks(ctx, HASHER, items, None)  # type: ignore[arg-type]
        assert list(identity_checks(ctx, HASHER, "api", items, memo)) == expected  # type: ignore[arg-type]


def test_only_identity_keys_for_every_method_qualify_and_the_memo_is_bounded() -> None:
    policies = {
        "api": POLICIES["api"],
        "ip": (RateLimitRule(key="user", limit="5/second"), RateLimitRule(key="ip", limit="5/second")),
        "post": (RateLimitRule(key="user", limit="5/second", methods=frozenset({"POST"})),),
        "header": (RateLimitRule(key="header:x-api-key", limit="5/second"),),
    }
    routes = tuple(
        SimpleNamespace(name=name, rate_limit=(name,), auth="jwt", login=False, tenant_from=None)
        for name in policies
    )
    compiled = compile_limits(SimpleNamespace(rate_limits=RateLimitsConfig(policies=policies), routes=routes))
    assert compiled.by_identity == frozenset({"api"})
    # SECURITY: memory exhaustion — identities come from tokens; the memo is emptied when full.
    memo: dict = {}  # type: ignore[type-arg]
    for n in range(IDENTITY_MEMO_LIMIT + 10):
        identity_checks(
            facts(f"u{n}", "t", "https://a.example", "GET", "203.0.113.1"),
            HASHER,
            "api",
            compiled.by_route["api"],
            memo,
        )  # type: ignore[arg-type]
        assert len(memo) <= IDENTITY_MEMO_LIMIT


PRE_AUTH = (
    RateLimitRule(key="ip", limit="100000/second", strategy="fixed-window"),
    RateLimitRule(key="ip", limit="5/second;100/minute"),
)
ADDRESSES = [
    "203.0.113.1",
    "203.0.113.2",
    "::ffff:203.0.113.1",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db9::1",
    "x",
]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    requests=st.lists(
        st.tuples(names, names, st.sampled_from(["GET", "POST"]), st.sampled_from(ADDRESSES)),
        min_size=1,
        max_size=12,
    )
)
def test_an_addresss_pre_auth_checks_are_counted_checks(
    requests: list[tuple[str | None, str | None, str, str]],
) -> None:
    compiled = compile_limits(SimpleNamespace(rate_limits=RateLimitsConfig(pre_auth=PRE_AUTH), routes=()))
    assert compiled.pre_auth_by_address
    memo: dict = {}  # type: ignore[type-arg]
    for user, tenant, method, address in requests:
        ctx = facts(user, tenant, "https://a.example", method, address)
        expected = counted_checks(ctx, HASHER, compiled.pre_auth, None)  # type: ignore[arg-type]
        assert list(address_checks(ctx, HASHER, compiled.pre_auth, memo)) == expected  # type: ignore[arg-type]


def test_only_address_keys_for_every_method_qualify_and_the_memo_is_bounded() -> None:
    for pre_auth in (
        (PRE_AUTH[0], RateLimitRule(key="route", limit="5/second")),
        (PRE_AUTH[0], RateLimitRule(key="header:x-api-key", limit="5/second")),
        (RateLimitRule(key="ip", limit="5/second", methods=frozenset({"POST"})),),
    ):
        rules = RateLimitsConfig(pre_auth=pre_auth)
        assert not compile_limits(SimpleNamespace(rate_limits=rules, routes=())).pre_auth_by_address
    compiled = compile_limits(SimpleNamespace(rate_limits=RateLimitsConfig(pre_auth=PRE_AUTH), routes=()))
    # SECURITY: memory exhaustion — a client chooses its address (behind trusted proxies, its
    # X-Forwarded-For); the memo is emptied when full.
    memo: dict = {}  # type: ignore[type-arg]
    for n in range(ADDRESS_MEMO_LIMIT + 10):
        address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        address_checks(facts("u", "t", None, "GET", address), HASHER, compiled.pre_auth, memo)  # type: ignore[arg-type]
        assert len(memo) <= ADDRESS_MEMO_LIMIT
