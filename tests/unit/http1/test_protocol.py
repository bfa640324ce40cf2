"""The lean listener's parser callbacks (gateway.http1.protocol.LeanProtocol) on a stand-in
transport: what a request head becomes (method, headers, the size the header limits stage
reads) and the singleton fields refused while the head is parsed (App. C), each with the
status the wire gets. No socket and no pipeline: the connection's queue is read directly."""

from __future__ import annotations

import asyncio
import os
import types
from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http1 import protocol as protocol_module
from gateway.http1.protocol import _SINGLETONS, LeanProtocol
from gateway.http1.request import LeanRequest


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default


def _connection() -> tuple[LeanProtocol, _Transport, list[Any]]:  # in a running loop
    guard = types.SimpleNamespace(
        open_connections=0,
        max_connections=10,
        refused_connections=0,
        header_timeout=10.0,
        body_timeout=10.0,
        identity_headers={"Server": "shopino-gateway"},
    )
    server = types.SimpleNamespace(
        handler=None,
        guarded=guard,
        keepalive_timeout=75.0,
        max_line_size=16384,
        max_field_size=9216,
        max_unframed=25600,
        max_headers=116,
        connections=set(),
        closing=False,
    )
    protocol = LeanProtocol(server)  # type: ignore[arg-type]
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    # The connection's queue is read directly: a stand-in task keeps the real one from starting.
    protocol._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    return protocol, transport, protocol._queue  # type: ignore[return-value]


async def _parsed(head: bytes) -> LeanRequest:
    protocol, transport, queued = _connection()
    protocol.data_received(head)
    assert transport.written == b"" and len(queued) == 1
    request = queued[0]
    assert isinstance(request, LeanRequest)
    protocol._task = None  # nothing to cancel
    protocol.connection_lost(None)
    return request


