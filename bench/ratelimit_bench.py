#!/usr/bin/env python3
"""Rate-limit cost and flood refusal, measured in one run (issue 6).

1. Throughput of an authenticated (ES256 + MFA) route with two Redis-backed limits (user and
   tenant, moving window, never reached) against the same route without limits, both gateways
   on the same Redis state store; interleaved rounds, wrk on the other core.
2. A flood: wrk sends from one client IP (X-Forwarded-For through a trusted proxy) far over
   its pre_auth limit, at stepped offered rates (1k, 2k, 4k, 8k req/s, then as fast as it can),
   while a legitimate client on another IP sends ~50 requests/s. Per step: refusals/s (429) and
   the legitimate client's p99 as a ratio to its p99 alone; reported at the end: the highest
   refusal rate at which that ratio stays <= 2 (the issue's figure).

    python bench/ratelimit_bench.py [--rounds 2] [--duration 8]

Needs wrk, nginx and redis-server (Debian packages; installed when missing). The store path
alone, old against new without HTTP, is `ratelimit_store_bench.py`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from bench_contestants import JWT_AUD, JWT_ISS, make_jwt_material, start_upstream
from bench_support import (
    BENCH_DIR,
    LOAD_CPU,
    PROJECT_ROOT,
    PROXY_CPU,
    Launcher,
    StartFailed,
    WrkResult,
    ensure_debian_packages,
    free_port,
    run_wrk,
    start_gateway_process,
    start_redis,
    tree_cpu_seconds,
)

LEGIT_IP, FLOOD_IP = "203.0.113.5", "198.51.100.1"
FLOOD_RATES = (1000, 2000, 4000, 8000, 0)  # offered flood req/s; 0 = as fast as wrk can
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()


def _gateway(
    launcher: Launcher, work: Path, name: str, upstream: int, redis_url: str, limits: dict | None
) -> tuple[int, int]:
    port, admin = free_port(), free_port()
    rundir = work / name
    rundir.mkdir()
    route: dict[str, object] = {"name": "bench", "prefix": "/", "upstream": "app"}
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port, "tls": "off"},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "state": {"url": redis_url},
        "trusted_proxies": ["127.0.0.0/8"],
        "upstreams": {"app": {"urls": [f"http://127.0.0.1:{upstream}"]}},
        "routes": [route],
        "logging": {"level": "warning", "access_log": False},
        "audit": {"spool_dir": str(rundir / "spool")},
        "auth": {
            "issuers": [
                {"issuer": JWT_ISS, "audience": JWT_AUD, "jwks_file": str(work / "jwt-es256-jwks.json")}
            ]
        },
    }
    if limits is not None:
        config["rate_limits"] = limits
        route["rate_limit"] = list(limits["policies"])
    (rundir / "gateway.yaml").write_text(yaml.safe_dump(config))
    proc = start_gateway_process(
        launcher,
        name,
        rundir / "gateway.yaml",
        port,
        cpu=PROXY_CPU,
        project_root=PROJECT_ROOT,
        master_key=MASTER_KEY,
    )
    return port, proc.pid


def _redis(launcher: Launcher, work: Path) -> str:
    return start_redis(launcher, work, LOAD_CPU)


def _legit_client(port: int, token: str, seconds: float, rate: float = 50.0) -> tuple[list[float], list[int]]:
    """Sequential keep-alive requests at ``rate``/s; latencies in µs and statuses."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": LEGIT_IP}
    latencies, statuses = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1e6)
        statuses.append(response.status)
        time.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    conn.close()
    return latencies, statuses


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _wrk(port: int, duration: int, headers: dict[str, str], pid: int, connections: int = 50) -> WrkResult:
    lua = BENCH_DIR / "wrk_report.lua"
    before = tree_cpu_seconds(pid)
    result = run_wrk(
        port=port,
        duration=duration,
        connections=connections,
        threads=2,
        headers=headers,
        cpu=LOAD_CPU,
        lua=lua,
    )
    return WrkResult(**{**result.__dict__, "cpu_seconds": tree_cpu_seconds(pid) - before})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument(
        "--flood-connections", type=int, default=8, help="wrk connections of the flood (its queue depth)"
    )
    args = parser.parse_args()
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx", "redis-server": "redis-server"})
    os.sched_setaffinity(0, {LOAD_CPU})  # the legitimate client shares the load core with wrk
    work = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    launcher = Launcher(work)
    try:
        material = make_jwt_material(work)
        upstream = start_upstream(launcher, work, LOAD_CPU).port
        redis_url = _redis(launcher, work)
        big = "10000000/minute"
        two = {"policies": {"api": [{"key": "user", "limit": big}, {"key": "tenant", "limit": big}]}}
        # fixed-window: a full window refuses from memory until it ends (see README)
        flood = {**two, "pre_auth": [{"key": "ip", "limit": "200/second", "strategy": "fixed-window"}]}
        started = {
            "no-limits": _gateway(launcher, work, "no-limits", upstream, redis_url, None),
            "two-limits": _gateway(launcher, work, "two-limits", upstream, redis_url, two),
            "flood": _gateway(launcher, work, "flood", upstream, redis_url, flood),
        }
        pids = {name: pid for name, (_, pid) in started.items()}
        ports = {name: port for name, (port, _) in started.items()}
        auth = {"Authorization": f"Bearer {material.gateway_token}", "X-Forwarded-For": LEGIT_IP}
        runs: dict[str, list[WrkResult]] = {"no-limits": [], "two-limits": []}
        for _ in range(args.rounds):
            for name in runs:
                _wrk(ports[name], 1, auth, pids[name])  # warm-up
                result = _wrk(ports[name], args.duration, auth, pids[name])
                if result.errors:
                    raise StartFailed(f"{name}: {result.errors} errors in the throughput run")
                runs[name].append(result)
        best = {name: max(results, key=lambda r: r.req_per_s) for name, results in runs.items()}
        unloaded, _ = _legit_client(ports["flood"], material.gateway_token, args.duration)
        steps = [
            _flood_step(ports["flood"], pids["flood"], material.gateway_token, args, rate, work)
            for rate in FLOOD_RATES
        ]
        report(args, best, unloaded, steps)
    finally:
        launcher.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


