"""The upstream request head from ``Name: value`` lines is byte for byte the head the CIMultiDict
chain wrote (issue 13): same order, spelling and values; the same CIMultiDict for the aiohttp
transport. The reference below is the former code, frozen: the forwarding headers
(``upstream_request_headers``), what ``proxy_request`` set on them, and ``request_head`` — with
one change made on purpose (underscore spellings of X-Request-ID and Content-Length dropped)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.auth.jwt import VerifiedClaims
from gateway.header_lines import header_line, line_name
from gateway.proxy import _set_content_length
from gateway.tenancy.context import ContextSigner
from gateway.tenancy.identity import identity_headers
from gateway.tenancy.model import BUILTIN_STRIP_HEADERS
from gateway.upstream.forwarding import (
    FORWARDING_HEADERS,
    FORWARDING_PREFIX,
    connection_tokens,
    never_forwarded_names,
    upstream_request_headers,
)
from gateway.upstream.request_head import request_head

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 400
NEVER = never_forwarded_names(frozenset(h.lower() for h in (*BUILTIN_STRIP_HEADERS, "X-Internal-Token")))
UPSTREAM_HOST = "erp.internal:9000"
REQUEST_ID = "r-7b3d4c5e"
IDENTITY = (
    (istr("X-Tenant-ID"), "acme"),
    (istr("X-User-ID"), "u-1"),
    (istr("X-User-Roles"), "buyer"),
    (istr("X-Gateway-Context"), "v1.sig"),
)


# --- the former chain, frozen -------------------------------------------------------------------
def _old_forwarding(
    incoming: CIMultiDictProxy[str], *, peer_ip: str, peer_trusted: bool, scheme: str, host: str
) -> CIMultiDict[str]:
    named_hop = connection_tokens(incoming)
    kept: list[tuple[str, str]] = []
    for name, value in incoming.items():
        lower = name.lower()
        if "_" in lower:
            lower = lower.replace("_", "-")
        if lower in NEVER or lower in named_hop:
            continue
        if not peer_trusted and (lower.startswith(FORWARDING_PREFIX) or lower in FORWARDING_HEADERS):
            continue
        if lower in ("x-request-id", "content-length") and "_" in name:
            # The one change made on purpose since: X_Request_ID / Content_Length would reach a
            # CGI/WSGI backend as a second request id or a length (now dropped, review finding).
            continue
        kept.append((name, value))
    out: CIMultiDict[str] = CIMultiDict(kept)
    node = f'"[{peer_ip}]"' if ":" in peer_ip else peer_ip
    quoted_host = host.replace("\\", "\\\\").replace('"', '\\"')
    element = f"for={node};proto={scheme}" + (f';host="{quoted_host}"' if host else "")
    if not peer_trusted:
        out[istr("X-Forwarded-For")] = peer_ip
        out[istr("X-Forwarded-Proto")] = scheme
        if host:
            out[istr("X-Forwarded-Host")] = host
        out[istr("Forwarded")] = element
    else:
        prior_xff = out.popall(istr("X-Forwarded-For"), [])
        out[istr("X-Forwarded-For")] = ", ".join([*prior_xff, peer_ip])
        if istr("X-Forwarded-Proto") not in out:
            out[istr("X-Forwarded-Proto")] = scheme
        if istr("X-Forwarded-Host") not in out and host:
            out[istr("X-Forwarded-Host")] = host
        prior_fwd = out.popall(istr("Forwarded"), [])
        out[istr("Forwarded")] = ", ".join([*prior_fwd, element])
    out[istr("Host")] = ""
    return out


def _old_head(
    method: str, target: str, headers: CIMultiDict[str], *, has_body: bool
) -> tuple[bytes, int | None]:
    length: int | None = None
    if "Content-Length" in headers or "Transfer-Encoding" in headers:
        headers = headers.copy()
        declared = headers.popall("Content-Length", [])
        headers.popall("Transfer-Encoding", None)
        if has_body and len(declared) == 1 and declared[0].isascii() and declared[0].isdigit():
            length = int(declared[0])
    lines = [f"{method} {target} HTTP/1.1"]
    lines += map(": ".join, headers.items())
    if not has_body:
        if method in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
    else:
        lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    probe = "".join(lines)
    if "\n" in probe or "\r" in probe or "\x00" in probe or " " in target:
        raise ValueError("A request line or header contains CR, LF, NUL or a stray space")
    text = "\r\n".join(lines) + "\r\n\r\n"
    return text.encode("utf-8", "surrogateescape"), length


class Case:
    def __init__(
        self,
        pairs: list[tuple[str, str]],
        *,
        method: str = "GET",
        trusted: bool = False,
        peer: str = "203.0.113.7",
        host: str = "shop.example.com",
        tracestate: str | None = None,
        identity: bool = True,
        whole_body: bytes | None = None,
        has_body: bool = False,
    ) -> None:
        self.incoming = CIMultiDictProxy(CIMultiDict(pairs))
        self.method, self.trusted, self.peer, self.host = method, trusted, peer, host
        self.tracestate, self.identity = tracestate, identity
        self.whole_body, self.has_body = whole_body, has_body or whole_body is not None

    def old(self) -> tuple[CIMultiDict[str], tuple[bytes, int | None]]:
        """What proxy_request and the transports did with a CIMultiDict."""
        headers = _old_forwarding(
            self.incoming, peer_ip=self.peer, peer_trusted=self.trusted, scheme="https", host=self.host
        )
        headers[istr("X-Request-ID")] = REQUEST_ID
        headers[istr("traceparent")] = "00-trace-span-01"
        if self.tracestate is not None:
            headers[istr("tracestate")] = self.tracestate
        if self.identity:
            headers.extend(IDENTITY)
        if self.whole_body is not None:
            headers[istr("Content-Length")] = str(len(self.whole_body))
        headers[istr("Host")] = UPSTREAM_HOST
        return headers, _old_head(self.method, "/api/v1/orders?page=2", headers, has_body=self.has_body)

    def new(self) -> tuple[CIMultiDict[str], tuple[bytes, int | None]]:
        """What proxy_request and the transports do with the header lines."""
        pairs = upstream_request_headers(
            self.incoming,
            peer_ip=self.peer,
            peer_trusted=self.trusted,
            scheme="https",
            host=self.host,
            request_id=REQUEST_ID,
            never_forwarded=NEVER,
        )
        pairs.append(header_line(istr("traceparent"), "00-trace-span-01"))
        if self.tracestate is not None:
            pairs.append(header_line(istr("tracestate"), self.tracestate))
        if self.identity:
            pairs.extend(header_line(name, value) for name, value in IDENTITY)
        if self.whole_body is not None:
            _set_content_length(pairs, str(len(self.whole_body)))
        head = request_head(
            self.method, "/api/v1/orders?page=2", pairs, UPSTREAM_HOST, has_body=self.has_body
        )
        # as AiohttpTransport.send builds it
        aiohttp_headers: CIMultiDict[str] = CIMultiDict(pairs.with_host_slot())
        aiohttp_headers[istr("Host")] = UPSTREAM_HOST
        return aiohttp_headers, head


SPOOFS = [
    (spelling, "evil")
    for name in ("X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Gateway-Context", "X-Internal-Token")
    for spelling in (name, name.lower(), name.upper(), name.replace("-", "_"), name.lower().replace("-", "_"))
]
CASES = {
    "plain": Case([("Host", "shop.example.com"), ("Accept", "*/*"), ("User-Agent", "wrk")]),
    "repeated and mixed case": Case(
        [("Cookie", "a=1"), ("accept", "x"), ("COOKIE", "b=2"), ("X-Custom", "1"), ("x-custom", "2")]
    ),
    "identity spoofing in every spelling": Case([*SPOOFS, ("Accept", "*/*"), *SPOOFS]),
    "connection-listed and hop-by-hop": Case(
        [
            ("Connection", "keep-alive, X-Secret, x_other"),
            ("X-Secret", "1"),
            ("x-secret", "2"),
            ("X-Other", "3"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Trailer", "X"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin"),
            ("Expect", "100-continue"),
            ("traceparent", "00-client-01"),
            ("TraceState", "client=1"),
        ]
    ),
    "client request id in place": Case(
        [("A", "1"), ("x-request-id", "c1"), ("B", "2"), ("X-REQUEST-ID", "c2"), ("X_Request_ID", "c3")]
    ),
    "request id named in connection": Case([("Connection", "X-Request-ID"), ("X-Request-ID", "c1")]),
    "untrusted forwarding dropped": Case(
        [
            ("X-Forwarded-For", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("X_Forwarded_Host", "evil"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("X-Forwarded-Prefix", "/x"),
        ]
    ),
    "trusted forwarding extended": Case(
        [
            ("X-Forwarded-For", "6.6.6.6"),
            ("A", "1"),
            ("x-forwarded-for", "203.0.113.7, 10.2.0.1"),
            ("X-Forwarded-Proto", "http"),
            ("X_Forwarded_For", "9.9.9.9"),
            ("forwarded", "for=6.6.6.6"),
            ("X-Forwarded-Host", "public.example"),
        ],
        trusted=True,
        peer="10.0.0.5",
    ),
    "trusted without forwarding headers": Case([("A", "1")], trusted=True, peer="fd00::5"),
    "untrusted ipv6 and quoted host": Case([("A", "1")], peer="2001:db8::1", host='a"b\\c'),
    "no host": Case([("A", "1")], host=""),
    "tracestate": Case([("A", "1")], tracestate="vendor=1"),
    "no identity": Case([("A", "1")], identity=False),
    "post with content-length": Case([("Content-Length", "5"), ("A", "1")], method="POST", has_body=True),
    "post content-length mixed case": Case([("content-LENGTH", "5")], method="POST", has_body=True),
    "post chunked": Case([("Transfer-Encoding", "chunked"), ("A", "1")], method="POST", has_body=True),
    "post bad length": Case([("Content-Length", "+5")], method="PUT", has_body=True),
    "post no body": Case([("Content-Length", "0")], method="POST"),
    "get with length": Case([("Content-Length", "3")]),
    "head": Case([("A", "1")], method="HEAD"),
    "webhook body replaces length": Case(
        [("Content-Length", "999"), ("A", "1")], method="POST", whole_body=b"hello"
    ),
    "webhook body after chunked": Case([("Transfer-Encoding", "chunked")], method="POST", whole_body=b"hi"),
    "webhook body repeated lengths": Case(
        [("Content-Length", "5"), ("B", "2"), ("content-length", "5")], method="POST", whole_body=b"hello"
    ),
    "surrogate escaped": Case([("X-Name", b"caf\xe9".decode("utf-8", "surrogateescape"))]),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_head_and_the_aiohttp_headers_are_what_they_were(case: Case) -> None:
    old_headers, old_head = case.old()
    new_headers, new_head = case.new()
    assert new_head == old_head
    assert list(new_headers.items()) == list(old_headers.items())


def test_injection_is_refused_as_before() -> None:
    case = Case([("X-Evil", "a\r\nX-Injected: 1")])
    with pytest.raises(ValueError, match="CR, LF"):
        case.old()
    with pytest.raises(ValueError, match="CR, LF"):
        case.new()


NAMES = st.sampled_from(
    [
        "Accept",
        "Cookie",
        "X-Tenant-ID",
        "X-User-Roles",
        "X-Internal-Token",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Forwarded",
        "X-Real-IP",
        "X-Request-ID",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "X-Listed",
        "Host",
        "traceparent",
    ]
)
SPELLINGS = st.sampled_from([str, str.lower, str.upper, lambda n: n.replace("-", "_")])
VALUES = st.sampled_from(["1", "x-listed", "keep-alive, X-Listed", "10.0.0.9", "5", "chunked", "a b"])


@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(
    pairs=st.lists(st.tuples(NAMES, SPELLINGS, VALUES), max_size=12),
    trusted=st.booleans(),
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    has_body=st.booleans(),
    whole=st.booleans(),
)
def test_any_request_head_is_what_it_was(
    pairs: list[tuple[str, object, str]], trusted: bool, method: str, has_body: bool, whole: bool
) -> None:
    headers = [(spell(name), value) for name, spell, value in pairs]  # type: ignore[operator]
    case = Case(
        headers,
        method=method,
        trusted=trusted,
        peer="10.0.0.5" if trusted else "203.0.113.7",
        has_body=has_body,
        whole_body=b"body" if whole else None,
    )
    old_headers, old_head = case.old()
    new_headers, new_head = case.new()
    assert new_head == old_head
    assert list(new_headers.items()) == list(old_headers.items())


def test_the_identity_hook_appends_only_names_the_gateway_owns() -> None:
    """``UpstreamHeaders.framed`` looks at the client's pairs only: a header hook must never add
    Content-Length, Transfer-Encoding or Host, and adds only names no client copy of remains."""
    claims = VerifiedClaims(
        "https://id.example", "sam", "acme", ("erp",), ("buyer",), (), None, 1, 2, None, {}
    )
    lines = identity_headers(ContextSigner("k" * 32), "GET", "/x", "acme", claims, None, "rid")
    names = {line_name(line).lower() for line in lines}
    assert names == {h.lower() for h in BUILTIN_STRIP_HEADERS}
    assert names <= NEVER
    assert not names & {"content-length", "transfer-encoding", "host"}


def test_underscore_spellings_of_the_request_id_and_length_never_reach_the_upstream() -> None:
    """A CGI/WSGI backend reads X_Request_ID as X-Request-ID: a second id beside the gateway's
    (the one its signed context names) would let a client confuse the backend's correlation."""
    _, (head, _) = Case(
        [("X_Request_ID", "client-id"), ("content_length", "99"), ("A", "1")], method="POST", has_body=True
    ).new()
    assert b"client-id" not in head and b"99" not in head
    assert f"X-Request-ID: {REQUEST_ID}\r\n".encode() in head
