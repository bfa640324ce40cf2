"""Shadow limits (SPEC Appendix C) through a real gateway on a real Redis: a shadow rule below
the traffic never refuses and adds no rate-limit headers, yet the metric and the access line
report every request over it; an enforced rule beside it still refuses. The console's traffic
view (``GET /admin/traffic``) shows per policy what each shadow rule would have refused, and an
enforced rule's refusals are refusals there, never shadow counts."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.ratelimit_support import limits_config, ready, send
from tests.support.gateway_proc import ADMIN_TOKEN
from tests.support.upstream import Upstream

LIMITS = {
    "pre_auth": [{"key": "ip", "limit": "3/minute", "strategy": "fixed-window", "mode": "shadow"}],
    "policies": {
        "watch": [{"key": "ip", "limit": "2/minute", "mode": "shadow"}],
        "strict": [{"key": "route", "limit": "4/minute", "strategy": "fixed-window"}],
    },
}
ROUTES = [
    {"name": "watched", "prefix": "/watched", "auth": "none", "rate_limit": ["watch"]},
    {"name": "both", "prefix": "/both", "auth": "none", "rate_limit": ["watch", "strict"]},
]


def _sample(metrics: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def _decisions(metrics: str, stage: str, result: str) -> float:
    return _sample(metrics, "shopino_gateway_ratelimit_decisions_total", stage=stage, result=result)


async def test_shadow_rules_report_but_never_refuse_and_enforced_rules_still_do(
    tmp_path: Path, upstream: Upstream, redis_url: str, gateway_factory, http: aiohttp.ClientSession
) -> None:
    config = limits_config(upstream.url, tmp_path, LIMITS, ROUTES, state={"url": redis_url})
    gw = ready(gateway_factory(config))
    watched = [await send(http, f"{gw.url}/watched/{n}") for n in range(6)]
    assert [status for status, _, _ in watched] == [200] * 6  # pre_auth 3/min and watch 2/min: shadow
    for _, headers, _ in watched:  # a shadow rule never speaks in headers
        assert not {"RateLimit", "RateLimit-Policy", "Retry-After"} & set(headers)

    # Another bucket per route for "strict": it refuses the fifth request to /both.
    both = [await send(http, f"{gw.url}/both/{n}") for n in range(5)]
    assert [status for status, _, _ in both] == [200, 200, 200, 200, 429]
    headers = both[4][1]
    assert headers["RateLimit-Policy"] == '"strict";q=4;w=60' and int(headers["Retry-After"]) >= 1
    assert both[0][1]["RateLimit-Policy"] == '"strict";q=4;w=60'  # headers from the enforced rule only
    assert len(upstream.requests) == 10

    paths = [f"/watched/{n}" for n in range(6)] + [f"/both/{n}" for n in range(5)]
    lines = {line["path"]: line for line in gw.access_lines(paths=paths)}
    # /watched/0, /1 within both shadow limits; /2 over "watch" (2/min); later also over pre_auth
    assert [lines[f"/watched/{n}"].get("ratelimit") for n in range(6)] == [None, None] + ["shadow"] * 4
    assert [lines[f"/both/{n}"].get("ratelimit") for n in range(5)] == ["shadow"] * 4 + ["limited"]

    async with http.get(f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        metrics = await r.text()
    # watch (ip 2/min): requests 3..6 of /watched and every /both request reached the store over it
    # (the 429 too: its enforced rule refused in the same stage); pre_auth (ip 3/min): requests 4..11.
    assert _decisions(metrics, "route", "shadow_refused") == 4 + 5
    assert _decisions(metrics, "pre_auth", "shadow_refused") == 8
    assert _decisions(metrics, "pre_auth", "limited") == 0
    assert _decisions(metrics, "route", "limited") == 1
    # Per policy, for the console and the dashboard: what each shadow rule would have refused.
    shadow = "shopino_gateway_ratelimit_shadow_refusals_total"
    assert _sample(metrics, shadow, policy="watch") == 9
    assert _sample(metrics, shadow, policy="pre_auth") == 8
    assert _sample(metrics, shadow, policy="strict") == 0

    # The console's traffic view: the same counts per shadow policy over its 15-minute window,
    # from the gateway's own counter snapshots; "strict" (enforced) is no shadow policy, its 429
    # is a refusal by reason.
    async with http.get(
        f"{gw.admin_url}/admin/traffic", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as r:
        assert r.status == 200
        traffic = await r.json()
    assert traffic["shadow_policies"] == ["pre_auth", "watch"]
    assert traffic["shadow_refusals"] == {"pre_auth": 8, "watch": 9}
    assert sum(p["shadow"].get("watch", 0) for p in traffic["points"]) == 9
    assert sum(p["refusals"].get("rate-limited", 0) for p in traffic["points"]) == 1
    assert traffic["refusal_status"]["rate-limited"] == 429
    assert all("strict" not in p["shadow"] for p in traffic["points"])
