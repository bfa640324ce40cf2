"""Key values (canonical usernames, keyed hashes) and the RateLimit header formats."""

from __future__ import annotations

import base64
import hashlib
import math
import subprocess
import sys

import pytest

from gateway.ratelimit import headers
from gateway.ratelimit.body_fields import counted_fields
from gateway.ratelimit.headers import policy_header, retry_after, state_header, state_value
from gateway.ratelimit.keys import KeySpec, ValueHasher, canonical_username, derive_hash_key, key_error
from gateway.ratelimit.model import RateLimitRule
from gateway.ratelimit.policies import compile_rule


def test_aliases_of_one_username_are_one_counter() -> None:
    forms = ["alice", "ALICE", "  Alice\t", "\uff21\uff2c\uff29\uff23\uff25"]
    assert {canonical_username(f) for f in forms} == {"alice"}
    assert canonical_username("stra\u00dfe") == canonical_username("STRASSE")  # casefold, not lower
    assert canonical_username("bob") != canonical_username("b0b")


def test_hash_is_keyed_by_the_master_key_and_stable() -> None:
    key_a = derive_hash_key({"SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(b"a" * 32).decode()})
    key_b = derive_hash_key({"SHOPINO_GATEWAY_MASTER_KEY": "k2:" + base64.b64encode(b"b" * 32).decode()})
    assert key_a != key_b and derive_hash_key({}) == derive_hash_key({})
    digest = ValueHasher(key_a)
    assert digest("alice") == ValueHasher(key_a)("alice") != ValueHasher(key_b)("alice")
    assert len(digest("x" * 10_000)) == 24 and "alice" not in digest("alice")


def test_hash_is_keyed_blake2b_so_existing_buckets_keep_their_keys() -> None:
    key = derive_hash_key({})
    digest = ValueHasher(key)
    expected = hashlib.blake2b(b"iss\x00alice", key=key, digest_size=12).hexdigest()
    # Twice: the precomputed keyed state is copied, never consumed by a value.
    assert digest("iss\x00alice") == digest("iss\x00alice") == expected
    assert digest("bob") != expected


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
@pytest.mark.parametrize("limit", ["50/second;2000/minute", "3 per 10 minutes", "1/day"])
def test_precomputed_store_keys_are_limits_own_keys(strategy: str, limit: str) -> None:
    # The stage script and limits' public API (fallback, probe, operator tools) share buckets.
    rule = RateLimitRule(key="user", limit=limit, strategy=strategy)
    for item in compile_rule("policy:api", "api", 0, rule):
        value = ValueHasher(derive_hash_key({}))("someone")
        assert item.key_head + value + item.key_tail == item.item.key_for(item.prefix, value)


def test_header_formats_follow_the_draft() -> None:
    assert policy_header("api", 50, 1) == '"api";q=50;w=1'
    assert state_header("api", 12, 0.2) == '"api";r=12;t=1'
    assert state_header("api", -3, -1.0) == '"api";r=0;t=0'
    assert retry_after(0.0) == 1 and retry_after(59.1) == 60


def test_an_items_precomputed_state_head_renders_what_state_header_renders() -> None:
    """``apply_verdict`` renders ``RateLimit`` from the item's ``state_head``: the very value."""
    (item,) = compile_rule("policy:api", "a.b-c_d", 0, RateLimitRule(key="ip", limit="5/second"))
    for remaining in (-2, -1, 0, 1, 49, 10**6):
        for reset_in in (-3.5, -0.0, 0.0, 1e-9, 0.5, 1.0, 1.0000001, 59.99, 3600.0):
            expected = f'"a.b-c_d";r={max(0, remaining)};t={max(0, math.ceil(reset_in))}'
            assert state_value(item.state_head, remaining, reset_in) == expected
            assert state_header(item.policy, remaining, reset_in) == expected


def test_body_fields_from_json_and_forms_only() -> None:
    names = frozenset({"username", "n", "x"})
    assert counted_fields("application/json", b'{"username": "a", "n": 1}', names) == {
        "username": "a",
        "n": 1,
    }
    assert counted_fields("application/vnd.api+json", b'{"username": "a"}', names) == {"username": "a"}
    assert counted_fields("application/x-www-form-urlencoded", b"username=a%20b&x=", names) == {
        "username": "a b",
        "x": "",
    }
    assert counted_fields("application/json", b"[1, 2]", names) == {}
    assert counted_fields("application/json", b"{broken", names) == {}
    assert counted_fields("text/plain", b"username=a", names) == {}


def test_hash_memo_is_bounded_and_changes_no_hash() -> None:
    key = derive_hash_key({})
    digest, fresh = ValueHasher(key), ValueHasher(key)
    addresses = [f"10.{i // 256 % 256}.{i % 256}.7" for i in range(5000)]
    first = [digest(ip) for ip in addresses]
    assert first == [digest(ip) for ip in addresses] == [ValueHasher(key)(ip) for ip in addresses]
    assert digest("203.0.113.5") == fresh("203.0.113.5")
    # SECURITY: memory exhaustion — attacker-chosen values are remembered up to a bound, long ones never.
    assert 0 < len(digest.memo) <= 4096
    digest("h" * 129)
    assert "h" * 129 not in digest.memo and all(len(value) <= 128 for value in digest.memo)


def test_refusal_values_are_formatted_once_per_bucket_and_second() -> None:
    (ip,) = compile_rule("pre_auth", "pre_auth", 0, RateLimitRule(key="ip", limit="5/minute"))
    (user,) = compile_rule("policy:api", "api", 0, RateLimitRule(key="user", limit="5/minute"))
    assert headers.refusal_values(ip, 0, 41.2) == (state_header("pre_auth", 0, 41.2), 42)
    assert headers.refusal_values(ip, 0, 41.9) is headers.refusal_values(ip, 0, 41.05)
    assert headers.refusal_values(ip, 0, 40.9) == ('"pre_auth";r=0;t=41', 41)  # the next second
    assert headers.refusal_values(user, 0, 41.2) == ('"api";r=0;t=42', 42)  # never another bucket's
    assert headers.refusal_values(ip, 0, 0.0) == ('"pre_auth";r=0;t=0', 1)  # Retry-After >= 1
    for second in range(3000):
        headers.refusal_values(ip, 0, float(second))
    assert len(headers._refusals) <= 1024


@pytest.mark.parametrize(
    ("key", "pre_auth", "problem", "spec"),
    [
        ("ip", True, None, KeySpec("ip")),
        ("header:X-Api-Key", True, None, KeySpec("header", "x-api-key")),  # headers: any case
        ("user", True, "pre_auth rules count by ip, route or header:NAME (no identity or body yet)", None),
        ("body:username", False, None, KeySpec("body", "username")),
        ("body:user name", False, "body:FIELD needs a field name (letters, digits, '_', '.', '-')", None),
        ("header:", False, "header:NAME needs a header name", None),
        ("header:\u212a", False, "header:NAME needs a header name", None),  # Kelvin sign: lower() is "k"
        ("ip:1.2.3.4", False, "expected ip, user, tenant, route, header:NAME or body:FIELD", None),
    ],
)
def test_one_key_grammar_validates_and_parses(
    key: str, pre_auth: bool, problem: str | None, spec: KeySpec | None
) -> None:
    assert key_error(key, pre_auth=pre_auth) == problem
    if spec is not None:
        assert KeySpec.parse(key) == spec


def test_rate_limit_domain_modules_import_no_context_or_stage() -> None:
    # A fresh interpreter: keys, the deferral and lockouts read a RequestFacts, never the context.
    code = (
        "import sys, gateway.ratelimit.keys, gateway.ratelimit.deferred, gateway.ratelimit.lockout;"
        "print(sorted(m for m in sys.modules if m == 'gateway.context' or m[:18] == 'gateway.middleware'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
