#!/usr/bin/env python3
"""CPU instructions per proxied request, counted by valgrind's callgrind: a figure that does not
move with the machine's load, for comparing contestants (and code changes) on a noisy host.

Each contestant runs under ``valgrind --tool=callgrind --instr-atstart=no``; after start-up
and a warm-up, counting is switched on, ``--requests`` requests are sent over
``--connections`` keep-alive connections (each answer checked: status 200 and the upstream's
exact body), and the instructions the proxy process executed meanwhile are divided by the
number of requests. Same contestants and tokens as run_proxy_bench.py (see README.md).

Instructions are not time: a cache miss costs no instruction, a C proxy retires more
instructions per cycle than CPython. Use the ratio between the Python contestants (gateway,
gateway-jwt, aiohttp-min) to compare code; use run_proxy_bench.py for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_contestants import (
    BODY,
    BenchEnv,
    aiohttp_min_argv,
    body_probe,
    health_probe,
    prepare_gateway,
    python_floor_argv,
    start_bench_env,
)
from bench_support import (
    LOOPBACK,
    PROJECT_ROOT,
    BenchError,
    Launcher,
    StartFailed,
    ensure_debian_packages,
    free_port,
    run_in_workdir,
    wait_ready,
    which,
)
from full_chain import (
    FULL_PATH,
    SPOOFED_TENANT,
    make_workload,
    prepare_gateway_full,
    verify_full_chain_does_the_job,
)

START_TIMEOUT = 240.0  # Python start-up under valgrind is slow
_TOTALS = re.compile(r"^(?:totals|summary):\s*(\d+)", re.MULTILINE)
_MASTER_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # a fixed throwaway key: repeatable runs


@dataclass(frozen=True)
class Counted:
    port: int
    pid: int
    outdir: Path
    requests: tuple[bytes, ...]  # raw requests, sent in rotation (one per token for gateway-full)
    status: bytes = b"200"  # what every counted answer must be


def raw_requests(port: int, path: str, header_sets: Sequence[dict[str, str]]) -> tuple[bytes, ...]:
    def one(headers: dict[str, str]) -> bytes:
        lines = [f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        return ("".join(lines) + "\r\n").encode()

    return tuple(one(headers) for headers in header_sets)


def valgrind_prefix(outdir: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--vgdb=yes",
        f"--callgrind-out-file={outdir}/callgrind.%p.out",
        "-q",
    ]


def _repeatable(environ: dict[str, str]) -> dict[str, str]:
    # A fixed hash seed and master key: the same dict layouts and keys, so the same instruction
    # counts run to run.
    return {**environ, "PYTHONHASHSEED": "0", "SHOPINO_GATEWAY_MASTER_KEY": _MASTER_KEY}


def start_gateway_counted(env: BenchEnv, name: str, *, jwt_auth: bool) -> Counted:
    port, rundir, argv, environ = prepare_gateway(env, name, jwt_auth=jwt_auth)
    argv = [*valgrind_prefix(rundir), *argv]
    proc = env.launcher.start(name, argv, cpu=env.proxy_cpu, env=_repeatable(environ), cwd=PROJECT_ROOT)
    wait_ready(env.launcher, name, proc, health_probe(port), START_TIMEOUT)
    return Counted(port, proc.pid, rundir, raw_requests(port, "/", [env.bearer]))


def start_gateway_full_counted(env: BenchEnv) -> Counted:
    """The issue-13 workload (full_chain.py): Redis limits, 2,000 users' tokens in rotation."""
    name = "gateway-full"
    prepared = prepare_gateway_full(env, name)
    return start_full_counted(env, name, prepared.port, prepared.argv, prepared.environ)


