"""A lean, auto-pipelined RESP connection for the rate-limit hot path (issue 13).

Each awaited redis-py command costs ~100-120 µs of CPU (connection-pool checkout, retry
wrapper, response callbacks); the limiter needs one ``EVALSHA`` per stage and nothing else.
Here one TCP (or TLS) connection carries every stage of the process: commands issued during
one event-loop iteration are buffered and written with ONE ``transport.write`` from a
``call_soon`` flush, and replies, parsed by ``hiredis.Reader``, resolve futures in FIFO order
(Redis answers a connection's commands in order).

Failure semantics are the limiter's: every error raised here is a ``RespError`` (a store
failure: the breaker trips and ``on_store_failure`` applies). A command may carry a deadline
(``store_timeout``): the connection keeps each pending command's deadline beside its future and
ONE timer, re-armed only when it fires, watches them all (a per-call ``asyncio.timeout`` was
≈ 6 % of the process). Redis answers in order, so an overdue command means everything behind it
waits on a hung or slow Redis: the connection is dropped and every pending command fails with
``StoreTimeout`` at once, as the per-call timeouts did (the first one aborted the connection).
A dropped connection fails every pending command at once and the next call reconnects (AUTH,
SELECT, CLIENT SETNAME from the parsed ``state.url``). Pending commands are capped: a Redis that
stops reading cannot make the process buffer without bound; over the cap is a store failure
too. ``redis+sentinel://`` is not served here (master discovery stays with redis-py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, cast

import hiredis

from gateway.state.redis_url import DEFAULT_SOCKET_TIMEOUT, RedisTarget

MAX_PENDING = 10_000  # commands awaiting a reply on the connection; ~100 ms of a busy Redis
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class RespError(Exception):
    """Any failure of the fast store path; the limiter treats it as a store failure."""


class ReplyError(RespError):
    """An error reply from Redis (``NOSCRIPT``, ``WRONGTYPE``, ``NOAUTH``...)."""


class ConnectionLost(RespError):
    """The connection closed (or was never usable) before the reply arrived."""


class Overloaded(RespError):
    """Too many commands wait for replies: Redis is not keeping up."""


class StoreTimeout(RespError, TimeoutError):
    """A command's deadline passed before its reply came (``store_timeout``)."""


NO_DEADLINE = float("inf")
# uvloop's timers have millisecond resolution: a timer may fire a hair before the deadline it was
# armed for, which must not cost a second timer.
_TIMER_SLACK = 0.001


class RespProtocol(asyncio.Protocol):
    """One connection: a write buffer flushed once per loop iteration, a FIFO of futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_pending: int) -> None:
        self._loop = loop
        self._max_pending = max_pending
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()  # loop time by which each pending reply is due
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = NO_DEADLINE
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.clock_offset = 0.0  # Redis' clock minus ours (seconds), measured at connect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses (no isinstance check here).
        self.transport = cast(asyncio.Transport, transport)

    def send(self, payload: bytes, deadline: float = NO_DEADLINE) -> asyncio.Future[Any]:
        """Queue one packed command; its reply resolves the returned future. ``deadline`` (loop
        time): if the reply has not come by then, the connection is dropped (``StoreTimeout``)."""
        if self.closed:
            raise ConnectionLost("store connection closed")
        if len(self._waiting) >= self._max_pending:
            raise Overloaded("too many store commands pending")
        future = self._loop.create_future()
        self._waiting.append(future)
        self._deadlines.append(deadline)
        if deadline < self._timer_at:
            self._arm(deadline)
        self._out.append(payload)
        if not self._flush_scheduled:
            # Every command issued until the loop comes round again shares this one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not self.closed and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """Lazy: replies do not disarm the timer; when it fires it looks at what is pending now."""
        self._timer, self._timer_at = None, NO_DEADLINE
        if not self._deadlines or self.closed:
            return
        due = min(self._deadlines)  # deadlines are FIFO unless store_timeout changed by a reload
        if due > self._loop.time() + _TIMER_SLACK:
            if due != NO_DEADLINE:
                self._arm(due)
            return
        # A reply overdue: Redis is hung or far behind, and whatever follows waits behind it.
        self._fail_pending(StoreTimeout("store reply overdue (store_timeout)"))
        self.abort()

    def _fail_pending(self, error: RespError) -> None:
        self._out.clear()
        self._deadlines.clear()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        deadlines = self._deadlines
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()  # IndexError: a reply nobody asked for
                deadlines.popleft()
                if future.done():  # its caller gave up (store_timeout): the reply is dropped
                    continue
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            # The stream cannot be trusted any more: replies could be matched to the wrong stage.
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost fails what is pending

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, NO_DEADLINE
        self._fail_pending(ConnectionLost("store connection lost"))

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()  # connection_lost runs soon and fails the pending futures
        self.closed = True


def tls_context(target: RedisTarget) -> ssl.SSLContext | None:
    """The TLS settings redis-py would apply for the same ``rediss://`` URL."""
    options = target.options
    if not options.get("ssl"):
        return None
    context = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path")
    )
    mode = _CERT_REQS[options.get("ssl_cert_reqs", "required")]
    context.check_hostname = bool(options.get("ssl_check_hostname", True)) and mode != ssl.CERT_NONE
    context.verify_mode = mode
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    return context


