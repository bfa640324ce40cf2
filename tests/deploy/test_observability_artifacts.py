"""The operators' artefacts in deploy/ (issue 16 item 2): the Prometheus alert rules load and
pass their unit tests in ``promtool`` (Debian's prometheus package, installed by .ci/run), the
Grafana dashboard is well formed, and every metric the dashboard and the rules query is one a
real running gateway exports on its /metrics (a typo'd name would make an alert silently never
fire)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import standard_config
from tests.support.gateway_proc import ADMIN_TOKEN, insecure_client_context
from tests.support.upstream import Upstream

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "shopino-gateway.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "shopino-gateway.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "shopino-gateway.json"

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
}
_KEYWORDS |= {"inf", "nan"}
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def _promtool() -> str:
    found = shutil.which("promtool")
    # Not a skip: CI installs Debian's prometheus package (.ci/run), and the rules must be checked.
    assert found, "promtool is missing: apt-get install prometheus"
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: strings, label matchers, ranges, label
    lists and Grafana variables removed; identifiers followed by '(' are functions."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\w+", "", text)
    text = re.sub(r"\b\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)?\b", "", text)  # numbers and durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, rest = match.group(0), text[match.end() :].lstrip()
        if rest.startswith("(") or word in _KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'sum by (route, class) (label_replace(rate(shopino_gateway_requests_total{instance=~"$instance",'
        'status=~"5.."}[$__rate_interval]), "class", "${1}xx", "status", "(.).."))'
        " / on() group_left() max(up) unless x_total offset 5m > 3 * 86400"
    )
    assert metric_names(expr) == {"shopino_gateway_requests_total", "up", "x_total"}


def _rule_exprs() -> list[str]:
    data = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
    return exprs


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = _promtool()
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_example_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml with its rules beside it and a token file in place."""
    for name in ("prometheus.yml", RULES.name):
        shutil.copy(DEPLOY / "prometheus" / name, tmp_path / name)
    (tmp_path / "shopino-gateway-admin-token").write_text("example-admin-token\n")
    checked = subprocess.run(
        [_promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout + checked.stderr  # the rule file it names


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, parsed by promtool (as recording
    rules): a broken query would leave an empty panel in the middle of an incident."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": expr.replace("$instance", ".*").replace("$__rate_interval", "5m"),
        }
        for index, expr in enumerate(_dashboard_exprs(dashboard))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout + checked.stderr


def test_rules_cover_what_operators_must_be_told() -> None:
    alerts = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"]}
    for wanted in (
        "ShopinoGatewayStateStoreDown",
        "ShopinoGatewayKillSwitchLaggard",
        "ShopinoGatewayInstanceSilent",
        "ShopinoGatewayHigh5xxRate",
        "ShopinoGatewayRefusalSpike",
        "ShopinoGatewayAuditSpoolGrowing",
        "ShopinoGatewayCertificateExpiresSoon",
        "ShopinoGatewayMfaEnrolmentFrozen",
    ):
        assert wanted in alerts


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"]["uid"] == "${datasource}"
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= names


def _exported(metrics: str) -> set[str]:
    """Every series name the scrape's families can produce, by type (a labelled metric that has
    no child yet is listed by its HELP and TYPE only)."""
    names = set()
    for family in text_string_to_metric_families(metrics):
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
        assert response.status == 200
        return await response.text()


async def test_every_metric_the_dashboard_and_rules_use_is_exported_by_a_running_gateway(
    upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    config = standard_config(upstream.url, tls="self-signed")  # the certificate gauge needs TLS
    gw = gateway_factory(config)
    tls = insecure_client_context()
    for path in ("/echo", "/api/x", "/nowhere/../../etc"):  # proxied, 401, refused
        async with http.get(f"{gw.url}{path}", ssl=tls) as response:
            await response.read()
    # The peers' gauge comes with the first heartbeats: poll, with a deadline.
    deadline = time.monotonic() + 15
    while "shopino_gateway_killswitch_instances{" not in (metrics := await _scrape(http, gw.admin_url)):
        assert time.monotonic() < deadline, "no shopino_gateway_killswitch_instances sample"
        await asyncio.sleep(0.2)
    exported = _exported(metrics)
    assert "shopino_gateway_tls_certificate_not_after_seconds" in exported
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in _rule_exprs() + _dashboard_exprs(dashboard) for name in metric_names(expr)}
    assert len(used) >= 15
    assert used <= exported, sorted(used - exported)
    # The certificate gauge holds the served (self-signed, 30-day) certificate's expiry.
    expiry = next(
        s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "shopino_gateway_tls_certificate_not_after_seconds"
        and s.labels == {"listener": "public"}
    )
    assert 29 * 86400 < expiry - time.time() <= 30 * 86400
    silent = [
        s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "shopino_gateway_killswitch_instances"
    ]
    assert len(silent) == 3  # enforcing, lagging, silent


@pytest.mark.parametrize("state", ["enforcing", "lagging", "silent"])
def test_peer_states_are_classified_from_heartbeats(state: str) -> None:
    from gateway.killswitch.peers import peer_states

    beats = {"a": (5, 100.0, False), "b": (4, 99.5, False), "c": (5, 90.0, False), "d": (5, 98.0, True)}
    counts = peer_states(beats, 100.0, 3.0)
    assert counts[state] == {"enforcing": 2, "lagging": 1, "silent": 1}[state]
