"""Issue 15, item 2: a hung Redis (SIGSTOP, not dead) holds no request longer than
``store_timeout`` plus the upstream's time, and every audit record written during the pause
lands in the trail exactly once, with the chain intact. The same for a Redis killed and
restarted (append-only, so its data survives).

Real processes: a gateway subprocess on a private ``redis-server``, keep-alive clients cycling
through an audited route, the health check and a kill-switched route on one connection each.
The pause lasts ``SHOPINO_TEST_PAUSE_S`` seconds (default 5 in the suite; ``bench/fault_bench.py``
runs it with 20). The figures are printed as one JSON line (``fault-figures``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.e2e.ratelimit_support import DEPLOYMENT_ENV, ready
from tests.support.fault_load import Load, Step, summary
from tests.support.gateway_proc import GatewayProc, metric
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream

ISS, AUD = "https://id.pause.example", "shopino-erp"
STORE_TIMEOUT = 0.3
# Client, gateway and upstream share two busy cores with other test runs: the margin allows
# for scheduling, never for a wait on the store (those were 1-28 s before the fix).
MARGIN = 0.45
PAUSE_S = float(os.environ.get("SHOPINO_TEST_PAUSE_S", "5"))


def pause_config(upstream: Upstream, tmp: Path, state_url: str, issuer: DemoIssuer) -> dict[str, Any]:
    jwks = issuer.write_jwks(tmp / "idp.jwks.json")
    return {
        "auth": {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks)}]},
        "state": {"url": state_url},
        "rate_limits": {"store_timeout": f"{int(STORE_TIMEOUT * 1000)}ms"},
        "upstreams": {"app": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": "2s"}},
        "routes": [
            {"name": "fin", "prefix": "/api/finance", "module": "finance", "upstream": "app", "audit": True},
            {"name": "hr", "prefix": "/api/hr", "module": "hr", "upstream": "app", "audit": True},
            {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
        ],
    }


async def wait_until(check: Any, timeout: float, what: str) -> float:
    """Seconds until ``check()`` held; fails at the deadline."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


def accessed_ids(gw: GatewayProc, tenant: str) -> list[str]:
    result = gw.cli("audit", "export", "--tenant", tenant, "--format", "json")
    assert result.returncode == 0, result.stderr
    return [r["request_id"] for r in json.loads(result.stdout) if r["event"] == "data.accessed"]


@pytest.mark.parametrize("fault", ["paused", "killed"])
async def test_sick_redis_holds_no_request_and_every_audit_record_lands_once(
    gateway_factory, upstream: Upstream, redis_server: RedisServer, tmp_path: Path, fault: str
) -> None:
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    gw: GatewayProc = gateway_factory(pause_config(upstream, tmp_path, redis_server.url, issuer))
    engaged = gw.cli(
        "killswitch", "engage", "--scope", "module", "--target", "hr", "--mode", "block", "--reason", "drill"
    )
    assert engaged.returncode == 0, engaged.stderr
    tokens = {
        t: issuer.mint(make_user(f"u-{t}", t, ("finance",), "pw-unused-123"), amr=("pwd", "otp"))
        for t in ("acme", "globex")
    }

    def client(tenant: str) -> list[Step]:
        auth = (("Authorization", f"Bearer {tokens[tenant]}"),)
        return [
            Step("audited", gw.url, "/api/finance/invoices/7", auth),
            Step("health", gw.url, "/_gateway/health"),
            Step("switched", gw.url, "/api/hr/people", auth),  # 503 isolated, from memory
            Step("audited", gw.url, "/api/finance/ledger", auth),
            Step("open", gw.url, "/plain"),
        ]

    load = Load()
    load.start([client("acme"), client("globex"), client("acme"), client("globex")])
    await asyncio.sleep(1.0)
    outage = PAUSE_S if fault == "paused" else PAUSE_S / 2  # a dead Redis is the easier case
    paused_at = time.monotonic()
    # In a thread: stopping and starting Redis blocks, and the clients must not be held by it.
    await asyncio.to_thread(redis_server.pause if fault == "paused" else redis_server.stop)
    try:
        await asyncio.sleep(outage)
    finally:
        await asyncio.to_thread(redis_server.resume if fault == "paused" else redis_server.start)
        resumed_at = time.monotonic()
    await asyncio.sleep(1.0)
    await load.stop()

    during = load.between(paused_at, resumed_at)
    figures = {"outage_s": outage, "during_pause": summary(during), "whole_run": summary(load.samples)}
    print("\nfault-figures " + json.dumps({"fault": f"redis-{fault}", **figures}))
    assert len(during) > 50, "the clients must keep sending through the pause"
    expected = {"audited": 200, "health": 200, "switched": 503, "open": 200}
    wrong = [(s.kind, s.status) for s in load.samples if s.status != expected[s.kind]]
    assert wrong == []
    slowest = max(s.seconds for s in load.samples)
    assert slowest < STORE_TIMEOUT + MARGIN, figures

    # Every audited answer's record, filed during the pause or not, lands once; the chain holds.
    caught_up = await wait_until(
        lambda: (
            not metric(gw, "shopino_gateway_audit_spooled_records")
            and not metric(gw, "shopino_gateway_audit_queued_records")
        ),
        timeout=40,
        what="the spool and the queue drain after the resume",
    )
    print(
        "fault-figures " + json.dumps({"fault": f"redis-{fault}", "trail_caught_up_s": round(caught_up, 1)})
    )
    for tenant in ("acme", "globex"):
        verify = gw.cli("audit", "verify", "--tenant", tenant)
        assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    all_stored = accessed_ids(gw, "acme") + accessed_ids(gw, "globex")
    audited = [s.request_id for s in load.samples if s.kind == "audited"]
    assert sorted(all_stored) == sorted(audited)  # exactly once each, nothing lost
    assert "audit.spooled" in gw.logs()  # the pause was felt by the writer, not by the clients


