#!/usr/bin/env python3
"""Flat cost as the world grows (issue 13, target 3): the full chain's instructions per request
with a small world against a large one, in one run.

* ``small``: the full_chain.py workload with the target's "1 of each": one route beside the
  workload's (to carry a module and a route switch), one non-matching kill switch per scope
  (module, route, tenant, endpoint), only the workload's own rate-limit keys in Redis.
* ``large``: the same workload plus 100 more routes (``/m000``…, one module each), 1,000 active
  kill switches that do not match the measured request (module, route, tenant and endpoint
  globs, many sharing its first path segment) and 100,000 live rate-limit keys in its Redis.

Each gateway is counted by callgrind exactly as instructions_bench.py does (instructions, so
the comparison does not move with the host's load). The large world's switches are engaged
through the admin API by a plain run of the same gateway first, then it restarts under
callgrind and loads them from Redis. Target: large ÷ small ≤ 1.05.

    python bench/scale_bench.py [--requests 1000]
    python bench/scale_bench.py --worlds routes,switches,keys   # each growth on its own
    python bench/scale_bench.py --method cpu [--rounds 5]       # CPU µs/request under wrk instead
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import redis
from bench_contestants import BenchEnv, start_bench_env
from bench_support import (
    LOAD_CPU,
    Launcher,
    StartFailed,
    ensure_debian_packages,
    run_in_workdir,
    run_wrk,
    tree_cpu_seconds,
    wait_ready,
)
from full_chain import (
    FULL_PATH,
    Prepared,
    make_workload,
    prepare_gateway_full,
    verify_full_chain_does_the_job,
)
from instructions_bench import count, health_probe, start_full_counted

ROUTES = 100
SWITCHES = 1000
RATE_LIMIT_KEYS = 100_000
ADMIN_TOKEN = "scale-bench-admin-token"


def thousand_switches(with_routes: bool = True) -> list[dict[str, str]]:
    """1,000 switches, none matching ``GET /erp/api/v1/items`` of the workload's tenants (module
    and route switches need the extra routes; without them, more tenant switches)."""
    specs: list[dict[str, str]] = []
    if with_routes:
        specs += [{"scope": "module", "target": f"m{i:03d}"} for i in range(ROUTES)]
        specs += [{"scope": "route", "target": f"r-m{i:03d}"} for i in range(ROUTES)]
    else:
        specs += [{"scope": "tenant", "target": f"more-tenant-{i}"} for i in range(2 * ROUTES)]
    specs += [{"scope": "tenant", "target": f"other-tenant-{i}"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"POST /erp/api/{i}/*"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"GET /erp/*/{i}/x"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"* /erp/api/*/l{i}"} for i in range(100)]
    specs += [{"scope": "endpoint", "target": f"DELETE /erp/o{i}/**"} for i in range(100)]
    assert len(specs) == SWITCHES
    return [{**s, "mode": "block", "reason": "scale bench"} for s in specs]


SMALL = frozenset({"one-switch"})  # the baseline: 1 route, 1 switch of each scope, the workload's keys


def one_switch_of_each() -> list[dict[str, str]]:
    """The target's "1 of each": one non-matching switch per scope the large world grows (a
    set with no switch at all takes the index's empty-set shortcut, a cost no real deployment
    in an incident has)."""
    specs = [
        {"scope": "module", "target": "m000"},
        {"scope": "route", "target": "r-m000"},
        {"scope": "tenant", "target": "other-tenant-0"},
        {"scope": "endpoint", "target": "GET /erp/*/0/x"},
    ]
    return [{**s, "mode": "block", "reason": "scale bench"} for s in specs]


def engage(admin_port: int, spec: dict[str, str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        conn.request("POST", "/admin/killswitch", body=json.dumps(spec), headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 201:
            raise StartFailed(f"engage {spec} -> {response.status} {body[:200]!r}")
    finally:
        conn.close()


def fill_rate_limit_keys(state_url: str, count_: int) -> None:
    """Live keys shaped like the limiter's (same prefix), each with a minute to live."""
    client = redis.Redis.from_url(state_url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(count_):
            pipe.set(f"LIMITS:LIMITER/sgw:rl/api/user/filler-{i}/50/1/second", 1, ex=600)
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
        if client.dbsize() < count_:
            raise StartFailed(f"Redis holds {client.dbsize()} keys, wanted {count_}")
    finally:
        client.close()


def prepare_world(env: BenchEnv, name: str, grow: frozenset[str]) -> Prepared:
    """A full-chain gateway's config and Redis with the world grown by ``grow`` (not started)."""
    prepared = prepare_gateway_full(
        env,
        name,
        # "1 of each" needs one more route (and module) for its route and module switches
        extra_routes=ROUTES if "routes" in grow else 1 if "one-switch" in grow else 0,
        admin_token_sha256=hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest(),
        redis_name=f"redis-{name}",
    )
    if "switches" in grow or "one-switch" in grow:
        plain = env.launcher.start(f"{name}-setup", prepared.argv, cpu=None, env=prepared.environ)
        wait_ready(env.launcher, f"{name}-setup", plain, health_probe(prepared.port), 30)
        many = "switches" in grow
        specs = thousand_switches(with_routes="routes" in grow) if many else one_switch_of_each()
        for spec in specs:
            engage(prepared.admin_port, spec)
        env.launcher.stop_named(f"{name}-setup")
    if "keys" in grow:
        fill_rate_limit_keys(prepared.state_url, RATE_LIMIT_KEYS)
    return prepared


def measure_world(env: BenchEnv, name: str, grow: frozenset[str], requests: int) -> float:
    prepared = prepare_world(env, name, grow)
    target = start_full_counted(env, name, prepared.port, prepared.argv, prepared.environ)
    try:
        return count(target, requests, connections=10, warmup=400)
    finally:
        env.launcher.stop_named(name)


def cpu_per_request(env: BenchEnv, worlds: list[frozenset[str]], rounds: int, duration: int) -> None:
    """The same comparison by CPU µs per request under wrk (50 connections), the worlds'
    gateways started together and measured in interleaved rounds. Periodic work (resyncs,
    heartbeats) is charged at its real rate here; under callgrind a request is ~50x slower, so
    the instruction count charges each request ~50x its share of such work."""
    assert env.jwt.signing_key is not None
    workload = make_workload(env.workdir, env.jwt.signing_key)
    names = ["world-small", *("cpu-world-" + "-".join(sorted(g)) for g in worlds)]
    ports: dict[str, tuple[int, int]] = {}
    for name, grow in zip(names, [SMALL, *worlds], strict=True):
        prepared = prepare_world(env, name, grow)
        proc = env.launcher.start(name, prepared.argv, cpu=env.proxy_cpu, env=prepared.environ)
        wait_ready(env.launcher, name, proc, health_probe(prepared.port), 30)
        verify_full_chain_does_the_job(prepared.port, workload)
        ports[name] = (prepared.port, proc.pid)
    wrk = dict(connections=50, threads=1, headers={}, cpu=LOAD_CPU, lua=workload.lua, path=FULL_PATH)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        order = names[round_no % len(names) :] + names[: round_no % len(names)]
        for name in order:
            port, pid = ports[name]
            run_wrk(port=port, duration=1, **wrk)
            before = tree_cpu_seconds(pid)
            result = run_wrk(port=port, duration=duration, **wrk)
            results[name].append((tree_cpu_seconds(pid) - before) * 1e6 / result.requests)
    small = statistics.median(results["world-small"])
    print()
    print("| world (wrk, CPU µs per request, median of rounds) | µs / request | ÷ small |")
    print("|---|--:|--:|")
    for name in names:
        value = statistics.median(results[name])
        rounds_text = " / ".join(f"{v:.1f}" for v in results[name])
        print(f"| {name} ({rounds_text}) | {value:.1f} | {value / small:.3f} |", flush=True)


def run(args: argparse.Namespace, workdir: Path, launcher: Launcher) -> int:
    if args.method == "cpu":
        env = start_bench_env(launcher, workdir, sys.executable)
        cpu_per_request(env, args.worlds, args.rounds, args.duration)
        return 0
    ensure_debian_packages({"valgrind": "valgrind", "callgrind_control": "valgrind", "nginx": "nginx-light"})
    env = start_bench_env(launcher, workdir, sys.executable)
    small = measure_world(env, "world-small", SMALL, args.requests)
    print(f"# small world: {small:,.0f} instructions/request", flush=True)
    print()
    print("| world | instructions / request | ÷ small |")
    print("|---|--:|--:|")
    print(f"| +1 route, 1 switch of each scope, the workload's keys | {small:,.0f} | 1.000 |")
    labels = {
        "routes": f"+{ROUTES} routes",
        "switches": f"{SWITCHES:,} switches",
        "keys": f"{RATE_LIMIT_KEYS:,} rate-limit keys",
    }
    for grow in args.worlds:
        large = measure_world(env, "world-" + "-".join(sorted(grow)), grow, args.requests)
        what = ", ".join(labels[g] for g in ("routes", "switches", "keys") if g in grow)
        print(f"| {what} | {large:,.0f} | {large / small:.3f} |", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--worlds",
        default="routes+switches+keys",
        help="comma-separated large worlds, each a '+'-joined subset of routes, switches, keys "
        "(default: all three together)",
    )
    parser.add_argument(
        "--method",
        choices=("instructions", "cpu"),
        default="instructions",
        help="callgrind instructions per request (default), or CPU µs per request under wrk",
    )
    parser.add_argument("--rounds", type=int, default=5, help="--method cpu: interleaved rounds")
    parser.add_argument("--duration", type=int, default=5, help="--method cpu: seconds per round")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    args.worlds = [frozenset(w.split("+")) for w in args.worlds.split(",")]
    if any(not w or w - {"routes", "switches", "keys"} for w in args.worlds):
        parser.error("--worlds: each world is a '+'-joined subset of routes, switches, keys")
    return run_in_workdir("scale-bench-", args.keep_workdir, lambda w, lch: run(args, w, lch))


if __name__ == "__main__":
    sys.exit(main())
