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
3. The unpaced one-IP flood as a cost: 429s per second and per CPU-second of the gateway (it is
   pinned to one core, so that is "429/s per core"), the median of ``--flood-rounds`` runs. With
   ``--compare-root DIR`` a second flood gateway runs another source tree (an older commit,
   e.g. ``git archive <commit> | tar -x -C DIR``) and the rounds alternate between the two, so
   the before/after ratio comes from one run on the same machine state.

    python bench/ratelimit_bench.py [--rounds 2] [--duration 8] [--flood-only]
        [--server lean|aiohttp] [--compare-root DIR] [--flood-rounds 3] [--no-access-log]

Needs wrk, nginx and redis-server (Debian packages; installed when missing). The store path
alone, old against new without HTTP, is `ratelimit_store_bench.py`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import shutil
import signal
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


@dataclass(frozen=True)
class GatewaySetup:
    """What every gateway of one run shares; ``root`` is the source tree it runs from."""

    work: Path
    upstream: int
    redis_url: str
    server: str
    root: Path = PROJECT_ROOT


def _gateway(
    launcher: Launcher, setup: GatewaySetup, name: str, limits: dict | None, *, access_log: bool = False
) -> tuple[int, int]:
    work = setup.work
    port, admin = free_port(), free_port()
    rundir = work / name
    rundir.mkdir()
    route: dict[str, object] = {"name": "bench", "prefix": "/", "upstream": "app"}
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port, "tls": "off", "server": setup.server},
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "state": {"url": setup.redis_url},
        "trusted_proxies": ["127.0.0.0/8"],
        "upstreams": {"app": {"urls": [f"http://127.0.0.1:{setup.upstream}"]}},
        "routes": [route],
        "logging": {"level": "info" if access_log else "warning", "access_log": access_log},
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
        project_root=setup.root,
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


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument(
        "--flood-connections", type=int, default=8, help="wrk connections of the flood (its queue depth)"
    )
    parser.add_argument("--flood-only", action="store_true", help="skip the throughput comparison (part 1)")
    parser.add_argument("--server", choices=("lean", "aiohttp"), default="lean", help="listen.server")
    parser.add_argument("--flood-rounds", type=int, default=3, help="unpaced flood rounds per gateway")
    parser.add_argument("--compare-root", type=Path, help="another source tree to flood in the same run")
    parser.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="flood gateways without access log"
    )
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx", "redis-server": "redis-server"})
    os.sched_setaffinity(0, {LOAD_CPU})  # the legitimate client shares the load core with wrk
    work = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    launcher = Launcher(work)
    try:
        material = make_jwt_material(work)
        setup = GatewaySetup(
            work, start_upstream(launcher, work, LOAD_CPU).port, _redis(launcher, work), args.server
        )
        big = "10000000/minute"
        two = {"policies": {"api": [{"key": "user", "limit": big}, {"key": "tenant", "limit": big}]}}
        # fixed-window: a full window refuses from memory until it ends (see README)
        flood = {**two, "pre_auth": [{"key": "ip", "limit": "200/second", "strategy": "fixed-window"}]}
        token = material.gateway_token
        best: dict[str, WrkResult] = {}
        if not args.flood_only:
            best = _throughput(launcher, setup, two, token, args)
        floods = {"flood": _gateway(launcher, setup, "flood", flood, access_log=args.access_log)}
        if args.compare_root is not None:
            base = GatewaySetup(**{**setup.__dict__, "root": args.compare_root.resolve()})
            floods["flood-base"] = _gateway(launcher, base, "flood-base", flood, access_log=args.access_log)
        port, pid = floods["flood"]
        unloaded, _ = _legit_client(port, token, args.duration)
        steps = [_flood_step(port, pid, token, args, rate, work) for rate in FLOOD_RATES]
        unpaced = _unpaced_rounds(floods, args, work)
        report(args, best, unloaded, steps, unpaced)
    finally:
        launcher.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _throughput(
    launcher: Launcher, setup: GatewaySetup, two: dict, token: str, args: argparse.Namespace
) -> dict[str, WrkResult]:
    started = {
        "no-limits": _gateway(launcher, setup, "no-limits", None),
        "two-limits": _gateway(launcher, setup, "two-limits", two),
    }
    auth = {"Authorization": f"Bearer {token}", "X-Forwarded-For": LEGIT_IP}
    runs: dict[str, list[WrkResult]] = {name: [] for name in started}
    for _ in range(args.rounds):
        for name, (port, pid) in started.items():
            _wrk(port, 1, auth, pid)  # warm-up
            result = _wrk(port, args.duration, auth, pid)
            if result.errors:
                raise StartFailed(f"{name}: {result.errors} errors in the throughput run")
            runs[name].append(result)
    for _, pid in started.values():
        os.killpg(pid, signal.SIGTERM)  # idle gateways on the gateway's core would blur the flood figures
    return {name: max(results, key=lambda r: r.req_per_s) for name, results in runs.items()}


