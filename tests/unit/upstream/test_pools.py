"""SPEC §10: round robin over an upstream's URLs with passive ejection (``Balancer``)."""

from __future__ import annotations

import pytest

from gateway.upstream.pools import Balancer, Endpoint

T0 = 1000.0


def make(count: int = 3, *, max_fails: int = 3, eject_for: float = 10.0) -> Balancer:
    endpoints = [Endpoint(f"http://10.0.0.{i}:9000", f"10.0.0.{i}:9000") for i in range(1, count + 1)]
    return Balancer(endpoints, max_fails=max_fails, eject_for=eject_for)


def urls(endpoints: list[Endpoint]) -> list[str]:
    return [e.url.removeprefix("http://10.0.0.").removesuffix(":9000") for e in endpoints]


def test_round_robin_rotates_the_first_choice() -> None:
    balancer = make(3)
    orders = [urls(balancer.order(now=T0)) for _ in range(4)]
    assert orders == [["1", "2", "3"], ["2", "3", "1"], ["3", "1", "2"], ["1", "2", "3"]]


def test_single_endpoint_is_always_returned() -> None:
    balancer = make(1)
    assert [urls(balancer.order(now=T0)) for _ in range(3)] == [["1"]] * 3


def test_a_single_ejected_endpoint_is_still_tried() -> None:
    """With every endpoint ejected the order is all of them; with one, that one."""
    balancer = make(1, max_fails=1, eject_for=10.0)
    balancer.failed(balancer.endpoints[0], now=T0)
    assert balancer.endpoints[0].ejected_until > T0 + 1
    assert urls(balancer.order(now=T0 + 1)) == ["1"]
    assert urls(balancer.order()) == ["1"]


def test_ejected_after_max_fails_consecutive_failures() -> None:
    balancer = make(3, max_fails=3, eject_for=10.0)
    bad = balancer.endpoints[1]
    balancer.failed(bad, now=T0)
    balancer.failed(bad, now=T0)
    assert "2" in urls(balancer.order(now=T0))  # two failures: still in rotation
    balancer.failed(bad, now=T0)
    assert bad.ejected_until == T0 + 10.0
    for _ in range(3):
        assert "2" not in urls(balancer.order(now=T0 + 1))
    # Ejection lasts eject_for seconds, then the endpoint is back.
    assert "2" not in urls(balancer.order(now=T0 + 9.999))
    assert "2" in urls(balancer.order(now=T0 + 10.0))


def test_ejected_endpoint_is_skipped_but_rotation_continues() -> None:
    balancer = make(3, max_fails=1)
    balancer.failed(balancer.endpoints[0], now=T0)
    orders = [urls(balancer.order(now=T0 + 1)) for _ in range(3)]
    assert orders == [["2", "3"], ["2", "3"], ["3", "2"]]


def test_success_resets_the_failure_count() -> None:
    balancer = make(2, max_fails=3)
    endpoint = balancer.endpoints[0]
    balancer.failed(endpoint, now=T0)
    balancer.failed(endpoint, now=T0)
    balancer.succeeded(endpoint)
    balancer.failed(endpoint, now=T0)
    balancer.failed(endpoint, now=T0)
    assert endpoint.ejected_until == 0.0  # 2 + 2 failures, never 3 in a row
    assert "1" in urls(balancer.order(now=T0))


def test_success_ends_an_ejection() -> None:
    balancer = make(2, max_fails=1)
    endpoint = balancer.endpoints[0]
    balancer.failed(endpoint, now=T0)
    assert "1" not in urls(balancer.order(now=T0))
    balancer.succeeded(endpoint)
    assert "1" in urls(balancer.order(now=T0))


def test_after_an_ejection_it_takes_max_fails_again() -> None:
    balancer = make(2, max_fails=2, eject_for=5.0)
    endpoint = balancer.endpoints[0]
    balancer.failed(endpoint, now=T0)
    balancer.failed(endpoint, now=T0)
    assert endpoint.ejected_until == T0 + 5.0
    # Back after the ejection: one more failure is not yet enough.
    balancer.failed(endpoint, now=T0 + 6)
    assert "1" in urls(balancer.order(now=T0 + 6))
    balancer.failed(endpoint, now=T0 + 7)
    assert endpoint.ejected_until == T0 + 12.0


def test_all_ejected_still_returns_every_endpoint_in_rotation() -> None:
    balancer = make(3, max_fails=1)
    for endpoint in balancer.endpoints:
        balancer.failed(endpoint, now=T0)
    assert urls(balancer.order(now=T0 + 1)) == ["1", "2", "3"]
    assert urls(balancer.order(now=T0 + 1)) == ["2", "3", "1"]


@pytest.mark.parametrize("max_fails", [1, 2, 5])
def test_failures_below_max_fails_never_eject(max_fails: int) -> None:
    balancer = make(2, max_fails=max_fails)
    endpoint = balancer.endpoints[0]
    for _ in range(max_fails - 1):
        balancer.failed(endpoint, now=T0)
    assert endpoint.ejected_until == 0.0
    balancer.failed(endpoint, now=T0)
    assert endpoint.ejected_until == T0 + balancer.eject_for
