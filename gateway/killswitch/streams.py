"""In-flight streaming responses and WebSockets, so engaging a switch cuts those in scope
(SPEC §9: "open WebSocket and streaming responses in scope are cut"), and so they end with
their session (Appendix C: "closed within 1 s when its token's session is revoked, its grant is
revoked or expires, and at the token's exp").

A request passes the switches and its token's checks once, at its start; a download or a
WebSocket can then run for hours. The proxy registers each one here while it streams:

* every newly applied switch set is checked against them: those it would refuse now have their
  connection aborted (``cut``);
* every new revocation or grant snapshot re-judges their sessions (``end_sessions``, a watcher
  of both snapshots, so a change applied by pub/sub acts on this instance's streams at once);
* one timer, armed at the earliest deadline (token ``exp``, grant expiry; see
  ``gateway.auth.sessions``) among open streams, ends those that reach it. One timer for the
  registry, not one per stream: every proxied response is tracked, and a timer each would be a
  per-request cost for the rare stream that outlives its token.

A stream whose session ended gets a WebSocket close frame (1008 policy violation) when it is a
WebSocket, its connection aborted otherwise (a cut body is the only honest signal left once the
head has gone out).

Domain code: a stream is its ``RequestFacts`` plus what the caller hands over when it registers
it (the runtime's services and config, the client connection to abort); this module imports
neither the per-request context nor aiohttp.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Protocol

import structlog

from gateway.auth.sessions import EXPIRED, session_end, stream_deadline
from gateway.facts import RequestFacts
from gateway.killswitch.checks import refusal_for
from gateway.killswitch.model import isolated_error

if TYPE_CHECKING:
    from gateway.auth.revocation import RevocationEpochs
    from gateway.config_model import GatewayConfig
    from gateway.killswitch.matcher import SwitchIndex
    from gateway.state.sync import SnapshotBacked
    from gateway.tenancy.grants import SupportGrants

CLOSE_GRACE = 0.5  # seconds a client gets to answer the close frame before the socket is aborted
POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1 close code


class Abortable(Protocol):
    """The client connection of a stream (asyncio's transport, on either listener)."""

    def abort(self) -> None: ...


class ClosableSocket(Protocol):
    """The client's WebSocket once accepted (aiohttp's ``WebSocketResponse``)."""

    @property
    def closed(self) -> bool: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class SwitchSource(Protocol):
    @property
    def index(self) -> SwitchIndex | None: ...


class StreamServices(Protocol):
    """What a stream needs of its runtime's services (``gateway.runtime.RuntimeServices``)."""

    @property
    def killswitches(self) -> SwitchSource: ...

    @property
    def revocations(self) -> RevocationEpochs: ...

    @property
    def grants(self) -> SupportGrants: ...


log = structlog.get_logger("gateway.killswitch")


class StreamRegistry:
    """The set of proxied responses currently streaming in this process."""

    def __init__(self) -> None:
        # The open streams, an insertion-ordered set: a stream is its own key (no id() call).
        self._open: dict[_Tracked, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # Unix time the timer is armed for
        self._closing: set[asyncio.Task[None]] = set()  # close handshakes in progress (kept referenced)

    def __len__(self) -> int:
        return len(self._open)

    def track(
        self,
        facts: RequestFacts,
        services: StreamServices,
        config: GatewayConfig,
        connection: Abortable | None,
        *,
        websocket: bool = False,
    ) -> _Tracked:
        """Register a proxied response while it streams (a ``with`` block). On entry the current
        switch set is checked once more: a switch applied while this request was being
        authenticated or waiting for its upstream refuses it here (503), before a byte of the
        answer is sent. ``services`` and ``config`` are the runtime the request started with;
        ``connection`` is what a cut aborts."""
        index = services.killswitches.index
        # Re-checked only when a new set was applied since the pipeline's checks (cheap path).
        if index is not None and index is not facts.killswitch_index and not index.empty:
            now = time.time()
            case_insensitive = config.routes_case_insensitive
            switch = refusal_for(
                index, facts, websocket=websocket, now=now, case_insensitive=case_insensitive
            )
            if switch is not None:
                raise isolated_error(switch, now)
        # _Tracked's fields set here, without an __init__ frame (every proxied response).
        tracked = _new_tracked(_Tracked)
        tracked._registry = self
        tracked.facts = facts
        tracked.services = services
        tracked.config = config
        tracked.connection = connection
        tracked.websocket = websocket
        tracked.deadline = math.inf
        tracked.socket = None
        return tracked

    def cut(self, index: SwitchIndex) -> int:
        """Abort every tracked stream ``index`` refuses; returns how many."""
        if index.empty or not self._open:
            return 0
        now = time.time()
        cut = 0
        for tracked in list(self._open):
            facts, websocket = tracked.facts, tracked.websocket
            case_insensitive = tracked.config.routes_case_insensitive
            switch = refusal_for(
                index, facts, websocket=websocket, now=now, case_insensitive=case_insensitive
            )
            if switch is None:
                continue
            if tracked.connection is not None:
                # SECURITY: an exfiltration already streaming must not outlive the isolation.
                tracked.connection.abort()
            self._open.pop(tracked, None)
            cut += 1
            log.info(
                "killswitch_cut_stream", request_id=facts.request_id, switch=switch.id, websocket=websocket
            )
        return cut

    # -- sessions (Appendix C) ------------------------------------------------------------------
    def follow_sessions(self, *snapshots: SnapshotBacked) -> None:
        """Re-judge open streams on every new value of these snapshots (revocations, grants)."""
        for snapshot in snapshots:
            snapshot.watch(self.end_sessions)

    def end_sessions(self) -> int:
        """End every tracked stream whose session has ended (revoked, grant gone, past its
        deadline); returns how many."""
        if not self._open:
            return 0
        now = time.time()
        ended = 0
        for tracked in list(self._open):
            facts = tracked.facts
            if facts.claims is None:
                continue  # auth: none / webhook routes: no session to end
            services = tracked.services
            live = services.grants.live_ids() if facts.grant is not None else frozenset()
            reason = session_end(
                facts.claims, facts.grant, revocations=services.revocations, live_grants=live, now=now
            )
            if reason is None and tracked.deadline <= now:
                reason = EXPIRED
            if reason is not None:
                self._end(tracked, reason)
                ended += 1
        return ended

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires no later than ``deadline`` (Unix time)."""
        if deadline >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, deadline - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)
        self._timer_at = deadline

    def _on_deadline(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = time.time()
        following = math.inf
        for tracked in list(self._open):
            if tracked.deadline <= now:
                self._end(tracked, EXPIRED)
            else:
                following = min(following, tracked.deadline)
        if following != math.inf:
            self._arm(following)

    def _end(self, tracked: _Tracked, reason: str) -> None:
        facts = tracked.facts
        self._open.pop(tracked, None)
        connection = tracked.connection
        socket = tracked.socket
        if socket is not None and not socket.closed:
            task = asyncio.get_running_loop().create_task(_close_socket(socket, connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        elif connection is not None:
            # SECURITY: a revoked or expired session must not keep reading a stream it opened.
            connection.abort()
        log.info(
            "session_ended_stream", request_id=facts.request_id, reason=reason, websocket=tracked.websocket
        )


async def _close_socket(socket: ClosableSocket, connection: Abortable | None) -> None:
    """A close frame (1008) first, so the client learns why; the connection is aborted when the
    client does not answer within ``CLOSE_GRACE`` (no data flows meanwhile: a closing socket
    sends nothing more)."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await socket.close(code=POLICY_VIOLATION, message=b"session ended")
    except (TimeoutError, ConnectionError, RuntimeError):
        if connection is not None:
            connection.abort()


_new_tracked = object.__new__

STREAMS = StreamRegistry()
"""One per process: the proxy registers here, the switch registry cuts from here, the revocation
and grant snapshots end sessions from here."""

__all__ = ["STREAMS", "Abortable", "ClosableSocket", "StreamRegistry", "StreamServices"]


class _Tracked:
    """The registration of one stream; a plain class, not @contextmanager (hot path: every
    proxied response enters one, and the generator machinery cost more than the check).
    ``StreamRegistry.track`` sets every field (no __init__ call per response)."""

    __slots__ = ("_registry", "config", "connection", "deadline", "facts", "services", "socket", "websocket")

    _registry: StreamRegistry
    facts: RequestFacts
    services: StreamServices
    config: GatewayConfig
    connection: Abortable | None
    websocket: bool
    deadline: float
    socket: ClosableSocket | None

    def __enter__(self) -> _Tracked:
        registry = self._registry
        registry._open[self] = None
        claims = self.facts.claims
        if claims is not None:
            leeway = self.config.auth.leeway
            deadline = self.deadline = stream_deadline(
                claims, self.facts.grant, leeway=leeway, now=time.time()
            )
            if deadline < registry._timer_at:  # _arm's own first test, without the call
                registry._arm(deadline)
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        self._registry._open.pop(self, None)

    def attach(self, socket: ClosableSocket) -> None:
        """The client's WebSocket, once accepted: a session end then closes it with a frame."""
        self.socket = socket
