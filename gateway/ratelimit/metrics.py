"""Rate-limit metrics (prometheus; summed over workers like gateway.metrics). Decision
counters follow Envoy's local rate-limit filter: a fixed set of results per stage.

Decisions are two per request: with one process they are tallied in plain numbers
(``DecisionTally``) and published into ``DECISIONS`` before every scrape
(``publish_decisions``, from ``gateway.metrics.render_metrics``), as the request counters are;
the Counter's ``inc`` locks and unlocks per call, ~1,700 instructions per request for the two.
With several workers each decision writes through to the shared files at once."""

from __future__ import annotations

import os
from collections import defaultdict

from prometheus_client import Counter, Gauge

DECISIONS = Counter(
    "shopino_gateway_ratelimit_decisions",
    "Rate-limit decisions, by stage and result (ok, limited, fallback, unchecked, refused, shadow_refused)",
    ("stage", "result"),
)
SHADOW_REFUSALS = Counter(
    "shopino_gateway_ratelimit_shadow_refusals",
    "Requests a mode: shadow rule would have refused, by policy (pre_auth for the pre_auth rules)",
    ("policy",),
)
STORE_UP = Gauge(
    "shopino_gateway_ratelimit_store_up",
    "1 while the shared rate-limit store answers (0: failure mode in force)",
    multiprocess_mode="livemin",
)
STORE_FAILURES = Counter(
    "shopino_gateway_ratelimit_store_failures", "Rate-limit store calls failed or timed out"
)
LOCKOUTS = Counter(
    "shopino_gateway_ratelimit_lockouts", "Login lockouts started, by kind (ip, user)", ("kind",)
)


# As gateway.metrics decides it: the parent sets the directory before prometheus-client's
# import (gateway.server.workers.prepare_metrics_dir), so this is fixed for the process.
TALLIED = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class DecisionTally:
    """One (stage, result)'s decisions in this process; ``count`` is what a scrape reads once
    published. Made at the stage's first such decision: DECISIONS' child is labelled then, as
    before (the same ``_created`` timestamp, no series before it)."""

    __slots__ = ("child", "count", "published")

    def __init__(self, stage: str, result: str) -> None:
        self.child = DECISIONS.labels(stage, result)
        self.count = 0
        self.published = 0

    def publish(self) -> None:
        if self.count != self.published:
            self.child.inc(self.count - self.published)
            self.published = self.count


# stage → result → its tally, for every backend of the process (DECISIONS is the process's too).
# Nested, so a count looks up two interned names and builds no (stage, result) key.
DECISION_TALLIES: defaultdict[str, dict[str, DecisionTally]] = defaultdict(dict)


def decision_tally(stage: str, result: str) -> DecisionTally:
    tallies = DECISION_TALLIES[stage]
    tally = tallies.get(result)
    if tally is None:
        tally = tallies[result] = DecisionTally(stage, result)
    return tally


def publish_decisions() -> None:
    """Bring DECISIONS up to date with the tallies (before every scrape)."""
    for tallies in DECISION_TALLIES.values():
        for tally in tallies.values():
            tally.publish()
