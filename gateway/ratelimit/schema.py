"""The ``rate_limits`` section builder and its cross-checks (called by ``gateway.config_schema``).

Limit strings are parsed here with the ``limits`` library, so a typo is a start-up error with
its key path, never a surprise at the first request.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from limits import parse_many

from gateway.config.reader import Node
from gateway.ratelimit.keys import FIELD_NAME_RE, key_error, split_key
from gateway.ratelimit.model import (
    RULE_MODES,
    STRATEGIES,
    LoginProtectionConfig,
    RateLimitRule,
    RateLimitsConfig,
)

_POLICY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _rule(raw: Any, path: str, node: Node, *, pre_auth: bool, methods: frozenset[str]) -> RateLimitRule:
    rule = Node(raw, path, node.report)
    key = rule.string("key")
    if key and (problem := key_error(key, pre_auth=pre_auth)):
        rule.report.error(rule.child_path("key"), problem)
    limit = rule.string("limit")
    if limit:
        try:
            if not parse_many(limit):
                raise ValueError
        except ValueError:
            rule.report.error(rule.child_path("limit"), "expected limits notation like '5/minute;100/hour'")
    chosen: frozenset[str] | None = None
    if rule.has("methods"):
        chosen = frozenset(m.upper() for m in rule.string_list("methods"))
        if unknown := sorted(chosen - methods):
            rule.report.error(rule.child_path("methods"), f"unknown method {unknown[0]}")
    result = RateLimitRule(
        key=key,
        limit=limit,
        methods=chosen,
        cost=rule.integer("cost", 1, minimum=1, maximum=1_000_000),
        strategy=rule.string("strategy", "moving-window", choices=STRATEGIES),
        mode=rule.string("mode", "enforce", choices=RULE_MODES),
    )
    rule.done()
    return result


def _rules(node: Node, key: str, *, pre_auth: bool, methods: frozenset[str]) -> tuple[RateLimitRule, ...]:
    return tuple(
        _rule(raw, path, node, pre_auth=pre_auth, methods=methods) for _, raw, path in node.items(key)
    )


def _login(node: Node) -> LoginProtectionConfig:
    result = LoginProtectionConfig(
        username_field=node.string("username_field", "username"),
        failures_per_ip=node.integer("failures_per_ip", 20, minimum=1),
        failures_per_username=node.integer("failures_per_username", 5, minimum=1),
        window=node.duration("window", 900.0),
        base_lockout=node.duration("base_lockout", 60.0),
        max_lockout=node.duration("max_lockout", 86400.0),
    )
    if not FIELD_NAME_RE.match(result.username_field):
        node.report.error(node.child_path("username_field"), "expected a field name")
    for name in ("window", "base_lockout", "max_lockout"):
        if getattr(result, name) < 1:
            node.report.error(node.child_path(name), "must be at least 1s")
    if result.max_lockout < result.base_lockout:
        node.report.error(node.child_path("max_lockout"), "must not be shorter than base_lockout")
    node.done()
    return result


def build_rate_limits(node: Node, methods: frozenset[str]) -> RateLimitsConfig:
    policies: dict[str, tuple[RateLimitRule, ...]] = {}
    section = node.child("policies")
    for name in list(section.data):
        if not _POLICY_RE.match(str(name)):
            section.report.error(section.child_path(str(name)), "use letters, digits, '-', '_' or '.'")
        policies[str(name)] = _rules(section, name, pre_auth=False, methods=methods)
    section.done()
    result = RateLimitsConfig(
        on_store_failure=node.string("on_store_failure", "local", choices=("local", "allow", "deny")),
        pre_auth=_rules(node, "pre_auth", pre_auth=True, methods=methods),
        policies=MappingProxyType(policies),
        login=_login(node.child("login")),
        store_timeout=node.duration("store_timeout", 0.3),
    )
    if not 0.01 <= result.store_timeout <= 5:
        node.report.error(node.child_path("store_timeout"), "must be between 10ms and 5s")
    node.done()
    return result


def check_rate_limit_references(config: Any, report: Any) -> None:
    """Every policy a route names exists (a typo would silently leave the route unlimited), and
    no rule counts by a header the gateway strips from client requests."""
    policies = config.rate_limits.policies
    for index, route in enumerate(config.routes):
        for position, name in enumerate(route.rate_limit):
            if name not in policies:
                report.error(
                    f"routes[{index}].rate_limit[{position}]", f"no rate_limits policy named {name!r}"
                )
    _check_stripped_header_keys(config, report)


def _check_stripped_header_keys(config: Any, report: Any) -> None:
    # SECURITY: a stripped identity header is the client's own text (it never reaches an upstream);
    # counting by it would let a client pick its bucket, e.g. header:X-Tenant-ID per request.
    stripped = config.tenancy.strip_set()
    rule_sets = [("rate_limits.pre_auth", config.rate_limits.pre_auth)]
    policies = config.rate_limits.policies
    rule_sets += [(f"rate_limits.policies.{name}", rules) for name, rules in policies.items()]
    for path, rules in rule_sets:
        for index, rule in enumerate(rules):
            kind, name = split_key(rule.key)
            if kind == "header" and name.lower() in stripped:
                report.error(f"{path}[{index}].key", f"{name} is stripped from client requests (tenancy)")
