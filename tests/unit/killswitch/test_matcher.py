"""The compiled switch index: every scope and mode, endpoint globs, letter case, expiry, and a
cost that does not grow with the number of non-matching switches."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import pytest

from gateway.killswitch.matcher import SwitchIndex
from gateway.killswitch.model import Switch, validate_spec

NOW = 1_800_000_000.0
_ids = itertools.count()


@dataclass(frozen=True)
class Route:
    name: str = "finance-api"
    module: str | None = "finance"
    integration: str | None = None


FINANCE = Route()
ORDERS = Route(name="orders-api", module="orders")
HOOKS = Route(name="hooks", module=None, integration="woocommerce")


def switch(scope: str, target: str | None, mode: str = "block", expires_at: float | None = None) -> Switch:
    base = validate_spec({"scope": scope, "target": target, "mode": mode, "reason": "test"})
    return Switch(f"ks_{next(_ids)}", base.scope, base.target, base.mode, "test", None, NOW, expires_at, None)


def refused(
    index: SwitchIndex,
    method: str = "GET",
    path: str = "/api/finance/x",
    route: Route | None = FINANCE,
    *,
    websocket: bool = False,
    ci: bool = False,
    now: float = NOW,
) -> bool:
    return index.refusal(method, path, route, websocket=websocket, now=now, case_insensitive=ci) is not None


@pytest.mark.parametrize(
    "scoped, hit_route, miss_route",
    [
        (switch("global", None), FINANCE, None),
        (switch("module", "finance"), FINANCE, ORDERS),
        (switch("route", "finance-api"), FINANCE, ORDERS),
        (switch("integration", "woocommerce"), HOOKS, FINANCE),
    ],
)
def test_identity_free_scopes(scoped: Switch, hit_route: Route, miss_route: Route | None) -> None:
    index = SwitchIndex([scoped], 1)
    assert refused(index, "POST", route=hit_route)
    if miss_route is not None:
        assert not refused(index, "POST", route=miss_route)


def test_global_spared_when_asked() -> None:
    index = SwitchIndex([switch("global", None)], 1)
    assert refused(index, route=None)
    assert index.refusal("GET", "/x", None, websocket=False, now=NOW, spare_global=True) is None


def test_read_only_lets_safe_methods_pass_but_not_websockets() -> None:
    index = SwitchIndex([switch("module", "finance", mode="read-only")], 1)
    for method in ("GET", "HEAD", "OPTIONS"):
        assert not refused(index, method)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert refused(index, method)
    assert refused(index, "GET", websocket=True)


def test_block_refuses_every_method() -> None:
    index = SwitchIndex([switch("module", "finance")], 1)
    assert all(refused(index, m) for m in ("GET", "HEAD", "OPTIONS", "POST"))


@pytest.mark.parametrize(
    "glob, path, method, hit",
    [
        ("POST /api/finance/invoices/*", "/api/finance/invoices/42", "POST", True),
        ("POST /api/finance/invoices/*", "/api/finance/invoices/42", "GET", False),
        ("POST /api/finance/invoices/*", "/api/finance/invoices/42/lines", "POST", False),
        ("POST /api/finance/invoices/*", "/api/finance/invoices", "POST", False),
        ("POST /api/finance/invoices/*", "/api/finance/invoices/42/", "POST", True),  # trailing slash
        ("GET /api/*/export", "/api/finance/export", "GET", True),
        ("GET /api/*/export", "/api/finance/export", "HEAD", True),  # HEAD runs the GET handler
        ("GET /api/*/export", "/api/finance/exports", "GET", False),
        ("* /api/finance/**", "/api/finance", "DELETE", True),  # '**' also matches nothing
        ("* /api/finance/**", "/api/finance/a/b/c", "PATCH", True),
        ("* /api/finance/**", "/api/financex/a", "PATCH", False),
        ("* /**", "/anything/at/all", "GET", True),
        ("GET /exact", "/exact", "GET", True),
        ("GET /exact", "/exact/more", "GET", False),
        ("GET /", "/", "GET", True),
        ("GET /", "/x", "GET", False),
        ("* /**", "/", "POST", True),
        ("* /api/finance/**", "/api/finance/x", "PROPFIND", True),  # odd methods meet '*' globs
        ("DELETE /api/**", "/api/x", "PROPFIND", False),
    ],
)
def test_endpoint_globs(glob: str, path: str, method: str, hit: bool) -> None:
    index = SwitchIndex([switch("endpoint", glob)], 1)
    assert refused(index, method, path, route=None) is hit


def test_endpoint_letter_case_follows_routing() -> None:
    index = SwitchIndex([switch("endpoint", "GET /api/Finance/*")], 1)
    assert not refused(index, "GET", "/API/finance/x", route=None)
    assert refused(index, "GET", "/API/finance/x", route=None, ci=True)
    assert refused(index, "GET", "/api/Finance/x", route=None)


def test_tenant_scope_checks_every_given_tenant() -> None:
    index = SwitchIndex([switch("tenant", "acme"), switch("tenant", "beta", mode="read-only")], 1)
    assert index.tenant_refusal(("acme",), "GET", websocket=False, now=NOW) is not None
    assert index.tenant_refusal(("other", "acme"), "GET", websocket=False, now=NOW) is not None
    assert index.tenant_refusal(("beta",), "GET", websocket=False, now=NOW) is None
    assert index.tenant_refusal(("beta",), "POST", websocket=False, now=NOW) is not None
    assert index.tenant_refusal(("ACME",), "GET", websocket=False, now=NOW) is None
    assert not refused(index)  # tenant switches need an identity: not in the identity-free check


def test_expired_switches_stop_matching_at_once() -> None:
    index = SwitchIndex([switch("module", "finance", expires_at=NOW + 10)], 1)
    assert refused(index, now=NOW + 9.999)
    assert not refused(index, now=NOW + 10)


def test_block_wins_over_read_only_on_the_same_target() -> None:
    index = SwitchIndex([switch("module", "finance", "read-only"), switch("module", "finance")], 1)
    assert refused(index, "GET")


def _cost(index: SwitchIndex, rounds: int = 20000) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        index.refusal("GET", "/api/orders/123/lines", ORDERS, websocket=False, now=NOW)
    return time.perf_counter() - start


def test_a_thousand_non_matching_switches_cost_about_as_much_as_a_few() -> None:
    few = SwitchIndex([switch("module", "m0"), switch("endpoint", "POST /api/finance/*")], 1)
    many = SwitchIndex(
        [switch("module", f"m{i}") for i in range(250)]
        + [switch("route", f"r{i}") for i in range(250)]
        + [switch("tenant", f"t{i}") for i in range(250)]
        + [switch("endpoint", f"POST /api/finance/invoices/{i}/*") for i in range(125)]
        + [switch("endpoint", f"GET /api/*/x{i}") for i in range(125)],
        2,
    )
    assert not refused(many, "GET", "/api/orders/123/lines", ORDERS)
    _cost(few, 2000), _cost(many, 2000)  # warm up
    assert _cost(many) < 3 * _cost(few)  # a linear scan would be ~100x


@pytest.mark.parametrize(
    "switches, unidentified",
    [
        ([], False),
        ([switch("tenant", "acme")], False),
        ([switch("tenant", "acme"), switch("global", None)], True),
        ([switch("module", "finance")], True),
        ([switch("route", "orders-api")], True),
        ([switch("integration", "woocommerce")], True),
        ([switch("endpoint", "POST /api/other/**")], True),
    ],
)
def test_unidentified_says_whether_the_identity_free_check_can_find_anything(
    switches: list[Switch], unidentified: bool
) -> None:
    """The stages skip ``refusal`` when ``unidentified`` is false: it must then find nothing,
    for any method, path, route or WebSocket (so the skip can never let a switched request by)."""
    index = SwitchIndex(switches, 1)
    assert index.unidentified is unidentified
    if not unidentified:
        for method, path, route, websocket in itertools.product(
            ("GET", "POST", "HEAD"), ("/", "/api/finance/x"), (FINANCE, ORDERS, HOOKS, None), (False, True)
        ):
            assert not refused(index, method, path, route, websocket=websocket)


def test_names_tenant_is_true_wherever_tenant_refusal_could_refuse() -> None:
    active, expired = switch("tenant", "acme"), switch("tenant", "gone", expires_at=NOW - 1)
    index = SwitchIndex([active, expired, switch("module", "finance")], 1)
    assert index.names_tenant(("acme",)) and index.names_tenant(("other", "acme"))
    assert index.names_tenant(("gone",))  # named, though expired: tenant_refusal decides that
    assert not index.names_tenant(("other",)) and not index.names_tenant(())
    assert not index.names_tenant(("ACME",))  # exact, as tenant_refusal matches
    assert index.tenant_refusal(("other",), "POST", websocket=True, now=NOW) is None
    assert not SwitchIndex([switch("global", None)], 1).names_tenant(("acme",))
