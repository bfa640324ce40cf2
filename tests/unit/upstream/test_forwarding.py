"""SPEC §8 (client IP), §10 and Appendix B "Forwarding headers": who the client is, and what
the upstream and the client are told."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.tenancy.model import BUILTIN_STRIP_HEADERS, HeaderNameSet
from gateway.upstream import forwarding
from gateway.upstream.forwarding import (
    HOP_BY_HOP,
    HOST_SLOT,
    RESPONSE_STRIPPED,
    TrustedProxies,
    connection_tokens,
    downstream_response_headers,
    never_forwarded_names,
    upstream_request_headers,
)

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300
TRUSTED_NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
PROXIES = TrustedProxies(TRUSTED_NETS)
LB = "10.0.0.5"  # a trusted load balancer
CLIENT = "203.0.113.7"
REQUEST_ID = "r-test"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


# --- TrustedProxies ----------------------------------------------------------------------------


def test_membership() -> None:
    assert "10.1.2.3" in PROXIES
    assert "fd12::1" in PROXIES
    assert "11.0.0.1" not in PROXIES
    assert "2001:db8::1" not in PROXIES
    assert "not-an-ip" not in PROXIES
    assert "" not in PROXIES
    assert "10.0.0.1" not in TrustedProxies([])


def test_remembered_verdicts_match_fresh_ones_and_the_memory_stays_bounded() -> None:
    """Verdicts are memoised per address (issue 13: parsing them was a tenth of a refusal);
    a flood of spoofed hops must neither change an answer nor grow the memo without bound."""
    proxies = TrustedProxies(TRUSTED_NETS)
    for _ in range(2):  # the second round is answered from the memo
        assert proxies.client_ip(LB, ["garbage, 10.0.0.9"]) == "10.0.0.9"
        assert proxies.client_ip(LB, [f"{CLIENT}, 10.0.0.9"]) == CLIENT
        assert "::ffff:10.0.0.1" in proxies and "not-an-ip" not in proxies
    # SECURITY: memory exhaustion — every request brings new X-Forwarded-For hops.
    for n in range(10_000):
        hop = f"198.{n // 256 % 256}.{n % 256}.{n // 65536 + 1}"
        assert proxies.client_ip(LB, [f"{hop}, 10.1.1.1"]) == hop
    assert len(proxies._memo) <= 4096
    assert proxies.client_ip(LB, ["garbage, 10.0.0.9"]) == "10.0.0.9"


def test_untrusted_peer_is_the_client_even_with_x_forwarded_for() -> None:
    assert PROXIES.client_ip(CLIENT, ["1.2.3.4"]) == CLIENT
    assert PROXIES.client_ip(CLIENT, ["10.0.0.9, 1.2.3.4"]) == CLIENT


def test_no_trusted_proxies_configured_ignores_x_forwarded_for() -> None:
    assert TrustedProxies([]).client_ip("10.0.0.5", ["1.2.3.4"]) == "10.0.0.5"


def test_trusted_peer_without_x_forwarded_for_is_the_client() -> None:
    assert PROXIES.client_ip(LB, []) == LB


def test_trusted_peer_gives_rightmost_untrusted_hop() -> None:
    # The client may prepend anything; only the hop the load balancer appended counts.
    assert PROXIES.client_ip(LB, ["6.6.6.6, 198.51.100.1, " + CLIENT]) == CLIENT


def test_chain_of_trusted_proxies_is_skipped() -> None:
    assert PROXIES.client_ip(LB, [f"6.6.6.6, {CLIENT}, 10.2.0.1, 10.3.0.1"]) == CLIENT


def test_all_hops_trusted_gives_the_leftmost_trusted_hop() -> None:
    assert PROXIES.client_ip(LB, ["10.9.9.9, 10.2.0.1"]) == "10.9.9.9"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        pytest.param(["garbage"], LB, id="only-garbage"),
        pytest.param([f"{CLIENT}, garbage"], LB, id="garbage-rightmost"),
        pytest.param([f"garbage, {CLIENT}"], CLIENT, id="garbage-left-of-client"),
        pytest.param([f"{CLIENT}, garbage, 10.2.0.1"], "10.2.0.1", id="garbage-behind-trusted-hop"),
        pytest.param([f"{CLIENT}:4711"], LB, id="ip-with-port"),
        pytest.param(["unknown"], LB, id="unknown-token"),
        pytest.param([""], LB, id="empty-header"),
        pytest.param([f"{CLIENT},"], LB, id="trailing-comma"),
    ],
)
def test_garbage_ends_the_walk_at_the_last_vouched_hop(xff: list[str], expected: str) -> None:
    assert PROXIES.client_ip(LB, xff) == expected


def test_whitespace_around_hops_is_ignored() -> None:
    assert PROXIES.client_ip(LB, [f"  {CLIENT}  ,   10.2.0.1  "]) == CLIENT


def test_ipv6_hops_and_peers() -> None:
    assert PROXIES.client_ip("fd00::1", ["2001:db8::42"]) == "2001:db8::42"
    assert PROXIES.client_ip("fd00::1", ["2001:db8::42, fd00::2"]) == "2001:db8::42"
    assert PROXIES.client_ip(LB, ["2001:db8::42, fd00::2, 10.1.1.1"]) == "2001:db8::42"
    assert PROXIES.client_ip("2001:db8::99", ["2001:db8::42"]) == "2001:db8::99"


def test_multiple_x_forwarded_for_lines_form_one_list() -> None:
    # Lines are concatenated in order (RFC 9110 §5.3), so the last line holds the rightmost hops.
    assert PROXIES.client_ip(LB, ["6.6.6.6", f"{CLIENT}, 10.2.0.1"]) == CLIENT
    assert PROXIES.client_ip(LB, [CLIENT, "10.2.0.1", "10.3.0.1"]) == CLIENT
    assert PROXIES.client_ip(LB, [CLIENT, "198.51.100.9"]) == "198.51.100.9"


# --- upstream_request_headers ------------------------------------------------------------------


def upstream(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str = CLIENT,
    trusted: bool = False,
    scheme: str = "https",
    host: str = "shop.example.com",
    upstream_host: str = "erp.internal:9000",
    drop: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """The pairs as the transport sends them (Host in its slot), less the request id."""
    pairs = upstream_request_headers(
        incoming,
        peer_ip=peer,
        peer_trusted=trusted,
        scheme=scheme,
        host=host,
        request_id=REQUEST_ID,
        never_forwarded=never_forwarded_names(drop),
    )
    return CIMultiDict(
        ("Host", upstream_host) if pair is HOST_SLOT else pair
        for pair in pairs.with_host_slot()
        if pair != ("X-Request-ID", REQUEST_ID)
    )


def test_connection_tokens_are_collected_from_every_line() -> None:
    tokens = connection_tokens(headers(("Connection", "keep-alive, X-Foo"), ("connection", " Upgrade ,,")))
    assert tokens == {"keep-alive", "x-foo", "upgrade"}


@pytest.mark.parametrize("value", ["keep-alive", "Keep-Alive", "close", "Close", "KEEP-ALIVE", " close"])
def test_usual_connection_values_parse_like_any_other(value: str) -> None:
    """The remembered values (nearly every upstream sends ``keep-alive``) give what parsing does."""
    assert connection_tokens(headers(("Connection", value))) == {value.strip().lower()}


def test_a_usual_connection_value_beside_another_line_still_names_both() -> None:
    # SECURITY: hop-by-hop smuggling — a second Connection line must not be skipped by the memo.
    tokens = connection_tokens(headers(("Connection", "keep-alive"), ("Connection", "X-Internal")))
    assert tokens == {"keep-alive", "x-internal"}
    response = downstream_response_headers(
        headers(("Connection", "close"), ("Connection", "X-Internal"), ("X-Internal", "topology")), tls=False
    )
    assert "X-Internal" not in response


def test_hop_by_hop_headers_are_removed() -> None:
    out = upstream(
        headers(
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic abc"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("X-Secret-Hop", "named in Connection"),
            ("Accept", "application/json"),
            ("Authorization", "Bearer t"),
        )
    )
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "X-Secret-Hop",
    ):
        assert name not in out, name
    assert out["Accept"] == "application/json"
    assert out["Authorization"] == "Bearer t"


def test_end_to_end_headers_keep_order_and_repeats() -> None:
    out = upstream(headers(("Cookie", "a=1"), ("X-Trace", "1"), ("Cookie", "b=2")))
    assert out.getall("Cookie") == ["a=1", "b=2"]
    assert out["X-Trace"] == "1"


def test_drop_removes_named_headers() -> None:
    out = upstream(
        headers(("X-Tenant-ID", "evil"), ("X-User-ID", "root"), ("Accept", "*/*")),
        drop=frozenset({"x-tenant-id", "x-user-id"}),
    )
    assert "X-Tenant-ID" not in out
    assert "X-User-ID" not in out
    assert out["Accept"] == "*/*"


def test_untrusted_peer_forwarding_headers_are_replaced() -> None:
    out = upstream(
        headers(
            ("X-Forwarded-For", "1.1.1.1"),
            ("X-Forwarded-For", "2.2.2.2"),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Port", "80"),
            ("X-Real-IP", "3.3.3.3"),
            ("Forwarded", "for=4.4.4.4;proto=http"),
        ),
        peer=CLIENT,
        trusted=False,
    )
    assert out.getall("X-Forwarded-For") == [CLIENT]
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["shop.example.com"]
    assert out.getall("Forwarded") == [f'for={CLIENT};proto=https;host="shop.example.com"']
    assert "X-Forwarded-Port" not in out
    assert "X-Real-IP" not in out


FRAMEWORK_FORWARDING = (
    ("X-Forwarded-Prefix", "/evil"),
    ("X-Forwarded-Server", "evil.example"),
    ("x-forwarded-port", "8443"),
    ("X-Forwarded-Ssl", "on"),
    ("X-FORWARDED-SCHEME", "https"),
    ("X-Forwarded-Uri", "/admin"),
    ("X-Forwarded", "for=6.6.6.6"),
)


def test_untrusted_peer_every_x_forwarded_header_is_dropped() -> None:
    # SPEC §10 / App. B: frameworks build URLs and redirects from -Prefix, -Port, -Ssl, ...
    out = upstream(headers(*FRAMEWORK_FORWARDING), peer=CLIENT, trusted=False)
    assert {name.lower() for name in out if name.lower().startswith("x-forwarded")} == {
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
    assert out["X-Forwarded-For"] == CLIENT


def test_trusted_peer_keeps_framework_forwarding_headers() -> None:
    out = upstream(headers(*FRAMEWORK_FORWARDING), peer=LB, trusted=True)
    for name, value in FRAMEWORK_FORWARDING:
        assert out.getall(name) == [value], name


OVERRIDES = (
    ("X-HTTP-Method-Override", "DELETE"),
    ("x-http-method-override", "PUT"),
    ("X-HTTP-Method", "DELETE"),
    ("X-METHOD-OVERRIDE", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("x-rewrite-url", "/admin"),
)


@pytest.mark.parametrize("trusted", [False, True])
def test_method_and_url_overrides_are_always_removed(trusted: bool) -> None:
    out = upstream(headers(*OVERRIDES, ("Accept", "*/*")), peer=LB if trusted else CLIENT, trusted=trusted)
    for name, _ in OVERRIDES:
        assert name not in out, name
    assert out["Accept"] == "*/*"


def test_trusted_peer_hop_is_appended() -> None:
    out = upstream(
        headers(
            ("X-Forwarded-For", f"6.6.6.6, {CLIENT}"),
            ("X-Forwarded-For", "10.2.0.1"),
            ("Forwarded", "for=203.0.113.7"),
            ("Forwarded", "for=10.2.0.1"),
        ),
        peer=LB,
        trusted=True,
    )
    assert out.getall("X-Forwarded-For") == [f"6.6.6.6, {CLIENT}, 10.2.0.1, {LB}"]
    assert out.getall("Forwarded") == [
        f'for=203.0.113.7, for=10.2.0.1, for={LB};proto=https;host="shop.example.com"'
    ]


def test_trusted_peer_keeps_its_proto_host_port_and_real_ip() -> None:
    out = upstream(
        headers(
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "public.example"),
            ("X-Forwarded-Port", "443"),
            ("X-Real-IP", CLIENT),
        ),
        peer=LB,
        trusted=True,
        scheme="http",
        host="gateway.internal:8080",
    )
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["public.example"]
    assert out["X-Forwarded-Port"] == "443"
    assert out["X-Real-IP"] == CLIENT
    # The gateway's own hop describes the connection it saw.
    assert out["Forwarded"] == f'for={LB};proto=http;host="gateway.internal:8080"'


def test_trusted_peer_without_forwarding_headers_gets_them_set() -> None:
    out = upstream(headers(), peer=LB, trusted=True, scheme="http")
    assert out["X-Forwarded-For"] == LB
    assert out["X-Forwarded-Proto"] == "http"
    assert out["X-Forwarded-Host"] == "shop.example.com"


def test_forwarded_quotes_ipv6_nodes() -> None:
    out = upstream(headers(), peer="2001:db8::7")
    assert out["Forwarded"] == 'for="[2001:db8::7]";proto=https;host="shop.example.com"'
    assert out["X-Forwarded-For"] == "2001:db8::7"  # X-Forwarded-For carries it bare


def test_forwarded_without_host_has_no_host_parameter() -> None:
    out = upstream(headers(), host="")
    assert out["Forwarded"] == f"for={CLIENT};proto=https"
    assert "X-Forwarded-Host" not in out


def _forwarded_params(value: str) -> list[tuple[str, str]]:
    """RFC 7239 pairs of one Forwarded header value (quoted-strings with backslash escapes)."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(value):
        while i < len(value) and value[i] in " ;,":
            i += 1
        start = value.find("=", i)
        if start < 0:
            break
        name = value[i:start].strip().lower()
        i = start + 1
        if i < len(value) and value[i] == '"':
            i += 1
            chars: list[str] = []
            while i < len(value) and value[i] != '"':
                if value[i] == "\\":
                    i += 1
                chars.append(value[i])
                i += 1
            i += 1
            pairs.append((name, "".join(chars)))
        else:
            end = i
            while end < len(value) and value[end] not in ";,":
                end += 1
            pairs.append((name, value[i:end]))
            i = end
    return pairs