async def test_a_head_becomes_a_request_with_its_header_size() -> None:
    request = await _parsed(
        b"GET /erp/items?limit=4 HTTP/1.1\r\nHost: gw:8080\r\n"
        b"Authorization: Bearer abc  \t\r\nX-Tenant-ID: t-1\r\nX-Empty:\r\n\r\n"
    )
    assert (request.method, request.raw_path) == ("GET", "/erp/items?limit=4")
    # trailing whitespace is no part of a value (llhttp strips only the leading one)
    assert request.raw_headers == (
        (b"Host", b"gw:8080"),
        (b"Authorization", b"Bearer abc"),
        (b"X-Tenant-ID", b"t-1"),
        (b"X-Empty", b""),
    )
    assert list(request.headers.items()) == [
        ("Host", "gw:8080"),
        ("Authorization", "Bearer abc"),
        ("X-Tenant-ID", "t-1"),
        ("X-Empty", ""),
    ]
    # what the header limits stage would otherwise sum: every name's and value's length
    assert request.header_size == sum(len(name) + len(value) for name, value in request.raw_headers)
    assert request.content_length is None and request.keep_alive
    # every field is set (the connection sets them one by one: LeanRequest has no __init__)
    fields = {name: getattr(request, name) for name in LeanRequest.__slots__}
    assert fields["ctx"] is None and fields["remote"] == "127.0.0.1" and fields["transport"] is not None
    assert fields["version"] == (1, 1) and not request.body_exists


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "OPTIONS", "PROPFIND", "MKCOL"])
async def test_every_method_arrives_as_its_text(method: str) -> None:
    request = await _parsed(f"{method} /x HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    assert request.method == method


async def test_each_request_on_a_connection_has_its_own_head() -> None:
    protocol, transport, queued = _connection()
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: gw\r\nX-A: 1\r\n\r\n")
    protocol.data_received(b"GET /b HTTP/1.1\r\nHost: gw\r\n\r\n")  # a second Host is not a duplicate
    assert transport.written == b""
    first, second = queued
    assert first.raw_headers == ((b"Host", b"gw"), (b"X-A", b"1"))
    assert second.raw_headers == ((b"Host", b"gw"),)
    assert (first.header_size, second.header_size) == (4 + 2 + 3 + 1, 4 + 2)


def _status(written: bytes) -> bytes:
    return written.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("name", sorted(_SINGLETONS))
async def test_a_singleton_twice_in_any_letter_case_is_refused(name: bytes) -> None:
    """SECURITY: a second Host/Content-Type/... is read differently by each hop."""
    protocol, transport, queued = _connection()
    value = b"chunked" if name == b"transfer-encoding" else b"1"
    first = b"Host: gw\r\n" if name != b"host" else b""
    protocol.data_received(
        b"POST /x HTTP/1.1\r\n"
        + first
        + name
        + b": "
        + value
        + b"\r\n"
        + name.upper()
        + b": "
        + value
        + b"\r\n\r\n"
    )
    assert queued == [] or not isinstance(queued[-1], LeanRequest)
    protocol._answer_refusal(queued[-1].error)
    # App. C: more than one chunked coding is "not implemented", any other duplicate a bad request
    expected = b"HTTP/1.1 501" if name == b"transfer-encoding" else b"HTTP/1.1 400"
    assert _status(transport.written).startswith(expected)
    assert transport.closed


async def test_http_1_1_without_host_is_refused_and_1_0_without_host_passes() -> None:
    protocol, transport, queued = _connection()
    protocol.data_received(b"GET /x HTTP/1.1\r\nX-A: 1\r\n\r\n")
    protocol._answer_refusal(queued[-1].error)
    assert _status(transport.written).startswith(b"HTTP/1.1 400")
    request = await _parsed(b"GET /x HTTP/1.0\r\nX-A: 1\r\n\r\n")
    assert request.raw_headers == ((b"X-A", b"1"),) and not request.keep_alive


async def test_content_length_and_chunked_bodies_get_a_stream() -> None:
    request = await _parsed(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
    assert request.content_length == 0 and not request.body_exists
    protocol, _, queued = _connection()
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nab")
    request = queued[0]
    assert request.content_length == 3 and request.body_exists
    protocol.data_received(b"c")
    assert await asyncio.wait_for(request.content.read(), 1) == b"abc"
    protocol, _, queued = _connection()
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    request = queued[0]
    assert request.content_length is None and await asyncio.wait_for(request.content.read(), 1) == b"abc"


@pytest.mark.parametrize(
    ("limits", "first_refused"),
    [
        ("max_header_line: 64, max_header_bytes: 160", 2),  # a line over its limit
        ("max_header_line: 1000, max_header_bytes: 130", 3),  # the section: the sum decides alone
    ],
)
async def test_the_header_limits_stage_judges_a_lean_request_as_it_judges_its_raw_fields(
    limits: str, first_refused: int
) -> None:
    """The stage takes the lean request's ``header_size`` instead of summing the fields again:
    at and around each limit its verdict is the one the fields themselves give."""
    from gateway.errors import HeadersTooLarge
    from gateway.middleware.header_limits import enforce_header_limits
    from tests.support.stage_server import stage_runtime

    runtime = stage_runtime(f"listen: {{limits: {{max_headers: 10, {limits}}}}}\n")

    def verdict(req: Any) -> str | None:
        try:
            enforce_header_limits(types.SimpleNamespace(request=req, runtime=runtime))  # type: ignore[arg-type]
        except HeadersTooLarge as refused:
            return str(refused.detail)
        return None

    for padding in range(6):
        fields = (
            b"Host: gw\r\nX-Pad: " + b"p" * (40 + padding) + b"  \r\nX-B: " + b"b" * (60 + padding) + b"\r\n"
        )
        request = await _parsed(b"GET /x HTTP/1.1\r\n" + fields + b"\r\n")
        # no header_size: summed from the raw fields
        plain = types.SimpleNamespace(headers=request.headers, raw_headers=request.raw_headers)
        assert verdict(request) == verdict(plain)
        assert (verdict(request) is None) == (padding < first_refused), padding


_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300
_VALUE_BYTES = [*range(0x21, 0x7F), *range(0x80, 0x100)]  # visible ASCII and obs-text
_COMMON_NAMES = (b"authorization", b"x-tenant-id", b"cookie", b"accept")


def _spelt(name: bytes, cases: list[bool]) -> bytes:
    """``name`` with the letters at ``True`` places in upper case."""
    cases = (cases + [False] * len(name))[: len(name)]
    return bytes(
        char - 32 if upper and 97 <= char <= 122 else char for char, upper in zip(name, cases, strict=True)
    )


_SAMPLED_NAMES = sorted(_SINGLETONS - {b"content-length", b"transfer-encoding"}) + list(_COMMON_NAMES)


_NAME = st.one_of(
    st.builds(
        _spelt,
        st.sampled_from(_SAMPLED_NAMES),
        st.lists(st.booleans(), max_size=20),
    ),
    st.from_regex(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,70}", fullmatch=True),
)
_FIELD = st.tuples(
    _NAME,
    st.lists(st.sampled_from(_VALUE_BYTES), max_size=12).map(bytes),
    st.sampled_from([b"", b" ", b"\t ", b"  "]),
)


def _outcome(head: bytes) -> tuple[object, ...]:
    async def parse() -> tuple[object, ...]:
        protocol, _, queued = _connection()
        protocol.data_received(head)
        item = queued[-1]
        protocol._task = None
        protocol.connection_lost(None)
        if not isinstance(item, LeanRequest):
            return ("refused", item.error.status)
        return ("passed", list(item.headers.items()), item.raw_headers, item.header_size)

    return asyncio.run(parse())


@settings(max_examples=_EXAMPLES, deadline=None)
@given(fields=st.lists(_FIELD, max_size=6))
def test_header_names_decide_alike_remembered_or_not_and_as_their_bytes_say(
    fields: list[tuple[bytes, bytes, bytes]],
) -> None:
    """The connection remembers each header name's key and singleton bit (``_NAMES``): a head
    parsed with every name new and again with every name remembered gets the same answer, and
    that answer is what the fields' bytes give (a singleton twice in any case refused, else every
    field in order, its value decoded with surrogate escapes, its bytes recoverable)."""
    head = b"GET /x HTTP/1.0\r\n" + b"".join(n + b": " + v + ows + b"\r\n" for n, v, ows in fields) + b"\r\n"
    protocol_module._NAMES.clear()
    cold = _outcome(head)
    warm = _outcome(head)
    assert cold == warm
    lowered = [name.lower() for name, _, _ in fields]
    if any(lowered.count(name) > 1 for name in _SINGLETONS):
        assert cold == ("refused", 400)
        return
    raw = tuple((name, value) for name, value, _ in fields)
    decoded = [(n.decode(), v.decode("utf-8", "surrogateescape")) for n, v in raw]
    assert cold == ("passed", decoded, raw, sum(len(n) + len(v) for n, v in raw))


def test_the_name_memo_is_bounded() -> None:
    """SECURITY: memory — client-chosen names: long ones are never held, and the memo starts
    over at its cap however many a client invents."""
    protocol_module._NAMES.clear()
    long_name = b"X-" + b"a" * protocol_module._NAME_MEMO_LENGTH
    assert protocol_module._learn_name(long_name) == (long_name.decode(), 0)
    assert long_name not in protocol_module._NAMES
    for index in range(protocol_module._NAME_MEMO_LIMIT + 5):
        protocol_module._learn_name(b"X-%d" % index)
    assert 0 < len(protocol_module._NAMES) <= protocol_module._NAME_MEMO_LIMIT
    assert protocol_module._learn_name(b"HOST") == ("HOST", protocol_module._HOST_BIT)


class _LlhttpReads:
    """What llhttp itself reports when a head completes: the reference for the connection's
    reading of the version, keep-alive and upgrade without ``get_http_version``."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.read: tuple[str, bool, bool] | None = None

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.read = (parser.get_http_version(), parser.should_keep_alive(), parser.should_upgrade())


def _llhttp_reads(head: bytes) -> tuple[str, bool, bool] | None:
    reads = _LlhttpReads()
    try:
        reads.parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return None
    return reads.read


_CONNECTION_NAMES = (b"connection", b"proxy-connection", b"upgrade", b"keep-alive", b"x-connection")
_CONNECTION_VALUES = (b"keep-alive", b"close", b"upgrade", b"Upgrade, keep-alive", b"websocket", b"x", b"")


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    method=st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS", b"PROPFIND"]),
    version=st.sampled_from([b"1.1", b"1.0", b"0.9", b"2.0", b"1.2", b"3.0"]),
    fields=st.lists(
        st.tuples(
            st.builds(_spelt, st.sampled_from(_CONNECTION_NAMES), st.lists(st.booleans(), max_size=20)),
            st.sampled_from(_CONNECTION_VALUES),
        ),
        max_size=3,
    ),
)
def test_version_keep_alive_and_upgrade_are_what_llhttp_reports(
    method: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    """A head without a Connection (or Proxy-Connection) field has its version and upgrade
    read from llhttp's keep-alive and the method, not from ``get_http_version``: for any mix of
    those fields, version, keep-alive and upgrade are exactly what llhttp reports (a head read
    as HTTP/1.1 when it is 1.0 would keep alive a connection the client closes, and lose the
    Host requirement's exemption)."""
    _assert_reads_as_llhttp(method, version, fields)


@pytest.mark.parametrize(
    ("method", "version", "fields"),
    [
        (b"GET", b"1.1", []),
        (b"GET", b"1.0", []),
        (b"GET", b"1.0", [(b"Connection", b"keep-alive")]),
        (b"GET", b"1.0", [(b"Proxy-Connection", b"keep-alive")]),
        (b"GET", b"1.0", [(b"PROXY-CONNECTION", b"keep-alive"), (b"Connection", b"keep-alive")]),
        (b"GET", b"1.1", [(b"Connection", b"close")]),
        (b"GET", b"1.1", [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]),
        (b"GET", b"1.1", [(b"Proxy-Connection", b"upgrade"), (b"Upgrade", b"websocket")]),
        (b"CONNECT", b"1.1", []),
        (b"GET", b"2.0", [(b"Connection", b"keep-alive")]),
    ],
)
def test_heads_that_look_like_http_1_1_are_read_as_llhttp_reads_them(
    method: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    _assert_reads_as_llhttp(method, version, fields)


def _assert_reads_as_llhttp(method: bytes, version: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    target = b"gw:443" if method == b"CONNECT" else b"/x"
    head = (
        method
        + b" "
        + target
        + b" HTTP/"
        + version
        + b"\r\nHost: gw\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in fields)
        + b"\r\n"
    )
    expected = _llhttp_reads(head)

    async def parse() -> tuple[object, ...]:
        protocol, _, queued = _connection()
        protocol.data_received(head)
        upgrade = protocol._upgrade
        item = queued[-1] if queued else None
        protocol._task = None
        protocol.connection_lost(None)
        if upgrade is not None:
            return ("upgrade", upgrade.head.split(b"\r\n", 1)[0].rsplit(b"/", 1)[1].decode())
        if isinstance(item, LeanRequest):
            return ("passed", f"{item.version[0]}.{item.version[1]}", item.keep_alive)
        assert item is not None
        return ("refused", item.error.status)

    outcome = asyncio.run(parse())
    if expected is None:
        assert outcome[0] == "refused"
    elif expected[0] not in ("1.0", "1.1"):
        assert outcome == ("refused", 400)
    elif expected[2]:
        assert outcome == ("upgrade", expected[0])
    else:
        assert outcome == ("passed", expected[0], expected[1])
