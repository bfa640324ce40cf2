#!/usr/bin/env python3
"""What loading and reloading the config costs, on the shipped ``config/gateway.yaml``.

- start-up: ``python3 -m gateway check-config`` as a fresh process (median CPU time), and its
  ratio to a bare ``python3 -c pass``;
- load: read + validate the YAML into the frozen ``GatewayConfig`` in-process (``load_config``);
- reload: ``GatewayProcess.reload`` in-process, i.e. load + a new verifier + a whole new
  ``Runtime`` swapped in (what SIGHUP does, minus the signal), on a local state store in a
  temporary directory.

CPU time throughout (the host is shared; wall time swings with its load). Prints one line per
figure; run from anywhere (paths are resolved from this file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project, for `gateway`

from gateway.config_schema import load_config  # noqa: E402
from gateway.server.process import GatewayProcess  # noqa: E402

SHIPPED = ROOT / "config" / "gateway.yaml"


def _write_jwks(path: Path) -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(ECAlgorithm.to_jwk(public))
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "bench", "alg": "ES256", "use": "sig"}]}))
    return str(path)


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _start_cpu(argv: list[str], runs: int) -> float:
    """Median CPU seconds (user + system) of a fresh process: steadier than wall time on a
    shared host."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        before = _child_cpu()
        subprocess.run(
            argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        times.append(_child_cpu() - before)
    return statistics.median(times)


def _per_call_ms(fn: object, runs: int) -> float:
    call = fn  # type: ignore[assignment]
    call()  # type: ignore[operator]  # warm caches (yaml, regexes) like a long-running process
    start = time.process_time()
    for _ in range(runs):
        call()  # type: ignore[operator]
    return (time.process_time() - start) / runs * 1000


async def _reload_ms(runs: int) -> float:
    config = load_config(SHIPPED)
    process = GatewayProcess(config, SHIPPED, demo=True)
    await process.reload(actor=None)  # warm
    start = time.process_time()
    for _ in range(runs):
        await process.reload(actor=None)
    elapsed = (time.process_time() - start) / runs * 1000
    for task in process._tasks:  # the old verifiers' retirement timers
        task.cancel()
    await asyncio.gather(*process._tasks, return_exceptions=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=15)
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--reloads", type=int, default=50)
    args = parser.parse_args()

    bare = _start_cpu([sys.executable, "-c", "pass"], args.starts)
    check = _start_cpu([sys.executable, "-m", "gateway", "check-config", "-c", str(SHIPPED)], args.starts)
    print(f"python3 -c pass (fresh process)  {bare * 1000:8.1f} ms CPU")
    print(f"check-config (fresh process)     {check * 1000:8.1f} ms CPU ({check / bare:.1f}x bare python)")

    load_ms = _per_call_ms(lambda: load_config(SHIPPED), args.loads)
    print(f"load_config (in-process)         {load_ms:8.2f} ms CPU per load")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SHOPINO_DEMO_STATE"] = f"local:{tmp}/state"
        os.environ["SHOPINO_DEMO_AUDIT_SPOOL"] = f"{tmp}/spool"
        os.environ["SHOPINO_DEMO_JWKS"] = _write_jwks(Path(tmp) / "idp.jwks.json")
        with contextlib.redirect_stdout(io.StringIO()):  # reload reconfigures logging to stdout
            reload_ms = asyncio.run(_reload_ms(args.reloads))
    print(f"reload (in-process)              {reload_ms:8.2f} ms CPU per reload")


if __name__ == "__main__":
    main()