def test_forwarded_parser_helper_reads_quoted_strings() -> None:
    assert _forwarded_params('for="[2001:db8::1]";proto=https;host="a\\"b"') == [
        ("for", "[2001:db8::1]"),
        ("proto", "https"),
        ("host", 'a"b'),
    ]


def test_client_host_cannot_inject_forwarded_parameters() -> None:
    out = upstream(headers(), peer=CLIENT, host='shop.example.com";for=6.6.6.6;x="')
    params = _forwarded_params(out["Forwarded"])
    assert [value for name, value in params if name == "for"] == [CLIENT]


def test_host_is_replaced_and_expect_dropped() -> None:
    out = upstream(
        headers(("Host", "shop.example.com"), ("Expect", "100-continue"), ("Content-Length", "5")),
        upstream_host="erp.internal:9000",
    )
    assert out.getall("Host") == ["erp.internal:9000"]
    assert "Expect" not in out
    assert out["Content-Length"] == "5"


# The property: an untrusted peer can never choose its client IP or what the upstream sees.
untrusted_peers = st.ip_addresses().map(str).filter(lambda ip: ip not in PROXIES)
hop = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.1", "10.255.0.9", "fd00::1", LB]),  # trusted-looking hops
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)
xff_lines = st.lists(st.lists(hop, max_size=4).map(", ".join), max_size=5)