def _flood(port: int, pid: int, args: argparse.Namespace, lua: Path) -> WrkResult:
    """One wrk flood from FLOOD_IP, with the gateway tree's CPU seconds spent meanwhile."""
    before = tree_cpu_seconds(pid)
    result = run_wrk(
        port=port,
        duration=args.duration,
        connections=args.flood_connections,
        threads=2,
        headers={"X-Forwarded-For": FLOOD_IP},
        cpu=LOAD_CPU,
        lua=lua,
    )
    return WrkResult(**{**result.__dict__, "cpu_seconds": tree_cpu_seconds(pid) - before})


def _unpaced_rounds(
    floods: dict[str, tuple[int, int]], args: argparse.Namespace, work: Path
) -> dict[str, list[WrkResult]]:
    """Unpaced one-IP floods, alternating between the gateways (same machine state for each)."""
    lua = _paced_lua(work, args.flood_connections, 0)
    results: dict[str, list[WrkResult]] = {name: [] for name in floods}
    for _ in range(args.flood_rounds):
        for name, (port, pid) in floods.items():
            results[name].append(_flood(port, pid, args, lua))
    return results


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
    flood = _flood(port, pid, args, _paced_lua(work, args.flood_connections, rate))
    thread.join()
    loaded, statuses = holder["r"]
    return FloodStep(rate, flood, loaded, statuses)


def report(
    args: argparse.Namespace,
    best: dict[str, WrkResult],
    unloaded: list[float],
    steps: list[FloodStep],
    unpaced: dict[str, list[WrkResult]],
) -> None:
    print(
        f"# python bench/ratelimit_bench.py --rounds {args.rounds} --duration {args.duration}"
        f" --flood-connections {args.flood_connections} --flood-rounds {args.flood_rounds}"
        f" --server {args.server}{'' if args.access_log else ' --no-access-log'}"
        f"{' --flood-only' if args.flood_only else ''}"
        f"{f' --compare-root {args.compare_root}' if args.compare_root else ''}"
        f"  ({os.cpu_count()} cores; gateway pinned to CPU {PROXY_CPU}; wrk, nginx, redis on CPU {LOAD_CPU})"
    )
    for name, result in best.items():
        print(
            f"{name:<11} {result.req_per_s:>9.0f} req/s  p50 {result.p50_us:>7.0f} µs"
            f"  p99 {result.p99_us:>7.0f} µs  cpu {result.cpu_us_per_req:>6.1f} µs/req"
        )
    if best:
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
    _report_unpaced(unpaced)


def _report_unpaced(unpaced: dict[str, list[WrkResult]]) -> None:
    """429/s, CPU µs per 429 and 429 per CPU-second (the gateway is pinned: per core), medians."""
    print("unpaced one-IP flood | 429/s (median) | cpu µs per 429 | 429/s per core | rounds (429/s)")
    medians: dict[str, float] = {}
    for name, results in unpaced.items():
        rate = statistics.median(r.errors / r.seconds for r in results)
        cpu_us = statistics.median(r.cpu_seconds * 1e6 / r.errors for r in results if r.errors)
        medians[name] = per_core = 1e6 / cpu_us
        rounds = ", ".join(f"{r.errors / r.seconds:.0f}" for r in results)
        print(f"{name:>20} | {rate:>14.0f} | {cpu_us:>14.1f} | {per_core:>14.0f} | {rounds}")
    if "flood-base" in medians:
        print(f"429/s per core, this tree / compare tree: {medians['flood'] / medians['flood-base']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
