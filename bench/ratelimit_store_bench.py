#!/usr/bin/env python3
"""The rate-limit store path alone, old against new in one run (issue 13).

Runs the limiter's ``RateLimitBackend.check`` in-process against one throwaway redis-server,
with the issue's workload shape: a ``pre_auth`` stage (one fixed-window IP item, no window
state) and a route stage (``user: 50/second;2000/minute`` + ``tenant: 1000/second``, moving
window, window state read) per request, rotating over 2,000 users in 50 tenants, with
``--concurrency`` requests in flight (as a loaded gateway has). Two paths, measured
interleaved, round by round, on the same Redis:

- ``pipelined``: the previous path — limits' Lua scripts by SHA in one redis-py pipeline per stage;
- ``stage-script``: one EVALSHA per stage on the auto-pipelined hiredis RESP connection.

Reported per request (two stages), each also as the ratio old / new:
- process CPU µs (``time.process_time``; sensitive to machine load, so compare the ratio);
- Redis CPU µs (``INFO cpu`` user+sys deltas);
- script calls and Redis socket reads (``INFO commandstats`` / ``total_reads_processed``):
  deterministic counts of the commands Redis parses and of the writes that carried them.

    python bench/ratelimit_store_bench.py [--requests 20000] [--rounds 3] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_support import LOAD_CPU, PROXY_CPU, Launcher, run_in_workdir, start_redis

from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.model import LoginProtectionConfig, RateLimitRule
from gateway.ratelimit.policies import CompiledLimits, LimitItem, compile_rule

PATHS = ("pipelined", "stage-script")


@dataclass
class Sample:
    cpu_us: float
    redis_cpu_us: float
    commands: float
    reads: float


def _settings() -> CompiledLimits:
    from types import MappingProxyType

    return CompiledLimits(
        pre_auth=(),
        by_route=MappingProxyType({}),
        counted_fields=MappingProxyType({}),
        login=LoginProtectionConfig(),
        on_store_failure="local",
        store_timeout=5.0,
    )


def _items() -> tuple[list[LimitItem], list[LimitItem]]:
    ip = compile_rule(
        "pre_auth", "pre_auth", 0, RateLimitRule(key="ip", limit="100000/second", strategy="fixed-window")
    )
    user = compile_rule("policy:api", "api", 0, RateLimitRule(key="user", limit="50/second;2000/minute"))
    tenant = compile_rule("policy:api", "api", 1, RateLimitRule(key="tenant", limit="1000/second"))
    return ip, user + tenant


def _redis_counters(client: redis.Redis) -> tuple[float, int, int]:
    cpu = client.info("cpu")
    commands = client.info("commandstats")
    reads = client.info("stats")["total_reads_processed"]
    # Script calls only: commandstats also counts the commands a script runs inside Redis.
    top = sum(v["calls"] for k, v in commands.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], top, int(reads)


async def _requests(backend: RateLimitBackend, count: int, concurrency: int, offset: int) -> None:
    pre_auth, route = _items()
    settings = _settings()
    hashes = [backend.hash(f"user-{n}") for n in range(2000)]
    tenants = [backend.hash(f"tenant-{n}") for n in range(50)]
    ip = backend.hash("203.0.113.7")

    async def one(n: int) -> None:
        user, tenant = hashes[n % 2000], tenants[n % 50]
        await backend.check([(pre_auth[0], ip)], settings, "pre_auth", state=False)
        checks = [(route[0], user), (route[1], user), (route[2], tenant)]
        await backend.check(checks, settings, "route")

    async def worker(start: int) -> None:
        for n in range(start, count, concurrency):
            await one(offset + n)

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def _measure(
    url: str, path: str, count: int, concurrency: int, client: redis.Redis, offset: int
) -> Sample:
    backend = RateLimitBackend(url)
    try:
        if path == "pipelined":
            fast = backend._stage_script
            backend._stage_script = None
            if fast is not None:
                await fast.client.close()
        await _requests(backend, 200, concurrency, offset)  # connect, load scripts, warm caches
        r_cpu, r_cmd, r_reads = _redis_counters(client)
        cpu0 = time.process_time()
        await _requests(backend, count, concurrency, offset)
        cpu1 = time.process_time()
        r_cpu1, r_cmd1, r_reads1 = _redis_counters(client)
    finally:
        await backend.close()
    return Sample(
        cpu_us=(cpu1 - cpu0) * 1e6 / count,
        redis_cpu_us=(r_cpu1 - r_cpu) * 1e6 / count,
        commands=(r_cmd1 - r_cmd) / count,
        reads=(r_reads1 - r_reads - 3) / count,  # the three INFO calls are reads too
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with_cpus = {PROXY_CPU, LOAD_CPU} <= os.sched_getaffinity(0)
    if with_cpus:
        os.sched_setaffinity(0, {PROXY_CPU})
    return run_in_workdir(
        "rl-store-bench-", False, lambda work, launcher: run(args, with_cpus, work, launcher)
    )


def run(args: argparse.Namespace, with_cpus: bool, work: Path, launcher: Launcher) -> int:
    url = start_redis(launcher, work, LOAD_CPU if with_cpus else None)
    client = redis.Redis.from_url(url)
    samples: dict[str, list[Sample]] = {path: [] for path in PATHS}
    for round_no in range(args.rounds):
        order = PATHS if round_no % 2 == 0 else PATHS[::-1]
        for path in order:
            client.flushall()
            offset = round_no * 7919
            samples[path].append(
                asyncio.run(_measure(url, path, args.requests, args.concurrency, client, offset))
            )
    client.close()
    report(args, samples)
    return 0


def report(args: argparse.Namespace, samples: dict[str, list[Sample]]) -> None:
    print(
        f"# python bench/ratelimit_store_bench.py --requests {args.requests} --rounds {args.rounds}"
        f" --concurrency {args.concurrency}   (per request = pre_auth stage + route stage; medians)"
    )
    fields = ("cpu_us", "redis_cpu_us", "commands", "reads")
    medians = {p: {f: statistics.median(getattr(s, f) for s in samples[p]) for f in fields} for p in PATHS}
    print(f"{'per request':<26}" + "".join(f"{p:>14}" for p in PATHS) + f"{'old/new':>10}")
    labels = {
        "cpu_us": "process CPU µs",
        "redis_cpu_us": "Redis CPU µs",
        "commands": "Redis script calls",
        "reads": "Redis socket reads",
    }
    for field in fields:
        old, new = medians["pipelined"][field], medians["stage-script"][field]
        ratio = f"{old / new:>9.2f}x" if new > 0 else f"{'-':>10}"
        print(f"{labels[field]:<26}" + f"{old:>14.2f}{new:>14.2f}" + ratio)


if __name__ == "__main__":
    sys.exit(main())
