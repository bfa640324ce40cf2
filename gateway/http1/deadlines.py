"""The deadlines of one lean-listener connection (a mixin of ``protocol.LeanProtocol``): the
header deadline (slowloris), the keep-alive timeout, the body deadline (408) and the bounded
linger after an early answer.

Timers are armed lazily and re-armed from what they find when they fire, so a request that
arrives whole on a kept-alive connection arms none: a timer per request was a measurable cost.
The methods live on the connection itself (no call layer is added on the request path).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import RequestTimeout
from gateway.http.body_deadline import body_deadline
from gateway.http1.request import LeanRequest

if TYPE_CHECKING:
    from gateway.listener import GuardedServer

LINGER = 10.0  # seconds an unread body is drained after an early answer (aiohttp's lingering_time)


class DeadlineSettings(Protocol):
    """What the deadlines read of the listener (``server.LeanServer``)."""

    keepalive_timeout: float
    closing: bool


class ConnectionDeadlines:
    """Timer state and callbacks of ``LeanProtocol``; its other state is declared here for the
    type checker only."""

    _loop: asyncio.AbstractEventLoop
    _server: DeadlineSettings
    _guard: GuardedServer
    _queue: collections.deque[Any]
    transport: asyncio.Transport | None
    current: LeanRequest | None
    _dead: bool
    _head_open: bool
    _lingering: bool
    _idle_since: float
    _body_paused: bool
    _queue_paused: bool
    _head_timer: asyncio.TimerHandle | None
    _keepalive_timer: asyncio.TimerHandle | None
    _body_timer: asyncio.TimerHandle | None
    _body_deadline: float
    _close: Callable[[], None]
    _update_reading: Callable[[], None]

    def _may_linger(self, request: LeanRequest) -> bool:
        # A body that stalled (408) is not waited for: that is the point of body_timeout.
        timed_out = isinstance(request.content.exception(), RequestTimeout)
        return self.transport is not None and not timed_out and not self._server.closing and not self._dead

    def _linger(self) -> None:
        """Answered before the body was read (413, a refusal after 100-continue was skipped…): the
        rest of the body is read and dropped for up to LINGER seconds before closing, as aiohttp
        does. Closing a socket with unread bytes sends a reset, which can destroy the answer
        before the client has read it."""
        self._lingering = True
        self._body_paused = self._queue_paused = False
        self._update_reading()
        self._cancel_timers()
        self._keepalive_timer = self._loop.call_later(LINGER, self._close)

    # -- timers ----------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        timeout = self._guard.header_timeout
        if timeout > 0:
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.current is not None or self._queue:
            self._arm_head_timer()  # a pipelined head waits for its turn; the deadline is for idle heads
            return
        # SECURITY: slowloris — a request head must arrive whole within header_timeout.
        self._guard.header_timeouts += 1
        self._close()

    def _keepalive_expired(self) -> None:
        """The keep-alive timer is lazy: the connection's task arms it after an answer only when
        none is armed (setting ``_idle_since`` every time), and when it fires it looks at how long
        the connection has really been idle (a timer per request was a measurable cost)."""
        self._keepalive_timer = None
        if self.current is not None or self._queue or self._head_open:
            return  # busy (the next idle period arms it again) or under the header deadline
        deadline = self._idle_since + self._server.keepalive_timeout
        if self._loop.time() >= deadline:
            self._close()
        else:
            self._keepalive_timer = self._loop.call_at(deadline, self._keepalive_expired)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._keepalive_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._keepalive_timer = self._body_timer = None

    def _body_timer_fired(self) -> None:
        self._body_timer = None
        request = self.current
        if request is None:
            return
        payload = request.content
        now = self._loop.time()
        due = body_deadline(
            request,
            payload,
            held_back=self._body_paused,
            deadline=self._body_deadline,
            timeout=self._guard.body_timeout,
            now=now,
        )
        if due is None:
            return
        self._body_deadline = due
        if now < due:
            self._body_timer = self._loop.call_at(due, self._body_timer_fired)
            return
        # SECURITY: slow body (slowloris on the body) — see gateway.http.body_deadline.
        self._guard.body_timeouts += 1
        payload.set_exception(RequestTimeout("The request body did not arrive in time"))
