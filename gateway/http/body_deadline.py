"""The body deadline (SPEC App. C ``listen.limits.body_timeout``), decided in one place for both
public listeners: each keeps its own timer and acts on the answer (408 on expiry).

The deadline runs only while the client is the one stalling: a declared body that stops
arriving would hold this connection and an upstream connection for as long as the client
likes, but a body the gateway is not reading (a slow upstream holds it back) or has not asked
for yet (``Expect: 100-continue`` before the checks passed) is not the client's fault.
"""

from __future__ import annotations

from aiohttp.streams import EmptyStreamReader, StreamReader
from multidict import istr

from gateway.context import ContextKey
from gateway.exchange import ServerRequest

_EXPECT = istr("Expect")  # istr: no case folding per request


def awaiting_continue(request: ServerRequest) -> bool:
    """An ``Expect: 100-continue`` request whose body the gateway has not asked for yet."""
    if request.headers.get(_EXPECT, "").lower() != "100-continue":
        return False
    ctx = request.get(ContextKey)
    return ctx is None or not ctx.continue_sent


def body_deadline(
    request: ServerRequest,
    payload: StreamReader | EmptyStreamReader,
    *,
    held_back: bool,
    deadline: float,
    timeout: float,
    now: float,
) -> float | None:
    """When the body is next due: ``None`` when there is nothing left to wait for (the body has
    arrived, or its reader already failed); otherwise the deadline, pushed to ``now + timeout``
    while the client is not the one stalling (``held_back``: the gateway paused reading). The
    body has stalled when the answer is not after ``now``."""
    if payload.is_eof() or payload.exception() is not None:
        return None
    if held_back or awaiting_continue(request):
        return now + timeout
    return deadline
