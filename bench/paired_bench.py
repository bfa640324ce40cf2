#!/usr/bin/env python3
"""A/B of gateway code versions on a noisy host: every variant is loaded at the same time.

run_proxy_bench.py measures one contestant after another, so a slow spell of the shared host
lands on whichever runs then (rounds of one contestant varied by up to 1.6x). Here all variants
run together, each pinned to CPU 0 with its own wrk on CPU 1, so every slow spell hits all of
them alike; each round gives the proxy CPU time per request of each variant (from /proc), and
the ratio to the first variant is taken per round, then the median over rounds.

Use it to decide whether a change helps (ratios of 1.02-1.03 repeat between runs), not for the
figures an issue asks for: variants sharing one core share its caches, which inflates every
absolute figure, pulls ratios between unlike paths (bare vs MFA route) towards 1, and
understates a change that saves by touching less memory (the caches are thrashed anyway).

    python bench/paired_bench.py base=HEAD~1:jwt new=worktree:jwt
    python bench/paired_bench.py new=worktree:jwt bare=worktree:bare --rounds 12

A variant is NAME=REVISION:ROUTE. REVISION is a git revision (checked out in a temporary
worktree) or ``worktree`` (this checkout as it is); ROUTE is ``bare`` (``auth: none``) or
``jwt`` (the MFA route with a cached ES256 token), as in run_proxy_bench.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from bench_contestants import (
    BenchEnv,
    start_bench_env,
    start_gateway,
)
from bench_support import (
    BENCH_DIR,
    LOAD_CPU,
    PROJECT_ROOT,
    BenchError,
    Launcher,
    WrkResult,
    ensure_debian_packages,
    run_in_workdir,
    run_wrk,
    tree_cpu_seconds,
)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    revision: str
    jwt_auth: bool


def parse_variant(text: str) -> Variant:
    name, sep, rest = text.partition("=")
    revision, sep2, route = rest.rpartition(":")
    if not (sep and sep2 and name and revision) or route not in ("bare", "jwt"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=REVISION:bare|jwt")
    return Variant(name, revision, route == "jwt")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=REVISION:ROUTE")
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (default 10)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per round (default 3)")
    parser.add_argument("--connections", type=int, default=50, help="per variant (default 50)")
    args = parser.parse_args(argv)
    if len({v.name for v in args.variants}) != len(args.variants):
        parser.error("variant names must differ")
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def checkout(revision: str, workdir: Path) -> Path:
    """The source tree of a revision: this checkout, or a detached temporary worktree."""
    if revision == "worktree":
        return PROJECT_ROOT
    target = workdir / "trees" / revision.replace("/", "_")
    if not target.exists():
        done = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", str(target), revision],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise BenchError(f"cannot check out {revision!r}: {done.stderr.strip()}")
    return target


def remove_worktrees(workdir: Path) -> None:
    for tree in (workdir / "trees").glob("*"):
        subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )


def start_variant(env: BenchEnv, variant: Variant, root: Path) -> tuple[int, int]:
    # prepare_gateway puts project_root first on PYTHONPATH: this tree's gateway package runs.
    tree_env = dataclasses.replace(env, project_root=root)
    running = start_gateway(tree_env, jwt_auth=variant.jwt_auth, name=variant.name)
    return running.port, running.pid


def load_all(
    env: BenchEnv, running: dict[str, tuple[int, int]], args: argparse.Namespace
) -> dict[str, float]:
    """One round: every variant under its own wrk at once; CPU microseconds per request."""
    results: dict[str, WrkResult] = {}
    errors: list[BaseException] = []

    def drive(name: str, port: int) -> None:
        try:
            results[name] = run_wrk(
                port=port,
                duration=args.duration,
                connections=args.connections,
                threads=1,
                headers=env.bearer,
                cpu=LOAD_CPU,
                lua=BENCH_DIR / "wrk_report.lua",
            )
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    before = {name: tree_cpu_seconds(pid) for name, (_, pid) in running.items()}
    threads = [threading.Thread(target=drive, args=(name, port)) for name, (port, _) in running.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError(f"wrk failed: {errors[0]}")
    for name, result in results.items():
        if result.errors:
            raise BenchError(f"{name}: {result.errors} failed requests")
    return {
        name: (tree_cpu_seconds(pid) - before[name]) * 1e6 / results[name].requests
        for name, (_, pid) in running.items()
    }


def run(args: argparse.Namespace, workdir: Path, launcher: Launcher) -> int:
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs two CPUs: the gateways on one, wrk and the upstream on the other")
    ensure_debian_packages({"wrk": "wrk", "nginx": "nginx"})
    try:
        env = start_bench_env(launcher, workdir, sys.executable)
        running = {v.name: start_variant(env, v, checkout(v.revision, workdir)) for v in args.variants}
        load_all(env, running, args)  # warm-up round, not counted
        rounds: list[dict[str, float]] = []
        for number in range(1, args.rounds + 1):
            rounds.append(load_all(env, running, args))
            print(
                f"# round {number}: " + "  ".join(f"{n} {us:6.1f}" for n, us in rounds[-1].items()),
                flush=True,
            )
    finally:
        launcher.stop_all()
        remove_worktrees(workdir)
    first = args.variants[0].name
    print(f"\n| variant | CPU µs/req (median) | {first} ÷ this, median of rounds | min | max |")
    print("|---|--:|--:|--:|--:|")
    for variant in args.variants:
        ratios = [r[first] / r[variant.name] for r in rounds]
        median_us = statistics.median(r[variant.name] for r in rounds)
        print(
            f"| {variant.name} | {median_us:.1f} | {statistics.median(ratios):.3f}"
            f" | {min(ratios):.3f} | {max(ratios):.3f} |"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_workdir("paired-bench-", False, lambda w, lch: run(args, w, lch))


if __name__ == "__main__":
    sys.exit(main())
