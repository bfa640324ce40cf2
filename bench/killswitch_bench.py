#!/usr/bin/env python3
"""Kill switch propagation and per-request cost, measured in one run (issue 7).

1. Propagation: two gateways share one Redis. 50 times: ``POST /admin/killswitch`` on A (in a
   thread) while a client polls B on a keep-alive connection; the latency is from sending the
   POST to B's first 503. Then the switch is released and B is polled until it answers 200
   again. Reported: p50/p99 (aim: p99 < 100 ms).
2. Cost: proxy throughput of a gateway holding 1,000 active, non-matching switches (module,
   route, tenant and endpoint globs, many sharing the benchmarked path's first segments) against
   the same config holding none; interleaved rounds, gateway pinned to CPU 0, wrk and nginx on
   CPU 1 (aim: ratio >= 0.95).

    python bench/killswitch_bench.py [--rounds 3] [--duration 8] [--engagements 50]

Needs wrk, nginx and redis-server (Debian packages; installed when missing).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from bench_contestants import start_upstream
from bench_support import (
    _RESULT,
    BENCH_DIR,
    LOAD_CPU,
    PROJECT_ROOT,
    PROXY_CPU,
    Launcher,
    StartFailed,
    ensure_debian_packages,
    free_port,
    run_in_workdir,
    start_gateway_process,
    start_redis,
    tree_cpu_seconds,
    which,
)

ADMIN_TOKEN = "bench-admin-token"
MASTER_KEY = base64.b64encode(os.urandom(32)).decode()
BENCH_PATH = "/api/orders/123/lines"
MODULES = [f"m{i}" for i in range(100)]


def _config(port: int, admin: int, upstream: int, state: str, rundir: Path) -> dict[str, Any]:
    import hashlib

    routes = [
        {"name": "orders", "prefix": "/api/orders", "upstream": "app", "auth": "none", "module": "orders"}
    ]
    routes += [
        {"name": f"r-{m}", "prefix": f"/mod/{m}", "upstream": "app", "auth": "none", "module": m}
        for m in MODULES
    ]
    routes.append(
        {"name": "finance", "prefix": "/api/finance", "upstream": "app", "auth": "none", "module": "finance"}
    )
    return {
        "listen": {"host": "127.0.0.1", "port": port, "tls": "off"},
        "admin": {
            "listen": f"127.0.0.1:{admin}",
            "tokens": [{"name": "bench", "sha256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}],
        },
        "state": {"url": state},
        "upstreams": {"app": {"urls": [f"http://127.0.0.1:{upstream}"]}},
        "routes": routes,
        "logging": {"level": "warning", "access_log": False},
        "audit": {"spool_dir": str(rundir / "spool")},
    }


def _gateway(
    launcher: Launcher, work: Path, name: str, upstream: int, state: str, cpu: int | None
) -> tuple[int, int]:
    port, admin = free_port(), free_port()
    rundir = work / name
    rundir.mkdir()
    (rundir / "gateway.yaml").write_text(yaml.safe_dump(_config(port, admin, upstream, state, rundir)))
    start_gateway_process(
        launcher,
        name,
        rundir / "gateway.yaml",
        port,
        cpu=cpu,
        project_root=PROJECT_ROOT,
        master_key=MASTER_KEY,
    )
    return port, admin


def _redis(launcher: Launcher, work: Path) -> str:
    return start_redis(launcher, work, LOAD_CPU)


def _admin(
    admin: int, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _wait_status(conn: http.client.HTTPConnection, path: str, status: int, timeout: float = 5.0) -> float:
    started = time.perf_counter()
    while True:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        if response.status == status:
            return time.perf_counter()
        if time.perf_counter() - started > timeout:
            raise StartFailed(f"{path} never answered {status}")


def _post_into(holder: dict[str, Any], admin: int, body: dict[str, Any]) -> None:
    holder["r"] = _admin(admin, "POST", "/admin/killswitch", body)


def propagation(launcher: Launcher, work: Path, upstream: int, engagements: int) -> list[float]:
    redis_url = _redis(launcher, work)
    _, admin_a = _gateway(launcher, work, "gw-a", upstream, redis_url, None)
    port_b, _ = _gateway(launcher, work, "gw-b", upstream, redis_url, None)
    time.sleep(1.5)  # both heartbeats recorded: both are live instances
    conn = http.client.HTTPConnection("127.0.0.1", port_b, timeout=5)
    latencies = []
    body = {"scope": "module", "target": "finance", "mode": "block", "reason": "bench"}
    for _ in range(engagements):
        holder: dict[str, Any] = {}
        started = time.perf_counter()
        post = threading.Thread(target=_post_into, args=(holder, admin_a, body))
        post.start()
        enforced = _wait_status(conn, "/api/finance/x", 503)
        post.join()
        latencies.append((enforced - started) * 1000)
        status, switch = holder["r"]
        if status != 201 or switch["lagging"]:
            raise StartFailed(f"engage answered {status}: {switch}")
        _admin(admin_a, "DELETE", f"/admin/killswitch/{switch['id']}")
        _wait_status(conn, "/api/finance/x", 200)
    conn.close()
    return latencies


def thousand_switches() -> list[dict[str, str]]:
    """1,000 switches none of which matches GET /api/orders/123/lines, chosen to hit the
    index where it works hardest: globs sharing the path's first segments, '*' branches."""
    specs: list[dict[str, str]] = []
    specs += [{"scope": "module", "target": m} for m in MODULES]
    specs += [{"scope": "route", "target": f"r-{m}"} for m in MODULES]
    specs += [{"scope": "tenant", "target": f"tenant-{i}"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"POST /api/orders/{i}/*"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"GET /api/*/{i}/x"} for i in range(200)]
    specs += [{"scope": "endpoint", "target": f"* /api/orders/*/l{i}"} for i in range(100)]
    specs += [{"scope": "endpoint", "target": f"DELETE /api/o{i}/**"} for i in range(100)]
    return [{**s, "mode": "block", "reason": "bench"} for s in specs]