@dataclass(frozen=True)
class FloodStep:
    offered: int  # flood requests/s asked of wrk (0: as fast as it can)
    flood: WrkResult
    loaded: list[float]
    statuses: list[int]


def _paced_lua(work: Path, connections: int, rate: int) -> Path:
    """wrk_report.lua plus a per-connection delay, so the whole flood offers ``rate`` req/s."""
    script = work / f"paced-{rate}.lua"
    delay_ms = connections * 1000 / rate if rate else 0
    script.write_text(
        f"delay = function() return {delay_ms:.3f} end\n" + (BENCH_DIR / "wrk_report.lua").read_text()
    )
    return script


def _flood_step(
    port: int, pid: int, token: str, args: argparse.Namespace, rate: int, work: Path
) -> FloodStep:
    """The legitimate client's latencies while a flood from another IP offers ``rate`` req/s."""
    holder: dict[str, tuple[list[float], list[int]]] = {}
    thread = threading.Thread(target=lambda: holder.update(r=_legit_client(port, token, args.duration)))
    thread.start()
    before = tree_cpu_seconds(pid)
    flood = run_wrk(
        port=port,
        duration=args.duration,
        connections=args.flood_connections,
        threads=2,
        headers={"X-Forwarded-For": FLOOD_IP},
        cpu=LOAD_CPU,
        lua=_paced_lua(work, args.flood_connections, rate),
    )
    flood = WrkResult(**{**flood.__dict__, "cpu_seconds": tree_cpu_seconds(pid) - before})
    thread.join()
    loaded, statuses = holder["r"]
    return FloodStep(rate, flood, loaded, statuses)


def report(
    args: argparse.Namespace, best: dict[str, WrkResult], unloaded: list[float], steps: list[FloodStep]
) -> None:
    print(
        f"# python bench/ratelimit_bench.py --rounds {args.rounds} --duration {args.duration}"
        f" --flood-connections {args.flood_connections}"
        f"  ({os.cpu_count()} cores; gateway pinned to CPU {PROXY_CPU}; wrk, nginx, redis on CPU {LOAD_CPU})"
    )
    for name, result in best.items():
        print(
            f"{name:<11} {result.req_per_s:>9.0f} req/s  p50 {result.p50_us:>7.0f} µs"
            f"  p99 {result.p99_us:>7.0f} µs  cpu {result.cpu_us_per_req:>6.1f} µs/req"
        )
    ratio = best["two-limits"].req_per_s / best["no-limits"].req_per_s
    print(f"throughput ratio two-limits / no-limits: {ratio:.2f}")
    base = _p99(unloaded)
    print(f"legitimate client alone: p99 {base:.0f} µs")
    print(
        "flood offered | answered/s | refusals/s (429) | flood cpu µs/req | legit p99 µs | ratio | legit 200s"
    )
    passing = []
    for step in steps:
        refusals = step.flood.errors / step.flood.seconds
        p99 = _p99(step.loaded)
        ok = sum(1 for status in step.statuses if status == 200)
        offered = f"{step.offered}/s" if step.offered else "unpaced"
        print(
            f"{offered:>13} | {step.flood.req_per_s:>10.0f} | {refusals:>16.0f} | "
            f"{step.flood.cpu_us_per_req:>16.1f} | {p99:>12.0f} | {p99 / base:>5.2f} | "
            f"{ok}/{len(step.statuses)}"
        )
        if p99 <= 2 * base:
            passing.append(refusals)
    if passing:
        print(f"highest refusal rate with the legitimate p99 within 2x: {max(passing):.0f}/s")
    else:
        print("no flood rate kept the legitimate p99 within 2x")


if __name__ == "__main__":
    sys.exit(main())