@settings(max_examples=MAX_EXAMPLES, database=None, deadline=None)
@given(peer=untrusted_peers, lines=xff_lines)
def test_untrusted_peer_property(peer: str, lines: list[str]) -> None:
    assert PROXIES.client_ip(peer, lines) == peer
    incoming = headers(*[("X-Forwarded-For", line) for line in lines])
    out = upstream(incoming, peer=peer, trusted=peer in PROXIES)
    assert out.getall("X-Forwarded-For") == [peer]


# --- downstream_response_headers ---------------------------------------------------------------


def test_response_fingerprints_and_hop_by_hop_are_removed() -> None:
    out = downstream_response_headers(
        CIMultiDict(
            [
                ("Server", "nginx/1.2.3"),
                ("X-Powered-By", "PHP/8.1"),
                ("Connection", "keep-alive, X-Backend-Node"),
                ("X-Backend-Node", "erp-3"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("Content-Length", "12"),
                ("Content-Type", "application/json"),
                ("Set-Cookie", "a=1"),
                ("Set-Cookie", "b=2"),
            ]
        ),
        tls=False,
    )
    for name in (
        "Server",
        "X-Powered-By",
        "Connection",
        "X-Backend-Node",
        "Keep-Alive",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    ):
        assert name not in out, name
    assert out["Content-Type"] == "application/json"
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]


