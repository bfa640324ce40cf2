"""gateway.upstream.transports and the registry it is injected into (pools.UpstreamRegistry)."""

from gateway.config.model import UpstreamConfig
from gateway.upstream.pools import UpstreamRegistry
from gateway.upstream.transport_aiohttp import AiohttpTransport
from gateway.upstream.transport_httptools import HttptoolsTransport
from gateway.upstream.transports import open_transport

URLS = ("http://127.0.0.1:9",)


async def test_config_names_the_transport() -> None:
    lean = open_transport(UpstreamConfig(name="a", urls=URLS))
    classic = open_transport(UpstreamConfig(name="b", urls=URLS, transport="aiohttp"))
    try:
        assert isinstance(lean, HttptoolsTransport)  # the default
        assert isinstance(classic, AiohttpTransport)
    finally:
        await lean.close()
        await classic.close()


async def test_registry_opens_through_the_injected_factory_and_keeps_unchanged_pools() -> None:
    registry = UpstreamRegistry(open_transport)
    same = UpstreamConfig(name="orders", urls=URLS)
    first = registry.pools_for({"orders": same})
    again = registry.pools_for({"orders": UpstreamConfig(name="orders", urls=URLS)})
    changed = registry.pools_for({"orders": UpstreamConfig(name="orders", urls=URLS, transport="aiohttp")})
    try:
        assert again["orders"] is first["orders"]  # a reload with the same config: no cold pool
        assert isinstance(changed["orders"], AiohttpTransport)
    finally:
        await registry.close()
