"""Rate-limit metrics (prometheus; summed over workers like gateway.metrics). Decision
counters follow Envoy's local rate-limit filter: a fixed set of results per stage."""

from __future__ import annotations

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
