"""What clients see during store and upstream faults (issue 15; the README's fault table).

Run from the project root (needs redis-server and redis-sentinel on PATH, loopback only)::

    python3 bench/fault_bench.py                 # Redis paused 20 s, killed 10 s, failover, upstreams
    python3 bench/fault_bench.py --pause 8 --json

Redis paused / killed and the Sentinel failover are the end-to-end tests themselves
(``tests/e2e/test_store_pause.py``, ``tests/e2e/test_sentinel_failover.py``: the same processes,
load and assertions), run with ``SHOPINO_TEST_PAUSE_S`` and their ``fault-figures`` lines
collected. Upstream down and upstream slow are measured here: one gateway, keep-alive clients,
one route to a port nobody listens on and one to an upstream slower than ``read_timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fault_load import Load, Step, summary  # noqa: E402
from tests.support.gateway_proc import GatewayProc, free_port  # noqa: E402
from tests.support.upstream import Upstream  # noqa: E402

READ_TIMEOUT = 1.0
STORE_TESTS = ["tests/e2e/test_store_pause.py", "tests/e2e/test_sentinel_failover.py"]


def store_faults(pause: float) -> list[dict[str, Any]]:
    """The store-fault e2e tests with a longer outage; their printed figures."""
    env = {**os.environ, "SHOPINO_TEST_PAUSE_S": str(pause), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *STORE_TESTS]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    merged: dict[str, dict[str, Any]] = {}  # a test may print a fault's figures in parts
    for line in done.stdout.splitlines():
        if line.startswith("fault-figures "):
            part = json.loads(line.partition("fault-figures ")[2])
            merged.setdefault(part["fault"], {}).update(part)
    figures = list(merged.values())
    if done.returncode != 0:
        figures.append({"fault": "store tests FAILED", "output_tail": done.stdout[-2000:]})
    return figures


async def upstream_faults(seconds: float) -> list[dict[str, Any]]:
    upstream = Upstream("slow-one").start()
    tmp = Path(tempfile.mkdtemp(prefix="sgw-faultbench-"))
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    gw = GatewayProc(
        tmp,
        {
            "upstreams": {
                "dead": {"urls": [dead], "connect_timeout": "1s", "read_timeout": f"{READ_TIMEOUT}s"},
                "slow": {"urls": [upstream.url], "connect_timeout": "1s", "read_timeout": f"{READ_TIMEOUT}s"},
            },
            "routes": [
                {"name": "down", "prefix": "/down", "upstream": "dead", "auth": "none"},
                {"name": "slow", "prefix": "/slow", "upstream": "slow", "auth": "none"},
            ],
        },
    ).start()
    try:
        results = []
        for kind, path in (("upstream-down", "/down/x"), ("upstream-slow", "/slow?seconds=5")):
            load = Load()
            load.start([[Step(kind, gw.url, path)] for _ in range(4)], pace=0.01)
            await asyncio.sleep(seconds)
            await load.stop()
            results.append({"fault": kind, "read_timeout_s": READ_TIMEOUT, **summary(load.samples)})
        return results
    finally:
        gw.stop()
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pause", type=float, default=20.0, help="seconds Redis stays paused")
    parser.add_argument("--upstream-seconds", type=float, default=5.0, help="load per upstream fault")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    args = parser.parse_args()
    figures = store_faults(args.pause) + asyncio.run(upstream_faults(args.upstream_seconds))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for item in figures:
        print(json.dumps(item))


if __name__ == "__main__":
    main()
