"""The request metrics tallied in plain numbers export exactly what prometheus-client's own
Counter and Histogram export for the same requests (every sample, bit for bit)."""

from __future__ import annotations

import random
import re
import types

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway import metrics as metrics_module
from gateway.metrics import _BUCKETS, GatewayMetrics


def _fake_ctx(route: str | None, status: int, started: float) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        route=None if route is None else types.SimpleNamespace(name=route), status=status, started=started
    )


def _requests_samples(text: bytes) -> list[str]:
    """The request metrics' lines, _created values (wall-clock of each child) left out."""
    lines = text.decode().splitlines()
    kept = [line for line in lines if "shopino_gateway_request" in line and "_created" not in line]
    return [re.sub(r"\s+", " ", line) for line in kept]


@pytest.fixture
def tallied(monkeypatch: pytest.MonkeyPatch) -> GatewayMetrics:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    registry = CollectorRegistry()
    for kind in ("Counter", "Histogram", "Gauge"):
        monkeypatch.setattr(metrics_module, kind, _in(registry, getattr(metrics_module, kind)))
    tallied = GatewayMetrics()
    tallied.registry = registry  # type: ignore[attr-defined]
    return tallied


def _in(registry: CollectorRegistry, kind: type) -> object:
    """The metric class, registering in ``registry`` instead of the process-wide one."""
    return lambda *args, **kwargs: kind(*args, registry=registry, **kwargs)


def test_tallied_request_metrics_match_prometheus_client_exactly(
    tallied: GatewayMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference_registry = CollectorRegistry()
    counter = Counter(
        "shopino_gateway_requests",
        "Requests answered, by route and status",
        ("route", "status"),
        registry=reference_registry,
    )
    histogram = Histogram(
        "shopino_gateway_request_duration_seconds",
        "Time to the response head, by route",
        ("route",),
        buckets=_BUCKETS,
        registry=reference_registry,
    )
    rng = random.Random(13)
    now = [1000.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: now[0])
    assert tallied.tallied
    for round_ in range(3):
        for _ in range(400):
            route = rng.choice(["erp", "shop", None])
            status = rng.choice([200, 200, 404, 429, 0])
            # latencies on and around every bucket bound, and beyond the last one
            elapsed = rng.choice([*_BUCKETS, 0.0, 31.0]) if rng.random() < 0.3 else rng.expovariate(40)
            started = now[0] - elapsed
            elapsed = now[0] - started  # what observe_request computes
            tallied.observe_request(_fake_ctx(route, status, started))  # type: ignore[arg-type]
            counter.labels(route or "-", str(status)).inc()
            histogram.labels(route or "-").observe(elapsed)
        tallied.publish()
        got = _requests_samples(generate_latest(tallied.registry))  # type: ignore[attr-defined]
        want = _requests_samples(generate_latest(reference_registry))
        assert got == want, f"round {round_}"
        assert any("_sum" in line for line in got)
