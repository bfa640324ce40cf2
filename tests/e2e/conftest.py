"""End-to-end fixtures: one shared gateway (real CLI subprocess) in front of a real upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.gateway_proc import GatewayProc
from tests.support.upstream import Upstream


def standard_config(upstream_url: str, **listen: Any) -> dict[str, Any]:
    return {
        "listen": {
            "tls": "off",
            "limits": {"max_header_bytes": "8KiB", "max_headers": 40, "header_timeout": "1s"},
            **listen,
        },
        "upstreams": {
            "app": {"urls": [upstream_url], "connect_timeout": "1s", "read_timeout": "1s"},
        },
        "routes": [
            {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
            {"name": "api", "prefix": "/api", "upstream": "app"},
            {"name": "upload", "prefix": "/sink", "upstream": "app", "auth": "none", "max_body": "1KiB"},
            {
                "name": "ro",
                "prefix": "/readonly",
                "upstream": "app",
                "auth": "none",
                "methods": ["GET", "HEAD"],
            },
            {"name": "web", "prefix": "/web", "upstream": "app", "auth": "none", "cors": "app"},
        ],
        "cors": {
            "app": {
                "origins": ["https://app.example"],
                "methods": ["GET", "POST"],
                "headers": ["Authorization", "Content-Type"],
                "credentials": True,
            }
        },
    }


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    server = Upstream("primary").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_gateway(
    tmp_path_factory: pytest.TempPathFactory, shared_upstream: Upstream
) -> Iterator[GatewayProc]:
    proc = GatewayProc(tmp_path_factory.mktemp("gw"), standard_config(shared_upstream.url)).start()
    yield proc
    proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
