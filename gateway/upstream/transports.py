"""Which transport carries an upstream's pool (``upstreams.<name>.transport``).

The server hands ``open_transport`` to the ``UpstreamRegistry`` when it assembles the process,
so ``pools.py`` (the seam and the balancer) imports neither implementation and both
implementations import the seam.
"""

from __future__ import annotations

from gateway.config.model import UpstreamConfig
from gateway.upstream.pools import UpstreamTransport
from gateway.upstream.transport_aiohttp import AiohttpTransport
from gateway.upstream.transport_httptools import HttptoolsTransport


def open_transport(config: UpstreamConfig) -> UpstreamTransport:
    """A new keep-alive pool for one upstream, of the kind its config names."""
    # httptools (the default): ~3x less CPU per request than aiohttp's client
    # (bench/transport_bench.py); aiohttp's stays for what only it does well.
    kind = HttptoolsTransport if config.transport == "httptools" else AiohttpTransport
    return kind(config)
