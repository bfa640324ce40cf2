"""aiohttp's access-logger hook: hands each answered request to its runtime's access log.

Apart from ``access_log.py`` because it reads the per-request context off aiohttp's request,
and the access log itself (built into every ``Runtime``) must not import the context.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.context import ContextKey


class GatewayAccessLogger(AbstractAccessLogger):
    """aiohttp creates one per connection; the writer comes from the request's runtime."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        ctx = request.get(ContextKey)
        if ctx is not None:
            writer = ctx.runtime.access_log
            if writer.enabled:
                writer.write_entry(ctx, response.status, response.body_length, time)

    @property
    def enabled(self) -> bool:
        return True
