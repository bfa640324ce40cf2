"""The lean listener's answer is byte for byte what the former code wrote (issue 13): the head's
shape cache (``LeanDownstream._head``), the whole answer written without a coroutine, the
Cache-Control default set in one call and the merge planned once per set of names
(``proxy._stream_response``, ``proxy._plan_for``). The reference below is the former code,
frozen: ``_head``, ``downstream_response_headers`` and what ``_stream_response`` /
``_stream_lean`` did with the upstream's answer. Same bytes, same keep-alive and framing state,
same refusals (a line break in a name, a value or the reason: response splitting)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from aiohttp.http import HttpVersion10, HttpVersion11
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway import proxy as proxy_module
from gateway.http.answer_headers import IDENTITY_BY_TLS
from gateway.http1 import downstream as downstream_module
from gateway.http1.downstream import REASONS, LeanDownstream
from gateway.proxy import _stream_response
from gateway.ratelimit.headers import POLICY_HEADER, STATE_HEADER
from gateway.upstream.httptools_connection import _name_key

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 400
DATE = "Mon, 07 Dec 2026 10:00:00 GMT"
_EMPTY = frozenset((204, 304))
_LINES_11 = {status: f"HTTP/1.1 {status} {phrase}" for status, phrase in REASONS.items()}


# --- the former code, frozen ----------------------------------------------------------------------
def _old_head(
    request: Any,
    may_keep_alive: bool,
    status: int,
    reason: str | None,
    headers: Any,
    content_length: int | None,
    force_close: bool,
) -> tuple[bytes, bool, bool, bool]:
    """(head, keep_alive, chunked, empty) as ``LeanDownstream._head`` made them."""
    version = request.version
    empty = status in _EMPTY or status < 200 or request.method == "HEAD"
    keep_alive = may_keep_alive and not force_close
    chunked = False
    if not isinstance(headers, CIMultiDict | CIMultiDictProxy):
        headers = CIMultiDict(headers)
    pairs: Iterable[tuple[str, str]] = headers.items()
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        pairs = [(n, v) for n, v in pairs if n.lower() not in ("content-length", "transfer-encoding")]
    has_date = "Date" in headers
    connection = headers.getall("Connection", ())
    if connection:
        keep_alive = keep_alive and not any("close" in value.lower() for value in connection)
    first = _LINES_11.get(status) if version is HttpVersion11 else None
    if first is None or (reason is not None and reason != REASONS[status]):
        first = f"HTTP/{version.major}.{version.minor} {status} {reason or REASONS.get(status, '')}"
    lines = [first]
    lines += map(": ".join, pairs)
    if content_length is not None:
        if status not in _EMPTY:
            lines.append(f"Content-Length: {content_length}")
    elif not empty:
        if version >= (1, 1):
            lines.append("Transfer-Encoding: chunked")
            chunked = True
        else:
            keep_alive = False
    if not has_date:
        lines.append(f"Date: {DATE}")
    if not connection:
        if not keep_alive:
            lines.append("Connection: close")
        elif version < (1, 1):
            lines.append("Connection: keep-alive")
    probe = "".join(lines)
    if "\n" in probe or "\r" in probe:
        raise ValueError("a response header contains a line break")
    lines += ("", "")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape"), keep_alive, chunked, empty


_OLD_DROPPED = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "proxy-connection", "server", "x-powered-by", "content-length",
    )
)  # fmt: skip


def _old_downstream_response_headers(upstream: Any, *, tls: bool) -> CIMultiDict[str]:
    """``forwarding.downstream_response_headers`` as it was: hop-by-hop (and the names the
    Connection header lists), backend fingerprints and Content-Length dropped."""
    tokens: set[str] = set()
    for value in upstream.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    dropped = _OLD_DROPPED | tokens
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in dropped:
            out.add(name, value)
    out.setdefault("X-Content-Type-Options", "nosniff")
    if tls:
        out["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    return out


def _old_answer(
    request: Any, may_keep_alive: bool, upstream: _Upstream, own: dict[str, str], claims: bool, tls: bool
) -> bytes:
    """The bytes ``_stream_response`` and ``_stream_lean`` wrote for an upstream answer."""
    headers = _old_downstream_response_headers(upstream.headers, tls=tls)
    headers.update(own)
    if claims and "Cache-Control" not in headers:
        headers["Cache-Control"] = "private"
    reason = upstream.reason or None
    whole = upstream.body if upstream.arrived else None
    length: int | None
    if whole is not None and request.method != "HEAD":
        length = len(whole)
    else:
        declared = upstream.headers.get("Content-Length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if whole is not None and length is None:
            length = len(whole)  # HEAD without a usable Content-Length: send_whole's length
    status = upstream.status
    head, _, chunked, empty = _old_head(request, may_keep_alive, status, reason, headers, length, False)
    body = b"" if empty else upstream.body
    if whole is not None:
        return head + body
    if chunked:  # streamed: each chunk framed (none for an empty one), then the last chunk
        return head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + body


# --- stand-ins --------------------------------------------------------------------------------------
@dataclass
class _Protocol:
    keep: bool = True
    writing_paused: bool = False
    out: list[bytes] = field(default_factory=list)

    def may_keep_alive(self, request: Any) -> bool:
        return self.keep

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        self.out.extend(data)

    async def drain(self) -> None:
        return None


@dataclass
class _Request:
    method: str = "GET"
    version: Any = HttpVersion11


@dataclass
class _Upstream:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    arrived: bool  # the whole body is here already (else it streams)

    def whole_body(self) -> bytes | None:
        return self.body if self.arrived else None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    def release(self) -> None:
        pass

    def discard(self) -> None:
        pass


def _new_head(
    request: _Request,
    keep: bool,
    status: int,
    reason: str | None,
    headers: Any,
    length: int | None,
    force_close: bool,
) -> tuple[bytes, bool, bool, bool]:
    down = LeanDownstream(_Protocol(keep), request)  # type: ignore[arg-type]
    head = down._head(status, reason, headers, length, force_close=force_close)
    return head, down.keep_alive, down._chunked, down._empty


def _both(*args: Any) -> tuple[Any, Any]:
    results = []
    for make in (_old_head, _new_head):
        try:
            results.append(make(*args))
        except Exception as error:  # the same refusal, or the same failure
            results.append((type(error), str(error)))
    return results[0], results[1]


# --- the head ---------------------------------------------------------------------------------------
_NAMES = st.sampled_from(
    [
        "Date", "date", "DATE", "Content-Type", "content-length", "Content-Length",
        "Transfer-Encoding", "transfer-encoding", "Connection", "connection", "X-A", "x-a",
        "Set-Cookie", "Cache-Control", "X-Request-ID", "Server", "X\r\nY", "X\nY", "Vary",
    ]
)  # fmt: skip
_VALUES = st.sampled_from(
    ["1", "", "close", "Close, Upgrade", "keep-alive", "a\r\nb", "a\rb", "a\nb", "caf\u00e9", "\udcff", "x y"]
)
_STATUSES = st.sampled_from([100, 101, 103, 200, 201, 204, 299, 304, 404, 502, 599, 999])
_REASONS = st.sampled_from([None, "", "OK", "Not Found", "Custom", "Bad\r\nX: 1", "\u00e9t\u00e9"])


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(
    pairs=st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    kind=st.sampled_from(["dict", "multidict", "proxy"]),
    status=_STATUSES,
    reason=_REASONS,
    length=st.one_of(st.none(), st.integers(0, 10**6)),
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    version=st.sampled_from([HttpVersion11, HttpVersion10]),
    keep=st.booleans(),
    force_close=st.booleans(),
)
def test_the_head_is_the_former_heads_bytes(
    pairs: list[tuple[str, str]],
    kind: str,
    status: int,
    reason: str | None,
    length: int | None,
    method: str,
    version: Any,
    keep: bool,
    force_close: bool,
) -> None:
    headers: Any
    if kind == "dict":
        headers = dict(pairs)
    elif kind == "multidict":
        headers = CIMultiDict(pairs)
    else:
        headers = CIMultiDictProxy(CIMultiDict(pairs))
    request = _Request(method, version)
    with mock.patch.object(downstream_module, "rfc822_formatted_time", lambda: DATE):
        # twice: the shape made for these names, then the shape taken from the cache
        for _ in range(2):
            old, new = _both(request, keep, status, reason, headers, length, force_close)
            assert new == old


def test_a_line_break_in_a_name_is_refused_every_time() -> None:
    # SECURITY: response splitting — a refused name's shape is never cached.
    headers = CIMultiDict([("X-A", "1"), ("X\r\nSet-Cookie: s", "1")])
    for _ in range(2):
        with pytest.raises(ValueError, match="line break"):
            _new_head(_Request(), True, 200, None, headers, 3, False)
    assert tuple(headers.keys()) not in downstream_module._SHAPES


def test_a_cached_shape_still_checks_every_value() -> None:
    # SECURITY: response splitting — the cache holds the names, never the check of the values.
    names = [("X-Shape-Probe", "1"), ("X-Other", "2")]
    _new_head(_Request(), True, 200, None, CIMultiDict(names), 3, False)
    assert ("X-Shape-Probe", "X-Other") in downstream_module._SHAPES
    for value in ("1\r\nSet-Cookie: s=1", "1\n", "1\r"):
        headers = CIMultiDict([("X-Shape-Probe", value), ("X-Other", "2")])
        with pytest.raises(ValueError, match="line break"):
            _new_head(_Request(), True, 200, None, headers, 3, False)
    with pytest.raises(ValueError, match="line break"):
        _new_head(_Request(), True, 200, "OK\r\nX: 1", CIMultiDict(names), 3, False)


def test_the_shape_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # SECURITY: memory exhaustion — an upstream inventing names answer after answer.
    monkeypatch.setattr(downstream_module, "_SHAPES", {})
    for index in range(downstream_module._SHAPES_LIMIT * 3):
        _new_head(_Request(), True, 200, None, CIMultiDict([(f"X-{index}", "1")]), 1, False)
        assert len(downstream_module._SHAPES) <= downstream_module._SHAPES_LIMIT
    long_names = CIMultiDict([("X-" + "a" * downstream_module._SHAPE_NAMES_MAX, "1")])
    head, *_ = _new_head(_Request(), True, 200, None, long_names, 1, False)
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-aaa")
    assert tuple(long_names.keys()) not in downstream_module._SHAPES


# --- the proxied answer -----------------------------------------------------------------------------
_UPSTREAM_NAMES = st.sampled_from(
    [
        "Date", "Content-Type", "Content-Length", "Connection", "Server", "X-Powered-By",
        "X-Content-Type-Options", "x-request-id", "RateLimit", "Cache-Control", "cache-control",
        "Vary", "Set-Cookie", "Keep-Alive", "Strict-Transport-Security",
    ]
)  # fmt: skip


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(
    pairs=st.lists(st.tuples(_UPSTREAM_NAMES, st.sampled_from(["1", "keep-alive", "close"])), max_size=7),
    status=st.sampled_from([200, 204, 304, 404, 500]),
    reason=st.sampled_from(["", "OK", "Not Found", "Whatever"]),
    body=st.sampled_from([b"", b"hello"]),
    arrived=st.booleans(),
    method=st.sampled_from(["GET", "HEAD"]),
    version=st.sampled_from([HttpVersion11, HttpVersion10]),
    claims=st.booleans(),
    tls=st.booleans(),
    ratelimit=st.booleans(),
    keep=st.booleans(),
)
def test_a_proxied_answer_is_the_former_answers_bytes(
    pairs: list[tuple[str, str]],
    status: int,
    reason: str,
    body: bytes,
    arrived: bool,
    method: str,
    version: Any,
    claims: bool,
    tls: bool,
    ratelimit: bool,
    keep: bool,
) -> None:
    # the upstream's own Content-Length, when it sends one, is the body's (its framing)
    upstream_headers: CIMultiDict[str] = CIMultiDict(
        (name, str(len(body)) if name == "Content-Length" else value) for name, value in pairs
    )
    upstream = _Upstream(status, reason, upstream_headers, body, arrived)
    own: dict[str, str] = {istr("X-Request-ID"): "r-1", **IDENTITY_BY_TLS[tls]}
    if ratelimit:
        own[POLICY_HEADER] = '"api";q=50;w=1'
        own[STATE_HEADER] = '"api";r=49;t=1'
    request = _Request(method, version)
    with mock.patch.object(downstream_module, "rfc822_formatted_time", lambda: DATE):
        expected = _old_answer(request, keep, upstream, own, claims, tls)
        protocol = _Protocol(keep)
        down = LeanDownstream(protocol, request)  # type: ignore[arg-type]
        ctx = SimpleNamespace(
            status=0,
            runtime=SimpleNamespace(tls=tls),
            response_headers=own,
            claims=object() if claims else None,
            downstream=down,
            request=request,
        )
        assert asyncio.run(_stream_response(ctx, upstream, ())) is down  # type: ignore[arg-type]
    assert b"".join(protocol.out) == expected


def test_a_paused_transport_is_drained_after_the_whole_answer() -> None:
    drained: list[bool] = []

    class Paused(_Protocol):
        async def drain(self) -> None:
            drained.append(True)

    protocol = Paused(writing_paused=True)
    request = _Request()
    down = LeanDownstream(protocol, request)  # type: ignore[arg-type]
    upstream = _Upstream(200, "OK", CIMultiDict([("Date", DATE)]), b"hi", True)
    ctx = SimpleNamespace(
        status=0,
        runtime=SimpleNamespace(tls=False),
        response_headers={},
        claims=None,
        downstream=down,
        request=request,
    )
    asyncio.run(_stream_response(ctx, upstream, ()))  # type: ignore[arg-type]
    assert drained == [True]
    assert b"".join(protocol.out).endswith(b"\r\n\r\nhi")


# --- the planned merge ------------------------------------------------------------------------------
_ANY_CASE_NAMES = st.sampled_from(
    [
        "Date", "date", "Content-Type", "content-type", "Content-Length", "content-length",
        "Transfer-Encoding", "Connection", "connection", "CONNECTION", "Keep-Alive", "TE", "Trailer",
        "Upgrade", "Proxy-Connection", "Proxy-Authenticate", "Server", "server", "X-Powered-By",
        "X-Content-Type-Options", "x-content-type-options", "X-Request-ID", "x-request-id",
        "RateLimit", "ratelimit", "Cache-Control", "cache-control", "Vary", "Set-Cookie",
        "set-cookie", "Strict-Transport-Security", "strict-transport-security", "X-A", "x-a", "ETag",
    ]
)  # fmt: skip
_UPSTREAM_VALUES = st.sampled_from(
    [
        "1", "", "keep-alive", "Keep-Alive", "close", "Close", "x-a", "X-A, close", "set-cookie",
        "Date", "content-type, keep-alive", " etag , vary ", "Upgrade", "cache-control",
        "x-request-id", "server", "a=b; Path=/", "caf\u00e9",
    ]
)  # fmt: skip
_OWN_NAMES = st.sampled_from(
    ["X-Request-ID", "Server", "X-Content-Type-Options", "Vary", "x-a", "Cache-Control", "date"]
)
_OWN_VALUES = st.sampled_from(["r-1", "shopino-gateway", "nosniff", "Origin", "v", "a\r\nb"])


def _received(pairs: list[tuple[str, str]], body: bytes) -> CIMultiDict[str]:
    """The upstream's headers as the httptools connection hands them (istr names)."""
    received: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        # the upstream's own Content-Length, when it sends one, is the body's (its framing)
        value = str(len(body)) if name.lower() == "content-length" else value
        received.add(_name_key(name.encode()), value)
    return received


