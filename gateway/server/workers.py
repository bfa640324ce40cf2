"""``listen.workers: N``: N processes share one port with SO_REUSEPORT (SPEC §2).

The parent only supervises: it forwards SIGHUP (reload) and SIGTERM (drain) to every worker
and replaces a worker that died on its own. Metrics of all workers are summed through
prometheus-client's multiprocess directory, which the parent creates before forking.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import structlog

log = structlog.get_logger("gateway.server.workers")


def prepare_metrics_dir() -> None:
    """Must run before ``gateway.metrics`` is first imported: prometheus-client picks its value
    storage (in memory or shared files) at import time."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prepare_metrics_dir() must run before prometheus_client is imported")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="shopino-gateway-metrics-"))


def supervise(count: int, run_worker: Callable[[int], None], drain_timeout: float) -> int:
    from prometheus_client import multiprocess as prometheus_multiprocess

    context = multiprocessing.get_context("fork")
    workers: dict[int, BaseProcess] = {}
    stopping = False
    pending: list[int] = []

    def start(index: int) -> None:
        process = context.Process(target=run_worker, args=(index,), name=f"gateway-worker-{index}")
        process.start()
        workers[index] = process

    def on_signal(signum: int, _frame: object) -> None:
        pending.append(signum)

    for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(handled, on_signal)
    for index in range(count):
        start(index)
    log.info("workers_started", count=count, pids=[p.pid for p in workers.values()])
    while not stopping:
        time.sleep(0.2)
        while pending:
            signum = pending.pop(0)
            if signum == signal.SIGHUP:
                _forward(workers.values(), signal.SIGHUP)
            else:
                stopping = True
        for index, process in list(workers.items()):
            if not stopping and not process.is_alive():
                log.warning("worker_died", index=index, exitcode=process.exitcode)
                if process.pid is not None:
                    prometheus_multiprocess.mark_process_dead(process.pid)
                start(index)
    _forward(workers.values(), signal.SIGTERM)
    deadline = time.monotonic() + drain_timeout + 5
    for process in workers.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    return 0


def _forward(processes: object, signum: int) -> None:
    for process in processes:  # type: ignore[attr-defined]
        if process.pid and process.is_alive():
            os.kill(process.pid, signum)