def start_full_counted(
    env: BenchEnv, name: str, port: int, argv: list[str], environ: dict[str, str]
) -> Counted:
    """A prepared full-chain gateway under callgrind, checked to do its job."""
    assert env.jwt.signing_key is not None
    workload = make_workload(env.workdir, env.jwt.signing_key)
    rundir = env.workdir / name
    argv = [*valgrind_prefix(rundir), *argv]
    proc = env.launcher.start(name, argv, cpu=env.proxy_cpu, env=_repeatable(environ), cwd=PROJECT_ROOT)
    wait_ready(env.launcher, name, proc, health_probe(port), START_TIMEOUT)
    verify_full_chain_does_the_job(port, workload)
    headers = [
        {"Authorization": f"Bearer {token}", "X-Tenant-ID": SPOOFED_TENANT} for token in workload.tokens
    ]
    return Counted(port, proc.pid, rundir, raw_requests(port, FULL_PATH, headers))


def start_gateway_flood_counted(env: BenchEnv) -> Counted:
    """Target 2's refusal: the full-chain gateway, its one client far over a ``pre_auth`` IP
    limit of 1/hour, so every counted request is a 429 answered from memory (the deny cache),
    with the access log on. Deterministic, unlike the flood's 429/s on a shared host."""
    name = "gateway-flood"
    prepared = prepare_gateway_full(env, name, pre_auth_limit="1/hour")
    rundir = env.workdir / name
    argv = [*valgrind_prefix(rundir), *prepared.argv]
    proc = env.launcher.start(
        name, argv, cpu=env.proxy_cpu, env=_repeatable(prepared.environ), cwd=PROJECT_ROOT
    )
    wait_ready(env.launcher, name, proc, health_probe(prepared.port), START_TIMEOUT)
    requests = raw_requests(prepared.port, FULL_PATH, [{"X-Tenant-ID": SPOOFED_TENANT}])
    return Counted(prepared.port, proc.pid, rundir, requests, status=b"429")


def start_script_counted(env: BenchEnv, name: str, argv: Callable[[BenchEnv, int], list[str]]) -> Counted:
    """A bench script proxy (aiohttp-min, python-floor) under callgrind, asked for ``/``."""
    port = free_port()
    rundir = env.workdir / name
    rundir.mkdir(parents=True, exist_ok=True)
    command = [*valgrind_prefix(rundir), *argv(env, port)]
    proc = env.launcher.start(name, command, cpu=env.proxy_cpu, env=_repeatable(dict(os.environ)))
    wait_ready(env.launcher, name, proc, body_probe(port, env.bearer), START_TIMEOUT)
    return Counted(port, proc.pid, rundir, raw_requests(port, "/", [env.bearer]))


CONTESTANTS: dict[str, Callable[[BenchEnv], Counted]] = {
    "aiohttp-min": lambda env: start_script_counted(env, "aiohttp-min", aiohttp_min_argv),
    "python-floor": lambda env: start_script_counted(env, "python-floor", python_floor_argv),
    "gateway": lambda env: start_gateway_counted(env, "gateway", jwt_auth=False),
    "gateway-jwt": lambda env: start_gateway_counted(env, "gateway-jwt", jwt_auth=True),
    "gateway-full": start_gateway_full_counted,
    "gateway-flood": start_gateway_flood_counted,
}


