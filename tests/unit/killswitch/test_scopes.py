"""gateway.killswitch.scopes: the one table of kill-switch scopes."""

import pytest

from gateway.killswitch.model import validate_spec
from gateway.killswitch.scopes import SCOPE_RULES, SCOPES, parse_endpoint, target_help

VALID = {
    "global": (None, "*"),
    "module": ("finance", "finance"),
    "route": ("finance-api", "finance-api"),
    "tenant": ("acme", "acme"),
    "integration": ("stripe", "stripe"),
    "endpoint": ("post /api//finance/*", "POST /api/finance/*"),
}


def test_every_scope_has_a_valid_example() -> None:
    assert set(VALID) == set(SCOPES)


@pytest.mark.parametrize("rule", SCOPE_RULES, ids=lambda r: r.name)
def test_each_scope_normalises_its_target(rule) -> None:
    raw, stored = VALID[rule.name]
    assert rule.normalise_target(raw) == stored
    assert validate_spec({"scope": rule.name, "target": raw, "reason": "r"}).target == stored


@pytest.mark.parametrize("rule", [r for r in SCOPE_RULES if r.target_hint is not None], ids=lambda r: r.name)
def test_scopes_with_targets_refuse_none(rule) -> None:
    with pytest.raises(ValueError, match=f"a {rule.name} switch needs a target"):
        rule.normalise_target(None)


def test_global_takes_no_target() -> None:
    with pytest.raises(ValueError, match="takes no target"):
        SCOPE_RULES[0].normalise_target("x")


def test_route_field_scopes_name_route_attributes() -> None:
    for rule in SCOPE_RULES:
        assert (rule.matching == "route field") == (rule.route_field is not None)


def test_cli_target_help_lists_every_target() -> None:
    assert target_help() == "module, route, tenant, integration, or 'METHOD /glob'"


def test_unknown_scope_message_lists_the_table() -> None:
    with pytest.raises(
        ValueError, match="scope must be one of global, module, route, tenant, integration, endpoint"
    ):
        validate_spec({"scope": "planet", "reason": "r"})


def test_parse_endpoint_refuses_partial_globs() -> None:
    with pytest.raises(ValueError, match="whole segments"):
        parse_endpoint("GET /a/b*")
