"""``Expect: 100-continue`` (App. B): the interim answer, sent once every check has passed.

The stages that read a body (webhook signatures, body-field rate limits) send it before they
read; the proxy sends it before it streams the body upstream. Here, below both, so neither
imports the other.
"""

from __future__ import annotations

from multidict import istr

from gateway.context import RequestContext

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT = istr("Expect")  # istr: no case folding per request


def send_continue(ctx: RequestContext) -> None:
    """App. B: 100-continue only once every check has passed, so a refused client never uploads."""
    request = ctx.request
    if ctx.continue_sent or request.version < (1, 1):
        return
    if request.headers.get(_EXPECT, "").lower() == "100-continue" and request.transport is not None:
        request.transport.write(_CONTINUE)
        ctx.continue_sent = True
