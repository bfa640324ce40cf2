"""SPEC §10: timeouts → 504, unreachable → 502, failover to the next URL, passive ejection."""

from __future__ import annotations

import aiohttp

from tests.support.gateway_proc import free_port
from tests.support.upstream import Upstream


def config(urls: list[str], read_timeout: str = "1s") -> dict:
    return {
        "upstreams": {
            "app": {
                "urls": urls,
                "connect_timeout": "1s",
                "read_timeout": read_timeout,
                "max_fails": 1,
                "eject_for": "30s",
            }
        },
        "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
    }


async def test_slow_upstream_is_504_and_dead_upstream_is_502(gateway_factory, upstream: Upstream) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    slow_gw = gateway_factory(config([upstream.url], read_timeout="500ms"))
    dead_gw = gateway_factory(config([dead]))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{slow_gw.url}/slow?seconds=3") as response:
            assert response.status == 504
            assert (await response.json())["type"] == "urn:shopino-gateway:upstream-timeout"
        async with http.get(f"{dead_gw.url}/echo") as response:
            assert response.status == 502
            body = await response.text()
            assert "upstream-unavailable" in body
            assert dead.rpartition(":")[2] not in body  # no internal address in the error


async def test_second_url_takes_over_for_idempotent_requests_only(gateway_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    second = Upstream("second").start()
    try:
        gw = gateway_factory(config([dead, second.url]))
        async with aiohttp.ClientSession() as http:
            served = []
            for _ in range(4):
                async with http.get(f"{gw.url}/echo") as response:
                    assert response.status == 200
                    served.append((await response.json())["upstream"])
            assert served == ["second"] * 4
        # After ejection the dead URL is skipped, so even a POST reaches the live one.
        async with aiohttp.ClientSession() as http, http.post(f"{gw.url}/echo", data=b"x") as response:
            assert response.status == 200
    finally:
        second.stop()


async def test_post_is_not_retried_on_another_url(gateway_factory) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    second = Upstream("second").start()
    try:
        gw = gateway_factory(
            {
                **config([dead, second.url]),
                "upstreams": {"app": {"urls": [dead, second.url], "max_fails": 100}},
            }
        )
        statuses = []
        async with aiohttp.ClientSession() as http:
            for _ in range(4):  # round robin: some of these start at the dead URL
                async with http.post(f"{gw.url}/echo", data=b"payload") as response:
                    statuses.append(response.status)
        assert 502 in statuses and 200 in statuses
        assert len(second.requests) == statuses.count(200)
    finally:
        second.stop()
