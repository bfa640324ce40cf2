"""The access log: one typed JSON line per request (``AccessLogWriter.write_entry``), called by
the lean listener and by aiohttp's access logger (``gateway.aiohttp_access_log``).

Typed fields the gateway produces itself are emitted as they are (cheap); the only free text,
the path and query, goes through the redactor. Users appear as keyed pseudonyms and client
IPs truncated unless ``logging.pseudonymize: false`` (SPEC §11).
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TextIO

import orjson
import structlog

from gateway.crypto import Keyring
from gateway.facts import RequestFacts
from gateway.logs.refusals import RefusalAggregator
from gateway.redaction.processor import Pseudonymizer, Redactor, truncate_ip
from gateway.tracing.context import TRACE_ID

log = structlog.get_logger("gateway.access")
ACCESS_LOGGER = logging.getLogger("gateway.access")


def pseudonym_key(environ: Mapping[str, str], keyring: Keyring) -> bytes:
    """$SHOPINO_GATEWAY_PSEUDONYM_KEY, else a key derived from the master key (App. B)."""
    explicit = environ.get("SHOPINO_GATEWAY_PSEUDONYM_KEY")
    return explicit.encode() if explicit else keyring.derive(b"shopino-gateway pseudonyms").reveal()


_time = time.time
_floor = math.floor
_trunc = math.trunc  # int() of a float, without int's type-call overhead (every line)
# ".000+00:00" ... ".999+00:00": a line's milliseconds and zone, by its milliseconds (a table
# lookup instead of formatting the number with "03d", which was most of a stamp's cost)
_MILLIS = tuple(f".{ms:03d}+00:00" for ms in range(1000))


class _UtcStamp:
    """RFC 3339 UTC with milliseconds; the date-and-seconds part is formatted once per second
    (datetime formatting was the costliest part of an access line), the rest looked up."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = _trunc(now)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._prefix, self._second = moment.strftime("%Y-%m-%dT%H:%M:%S"), second
        ms = _trunc((now - second) * 1000)
        if 0 <= ms < 1000:
            return self._prefix + _MILLIS[ms]
        return f"{self._prefix}.{ms:03d}+00:00"  # before 1970: as it always was spelled


_dumps, _APPEND_NEWLINE = orjson.dumps, orjson.OPT_APPEND_NEWLINE
_EXACT_MICROS = float(2**33)  # about 2.4 hours


def milliseconds(elapsed: float) -> float:
    """``round(elapsed * 1000, 3)``, bit for bit, for a non-negative duration in seconds.
    ``round`` to decimal places goes through a correctly rounded decimal conversion (a few
    hundred ns, the costliest field of a line); rounding the microseconds to an integer and
    dividing (correctly rounded) gives the same float unless the microseconds sit within
    rounding error of a half, which takes ``round`` itself."""
    ms = elapsed * 1000
    micros = ms * 1000  # off from the exact product by under 1e-6 (half an ulp below 2**33)
    # The nearest integer (floor of micros + 0.5, cheaper than round()): the sum can round only
    # near a half, which the test below sends to round() whichever integer it gave.
    whole = _floor(micros + 0.5)
    off = micros - whole
    if off > 0.499999 or off < -0.499999 or micros >= _EXACT_MICROS:
        return round(ms, 3)  # near a tie (the inexact product could round otherwise), or huge
    return whole / 1000


FLUSH_DELAY = 0.01  # seconds a line may wait for others to share its write
_WRITERS: weakref.WeakSet[AccessLogWriter] = weakref.WeakSet()


@atexit.register
def flush_access_logs() -> None:
    """Write every batched line now: at exit, and where a process ends without running atexit
    hooks (a forked worker leaves through ``os._exit``)."""
    for writer in list(_WRITERS):
        writer.flush(final=True)


