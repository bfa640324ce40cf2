"""Issue 15, item 4: a real Sentinel failover under load.

A primary, a replica and three sentinels (``tests.support.sentinel_cluster``); two gateways on
``redis+sentinel://`` under keep-alive load; the primary is killed (SIGKILL). Reported (one
``fault-figures`` JSON line): requests refused or failed while the sentinels failed over, the
time until the new primary was elected and until both gateways had written everything they
held back. Shown: no kill switch, revocation or audit record is lost - a gateway started
afterwards, with nothing in memory, enforces the switch and the revocation from the new
primary; every audited answer has exactly one record; both trails verify; and a switch
engaged after the failover reaches the other gateway by pub/sub on the new primary.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.e2e.ratelimit_support import DEPLOYMENT_ENV, ready
from tests.support.fault_load import FAILED, Load, Step, summary
from tests.support.gateway_proc import GatewayProc, metric
from tests.support.sentinel_cluster import SentinelCluster
from tests.support.upstream import Upstream

ISS, AUD = "https://id.failover.example", "shopino-erp"
EXPECTED = {"audited": 200, "switched": 503, "revoked": 401, "health": 200}


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    started = SentinelCluster().start()
    yield started
    started.stop()


def failover_config(upstream: Upstream, tmp: Path, state_url: str, issuer: DemoIssuer) -> dict[str, Any]:
    jwks = issuer.write_jwks(tmp / "idp.jwks.json")
    return {
        "auth": {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks)}]},
        "state": {"url": state_url},
        "killswitch": {"resync": "5s"},
        "upstreams": {"app": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": "2s"}},
        "routes": [
            {"name": "fin", "prefix": "/api/finance", "module": "finance", "upstream": "app", "audit": True},
            {"name": "hr", "prefix": "/api/hr", "module": "hr", "upstream": "app"},
            {"name": "ops", "prefix": "/api/ops", "module": "ops", "upstream": "app"},
        ],
    }


def settled(gw: GatewayProc) -> bool:
    """The store answers again and nothing is held back (queue and spool empty)."""
    return (
        metric(gw, "shopino_gateway_state_store_healthy") == 1
        and not metric(gw, "shopino_gateway_audit_spooled_records")
        and not metric(gw, "shopino_gateway_audit_queued_records")
    )


async def poll(check: Any, timeout: float, what: str) -> float:
    """Seconds until ``check()`` held; fails at the deadline."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def records(gw: GatewayProc, tenant: str) -> list[dict[str, Any]]:
    result = gw.cli("audit", "export", "--tenant", tenant, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_sentinel_failover_under_load_loses_nothing(
    gateway_factory, upstream: Upstream, cluster: SentinelCluster, tmp_path: Path
) -> None:
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    config = failover_config(upstream, tmp_path, cluster.url, issuer)
    a = ready(gateway_factory(json.loads(json.dumps(config)), env=DEPLOYMENT_ENV))
    b = ready(gateway_factory(json.loads(json.dumps(config)), env=DEPLOYMENT_ENV))
    acme = issuer.mint(make_user("u-acme", "acme", ("finance",), "pw-unused-123"), amr=("pwd", "otp"))
    globex = issuer.mint(make_user("u-globex", "globex", ("finance",), "pw-unused-123"), amr=("pwd", "otp"))
    switch = a.cli(
        "killswitch", "engage", "--scope", "module", "--target", "hr", "--mode", "block",
        "--reason", "drill", "--json",
    )  # fmt: skip
    assert switch.returncode == 0, switch.stderr
    switch_id = json.loads(switch.stdout)["id"]
    revoked = b.cli("sessions", "revoke", "--tenant", "globex", "--user", "u-globex")
    assert revoked.returncode == 0, revoked.stderr
    for gw in (a, b):  # both enforce both before the fault
        await poll(lambda g=gw: status_of(f"{g.url}/api/finance/x", globex) == 401, 5, "revocation")
        await poll(lambda g=gw: status_of(f"{g.url}/api/hr/x", acme) == 503, 5, "switch")

    def client(gw: GatewayProc) -> list[Step]:
        return [
            Step("audited", gw.url, "/api/finance/invoices", (("Authorization", f"Bearer {acme}"),)),
            Step("switched", gw.url, "/api/hr/people", (("Authorization", f"Bearer {acme}"),)),
            Step("revoked", gw.url, "/api/finance/ledger", (("Authorization", f"Bearer {globex}"),)),
            Step("health", gw.url, "/_gateway/health"),
        ]

    load = Load()
    load.start([client(a), client(b), client(a), client(b)])
    await asyncio.sleep(1.0)
    old_primary, replica = cluster.data_ports
    killed_at = time.monotonic()
    cluster.kill(old_primary)
    elected_s = await poll(lambda: cluster.master_port() == replica, 30, "a new primary elected")
    settled_s = await poll(lambda: settled(a) and settled(b), 40, "both gateways settled") + elected_s
    await asyncio.sleep(1.0)
    await load.stop()

    window = load.between(killed_at, killed_at + settled_s)
    wrong = [
        (s.kind, s.status, round(s.started - killed_at, 2))
        for s in load.samples
        if s.status != EXPECTED[s.kind]
    ]
    figures = {
        "fault": "sentinel-failover",
        "new_primary_elected_s": round(elected_s, 2),
        "gateways_settled_s": round(settled_s, 2),
        "during_failover": summary(window),
        "unexpected_answers": len(wrong),
        "failed_connections": sum(1 for s in load.samples if s.status == FAILED),
    }
    print("\nfault-figures " + json.dumps(figures))
    assert len(window) > 20, "the clients must keep sending through the failover"
    assert wrong == [], figures  # the request path never needed the store: nothing refused

    # Nothing lost: a gateway with an empty memory enforces the switch and the revocation.
    fresh = ready(gateway_factory(json.loads(json.dumps(config)), env=DEPLOYMENT_ENV))
    assert status_of(f"{fresh.url}/api/hr/x", acme) == 503
    assert status_of(f"{fresh.url}/api/finance/x", globex) == 401
    assert status_of(f"{fresh.url}/api/ops/x", acme) == 200  # not audited: the trail stays exact
    # Pub/sub follows the new primary: a switch engaged on b now reaches a at once.
    later = b.cli(
        "killswitch", "engage", "--scope", "module", "--target", "ops", "--mode", "block",
        "--reason", "after failover", "--json",
    )  # fmt: skip
    assert later.returncode == 0, later.stderr
    await poll(lambda: status_of(f"{a.url}/api/ops/x", acme) == 503, 2, "a switch after the failover")

    # Every audited answer has exactly one record; the trails verify.
    trail = records(fresh, "acme")
    accessed = [r["request_id"] for r in trail if r["event"] == "data.accessed"]
    answered = [s.request_id for s in load.samples if s.kind == "audited"]
    assert sorted(accessed) == sorted(answered)
    system = records(fresh, "_system")
    assert any(r["event"] == "killswitch.engaged" and r["details"].get("id") == switch_id for r in system)
    assert any(r["event"] == "sessions.revoked" for r in records(fresh, "globex"))
    for tenant in ("acme", "_system", "globex"):
        verify = fresh.cli("audit", "verify", "--tenant", tenant)
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
