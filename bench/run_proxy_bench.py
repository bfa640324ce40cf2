#!/usr/bin/env python3
"""Loopback reverse-proxy benchmark: the gateway against nginx, HAProxy+JWT and plain aiohttp.

Each proxy under test runs pinned to CPU 0; wrk and the nginx upstream share CPU 1. The
contestants are interleaved over several rounds and the proxy's own CPU time per request is
read from /proc. See bench/README.md for how to read the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench_contestants import (
    CONTESTANTS as SIMPLE_CONTESTANTS,
)
from bench_contestants import (
    BenchEnv,
    Contestant,
    Running,
    start_bench_env,
)
from bench_support import (
    BENCH_DIR,
    LOAD_CPU,
    PROJECT_ROOT,
    PROXY_CPU,
    BenchError,
    Launcher,
    StartFailed,
    WrkResult,
    core_busy_percent,
    core_ticks,
    ensure_debian_packages,
    run_in_workdir,
    run_wrk,
    tree_cpu_seconds,
    which,
)
from full_chain import start_gateway_full

BASELINES = ("aiohttp-min", "haproxy-jwt")
CONTESTANTS = (
    *SIMPLE_CONTESTANTS,
    Contestant(
        "gateway-full",
        "the issue-13 workload: whole chain, Redis limits, 2,000 users in 50 tenants (full_chain.py)",
        start_gateway_full,
    ),
    Contestant(
        "gateway-full-nolimits",
        "the same workload without the Redis-backed limits (no pre_auth, no route policy): the "
        "store round trip's cost is the difference to gateway-full",
        functools.partial(start_gateway_full, name="gateway-full-nolimits", rate_limits=False),
    ),
)
PACKAGES = {"wrk": "wrk", "nginx": "nginx", "haproxy": "haproxy"}


@dataclass(frozen=True)
class Summary:
    """One contestant's figures, picked from its rounds."""

    req_per_s: float
    p50_us: float
    p99_us: float
    cpu_us_per_req: float
    cpu_percent: float
    errors: int
    runs: tuple[WrkResult, ...]


# ---------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join(c.name for c in CONTESTANTS)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured wrk seconds before each run, 0 = none (default 1)"
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--only", help=f"comma-separated subset of: {names}")
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 s runs, 1 round")
    parser.add_argument(
        "--pick",
        choices=("best", "median"),
        default="best",
        help="best = the round with the highest req/s (default); median = per-metric median over rounds",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for aiohttp-min and gateway (default: this one)"
    )
    parser.add_argument(
        "--base-root",
        type=Path,
        help="another source tree (e.g. `git archive REV | tar -x -C DIR`): adds the contestant "
        "gateway-full@base, the same workload on that tree's code, for a before/after in one run",
    )
    parser.add_argument(
        "--also-python",
        help="a second interpreter (e.g. a venv of Debian's PGO-built /usr/bin/python3 with the "
        "project installed): adds the contestant gateway-full@also-python, the same workload and "
        "code on that interpreter, for both interpreters against HAProxy in one run",
    )
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temporary configs and logs for inspection"
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.duration = args.duration or (2 if args.quick else 10)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --duration, --connections and --threads must be >= 1")
    args.contestants = select_contestants(parser, args.only)
    if args.base_root is not None:
        root = args.base_root.resolve()
        args.contestants.append(
            Contestant(
                "gateway-full@base",
                f"gateway-full on the code of {root}",
                lambda env: start_gateway_full(
                    dataclasses.replace(env, project_root=root), "gateway-full@base"
                ),
            )
        )
    if args.also_python is not None:
        also = args.also_python
        args.contestants.append(
            Contestant(
                "gateway-full@also-python",
                f"gateway-full on {also}",
                lambda env: start_gateway_full(
                    dataclasses.replace(env, python=also), "gateway-full@also-python"
                ),
            )
        )
    return args


