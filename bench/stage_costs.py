#!/usr/bin/env python3
"""Where one full-chain request's CPU goes, stage by stage (issue 13, target 5).

Runs the issue-13 workload (full_chain.py: the gateway pinned to CPU 0, wrk, nginx and Redis on
CPU 1), reads the gateway's CPU per request from /proc, and samples it with py-spy meanwhile.
Each sample is charged to the first stage (innermost frame outwards) whose code it is in; the
stage's share of the samples times the CPU per request is its µs per request. Samples in no
stage are the event loop and the system calls it makes between callbacks.

Sampling shows where time goes, not exact costs: read the table as shares of a measured total,
and compare runs of the same day. The budget column is ARCHITECTURE.md's per-stage budget.

    python bench/stage_costs.py [--duration 12] [--rate 250]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench_contestants import start_bench_env
from bench_support import LOAD_CPU, Launcher, run_in_workdir, run_wrk, tree_cpu_seconds, which
from full_chain import start_gateway_full

# (stage, budget µs or None, code that belongs to it: "file.py" or "file.py:function" prefixes).
# The first stage found from the innermost frame outwards takes the sample, so a stage's own
# helpers (a JWT library, redis) are charged to it.
STAGES: tuple[tuple[str, float | None, tuple[str, ...]], ...] = (
    (
        "logging (access log, metrics)",
        5,
        (
            "logs/",
            "aiohttp_access_log.py",
            "metrics.py",
            "prometheus_client/",
        ),
    ),
    (
        "rate limits (both stages, store)",
        15,
        ("ratelimit/", "rate_limit.py", "login_outcome.py", "deferred_pre_auth.py", "limits/"),
    ),
    ("authentication (JWT, MFA, revocation)", None, ("authenticate.py", "auth/", "jwt/")),
    (
        "tenancy (identity headers, signed context)",
        None,
        ("middleware/tenancy.py", "tenant_echo.py", "tenancy/"),
    ),
    ("kill switch", None, ("middleware/killswitch.py", "killswitch/")),
    ("routing (canonical path, route match)", None, ("middleware/route.py", "routing.py")),
    (
        "other stages (limits of the head, hygiene, body, CORS)",
        None,
        (
            "header_limits.py",
            "request_hygiene.py",
            "hygiene.py",
            "body_limit.py",
            "cors.py",
            "origins.py",
            "webhook.py",
        ),
    ),
    (
        "upstream leg (request out, answer in)",
        10,
        (
            "transport_httptools.py",
            "httptools_connection.py",
            "httptools_pool.py",
            "request_head.py",
            "forwarding.py:upstream",
            "upstream/pools.py",
        ),
    ),
    (
        "response to the client",
        None,
        (
            "http1/downstream.py",
            "http1/protocol.py:LeanProtocol.write",
            "proxy.py:_stream",
            "forwarding.py:downstream",
        ),
    ),
    ("proxy glue", None, ("proxy.py",)),
    ("parsing and the connection (httptools protocol)", 30, ("http1/", "listener.py", "app.py")),
)
LOOP = "event loop, system calls between callbacks"


def classify(frames: Sequence[str]) -> str:
    """The stage of one sample; ``frames`` outermost first, each 'function (path:line)'."""
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        for stage, _, owners in STAGES:
            for owner in owners:
                file_part, _, function = owner.partition(":")
                if (file_part in path) and (not function or name.startswith(function)):
                    return stage
    return LOOP


def shares(raw: Path) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():  # a line cut short when py-spy was stopped mid-write
            continue
        counts[classify(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return {stage: count / total for stage, count in counts.items()}


def run(args: argparse.Namespace, workdir: Path, launcher: Launcher) -> int:
    if which("py-spy") is None:
        print("error: needs py-spy (pip install py-spy)", file=sys.stderr)
        return 1
    env = start_bench_env(launcher, workdir, sys.executable)
    target = start_gateway_full(env)
    wrk = dict(connections=50, threads=1, headers={}, cpu=LOAD_CPU, lua=target.lua, path=target.path)
    run_wrk(port=target.port, duration=2, **wrk)  # warm-up: every token's claims cached
    raw = workdir / "profile.txt"
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(target.pid),
            "-d",
            str(args.duration),
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    before = tree_cpu_seconds(target.pid)
    result = run_wrk(port=target.port, duration=args.duration, **wrk)
    cpu = tree_cpu_seconds(target.pid) - before
    spy.wait(timeout=60)
    per_request = cpu * 1e6 / result.requests
    found = shares(raw)
    print(
        f"# {result.requests / result.seconds:,.0f} req/s, {per_request:.1f} µs CPU per request "
        f"(py-spy running: it slows the gateway a little), errors {result.errors}"
    )
    print()
    print("| stage | share of samples | µs per request | budget µs |")
    print("|---|--:|--:|--:|")
    for stage, budget, _ in (*STAGES, (LOOP, 30, ())):
        share = found.get(stage, 0.0)
        print(f"| {stage} | {share:.1%} | {share * per_request:.1f} | {budget if budget else '—'} |")
    print(f"| **total** | 100% | {per_request:.1f} | 80 (issue 13) |")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=12)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    return run_in_workdir("stage-costs-", args.keep_workdir, lambda w, lch: run(args, w, lch))


if __name__ == "__main__":
    sys.exit(main())
