"""Prometheus metrics (served on the admin listener's ``/metrics``).

With several workers each process writes its samples to ``$PROMETHEUS_MULTIPROC_DIR`` (set by
the parent before forking) and ``/metrics`` on any worker sums them all (SPEC §2).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess

from gateway.auth.metrics import AUTH_FAILURES
from gateway.facts import RequestFacts
from gateway.ratelimit.metrics import SHADOW_REFUSALS, publish_decisions
from gateway.traffic.recorder import TRAFFIC, Counters, TrafficRecorder

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BOUNDS = (*(float(b) for b in _BUCKETS), float("inf"))  # prometheus-client's upper bounds, +Inf last


class _RouteLatency:
    """One route's latency histogram in plain numbers: per-bucket counts (not cumulative, as
    prometheus-client keeps them) and the running sum, added in the same order as its
    ``observe`` would, so the exported floats are bit for bit the same."""

    __slots__ = ("buckets", "child", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.buckets = [0] * len(_BOUNDS)
        self.total = 0.0

    def publish(self) -> None:
        # prometheus-client has no public setter for a histogram's buckets; the conformance test
        # (tests/unit/test_metrics.py) compares the output with its own observe().
        for value, count in zip(self.child._buckets, self.buckets, strict=True):
            value.set(float(count))
        self.child._sum.set(self.total)


class _RequestTally:
    """One (route, status): its answered count and its route's latency."""

    __slots__ = ("count", "counter", "latency", "published")

    def __init__(self, counter: Any, latency: _RouteLatency) -> None:
        self.counter = counter
        self.latency = latency
        self.count = 0
        self.published = 0


class GatewayMetrics:
    def __init__(self, traffic: TrafficRecorder | None = None) -> None:
        self._traffic = traffic  # the console's dry runs and traffic view (gateway/traffic/)
        if traffic is not None:
            traffic.counters = self.answer_counts
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._tallies: dict[tuple[str, int], _RequestTally] = {}
        self._latencies: dict[str, _RouteLatency] = {}
        # One process: requests are tallied in plain numbers and published into prometheus-client
        # on each scrape (its Counter and Histogram lock and walk per call, a visible share of a
        # request). Several workers: each request writes through to the shared files, so a
        # scrape on any worker sees every answered request at once.
        self.tallied = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
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
        self.store_resets = Counter(
            "shopino_gateway_store_resets", "State store resets noticed (came back empty or older, App. C)"
        )
        self.store_healthy = Gauge(
            "shopino_gateway_state_store_healthy",
            "1 while the state store answers",
            multiprocess_mode="livemin",
        )

        self.auth_failures = AUTH_FAILURES  # counted by auth and tenancy without importing this module
        self.audit_spooled = Gauge(
            "shopino_gateway_audit_spooled_records",
            "Audit records waiting on local disk for the store to return",
            multiprocess_mode="livesum",
        )
        self.audit_queued = Gauge(
            "shopino_gateway_audit_queued_records",
            "Audit records queued in memory for the background writer (issue 15)",
            multiprocess_mode="livesum",
        )

    def count_refusal(self, slug: str) -> None:
        """One refusal of problem type ``slug``; the child is looked up once per slug (a flood of
        429s made labels() a visible share of each refusal's cost)."""
        child = self._refusal_children.get(slug)
        if child is None:
            child = self._refusal_children[slug] = self.gateway_errors.labels(slug)
        child.inc()

    def observe_request(self, ctx: RequestFacts) -> None:
        route = ctx.route.name if ctx.route is not None else "-"
        key = (route, ctx.status or 0)
        if self.tallied:
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._new_tally(*key)
            tally.count += 1
            elapsed = time.monotonic() - ctx.started
            latency = tally.latency
            latency.buckets[bisect_left(_BOUNDS, elapsed)] += 1  # the first bound >= elapsed
            latency.total += elapsed
        else:
            children = self._request_children.get(key)
            if children is None:
                # labels() hashes and locks on every call; the (route, status) set is small and
                # fixed by the config, so each pair's children are looked up once per process.
                children = (self.requests.labels(route, str(key[1])), self.latency.labels(route))
                self._request_children[key] = children
            children[0].inc()
            children[1].observe(time.monotonic() - ctx.started)
        if self._traffic is not None:
            # After the counters: a scrape never waits on it, and its snapshots take this
            # request back out (gateway/traffic/recorder.py).
            self._traffic.observe(ctx)

    def answer_counts(self) -> Counters:
        """(route, status) → answered, problem type → refused and shadow policy → would have
        refused, so far in this process: the console's traffic snapshots
        (gateway/traffic/recorder.py) are differences of these."""
        if not self.tallied:
            return _all_workers_counts()
        answered = {key: tally.count for key, tally in self._tallies.items()}
        refused = {slug: int(child._value.get()) for slug, child in self._refusal_children.items()}
        shadow = {
            sample.labels["policy"]: int(sample.value)
            for metric in SHADOW_REFUSALS.collect()
            for sample in metric.samples
            if sample.name == _SHADOW_TOTAL
        }
        return answered, refused, shadow

    def _new_tally(self, route: str, status: int) -> _RequestTally:
        # The children are made at the first request, as before: the same _created timestamps.
        latency = self._latencies.get(route)
        if latency is None:
            latency = self._latencies[route] = _RouteLatency(self.latency.labels(route))
        counter = self.requests.labels(route, str(status))
        tally = self._tallies[(route, status)] = _RequestTally(counter, latency)
        return tally

    def publish(self) -> None:
        """Bring prometheus-client's request metrics up to date (before every scrape)."""
        for tally in self._tallies.values():
            if tally.count != tally.published:
                tally.counter.inc(tally.count - tally.published)
                tally.published = tally.count
        for latency in self._latencies.values():
            latency.publish()


_SHADOW_TOTAL = "shopino_gateway_ratelimit_shadow_refusals_total"


def _all_workers_counts() -> Counters:
    """With several workers: every worker's counts, summed from the shared files (as /metrics
    does), so the console's traffic view is the same whichever worker answers it."""
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry)
    answered: dict[tuple[str, int], int] = {}
    refused: dict[str, int] = {}
    shadow: dict[str, int] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == "shopino_gateway_requests_total":
                key = (sample.labels["route"], int(sample.labels["status"]))
                answered[key] = answered.get(key, 0) + int(sample.value)
            elif sample.name == "shopino_gateway_refusals_total":
                slug = sample.labels["type"]
                refused[slug] = refused.get(slug, 0) + int(sample.value)
            elif sample.name == _SHADOW_TOTAL:
                policy = sample.labels["policy"]
                shadow[policy] = shadow.get(policy, 0) + int(sample.value)
    return answered, refused, shadow


METRICS = GatewayMetrics(traffic=TRAFFIC)


def render_metrics() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    METRICS.publish()
    publish_decisions()
    return generate_latest(), CONTENT_TYPE_LATEST