def index_cost() -> dict[str, float]:
    """µs per check of the benchmarked request against the compiled index, in this process
    (no network noise): no switches, and the 1,000 above."""
    import dataclasses
    import timeit

    sys.path.insert(0, str(PROJECT_ROOT))
    from gateway.killswitch.matcher import SwitchIndex
    from gateway.killswitch.model import validate_spec

    switches = [
        dataclasses.replace(validate_spec(spec), id=f"ks{i}", created_at=1.0)
        for i, spec in enumerate(thousand_switches())
    ]
    route = dataclasses.make_dataclass("Route", ["name", "module", "integration"])("orders", "orders", None)
    result = {}
    for name, index in (("none", SwitchIndex([], 1)), ("1000", SwitchIndex(switches, 2))):

        def check(index: SwitchIndex = index) -> object:
            return index.refusal("GET", BENCH_PATH, route, websocket=False, now=2.0)

        assert check() is None
        result[name] = min(timeit.repeat(check, number=20000, repeat=5)) / 20000 * 1e6
    return result


def _wrk(port: int, duration: int, pid: int) -> dict[str, float]:
    wrk = which("wrk")
    if wrk is None:
        raise StartFailed("wrk is not installed")
    argv = [
        "taskset",
        "-c",
        str(LOAD_CPU),
        wrk,
        "-t",
        "2",
        "-c",
        "50",
        "-d",
        f"{duration}s",
        "--latency",
        "-s",
        str(BENCH_DIR / "wrk_report.lua"),
        f"http://127.0.0.1:{port}{BENCH_PATH}",
    ]
    before = tree_cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False).stdout
    match = _RESULT.search(out)
    if match is None:
        raise StartFailed(f"wrk failed: {out[-800:]}")
    values = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    seconds = values["duration_us"] / 1e6
    errors = sum(int(values[k]) for k in ("connect", "read", "write", "status", "timeout"))
    if errors:
        raise StartFailed(f"{errors} errors during the throughput run")
    cpu = tree_cpu_seconds(pid) - before
    return {
        "rps": values["requests"] / seconds,
        "p99": values["p99_us"],
        "cpu_us": cpu * 1e6 / values["requests"],
    }