async def test_store_backed_endpoints_answer_503_within_store_timeout_on_a_hung_redis(
    gateway_factory, upstream: Upstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The MFA step and support grants need the store for their answer: on a hung Redis they
    answer 503 ``store-unavailable`` after ``store_timeout``, never after the socket timeout."""
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    gw: GatewayProc = gateway_factory(pause_config(upstream, tmp_path, redis_server.url, issuer))
    admin = make_user("boss", "acme", ("tenant-admin",), "pw-unused-123")
    admin_token = issuer.mint(admin, amr=("pwd", "otp"))
    first_factor = issuer.mint(make_user("newbie", "acme", ("finance",), "pw-unused-123"))
    calls = [
        ("GET", "/_gateway/grants", admin_token, None),
        ("POST", "/_gateway/mfa/enroll", first_factor, None),
        ("POST", "/_gateway/mfa/verify", first_factor, b'{"code": "123456"}'),
    ]

    def call(method: str, path: str, token: str, body: bytes | None) -> tuple[int, str, float]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(gw.url + path, data=body, method=method, headers=headers)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = int(error.code), error.read().decode()
        return status, text, time.monotonic() - started

    assert call(*calls[0])[0] == 200  # the store answers: the grant list
    await asyncio.to_thread(redis_server.pause)
    try:
        answers = [await asyncio.to_thread(call, *c) for c in calls]
    finally:
        await asyncio.to_thread(redis_server.resume)
    for status, text, seconds in answers:
        assert status == 503 and json.loads(text)["type"] == "urn:shopino-gateway:store-unavailable"
        assert seconds < STORE_TIMEOUT + MARGIN, answers  # the socket timeout is 1 s
    await wait_until(lambda: call(*calls[0])[0] == 200, timeout=10, what="grants answer again")


async def test_records_held_at_shutdown_are_replayed_once_by_the_next_process(
    gateway_factory, upstream: Upstream, redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM while Redis hangs: the queued records go to the spool, and the next gateway on
    the same spool directory replays them exactly once."""
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    config = pause_config(upstream, tmp_path, redis_server.url, issuer)
    config["audit"] = {"spool_dir": str(tmp_path / "shared-spool")}
    # One deployment: one master key, so the second process reads the keys the first stored.
    first: GatewayProc = gateway_factory(json.loads(json.dumps(config)), env=DEPLOYMENT_ENV)
    token = issuer.mint(make_user("u-acme", "acme", ("finance",), "pw-unused-123"), amr=("pwd", "otp"))
    load = Load()
    await asyncio.to_thread(redis_server.pause)
    try:
        load.start(
            [[Step("audited", first.url, "/api/finance/x", (("Authorization", f"Bearer {token}"),))]] * 2
        )
        await asyncio.sleep(1.5)
        await load.stop()
        assert await asyncio.to_thread(first.stop) == 0  # the drain spools what it holds
    finally:
        await asyncio.to_thread(redis_server.resume)
    answered = [s.request_id for s in load.samples if s.status == 200]
    assert len(answered) == len(load.samples) > 10
    second = ready(gateway_factory(json.loads(json.dumps(config)), env=DEPLOYMENT_ENV))
    await wait_until(lambda: len(accessed_ids(second, "acme")) >= len(answered), 30, "the replay")
    assert sorted(accessed_ids(second, "acme")) == sorted(answered)
    verify = second.cli("audit", "verify", "--tenant", "acme")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
