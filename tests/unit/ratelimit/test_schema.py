"""``rate_limits`` config: the Appendix A shape loads, and every mistake is a key-path error."""

from __future__ import annotations

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config
from gateway.ratelimit.policies import compile_limits

BASE = {
    "upstreams": {"erp": {"urls": ["http://127.0.0.1:9000"]}},
    "routes": [{"name": "login", "prefix": "/auth/login", "upstream": "erp", "auth": "none"}],
}


def _parse(rate_limits: object, **route: object) -> object:
    data = {**BASE, "rate_limits": rate_limits}
    data["routes"] = [{**BASE["routes"][0], **route}]
    return parse_config(yaml.safe_dump(data))


def _errors(rate_limits: object, **route: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _parse(rate_limits, **route)
    return caught.value.errors


def test_appendix_a_section_compiles_to_items() -> None:
    section = {
        "on_store_failure": "local",
        "pre_auth": [{"key": "ip", "limit": "300/second"}],
        "policies": {
            "api": [
                {"key": "user", "limit": "50/second;2000/minute"},
                {"key": "tenant", "limit": "500/second"},
            ],
            "login": [
                {"key": "ip", "limit": "10/minute"},
                {"key": "body:username", "limit": "5/minute;20/hour", "strategy": "moving-window"},
            ],
        },
        "login": {
            "username_field": "username",
            "failures_per_ip": 20,
            "failures_per_username": 5,
            "window": "15m",
            "base_lockout": "1m",
            "max_lockout": "24h",
        },
    }
    config = _parse(section, login=True, rate_limit=["login"])
    compiled = compile_limits(config)
    items = compiled.by_route["login"]
    assert [(i.key.kind, i.quota, i.window) for i in items] == [
        ("ip", 10, 60),
        ("body", 5, 60),
        ("body", 20, 3600),
    ]
    assert items[1].policy_header == '"login";q=5;w=60'
    assert compiled.counted_fields["login"] == {"username"}
    assert compiled.login.max_lockout == 86400 and compiled.pre_auth[0].quota == 300


@pytest.mark.parametrize(
    ("section", "route", "expected"),
    [
        (
            {"policies": {"p": [{"key": "ip", "limit": "five per minute"}]}},
            {},
            "rate_limits.policies.p[0].limit",
        ),
        ({"policies": {"p": [{"key": "cookie", "limit": "1/second"}]}}, {}, "rate_limits.policies.p[0].key"),
        ({"policies": {"p": [{"key": "header:", "limit": "1/second"}]}}, {}, "rate_limits.policies.p[0].key"),
        ({"pre_auth": [{"key": "user", "limit": "1/second"}]}, {}, "rate_limits.pre_auth[0].key"),
        (
            {"policies": {"p": [{"key": "ip", "limit": "1/second", "strategy": "token-bucket"}]}},
            {},
            "rate_limits.policies.p[0].strategy",
        ),
        (
            {"policies": {"p": [{"key": "ip", "limit": "1/second", "burst": 3}]}},
            {},
            "rate_limits.policies.p[0].burst",
        ),
        (
            {"policies": {"p": [{"key": "ip", "limit": "1/s", "methods": ["FETCH"]}]}},
            {},
            "rate_limits.policies.p[0]",
        ),
        ({"on_store_failure": "maybe"}, {}, "rate_limits.on_store_failure"),
        ({"login": {"max_lockout": "1m", "base_lockout": "1h"}}, {}, "rate_limits.login.max_lockout"),
        ({"login": {"failures_per_ip": 0}}, {}, "rate_limits.login.failures_per_ip"),
        ({}, {"rate_limit": ["missing"]}, "routes[0].rate_limit[0]"),
        ({"limits": []}, {}, "rate_limits.limits"),
    ],
)
def test_mistakes_are_reported_at_their_key_path(section: object, route: dict, expected: str) -> None:
    errors = _errors(section, **route)
    assert any(error.startswith(expected) for error in errors), errors


def test_strategy_change_gives_new_store_keys() -> None:
    rule = {"key": "ip", "limit": "5/minute"}
    one = compile_limits(_parse({"policies": {"p": [rule]}}, rate_limit=["p"])).by_route["login"][0]
    two = compile_limits(
        _parse({"policies": {"p": [{**rule, "strategy": "fixed-window"}]}}, rate_limit=["p"])
    ).by_route["login"][0]
    assert one.prefix != two.prefix and one.prefix.startswith("mw.") and two.prefix.startswith("fw.")
    again = compile_limits(_parse({"policies": {"p": [rule]}}, rate_limit=["p"])).by_route["login"][0]
    assert again.prefix == one.prefix  # a reload that changes nothing keeps the counters
