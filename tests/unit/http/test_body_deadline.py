"""gateway/http/body_deadline.py: when a request body is next due, for both listeners' timers."""

from __future__ import annotations

import asyncio

from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import ContextKey
from gateway.http.body_deadline import awaiting_continue, body_deadline


class Request(dict):  # type: ignore[type-arg]
    """The two things the decision reads of a request: its headers and its context slot."""

    def __init__(self, **headers: str) -> None:
        super().__init__()
        self.headers = CIMultiDictProxy(CIMultiDict(headers))


class Context:
    continue_sent = False


async def _stream() -> StreamReader:
    return StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16, loop=asyncio.get_running_loop())


def _due(request: Request, payload: object, *, held_back: bool = False) -> float | None:
    return body_deadline(request, payload, held_back=held_back, deadline=10.0, timeout=5.0, now=12.0)  # type: ignore[arg-type]


async def test_a_stalled_body_is_due_at_its_deadline_and_a_finished_one_not_at_all() -> None:
    stream = await _stream()
    request = Request()
    assert _due(request, stream) == 10.0
    stream.feed_eof()
    assert _due(request, stream) is None
    assert _due(request, EMPTY_PAYLOAD) is None
    failed = await _stream()
    failed.set_exception(RuntimeError("reader gone"))
    assert _due(request, failed) is None


async def test_the_deadline_moves_while_the_gateway_is_the_one_not_reading() -> None:
    stream = await _stream()
    assert _due(Request(), stream, held_back=True) == 17.0
    # 100-continue: the client waits for the gateway's go-ahead, which comes after the checks.
    waiting = Request(Expect="100-Continue")
    assert awaiting_continue(waiting)
    assert _due(waiting, stream) == 17.0
    context = Context()
    waiting[ContextKey] = context
    assert awaiting_continue(waiting)
    context.continue_sent = True  # asked for: from now on a stall is the client's
    assert not awaiting_continue(waiting)
    assert _due(waiting, stream) == 10.0