class RespClient:
    """The process's one fast connection to a ``redis://`` or ``rediss://`` target, opened
    lazily and reopened lazily after a loss."""

    def __init__(self, target: RedisTarget, *, max_pending: int = MAX_PENDING) -> None:
        if target.scheme == "redis+sentinel":
            raise ValueError("state.url: the fast rate-limit path needs redis:// or rediss://")
        self._target = target
        self._max_pending = max_pending
        self._tls = tls_context(target)
        self._conn: RespProtocol | None = None
        self._lock: asyncio.Lock | None = None
        # The connection's clock offset (``RespProtocol.clock_offset``), kept here as a plain
        # attribute: read on every stage call. 0 before the first connection and after close.
        self.clock_offset = 0.0

    async def call(self, *args: str | bytes | int | float, deadline: float = NO_DEADLINE) -> Any:
        """Send one command (coalesced with the others of this loop iteration); its reply.
        ``deadline`` (``loop.time()``): ``StoreTimeout`` if the reply (and a reconnect before
        it) is not in by then."""
        # hiredis' stub types the argument Tuple[X] (one element); it packs a tuple of any length.
        return await self.send(hiredis.pack_command(args), deadline)  # type: ignore[arg-type]

    async def send(self, command: bytes, deadline: float = NO_DEADLINE) -> Any:
        """``call`` for a command already in RESP framing (the stage script frames its fixed
        parts once per compiled item)."""
        return await self.submit(command, deadline)

    def submit(self, command: bytes, deadline: float = NO_DEADLINE) -> Awaitable[Any]:
        """``send``, not a coroutine: on an open connection (nearly always) the reply's future
        itself, so a caller awaits no extra frame; else the coroutine that connects first."""
        conn = self._conn
        if conn is None or conn.closed:
            return self._connect_and_send(command, deadline)
        return conn.send(command, deadline)

    def deadline_after(self, timeout: float) -> float:
        """The loop time ``timeout`` seconds from now, read from the open connection's own loop:
        ``asyncio.get_running_loop()`` costs a ``getpid`` system call per call on CPython 3.11
        (its fork check), and this runs on every request."""
        conn = self._conn
        if conn is None or conn.closed:
            return asyncio.get_running_loop().time() + timeout
        return conn._loop.time() + timeout

    async def _connect_and_send(self, command: bytes, deadline: float) -> Any:
        conn = await self._connect_by(deadline)
        return await conn.send(command, deadline)

    async def _connect_by(self, deadline: float) -> RespProtocol:
        if deadline == NO_DEADLINE:
            return await self._connected()
        try:
            async with asyncio.timeout_at(deadline):  # rare: only when the connection is gone
                return await self._connected()
        except TimeoutError:
            raise StoreTimeout("store connection not ready in time (store_timeout)") from None

    async def _connected(self) -> RespProtocol:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one connect for every caller that found the connection gone
            if self._conn is None or self._conn.closed:
                self._conn = await self._open()
                self.clock_offset = self._conn.clock_offset
            return self._conn

    async def _open(self) -> RespProtocol:
        loop = asyncio.get_running_loop()
        host, port = self._target.hosts[0]
        timeout = self._target.options.get("socket_connect_timeout", DEFAULT_SOCKET_TIMEOUT)
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: RespProtocol(loop, self._max_pending),
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=host if self._tls is not None else None,
                )
        except OSError as error:
            # The driver's text may name the host; the class is enough for the breaker's log.
            raise ConnectionLost(f"store connection failed: {type(error).__name__}") from None
        try:
            await self._handshake(conn)
        except BaseException:
            conn.abort()
            raise
        return conn

    async def _handshake(self, conn: RespProtocol) -> None:
        target = self._target
        commands: list[tuple[Any, ...]] = []
        if target.password is not None:
            user = (target.username,) if target.username else ()
            commands.append(("AUTH", *user, target.password))
        if target.db:
            commands.append(("SELECT", target.db))
        if target.options.get("client_name"):
            commands.append(("CLIENT", "SETNAME", target.options["client_name"]))
        commands.append(("TIME",))
        futures = [conn.send(hiredis.pack_command(command)) for command in commands]
        # Any: a reply or an exception (raised just below), so the TIME reply unpacks after it.
        replies: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, ReplyError):
                # SECURITY: secret disclosure — only the error code (NOAUTH, WRONGPASS...).
                raise ReplyError(f"store handshake refused ({str(reply).split(' ', 1)[0]})")
            if isinstance(reply, BaseException):
                raise reply
        seconds, micros = replies[-1]
        # Lets a stage script refuse work its caller gave up on. Redis read its clock somewhere
        # between ``sent`` and now: taking "now" gives the SMALLEST offset the reading allows, so
        # a stage's deadline in Redis' clock is never later than the moment its caller gives up
        # (the round trip's midpoint could overshoot by half a round trip, long on a busy host,
        # and a stage run just after its caller's 503 would have been counted).
        conn.clock_offset = int(seconds) + int(micros) / 1e6 - time.time()

    def abort(self) -> None:
        """Drop the connection (after a timeout its replies can no longer be trusted to come)."""
        if self._conn is not None:
            self._conn.abort()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        self.clock_offset = 0.0
        if conn is not None and conn.transport is not None and not conn.closed:
            conn.transport.close()
            conn.closed = True