def _answered(
    request: _Request, keep: bool, upstream: _Upstream, own: dict[str, str], claims: bool, tls: bool
) -> bytes | tuple[type, str]:
    protocol = _Protocol(keep)
    down = LeanDownstream(protocol, request)  # type: ignore[arg-type]
    ctx = SimpleNamespace(
        status=0,
        runtime=SimpleNamespace(tls=tls),
        response_headers=own,
        claims=object() if claims else None,
        downstream=down,
        request=request,
    )
    try:
        assert asyncio.run(_stream_response(ctx, upstream, ())) is down  # type: ignore[arg-type]
    except ValueError as error:  # the same refusal (a line break: response splitting)
        return type(error), str(error)
    return b"".join(protocol.out)


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(
    pairs=st.lists(st.tuples(_ANY_CASE_NAMES, _UPSTREAM_VALUES), max_size=9),
    own_pairs=st.lists(st.tuples(_OWN_NAMES, _OWN_VALUES), max_size=4),
    status=st.sampled_from([200, 201, 204, 304, 404, 500]),
    reason=st.sampled_from(["", "OK", "Whatever"]),
    body=st.sampled_from([b"", b"hello"]),
    arrived=st.booleans(),
    method=st.sampled_from(["GET", "GET", "HEAD", "POST"]),
    version=st.sampled_from([HttpVersion11, HttpVersion10]),
    claims=st.booleans(),
    tls=st.booleans(),
    ratelimit=st.booleans(),
    keep=st.booleans(),
)
def test_a_planned_answer_is_the_former_answers_bytes(
    pairs: list[tuple[str, str]],
    own_pairs: list[tuple[str, str]],
    status: int,
    reason: str,
    body: bytes,
    arrived: bool,
    method: str,
    version: Any,
    claims: bool,
    tls: bool,
    ratelimit: bool,
    keep: bool,
) -> None:
    upstream = _Upstream(status, reason, _received(pairs, body), body, arrived)
    own: dict[str, str] = {istr("X-Request-ID"): "r-1", **IDENTITY_BY_TLS[tls]}
    if ratelimit:
        own[POLICY_HEADER] = '"api";q=50;w=1'
        own[STATE_HEADER] = '"api";r=49;t=1'
    own.update(own_pairs)  # the stages' own (CORS's Vary...), in any letter case
    request = _Request(method, version)
    with mock.patch.object(downstream_module, "rfc822_formatted_time", lambda: DATE):
        expected: bytes | tuple[type, str]
        try:
            expected = _old_answer(request, keep, upstream, own, claims, tls)
        except ValueError as error:
            expected = type(error), str(error)
        # twice: the plan made for these names, then the plan taken from the memo
        for _ in range(2):
            assert _answered(request, keep, upstream, own, claims, tls) == expected