def select_contestants(parser: argparse.ArgumentParser, only: str | None) -> list[Contestant]:
    if not only:
        return list(CONTESTANTS)
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    known = {c.name: c for c in CONTESTANTS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        parser.error(f"unknown contestant(s) {unknown}; choose from {sorted(known)}")
    return [c for c in CONTESTANTS if c.name in wanted]


# ---------------------------------------------------------------- running
def start_contestants(
    env: BenchEnv, contestants: list[Contestant]
) -> tuple[dict[str, Running], dict[str, str]]:
    running: dict[str, Running] = {}
    skipped: dict[str, str] = {}
    for contestant in contestants:
        print(f"# starting {contestant.name} ...", flush=True)
        try:
            running[contestant.name] = contestant.start(env)
        except (StartFailed, OSError) as exc:
            skipped[contestant.name] = f"failed to start: {exc}"
            print(f"#   SKIPPED {contestant.name}: {exc}", flush=True)
    return running, skipped


def measure(
    args: argparse.Namespace,
    launcher: Launcher,
    env: BenchEnv,
    running: dict[str, Running],
    skipped: dict[str, str],
) -> dict[str, list[WrkResult]]:
    runs: dict[str, list[WrkResult]] = {name: [] for name in running}
    order = list(running)
    wrk_args = {
        "connections": args.connections,
        "threads": args.threads,
        "cpu": LOAD_CPU,
        "lua": BENCH_DIR / "wrk_report.lua",
    }
    for round_no in range(args.rounds):
        shift = round_no % max(len(order), 1)  # rotate so no one always runs first
        for name in order[shift:] + order[:shift]:
            if name in skipped:
                continue
            target = running[name]
            wrk_args["headers"] = env.bearer if target.headers is None else target.headers
            wrk_args["lua"] = target.lua or BENCH_DIR / "wrk_report.lua"
            wrk_args["path"] = target.path
            try:
                if args.warmup:
                    run_wrk(port=target.port, duration=args.warmup, **wrk_args)
                side_before = tree_cpu_seconds(target.side_pid) if target.side_pid else 0.0
                cores_before, before = core_ticks(), tree_cpu_seconds(target.pid)
                result = run_wrk(port=target.port, duration=args.duration, **wrk_args)
                cpu = tree_cpu_seconds(target.pid) - before
                side = tree_cpu_seconds(target.side_pid) - side_before if target.side_pid else 0.0
                cores_after = core_ticks()
            except BenchError as exc:
                skipped[name] = f"failed in round {round_no + 1}: {exc}"
                print(f"#   {name}: {skipped[name]}", flush=True)
                continue
            if not alive(target.pid):
                skipped[name] = f"died during round {round_no + 1}"
                continue
            busy = tuple(core_busy_percent(cores_before, cores_after, c) for c in (PROXY_CPU, LOAD_CPU))
            result = dataclasses.replace(result, cpu_seconds=cpu, side_cpu_seconds=side, core_busy=busy)
            runs[name].append(result)
            print(
                f"# round {round_no + 1}/{args.rounds} {name:12s} {result.req_per_s:9.0f} req/s"
                f"  p50 {result.p50_us / 1000:6.2f} ms  p99 {result.p99_us / 1000:6.2f} ms"
                f"  cpu {result.cpu_us_per_req:6.1f} us/req ({result.cpu_percent:3.0f}%)"
                f"  errors {result.errors}",
                flush=True,
            )
    return runs


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def summarise(results: list[WrkResult], pick: str) -> Summary:
    if pick == "best":
        best = max(results, key=lambda r: r.req_per_s)
        return Summary(
            best.req_per_s,
            best.p50_us,
            best.p99_us,
            best.cpu_us_per_req,
            best.cpu_percent,
            best.errors,
            tuple(results),
        )
    med = statistics.median
    return Summary(
        med(r.req_per_s for r in results),
        med(r.p50_us for r in results),
        med(r.p99_us for r in results),
        med(r.cpu_us_per_req for r in results),
        med(r.cpu_percent for r in results),
        max(r.errors for r in results),
        tuple(results),
    )


# ---------------------------------------------------------------- report
def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "—"
    return f"{numerator / denominator:.2f}"


def one_line(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_table(names: list[str], summaries: dict[str, Summary], skipped: dict[str, str], pick: str) -> str:
    base = {b: summaries.get(b) for b in BASELINES}
    rps = {b: (s.req_per_s if s else None) for b, s in base.items()}
    haproxy = base["haproxy-jwt"]
    lines = [
        "| contestant | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy CPU % of core "
        "| req/s ÷ aiohttp-min | req/s ÷ haproxy-jwt | CPU/req: haproxy-jwt ÷ this | notes |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name in names:
        s = summaries.get(name)
        if s is None:
            reason = one_line(skipped.get(name, "no result"))
            lines.append(f"| {name} | — | — | — | — | — | — | — | — | SKIPPED: {reason} |")
            continue
        notes = [f"{pick} of {len(s.runs)}: " + " / ".join(f"{r.req_per_s:,.0f}" for r in s.runs)]
        if s.errors:
            notes.append(f"**{s.errors} errors/non-2xx**")
        sides = [r.side_cpu_us_per_req for r in s.runs if r.side_cpu_seconds]
        if sides:
            notes.append(f"Redis CPU {statistics.median(sides):.1f} µs/req (median)")
        if name != "direct":
            others = max(r.core_busy[0] - r.cpu_percent for r in s.runs if r.core_busy)
            if others > 10:
                notes.append(f"other work took up to {others:.0f}% of CPU {PROXY_CPU}")
        lines.append(
            f"| {name} | {s.req_per_s:,.0f} | {s.p50_us / 1000:.2f} | {s.p99_us / 1000:.2f} "
            f"| {s.cpu_us_per_req:.1f} | {s.cpu_percent:.0f} "
            f"| {ratio(s.req_per_s, rps['aiohttp-min'])} "
            f"| {ratio(s.req_per_s, rps['haproxy-jwt'])} "
            f"| {ratio(haproxy.cpu_us_per_req if haproxy else None, s.cpu_us_per_req)} "
            f"| {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def render_runs(runs: dict[str, list[WrkResult]]) -> str:
    lines = [
        "| contestant | run | req/s | p50 ms | p99 ms | CPU µs/req | CPU % | errors "
        f"| CPU {PROXY_CPU} busy % | CPU {LOAD_CPU} busy % |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, results in runs.items():
        for i, r in enumerate(results, 1):
            lines.append(
                f"| {name} | {i} | {r.req_per_s:,.0f} | {r.p50_us / 1000:.2f} "
                f"| {r.p99_us / 1000:.2f} | {r.cpu_us_per_req:.1f} "
                f"| {r.cpu_percent:.0f} | {r.errors} "
                f"| {' | '.join(f'{b:.0f}' for b in r.core_busy)} |"
            )
    return "\n".join(lines)


def command_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def python_versions(python: str) -> str:
    probe = (
        "import sys, aiohttp, uvloop; print('Python', sys.version.split()[0], "
        "'aiohttp', aiohttp.__version__, 'uvloop', uvloop.__version__)"
    )
    return command_output([python, "-c", probe])


def environment_notes(args: argparse.Namespace) -> list[str]:
    cpu_model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    git = command_output(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"])
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; git: {git}",
        f"- machine: {os.cpu_count()} CPUs ({cpu_model}), kernel {platform.release()}",
        f"- Python contestants run on {args.python}: {python_versions(args.python)}",
        *(
            [f"- gateway-full@also-python runs on {args.also_python}: {python_versions(args.also_python)}"]
            if args.also_python
            else []
        ),
        f"- "
        f"{command_output([which('nginx') or 'nginx', '-v'])}; "
        f"{command_output([which('haproxy') or 'haproxy', '-v'])}; "
        f"{command_output([which('wrk') or 'wrk', '-v'])}",
        f"- wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
        f"{args.warmup}s unmeasured warm-up per run, {args.rounds} interleaved round(s); "
        f"figures are the **{args.pick}** "
        + ("run (highest req/s) per contestant" if args.pick == "best" else "per metric"),
        f"- proxies pinned to CPU {PROXY_CPU}; wrk and the nginx upstream to CPU {LOAD_CPU}; "
        "every request carries the same ES256 bearer token (with the claims an MFA route "
        "needs; only `haproxy-jwt` and `gateway-jwt` check it)",
        "- proxy CPU = utime+stime of the proxy's process tree during the measured run "
        "(for `direct` that is the upstream nginx itself, on the load core)",
    ]


def write_report(
    args: argparse.Namespace, table: str, runs: dict[str, list[WrkResult]], skipped: dict[str, str]
) -> Path:
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"proxy-{time.strftime('%Y%m%d-%H%M%S')}.md"
    parts = [
        "# Proxy benchmark (loopback)",
        "",
        *environment_notes(args),
        "",
        table,
        "",
        "## All runs",
        "",
        render_runs(runs),
        "",
    ]
    if skipped:
        parts += ["## Skipped", ""]
        parts += [f"- **{name}**: {one_line(why, 2000)}" for name, why in skipped.items()]
        parts.append("")
    path.write_text("\n".join(parts))
    return path


# ---------------------------------------------------------------- main
def raise_fd_limit() -> None:
    """Children inherit it: wrk, nginx and haproxy need more than a shell's usual 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def check_cpus() -> None:
    cpus = os.sched_getaffinity(0)
    if not {PROXY_CPU, LOAD_CPU} <= cpus:
        raise BenchError(f"needs CPUs {PROXY_CPU} and {LOAD_CPU}; this process may use {cpus}")


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    return run_in_workdir("proxy-bench-", args.keep_workdir, lambda w, lch: run(args, w, lch))


def run(args: argparse.Namespace, workdir: Path, launcher: Launcher) -> int:
    check_cpus()
    raise_fd_limit()
    ensure_debian_packages(PACKAGES)
    env = start_bench_env(launcher, workdir, args.python)
    running, skipped = start_contestants(env, args.contestants)
    runs = measure(args, launcher, env, running, skipped)
    summaries = {n: summarise(r, args.pick) for n, r in runs.items() if r}
    names = [c.name for c in args.contestants]
    table = render_table(names, summaries, skipped, args.pick)
    path = write_report(args, table, runs, skipped)
    print("\n" + table + "\n")
    for name, why in skipped.items():
        print(f"SKIPPED {name}: {why}")
    print(f"written: {path}")
    return 0 if summaries else 1


if __name__ == "__main__":
    sys.exit(main())