def test_nosniff_added_and_not_duplicated() -> None:
    assert downstream_response_headers(CIMultiDict(), tls=False)["X-Content-Type-Options"] == "nosniff"
    kept = downstream_response_headers(CIMultiDict([("x-content-type-options", "nosniff")]), tls=False)
    assert kept.getall("X-Content-Type-Options") == ["nosniff"]


def test_hsts_only_on_tls_listeners() -> None:
    plain = downstream_response_headers(CIMultiDict(), tls=False)
    assert "Strict-Transport-Security" not in plain
    secure = downstream_response_headers(
        CIMultiDictProxy(CIMultiDict([("Strict-Transport-Security", "max-age=0")])), tls=True
    )
    # The gateway's policy replaces whatever the upstream said.
    assert secure.getall("Strict-Transport-Security") == ["max-age=31536000; includeSubDomains"]
    assert secure["X-Content-Type-Options"] == "nosniff"


def test_underscore_spellings_are_judged_as_the_dash_spellings_they_become_in_cgi() -> None:
    """SECURITY: a WSGI/CGI backend reads X_Forwarded_For as X-Forwarded-For and X_Tenant_ID as
    X-Tenant-ID; an underscore must not carry a forged header past the gateway's checks."""
    out = upstream(
        CIMultiDictProxy(
            CIMultiDict(
                [
                    ("X_Forwarded_For", "203.0.113.66"),
                    ("x_forwarded_prefix", "/evil"),
                    ("X_HTTP_Method_Override", "DELETE"),
                    ("X_Tenant_ID", "globex"),
                    ("X-Tenant_ID", "globex"),
                    ("Keep_Alive", "timeout=5"),
                    ("X_Custom_Ok", "kept"),
                ]
            )
        ),
        drop=HeaderNameSet(BUILTIN_STRIP_HEADERS),
    )
    names = {name.lower() for name in out}
    assert "x_custom_ok" in names
    assert not {"x_forwarded_for", "x_forwarded_prefix", "x_http_method_override", "x_tenant_id"} & names
    assert "x-tenant_id" not in names and "keep_alive" not in names
    assert out.getall("X-Forwarded-For") == [CLIENT]


