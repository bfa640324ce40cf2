"""Process entry for ``run``: one process, or a supervisor of N workers (SPEC §2)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop

from gateway.config_model import GatewayConfig
from gateway.server.process import serve
from gateway.server.workers import supervise


def run_gateway(config: GatewayConfig, config_path: Path | None, *, workdir: Path | None = None) -> int:
    if config.listen.workers == 1:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, config_path, workdir=workdir))
        return 0

    def run_worker(_index: int) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config, config_path, workdir=workdir))

    return supervise(config.listen.workers, run_worker, config.listen.drain_timeout)