class AccessLogWriter:
    """Built once per runtime: holds the redactor and pseudonymizer, writes one line per call.

    Lines are batched: those of the next ``FLUSH_DELAY`` (10 ms) share one write and flush.
    A write per line was one system call per request, a tenth of the proxy's cost. A line waits
    at most 10 ms, and nothing is lost on a graceful stop (``flush`` also runs at exit).
    """

    def __init__(
        self,
        redactor: Redactor,
        *,
        enabled: bool,
        pseudonymize: bool,
        pseudonym_key: bytes,
        stream: TextIO | None = None,
    ) -> None:
        self.enabled = enabled
        self._redactor = redactor
        self._pseudonymize = pseudonymize
        self._pseudonymizer = Pseudonymizer(pseudonym_key)
        self._pseudonyms, self._clean = self._pseudonymizer.known, redactor.clean_texts
        self._queries = redactor.known_queries
        self._stream = stream
        # The bound method, not the instance: calling an instance goes through its type's call
        # slot (an argument tuple and a method lookup per call, every line).
        self._stamp: Callable[[float], str] = _UtcStamp().__call__
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._refusals = RefusalAggregator()
        self._summary_scheduled = False
        _WRITERS.add(self)

    def pseudonym(self, user: str) -> str:
        """The keyed pseudonym the access log uses for ``user`` (the console's traffic view)."""
        return self._pseudonymizer(user)

    def write_entry(self, ctx: RequestFacts, status: int, body_length: int, elapsed: float) -> None:
        """One line for one answered (or cut) request; both listeners end up here (aiohttp's
        through ``gateway.aiohttp_access_log``)."""
        now = _time()
        client_ip = truncate_ip(ctx.client_ip) if self._pseudonymize else ctx.client_ip
        route = ctx.route.name if ctx.route is not None else None
        # A flood of refusals from one client costs a counter, not a line each (refusal_log.py).
        if ctx.refusal is not None and not self._refusals.admit(
            int(now), ctx.refusal, client_ip, status, route
        ):
            self._schedule_summary()
            return
        target = ctx.target
        path = target.path if target is not None else "-"
        clean = self._clean  # probed inline, as for the tenant below: a call only on a miss
        line: dict[str, object] = {
            "timestamp": self._stamp(now),
            "level": "info",
            "event": "access",
            "request_id": ctx.request_id,
            "method": ctx.request.method,
            "route": route,
            "path": path if path in clean else self._redactor.redact_text(path),
            "status": status,
            "duration_ms": milliseconds(elapsed),
            "bytes": body_length,
            "client_ip": client_ip,
            "trace_id": ctx.trace[TRACE_ID],  # App. C: W3C trace id (gateway.tracing.context)
        }
        if ctx.outcome is not None:
            line["reason"] = ctx.outcome  # 499: "client-closed" or "drain-timeout" (App. C)
        if ctx.ratelimit is not None:
            line["ratelimit"] = ctx.ratelimit  # "limited", or "shadow" (App. C: shadow limits)
        if target is not None and target.query:
            query = target.query  # the cache probed inline, as below: a call only on a miss
            line["query"] = self._queries.get(query) or self._redactor.redact_query(query)
        # The caches are probed inline (every authenticated request); a call only on a miss.
        user, tenant = ctx.user, ctx.tenant
        if user is not None:
            if self._pseudonymize:
                line["user"] = self._pseudonyms.get(user) or self._pseudonymizer(user)
            else:
                line["user"] = user if user in clean else self._redactor.redact_text(user)
        if tenant is not None:
            line["tenant"] = tenant if tenant in clean else self._redactor.redact_text(tenant)
        # _append, inline (every line): the event loop is asked for only once per batch.
        self._pending.append(_dumps(line, option=_APPEND_NEWLINE))
        if not self._flush_scheduled:
            self._schedule_flush()

    def _append(self, line: dict[str, object]) -> None:
        self._pending.append(_dumps(line, option=_APPEND_NEWLINE))
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a direct call): nothing to batch with
            self.flush()
            return
        self._flush_scheduled = True
        loop.call_later(FLUSH_DELAY, self.flush)

    def _schedule_summary(self) -> None:
        if self._summary_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # flush() at exit writes whatever was counted
        self._summary_scheduled = True
        loop.call_at(loop.time() + 1.0 - time.time() % 1.0 + 0.001, self._write_summaries)

    def _write_summaries(self, final: bool = False) -> None:
        self._summary_scheduled = False
        for summary in self._refusals.take_summaries(None if final else int(time.time())):
            second = summary.pop("second")
            assert isinstance(second, int)
            self._append({"timestamp": self._stamp(second + 0.999), "level": "info", **summary})

    def flush(self, final: bool = False) -> None:
        """Write every pending line at once (and flush the stream, buffered or not); ``final``
        also writes the refusal counts of the second still running (at exit)."""
        if final:
            self._write_summaries(final=True)
        self._flush_scheduled = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        stream = self._stream or sys.stdout
        binary = getattr(stream, "buffer", None)
        if binary is None:  # a text-only stream (a test's, a replaced stdout)
            stream.write(data.decode())
            stream.flush()
            return
        stream.flush()  # whatever was written as text goes first: lines keep their order
        binary.write(data)
        binary.flush()
