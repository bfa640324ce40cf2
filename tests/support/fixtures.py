"""Shared pytest fixtures: real redis-server processes on loopback.

One session-wide server serves every test that only needs "a Redis" (flushed before each
test, so tests stay independent and the suite pays one start-up); tests that stop, restart or
SIGSTOP Redis get their own ``redis_server`` so they cannot disturb the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.state import StateStore, open_store
from tests.support.gateway_proc import GatewayProc
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream


@pytest.fixture(scope="session")
def shared_redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(shared_redis_server: RedisServer) -> str:
    """URL of the shared server, emptied for this test."""
    if shared_redis_server.paused or shared_redis_server.proc is None:
        pytest.fail("the shared redis-server was disturbed; use the redis_server fixture")
    shared_redis_server.flushall()
    return shared_redis_server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server this test may stop, restart or pause (append-only, so restarts keep
    data)."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.cleanup()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream("primary").start()
    yield server
    server.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProc]]:
    """Start gateway processes from config dicts; every one is stopped at the end."""
    started: list[GatewayProc] = []

    def factory(
        config: dict[str, Any], *, start: bool = True, env: dict[str, str] | None = None
    ) -> GatewayProc:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        proc = GatewayProc(directory, config, env=env)
        started.append(proc)
        return proc.start() if start else proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture(params=["local", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that asks for it runs on both state backends (ARCHITECTURE property 5)."""
    if request.param == "local":
        return f"local:{tmp_path / 'state'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StateStore]:
    async with open_store(store_url) as opened:
        yield opened