# ---------------------------------------------------------------- load
async def _drive(
    port: int, requests: Sequence[bytes], total: int, connections: int, status: bytes = b"200"
) -> None:
    """``total`` requests (``requests`` in rotation) over ``connections`` keep-alive
    connections; every answer must be ``status``, a 200 with the upstream's exact body."""
    expected = BODY.encode()
    tickets = iter(range(total))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            for ticket in tickets:
                writer.write(requests[ticket % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if head.split(b" ", 2)[1] != status or match is None:
                    raise BenchError(f"unexpected answer: {head[:200]!r}")
                body = await reader.readexactly(int(match.group(1)))
                if status == b"200" and body != expected:
                    raise BenchError(f"unexpected body: {body[:80]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def drive(
    port: int, requests: Sequence[bytes], total: int, connections: int, status: bytes = b"200"
) -> float:
    start = time.perf_counter()
    asyncio.run(asyncio.wait_for(_drive(port, requests, total, connections, status), timeout=1800))
    return time.perf_counter() - start


# ---------------------------------------------------------------- counting
def _control(*args: str) -> None:
    done = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"callgrind_control {' '.join(args)} failed: {done.stderr or done.stdout}")


def _dumped_total(outdir: Path, before: set[Path]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = sorted(set(outdir.glob("callgrind.*.out*")) - before, key=lambda p: p.stat().st_mtime)
        for path in reversed(new):
            match = _TOTALS.search(path.read_text(errors="replace"))
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise BenchError(f"no callgrind dump appeared in {outdir}")


def count(target: Counted, requests: int, connections: int, warmup: int) -> float:
    """Instructions per request of ``requests`` requests, after ``warmup`` uncounted ones (at
    least one round of the rotation, so every token's claims are cached: the steady state)."""
    warmup = max(warmup, len(target.requests))
    if target.status != b"200":  # the first answers (under the limit) are not the counted kind
        drive(target.port, target.requests, 1, 1, b"401")  # admitted, then no token
    drive(target.port, target.requests, warmup, connections, target.status)  # caches, pools, warm-up
    _control("-i", "on", str(target.pid))
    drive(target.port, target.requests, max(50, warmup // 4), connections, target.status)  # instrumented
    _control("-z", str(target.pid))
    drive(target.port, target.requests, requests, connections, target.status)
    before = set(target.outdir.glob("callgrind.*.out*"))
    _control("-d", str(target.pid))
    return _dumped_total(target.outdir, before) / requests


# ---------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(CONTESTANTS)}")
    parser.add_argument("--requests", type=int, default=2000, help="counted requests (default 2000)")
    parser.add_argument("--connections", type=int, default=10, help="keep-alive connections (default 10)")
    parser.add_argument("--warmup", type=int, default=400, help="uncounted requests first (default 400)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    names = list(CONTESTANTS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in CONTESTANTS]
    if unknown:
        parser.error(f"unknown contestant(s) {unknown}; choose from {', '.join(CONTESTANTS)}")
    args.names = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    return run_in_workdir("instructions-bench-", args.keep_workdir, lambda w, lch: measure(args, w, lch))


def raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def measure(args: argparse.Namespace, workdir: Path, launcher: Launcher) -> int:
    ensure_debian_packages({"valgrind": "valgrind", "callgrind_control": "valgrind", "nginx": "nginx-light"})
    env = start_bench_env(launcher, workdir, args.python)
    results: dict[str, float] = {}
    for name in args.names:
        print(f"# {name}: starting under callgrind ...", flush=True)
        try:
            target = CONTESTANTS[name](env)
        except StartFailed as exc:
            print(f"#   SKIPPED {name}: {exc}", flush=True)
            continue
        results[name] = count(target, args.requests, args.connections, args.warmup)
        print(f"# {name}: {results[name]:,.0f} instructions/request", flush=True)
        launcher.stop_named(name)
    print()
    print("| contestant | instructions / request | ÷ aiohttp-min | ÷ gateway |")
    print("|---|--:|--:|--:|")
    for name, value in results.items():
        vs_min = f"{value / results['aiohttp-min']:.3f}" if "aiohttp-min" in results else "—"
        vs_gw = f"{value / results['gateway']:.3f}" if "gateway" in results else "—"
        print(f"| {name} | {value:,.0f} | {vs_min} | {vs_gw} |")
    if "gateway" in results and "gateway-jwt" in results:
        share = results["gateway"] / results["gateway-jwt"]
        print(f"\ngateway ÷ gateway-jwt (the cached-token path's share of the bare path): {share:.3f}")
    return 0 if results else 1


if __name__ == "__main__":
    if which("valgrind") is None and os.geteuid() != 0:
        print("error: needs valgrind (apt-get install valgrind)", file=sys.stderr)
        sys.exit(1)
    sys.exit(main())
