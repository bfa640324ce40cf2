"""SPEC §10: bodies stream both ways in constant memory (100 MB each way, RSS growth < 64 MB)."""

from __future__ import annotations

import hashlib

import aiohttp

from tests.support.gateway_proc import GatewayProc
from tests.support.upstream import Upstream

SIZE = 100 * 1024 * 1024
LIMIT_KIB = 64 * 1024


async def test_100mb_down_and_up_in_constant_memory(gateway_factory, upstream: Upstream) -> None:
    gw: GatewayProc = gateway_factory(
        {
            "upstreams": {"app": {"urls": [upstream.url], "read_timeout": "30s"}},
            "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
        }
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/echo") as response:  # warm up pools and imports
            assert response.status == 200
        baseline = gw.rss_kib()
        peak = baseline
        received = 0
        async with http.get(f"{gw.url}/stream?bytes={SIZE}") as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1024 * 1024):
                received += len(chunk)
                peak = max(peak, gw.rss_kib())
        assert received == SIZE

        block = b"u" * (1024 * 1024)
        expected = hashlib.sha256()
        for _ in range(SIZE // len(block)):
            expected.update(block)

        async def upload():
            nonlocal peak
            for _ in range(SIZE // len(block)):
                peak = max(peak, gw.rss_kib())
                yield block

        async with http.post(f"{gw.url}/sink", data=upload()) as response:
            assert response.status == 200
            result = await response.json()
        assert result == {"bytes": SIZE, "sha256": expected.hexdigest()}
    growth = peak - baseline
    print(f"gateway RSS baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB")
    assert growth < LIMIT_KIB
