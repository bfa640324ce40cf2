"""In-flight streaming responses and WebSockets, so engaging a switch cuts those in scope
(SPEC §9: "open WebSocket and streaming responses in scope are cut").

A request passes the switches once, at its start; a download or a WebSocket can then run for
hours. The proxy registers each one here while it streams, and every newly applied switch set
is checked against them: those it would refuse now have their connection aborted.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from gateway.killswitch.model import isolated_error

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.killswitch.matcher import SwitchIndex
    from gateway.killswitch.model import Switch

log = structlog.get_logger("gateway.killswitch")


def acting_tenants(ctx: RequestContext) -> tuple[str, ...]:
    """The acting tenant and, when different, the token's own tenant: isolating a tenant covers
    its users acting elsewhere under a grant as well as anyone acting in it."""
    claims_tenant = ctx.claims.tenant if ctx.claims is not None else None
    if ctx.tenant is None:
        return (claims_tenant,) if claims_tenant else ()
    if claims_tenant is None or claims_tenant == ctx.tenant:
        return (ctx.tenant,)
    return (ctx.tenant, claims_tenant)


def refusal_for(index: SwitchIndex, ctx: RequestContext, *, websocket: bool, now: float) -> Switch | None:
    """Every scope at once (used on requests already past the pipeline)."""
    if ctx.target is None or index.empty:
        return None
    method = ctx.request.method
    hit = index.refusal(
        method,
        ctx.target.path,
        ctx.route,
        websocket=websocket,
        now=now,
        case_insensitive=ctx.runtime.config.routes_case_insensitive,
    )
    return hit or index.tenant_refusal(acting_tenants(ctx), method, websocket=websocket, now=now)


class StreamRegistry:
    """The set of proxied responses currently streaming in this process."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[RequestContext, bool]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def track(self, ctx: RequestContext, *, websocket: bool = False) -> _Tracked:
        """Register a proxied response while it streams (a ``with`` block). On entry the current
        switch set is checked once more: a switch applied while this request was being
        authenticated or waiting for its upstream refuses it here (503), before a byte of the
        answer is sent."""
        index = ctx.runtime.services.killswitches.index
        # Re-checked only when a new set was applied since the pipeline's checks (cheap path).
        if index is not None and index is not ctx.killswitch_index and not index.empty:
            now = time.time()
            switch = refusal_for(index, ctx, websocket=websocket, now=now)
            if switch is not None:
                raise isolated_error(switch, now)
        return _Tracked(self._open, ctx, websocket)

    def cut(self, index: SwitchIndex) -> int:
        """Abort every tracked stream ``index`` refuses; returns how many."""
        if index.empty or not self._open:
            return 0
        now = time.time()
        cut = 0
        for key, (ctx, websocket) in list(self._open.items()):
            switch = refusal_for(index, ctx, websocket=websocket, now=now)
            if switch is None:
                continue
            transport = ctx.request.transport
            if transport is not None:
                # SECURITY: an exfiltration already streaming must not outlive the isolation.
                transport.abort()
            self._open.pop(key, None)
            cut += 1
            log.info(
                "killswitch_cut_stream", request_id=ctx.request_id, switch=switch.id, websocket=websocket
            )
        return cut


STREAMS = StreamRegistry()
"""One per process: the proxy registers here, the switch registry cuts from here."""

__all__ = ["STREAMS", "StreamRegistry", "acting_tenants", "refusal_for"]


class _Tracked:
    """The registration of one stream; a plain class, not @contextmanager (hot path: every
    proxied response enters one, and the generator machinery cost more than the check)."""

    __slots__ = ("_ctx", "_key", "_open", "_websocket")

    def __init__(
        self, registry: dict[int, tuple[RequestContext, bool]], ctx: RequestContext, websocket: bool
    ) -> None:
        self._open, self._ctx, self._websocket, self._key = registry, ctx, websocket, id(ctx)

    def __enter__(self) -> None:
        self._open[self._key] = (self._ctx, self._websocket)

    def __exit__(self, *exc: object) -> None:
        self._open.pop(self._key, None)