def test_an_answer_of_one_header_keeps_the_general_way() -> None:
    # itemgetter of one place gives a value, not a tuple: no plan for a single header out (the
    # nosniff the merge adds to an answer without headers)
    upstream = _Upstream(200, "OK", CIMultiDict([("Server", "nginx")]), b"hi", True)
    with mock.patch.object(downstream_module, "rfc822_formatted_time", lambda: DATE):
        for _ in range(2):
            answer = _answered(_Request(), True, upstream, {}, False, False)
            expected = _old_answer(_Request(), True, upstream, {}, False, False)
            assert answer == expected
    assert proxy_module._PLANS[(("Server",), None, (), False, False)] is None


def test_the_plan_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # SECURITY: memory exhaustion — an upstream inventing names answer after answer.
    monkeypatch.setattr(proxy_module, "_PLANS", {})
    own = {"X-Request-ID": "r-1"}
    for index in range(proxy_module._PLANS_LIMIT * 3):
        received = CIMultiDict([(f"X-{index}", "1"), ("Connection", f"x-{index}")])
        upstream = _Upstream(200, "OK", received, b"hi", True)
        _answered(_Request(), True, upstream, own, False, False)
        assert len(proxy_module._PLANS) <= proxy_module._PLANS_LIMIT
    # names (or a Connection value) too long for a remembered key: planned, never kept
    proxy_module._PLANS.clear()
    for received in (
        CIMultiDict([("X-" + "a" * proxy_module._PLAN_KEY_MAX, "1")]),
        CIMultiDict([("X-A", "1"), ("Connection", "b" * proxy_module._PLAN_KEY_MAX)]),
    ):
        upstream = _Upstream(200, "OK", received, b"hi", True)
        with mock.patch.object(downstream_module, "rfc822_formatted_time", lambda: DATE):
            answer = _answered(_Request(), True, upstream, own, False, False)
            assert answer == _old_answer(_Request(), True, upstream, own, False, False)
    assert proxy_module._PLANS == {}


def test_a_planned_answer_still_checks_every_value() -> None:
    # SECURITY: response splitting — the plan holds the names, never the check of the values.
    received = CIMultiDict([("Date", DATE), ("X-A", "1")])
    upstream = _Upstream(200, "OK", received, b"hi", True)
    _answered(_Request(), True, upstream, {"X-Request-ID": "r-1"}, False, False)
    for value in ("1\r\nSet-Cookie: s=1", "1\n", "1\r"):
        answer = _answered(_Request(), True, upstream, {"X-Request-ID": value}, False, False)
        assert answer == (ValueError, "a response header contains a line break")