def cost(
    launcher: Launcher, work: Path, upstream: int, rounds: int, duration: int
) -> dict[str, list[dict[str, float]]]:
    ports = {}
    for name in ("none", "1000"):
        ports[name] = _gateway(
            launcher, work, f"cost-{name}", upstream, f"local:{work / name / 'state'}", PROXY_CPU
        )
    for spec in thousand_switches():
        status, answer = _admin(ports["1000"][1], "POST", "/admin/killswitch", spec)
        if status != 201:
            raise StartFailed(f"engage {spec} -> {status} {answer}")
    status, listing = _admin(ports["1000"][1], "GET", "/admin/killswitch")
    assert status == 200 and len(listing["switches"]) == 1000, len(listing["switches"])
    pids = {name: proc.pid for name, proc in launcher._procs if name.startswith("cost-")}
    runs: dict[str, list[dict[str, float]]] = {"none": [], "1000": []}
    for round_no in range(rounds):
        order = ["none", "1000"] if round_no % 2 == 0 else ["1000", "none"]
        for name in order:
            _wrk(ports[name][0], 1, pids[f"cost-{name}"])  # warm-up
            runs[name].append(_wrk(ports[name][0], duration, pids[f"cost-{name}"]))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--engagements", type=int, default=50)
    args = parser.parse_args()
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx", "redis-server": "redis-server"})
    return run_in_workdir("ks-bench-", False, lambda work, launcher: run(args, work, launcher))


def run(args: argparse.Namespace, work: Path, launcher: Launcher) -> int:
    upstream = start_upstream(launcher, work, LOAD_CPU).port
    costs = index_cost()
    latencies = propagation(launcher, work, upstream, args.engagements)
    runs = cost(launcher, work, upstream, args.rounds, args.duration)
    report(args, latencies, runs, costs)
    return 0


def report(
    args: argparse.Namespace,
    latencies: list[float],
    runs: dict[str, list[dict[str, float]]],
    costs: dict[str, float],
) -> None:
    print(
        f"# python bench/killswitch_bench.py --rounds {args.rounds} --duration {args.duration} "
        f"--engagements {args.engagements}  ({os.cpu_count()} cores)"
    )
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(
        f"propagation POST on A -> 503 on B over {len(latencies)} engagements: "
        f"p50 {statistics.median(latencies):.1f} ms"
        f"  p99 {q[98]:.1f} ms  max {max(latencies):.1f} ms  (aim p99 < 100 ms)"
    )
    best = {name: max(results, key=lambda r: r["rps"]) for name, results in runs.items()}
    for name, result in best.items():
        rounds = ", ".join(f"{r['rps']:.0f}" for r in runs[name])
        print(
            f"{name:>4} switches: {result['rps']:>8.0f} req/s  p99 {result['p99']:>6.0f} µs  "
            f"cpu {result['cpu_us']:.1f} µs/req"
            f"  (rounds: {rounds})"
        )
    print(
        f"throughput ratio 1000 switches / none: {best['1000']['rps'] / best['none']['rps']:.3f}"
        "  (aim >= 0.95)"
    )
    print(f"cpu per request ratio 1000 / none: {best['1000']['cpu_us'] / best['none']['cpu_us']:.3f}")
    print(
        f"index check in process: {costs['none']:.2f} µs with no switches, {costs['1000']:.2f} µs with 1000"
    )
    medians = {name: statistics.median(r["rps"] for r in results) for name, results in runs.items()}
    print(f"median-round throughput ratio 1000 / none: {medians['1000'] / medians['none']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
