"""Prometheus metrics (served on the admin listener's ``/metrics``).

With several workers each process writes its samples to ``$PROMETHEUS_MULTIPROC_DIR`` (set by
the parent before forking) and ``/metrics`` on any worker sums them all (SPEC §2).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

if TYPE_CHECKING:
    from gateway.context import RequestContext

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._refusal_children: dict[str, Any] = {}
        self.requests = Counter(
            "shopino_gateway_requests", "Requests answered, by route and status", ("route", "status")
        )
        self.latency = Histogram(
            "shopino_gateway_request_duration_seconds",
            "Time to the response head, by route",
            ("route",),
            buckets=_BUCKETS,
        )
        self.gateway_errors = Counter(
            "shopino_gateway_refusals", "Responses the gateway produced itself, by problem type", ("type",)
        )
        self.upstream_errors = Counter(
            "shopino_gateway_upstream_errors", "Upstream failures, by upstream and kind", ("upstream", "kind")
        )
        self.reloads = Counter("shopino_gateway_config_reloads", "Config reloads, by result", ("result",))
        self.store_errors = Counter("shopino_gateway_state_store_errors", "State store failures")
        self.store_healthy = Gauge(
            "shopino_gateway_state_store_healthy",
            "1 while the state store answers",
            multiprocess_mode="livemin",
        )

        self.auth_failures = Counter(
            "shopino_gateway_auth_failures", "Refused authentications, by reason", ("reason",)
        )
        self.audit_spooled = Gauge(
            "shopino_gateway_audit_spooled_records",
            "Audit records waiting on local disk for the store to return",
            multiprocess_mode="livesum",
        )

    def count_refusal(self, slug: str) -> None:
        """One refusal of problem type ``slug``; the child is looked up once per slug (a flood of
        429s made labels() a visible share of each refusal's cost)."""
        child = self._refusal_children.get(slug)
        if child is None:
            child = self._refusal_children[slug] = self.gateway_errors.labels(slug)
        child.inc()

    def observe_request(self, ctx: RequestContext) -> None:
        route = ctx.route.name if ctx.route is not None else "-"
        key = (route, ctx.status or 0)
        children = self._request_children.get(key)
        if children is None:
            # labels() hashes and locks on every call; the (route, status) set is small and fixed
            # by the config, so each pair's children are looked up once per process.
            children = (self.requests.labels(route, str(key[1])), self.latency.labels(route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(time.monotonic() - ctx.started)


METRICS = GatewayMetrics()


def render_metrics() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