def _reference_downstream(upstream: CIMultiDict[str]) -> list[tuple[str, str]]:
    """The filter as first written: three set lookups and a Content-Length test per header."""
    named_hop = connection_tokens(upstream)
    kept: list[tuple[str, str]] = []
    for name, value in upstream.items():
        lower = name.lower()
        if (
            lower in HOP_BY_HOP
            or lower in named_hop
            or lower in RESPONSE_STRIPPED
            or lower == "content-length"
        ):
            continue
        kept.append((name, value))
    return kept


@pytest.mark.parametrize(
    "connection",
    [
        (),
        ("keep-alive",),
        ("Keep-Alive",),
        ("close",),
        ("Close",),
        ("close, X-Hop",),
        ("keep-alive", "X-Hop"),
    ],
)
def test_response_filter_keeps_exactly_what_the_reference_keeps(connection: tuple[str, ...]) -> None:
    """The precomputed dropped-name sets (one per usual Connection value) drop the same names."""
    pairs = [("Connection", value) for value in connection] + [
        ("Server", "nginx"),
        ("close", "a header named like a token"),
        ("X-Hop", "named in Connection"),
        ("content-LENGTH", "3"),
        ("Keep-Alive", "timeout=5"),
        ("Set-Cookie", "a=1"),
        ("Date", "today"),
        ("Set-Cookie", "b=2"),
    ]
    upstream = CIMultiDict(pairs)
    out = downstream_response_headers(upstream, tls=False)
    assert list(out.items()) == [*_reference_downstream(upstream), ("X-Content-Type-Options", "nosniff")]


NOSNIFF = ("X-Content-Type-Options", "nosniff")


def test_response_filter_memo_answers_each_connection_value_apart() -> None:
    """The names a fixed set keeps are remembered per set: a header named ``close`` is kept
    without a Connection header and dropped under ``Connection: close``, whichever came first."""
    for _ in range(2):
        for connection in ((), ("close",), ("keep-alive",), ()):
            upstream = CIMultiDict([*(("Connection", value) for value in connection), ("close", "x")])
            out = downstream_response_headers(upstream, tls=False)
            assert list(out.items()) == [
                *_reference_downstream(upstream),
                ("X-Content-Type-Options", "nosniff"),
            ]


