"""TrafficRecorder and the kill switch dry run: counts replayed through the real matcher, the
5-minute and 15-minute windows, read-only and tenant scopes, bounded memory, and only truncated
IPs and pseudonyms in the traffic report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.config_model import GatewayConfig
from gateway.config_schema import parse_config
from gateway.killswitch.model import validate_spec
from gateway.traffic.dry_run import dry_run
from gateway.traffic.recorder import BUCKET_S, DRY_RUN_WINDOW, TrafficRecorder

CONFIG = (
    "upstreams:\n  erp:\n    urls: ['http://127.0.0.1:9000']\n"
    "routes:\n"
    "  - {name: finance-api, prefix: /api/finance, upstream: erp, module: finance}\n"
    "  - {name: orders-api, prefix: /api/orders, upstream: erp, module: orders}\n"
)


@dataclass
class _Request:
    method: str


@dataclass
class _Target:
    path: str


@dataclass
class Ctx:
    """The fields of a RequestContext the recorder reads (built from real config routes)."""

    route: Any
    request: _Request
    target: _Target | None
    status: int = 200
    tenant: str | None = None
    user: str | None = None
    refusal: str | None = None
    client_ip: str = "203.0.113.77"
    extra: dict[str, Any] = field(default_factory=dict)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config() -> GatewayConfig:
    return parse_config(CONFIG)


def hit(rec: TrafficRecorder, config: GatewayConfig, route: str | None, method: str, path: str, **kw: Any):
    routes = {r.name: r for r in config.routes}
    rec.observe(Ctx(routes.get(route) if route else None, _Request(method), _Target(path), **kw))  # type: ignore[arg-type]


def would(rec: TrafficRecorder, config: GatewayConfig, clock: Clock, **spec: Any) -> int:
    switch = validate_spec({"mode": "block", "reason": "dry", **spec})
    return dry_run(switch, config, rec, clock()).would_refuse


def test_module_route_tenant_and_endpoint_scopes_count_what_the_matcher_would_refuse(config) -> None:
    clock = Clock()
    rec = TrafficRecorder(clock)
    for i in range(5):
        hit(rec, config, "finance-api", "GET", f"/api/finance/invoices/{i}", tenant="acme")
    for _ in range(3):
        hit(rec, config, "orders-api", "POST", "/api/orders/new", tenant="globex")
    hit(rec, config, None, "GET", "/_gateway/health")
    assert would(rec, config, clock, scope="module", target="finance") == 5
    assert would(rec, config, clock, scope="route", target="orders-api") == 3
    assert would(rec, config, clock, scope="tenant", target="globex") == 3
    assert would(rec, config, clock, scope="tenant", target="initech") == 0
    assert would(rec, config, clock, scope="endpoint", target="GET /api/finance/invoices/*") == 5
    assert would(rec, config, clock, scope="endpoint", target="POST /api/finance/**") == 0
    # A global switch spares the probes (SPEC §9): 8 of the 9 requests.
    assert would(rec, config, clock, scope="global") == 8
    # read-only lets GETs pass: only the 3 POSTs.
    assert would(rec, config, clock, scope="global", mode="read-only") == 3


def test_only_the_last_five_minutes_count(config) -> None:
    clock = Clock()
    rec = TrafficRecorder(clock)
    hit(rec, config, "finance-api", "GET", "/api/finance/a")
    clock.now += 200
    hit(rec, config, "finance-api", "GET", "/api/finance/b")
    hit(rec, config, "finance-api", "GET", "/api/finance/b")
    assert would(rec, config, clock, scope="module", target="finance") == 3
    clock.now += 150  # the first request is now 350 s old
    assert would(rec, config, clock, scope="module", target="finance") == 2
    clock.now += 300 * 3  # the ring has wrapped: nothing is left
    hit(rec, config, "orders-api", "GET", "/api/orders")
    assert would(rec, config, clock, scope="module", target="finance") == 0
    assert would(rec, config, clock, scope="module", target="orders") == 1


def test_distinct_keys_are_bounded_and_idle_ones_forgotten(config) -> None:
    clock = Clock()
    rec = TrafficRecorder(clock, max_keys=100)
    for i in range(150):
        hit(rec, config, "finance-api", "GET", f"/api/finance/item/{i}")
    hit(rec, config, "finance-api", "GET", "/api/finance/" + "x" * 300)  # too long to keep
    switch = validate_spec({"scope": "endpoint", "target": "GET /api/finance/**", "reason": "x"})
    result = dry_run(switch, config, rec, clock())
    assert result.requests == 151 and result.untracked >= 51
    assert result.would_refuse + result.untracked == 151  # each one placed or said unplaceable
    # Scopes that need no path still count every request.
    assert would(rec, config, clock, scope="module", target="finance") == 151
    # Once the keys have been idle for the whole window, a full table makes room again.
    clock.now += DRY_RUN_WINDOW + BUCKET_S
    hit(rec, config, "finance-api", "GET", "/api/finance/fresh")
    clock.now += BUCKET_S
    for i in range(20):
        hit(rec, config, "finance-api", "GET", f"/api/finance/new/{i}")
    result = dry_run(switch, config, rec, clock())
    assert result.requests == 21 and result.untracked == 0 and result.would_refuse == 21


def test_past_twice_the_bound_requests_are_counted_but_placed_nowhere(config) -> None:
    clock = Clock()
    rec = TrafficRecorder(clock, max_keys=10)
    for i in range(40):
        hit(rec, config, "finance-api", "POST", f"/api/finance/{i}", tenant=f"t{i}")
    result = dry_run(validate_spec({"scope": "global", "reason": "x"}), config, rec, clock())
    assert result.requests == 40 and result.untracked > 0
    assert result.would_refuse + result.untracked == 40


def test_traffic_report_is_the_difference_of_counter_snapshots_per_bucket(config) -> None:
    clock = Clock(1_800_000_000.0)
    rec = TrafficRecorder(clock)
    answered: dict[tuple[str, int], int] = {}
    refused: dict[str, int] = {}
    rec.counters = lambda: (dict(answered), dict(refused), {})

    def request(route: str, path: str, status: int, refusal: str | None = None, **kw: Any) -> None:
        # The order of the real thing: a refusal is counted, then the answer, then observe.
        if refusal:
            refused[refusal] = refused.get(refusal, 0) + 1
        answered[(route, status)] = answered.get((route, status), 0) + 1
        hit(rec, config, route, "GET", path, status=status, refusal=refusal, **kw)

    request("finance-api", "/api/finance/x", 200)
    for _ in range(4):
        request(
            "finance-api",
            "/api/finance/x",
            429,
            "rate-limited",
            user="alice@example.com",
            client_ip="198.51.100.23",
        )
    clock.now += 10
    request("orders-api", "/api/orders", 503, "isolated", client_ip="2001:db8:1:2::5")
    clock.now += 3
    report = rec.report(lambda user: "u_" + str(len(user)))
    points = report["points"]
    assert [p["t"] for p in points] == [1_800_000_000, 1_800_000_010]
    assert points[0]["routes"] == {"finance-api": {"2xx": 1, "4xx": 4}}
    assert points[0]["refusals"] == {"rate-limited": 4}
    assert points[1]["refusals"] == {"isolated": 1}
    assert points[1]["routes"] == {"orders-api": {"5xx": 1}}
    assert report["refusal_status"] == {"rate-limited": 429, "isolated": 503}
    assert report["top_refused"] == [
        {"client_ip": "198.51.100.0", "user": "u_17", "refusals": 4},
        {"client_ip": "2001:db8:1::", "user": None, "refusals": 1},
    ]
    text = repr(report)
    assert "alice" not in text and "198.51.100.23" not in text  # SECURITY: no raw identity leaves
    clock.now += 15 * 60 + 10  # both buckets older than the 15-minute window
    assert rec.report(str)["points"] == [] and rec.report(str)["top_refused"] == []


def test_shadow_refusals_per_policy_are_differences_over_the_window(config) -> None:
    clock = Clock(1_800_000_000.0)
    rec = TrafficRecorder(clock)
    answered: dict[tuple[str, int], int] = {}
    shadow: dict[str, int] = {"watch": 7}  # counted before the window's first bucket: not in it
    rec.counters = lambda: (dict(answered), {}, dict(shadow))

    def request(over: tuple[str, ...] = ()) -> None:
        # The order of the real thing: the limiter counts the shadow policies, then observe.
        for policy in over:
            shadow[policy] = shadow.get(policy, 0) + 1
        answered[("finance-api", 200)] = answered.get(("finance-api", 200), 0) + 1
        hit(rec, config, "finance-api", "GET", "/api/finance/x")

    request()  # the first bucket's snapshot: watch 7
    request(("watch",))
    request(("watch", "pre_auth"))
    clock.now += BUCKET_S
    request()
    request(("pre_auth",))
    clock.now += 1
    report = rec.report(str)
    assert [p["shadow"] for p in report["points"]] == [{"watch": 2, "pre_auth": 1}, {"pre_auth": 1}]
    assert report["shadow_refusals"] == {"pre_auth": 2, "watch": 2}
    assert all(p["refusals"] == {} for p in report["points"])  # a shadow rule never refused
    clock.now += 15 * 60  # past the window: nothing left to show
    assert rec.report(str)["shadow_refusals"] == {}