def test_response_filter_memo_stays_bounded() -> None:
    """Header names are the upstream's to invent: the memo of kept names cannot grow without end,
    and answers stay right across its clearing."""
    limit = forwarding._KEPT_LIMIT
    for start in range(0, 3 * limit, 500):
        upstream = CIMultiDict([(f"X-N{i}", "v") for i in range(start, start + 500)] + [("Server", "s")])
        out = downstream_response_headers(upstream, tls=False)
        assert list(out.items()) == [*_reference_downstream(upstream), ("X-Content-Type-Options", "nosniff")]
        assert all(
            len(memo) <= limit for _, memo in forwarding._USUAL_RESPONSE_DROPPED.values() if memo is not None
        )
        assert len(forwarding._PLAIN_RESPONSE_DROPPED[1] or {}) <= limit


def _names_sent(
    pairs: list[tuple[str, str]], never: frozenset[str], *, host: str = "shop.example"
) -> list[str]:
    out = upstream_request_headers(
        headers(*pairs),
        peer_ip=CLIENT,
        peer_trusted=False,
        scheme="https",
        host=host,
        request_id=REQUEST_ID,
        never_forwarded=never,
    )
    return [name for name, _ in out.pairs()]


def test_header_name_classes_are_remembered_per_never_forwarded_set() -> None:
    """A reload may strip other identity headers: what one runtime's set dropped, another's keeps,
    whichever was asked first."""
    strict = never_forwarded_names(frozenset({"x-internal-token"}))
    lax = never_forwarded_names(frozenset())
    pairs = [("X-Internal-Token", "t"), ("X_Internal_Token", "t"), ("Accept", "*/*")]
    for _ in range(2):
        assert _names_sent(pairs, lax)[:3] == ["X-Internal-Token", "X_Internal_Token", "Accept"]
        assert _names_sent(pairs, strict)[:1] == ["Accept"] and "X-Internal-Token" not in _names_sent(
            pairs, strict
        )


def test_names_listed_in_connection_are_dropped_past_the_remembered_class() -> None:
    """``Connection: close, X-Listed`` drops a header named Close or X_Listed even though its name
    was remembered as forwarded when no Connection header listed it."""
    never = never_forwarded_names(frozenset())
    pairs = [("Close", "1"), ("X_Listed", "2"), ("Accept", "*/*")]
    assert _names_sent(pairs, never)[:3] == ["Close", "X_Listed", "Accept"]
    listed = [("Connection", "close, X-Listed"), *pairs]
    assert _names_sent(listed, never)[0] == "Accept"
    assert _names_sent([("Connection", "keep-alive"), *pairs], never)[:3] == ["Close", "X_Listed", "Accept"]


def test_remembered_forwarding_headers_follow_each_peer_and_host_and_stay_bounded() -> None:
    never = never_forwarded_names(frozenset())
    for i in range(3 * forwarding._TAILS_LIMIT):
        host = f'h{i}"x.example'
        out = upstream_request_headers(
            headers(("Accept", "*/*")),
            peer_ip=f"203.0.{i % 256}.{i // 256}",
            peer_trusted=False,
            scheme="https" if i % 2 else "http",
            host=host,
            request_id=REQUEST_ID,
            never_forwarded=never,
        )
        sent = dict(out.pairs())
        assert sent["X-Forwarded-Host"] == host
        scheme = "https" if i % 2 else "http"
        assert sent["Forwarded"] == f'for=203.0.{i % 256}.{i // 256};proto={scheme};host="h{i}\\"x.example"'
        assert len(forwarding._FORWARDING_TAILS) <= forwarding._TAILS_LIMIT
    for i in range(3 * forwarding._CLASSES_LIMIT):
        assert _names_sent([(f"X-N{i}", "v"), ("X-Tenant-ID", "evil")], BUILTIN_NEVER)[0] == f"X-N{i}"
        assert "X-Tenant-ID" not in _names_sent([("X-Tenant-ID", "evil")], BUILTIN_NEVER)
        assert all(len(classes) <= forwarding._CLASSES_LIMIT for classes in forwarding._NAME_CLASSES.values())


BUILTIN_NEVER = never_forwarded_names(frozenset(h.lower() for h in BUILTIN_STRIP_HEADERS))
