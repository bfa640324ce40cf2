"""SPEC §4 / Appendix B "Paths" and "Methods": canonical paths and longest-prefix routing."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest, MethodNotAllowed, NotFound
from gateway.routing import (
    MAX_PATH_LENGTH,
    CanonicalTarget,
    RouteTable,
    matches_prefix,
    normalise_target,
)

HOST = "shop.example.com"


def norm(raw: str, host: str | None = HOST) -> CanonicalTarget:
    return normalise_target(raw, host=host)


# (raw target, canonical path, upstream target)
ACCEPTED = [
    pytest.param("/", "/", "/", id="root"),
    pytest.param("/api/x", "/api/x", "/api/x", id="plain"),
    pytest.param("/a/./b", "/a/b", "/a/b", id="dot"),
    pytest.param("/a/b/../c", "/a/c", "/a/c", id="dotdot-inside"),
    pytest.param("/a/..", "/", "/", id="dotdot-to-root"),
    pytest.param("/a/b/..", "/a/", "/a/", id="dotdot-trailing"),
    pytest.param("/a/.", "/a/", "/a/", id="dot-trailing"),
    pytest.param("//x//y", "/x/y", "/x/y", id="repeated-slashes"),
    pytest.param("/x/y//", "/x/y/", "/x/y/", id="repeated-trailing-slash"),
    pytest.param("/x/y/", "/x/y/", "/x/y/", id="trailing-slash-kept"),
    pytest.param("/a/b/%2e%2e/c", "/a/c", "/a/c", id="encoded-dotdot"),
    pytest.param("/a/b/%2E%2e/", "/a/", "/a/", id="mixed-case-encoded-dotdot"),
    pytest.param("/a/b/.%2e/c", "/a/c", "/a/c", id="half-encoded-dotdot"),
    pytest.param("/a/%2e/b", "/a/b", "/a/b", id="encoded-dot"),
    pytest.param("/x/%41", "/x/A", "/x/A", id="unreserved-decoded"),
    pytest.param("/%7euser/%5F%2D", "/~user/_-", "/~user/_-", id="unreserved-symbols"),
    pytest.param("/x/%252F", "/x/%2F", "/x/%252F", id="double-encoded-slash-decoded-once"),
    pytest.param("/x/%25", "/x/%", "/x/%25", id="percent"),
    pytest.param("/x/%252e%252e/y", "/x/%2e%2e/y", "/x/%252e%252e/y", id="double-encoded-dots"),
    pytest.param("/caf%C3%A9", "/café", "/caf%C3%A9", id="utf8"),
    pytest.param("/caf%c3%a9", "/café", "/caf%C3%A9", id="utf8-lower-hex"),
    pytest.param("/a%3Ab%40c%2B", "/a:b@c+", "/a:b@c+", id="reserved-decoded"),
    pytest.param("/a%3Fb%23c", "/a?b#c", "/a%3Fb%23c", id="query-and-hash-stay-escaped"),
    pytest.param("/a|b", "/a|b", "/a%7Cb", id="stray-ascii-reencoded"),
    pytest.param("/.well-known/x", "/.well-known/x", "/.well-known/x", id="dot-prefixed-name"),
    pytest.param("/Api/Fin", "/Api/Fin", "/Api/Fin", id="case-kept"),
    pytest.param("/a?x=1&y=%2F", "/a", "/a?x=1&y=%2F", id="query-raw"),
    pytest.param("/a/../b?q", "/b", "/b?q", id="query-after-resolution"),
    pytest.param("/a?", "/a", "/a", id="empty-query"),
]


@pytest.mark.parametrize(("raw", "path", "upstream"), ACCEPTED)
def test_accepted_targets(raw: str, path: str, upstream: str) -> None:
    target = norm(raw)
    assert target.path == path
    assert target.upstream_target == upstream
    assert norm(target.upstream_target).path == path


def test_query_field() -> None:
    assert norm("/a?x=1&y=%2F").query == "x=1&y=%2F"
    assert norm("/a").query == ""


# (raw target, a phrase the refusal must contain)
REFUSED = [
    pytest.param("/..", "escapes the root", id="dotdot-root"),
    pytest.param("/../etc/passwd", "escapes the root", id="dotdot-leading"),
    pytest.param("/a/../../b", "escapes the root", id="dotdot-escape"),
    pytest.param("/%2e%2e/x", "escapes the root", id="encoded-dotdot-escape"),
    pytest.param("/a/%2E%2e/%2e%2e/", "escapes the root", id="mixed-encoded-escape"),
    pytest.param("/.%2e", "escapes the root", id="half-encoded-escape"),
    pytest.param("//..", "escapes the root", id="slash-dotdot"),
    pytest.param("/a%2Fb", "encoded slash", id="encoded-slash-upper"),
    pytest.param("/a%2fb", "encoded slash", id="encoded-slash-lower"),
    pytest.param("/a%5Cb", "encoded backslash", id="encoded-backslash-upper"),
    pytest.param("/a%5cb", "encoded backslash", id="encoded-backslash-lower"),
    pytest.param("/a%00b", "control character", id="nul"),
    pytest.param("/a%0ab", "control character", id="encoded-lf"),
    pytest.param("/a%0D%0AX-Injected:1", "control character", id="encoded-crlf"),
    pytest.param("/a%7f", "control character", id="encoded-del"),
    pytest.param("/a%C2%85", "control character", id="c1-control"),
    pytest.param("/a\x7f", "control character", id="raw-del"),
    pytest.param("/a\tb", "control character", id="raw-tab"),
    pytest.param("/a\\..\\b", "backslash", id="raw-backslash"),
    pytest.param("/a;jsessionid=x", "semicolon", id="path-parameter"),
    pytest.param("/admin;/x", "semicolon", id="semicolon-segment"),
    pytest.param("/a%3Bjsessionid=x", "semicolon", id="encoded-semicolon"),
    pytest.param("/a%zz", "invalid percent-encoding", id="bad-hex"),
    pytest.param("/a%4", "invalid percent-encoding", id="truncated-escape"),
    pytest.param("/a%", "invalid percent-encoding", id="bare-percent"),
    pytest.param("/a%+1b", "invalid percent-encoding", id="signed-hex"),
    pytest.param("/caf%C3", "invalid UTF-8", id="truncated-utf8"),
    pytest.param("/%C0%AE%C0%AE/x", "invalid UTF-8", id="overlong-dot"),
    pytest.param("/%ED%A0%80", "invalid UTF-8", id="surrogate"),
    pytest.param("/%FF", "invalid UTF-8", id="invalid-octet"),
    pytest.param("/café", "invalid character", id="raw-non-ascii"),
    pytest.param("/a b", "invalid character", id="raw-space"),
    pytest.param("/a#frag", "fragment", id="fragment"),
    pytest.param("/a?q#frag", "fragment", id="fragment-after-query"),
    pytest.param("/a?x=\r\nHost: evil", "invalid character in query", id="query-crlf"),
    pytest.param("*", "unsupported", id="asterisk-form"),
    pytest.param("shop.example.com:443", "unsupported", id="authority-form"),
    pytest.param("a/b", "unsupported", id="relative"),
    pytest.param("", "unsupported", id="empty"),
    pytest.param("ftp://shop.example.com/a", "unsupported", id="other-scheme"),
    pytest.param("http://evil.example/a", "does not match Host", id="absolute-other-host"),
    pytest.param("http://user@shop.example.com/a", "does not match Host", id="absolute-userinfo"),
    pytest.param("http:///a", "does not match Host", id="absolute-empty-authority"),
    pytest.param("http://shop.example.com/..", "escapes the root", id="absolute-escape"),
]


@pytest.mark.parametrize(("raw", "phrase"), REFUSED)
def test_refused_targets(raw: str, phrase: str) -> None:
    with pytest.raises(BadRequest) as caught:
        norm(raw)
    assert phrase in caught.value.detail


def test_refusal_never_echoes_the_path() -> None:
    for raw in ("/SECRETMARK/%2F", "/SECRETMARK/..%2f", "/../SECRETMARK", "/SECRETMARK%zz"):
        with pytest.raises(BadRequest) as caught:
            norm(raw)
        assert "SECRETMARK" not in caught.value.detail


def test_absolute_form_matching_host() -> None:
    target = norm("http://Shop.Example.COM/a/./b?q=1")
    assert (target.path, target.query, target.upstream_target) == ("/a/b", "q=1", "/a/b?q=1")
    assert norm("HTTPS://shop.example.com").path == "/"
    assert norm("http://shop.example.com?x").upstream_target == "/?x"
    assert norm("http://shop.example.com:8443/a", host="shop.example.com:8443").path == "/a"


def test_absolute_form_needs_a_host() -> None:
    with pytest.raises(BadRequest):
        norm("http://shop.example.com/a", host=None)
    with pytest.raises(BadRequest):  # port is part of the authority
        norm("http://shop.example.com:8443/a")


def test_length_bound() -> None:
    at_limit = "/" + "a" * (MAX_PATH_LENGTH - 1)
    assert norm(at_limit).path == at_limit
    with pytest.raises(BadRequest, match="too long"):
        norm(at_limit + "a")
    with pytest.raises(BadRequest, match="too long"):
        norm("/" + "%41" * MAX_PATH_LENGTH)
    # The bound is on the path; a long query is someone else's limit.
    assert norm("/a?" + "q" * MAX_PATH_LENGTH).path == "/a"


# --- property: canonical paths are canonical and stable ---------------------------------------

SEGMENTS = st.sampled_from(
    [
        "", ".", "..", "a", "B", "x.y", "...", ".a", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e",
        "%2e.", "%41", "%7e", "%25", "%252F", "%252e%252e", "%2F", "%5C", "%00", "%3B", "%zz",
        "%4", "%C3%A9", "%C3", "%3F", "%23", "%3A", "%20", "|", "@", "~",
    ]
)  # fmt: skip
PATHS = st.lists(SEGMENTS, max_size=12).map(lambda segs: "/" + "/".join(segs))
MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 500


def _check_canonical(raw: str) -> None:
    try:
        target = norm(raw)
    except BadRequest:
        return
    path = target.path
    assert path.startswith("/")
    assert "/../" not in path and "/./" not in path and "//" not in path
    assert not path.endswith("/..") and not path.endswith("/.")
    assert path not in ("/.", "/..")
    again = norm(target.upstream_target)
    assert again.path == path
    assert again.upstream_target == target.upstream_target


@settings(max_examples=MAX_EXAMPLES, database=None)
@given(PATHS)
def test_property_canonical_and_idempotent(raw: str) -> None:
    _check_canonical(raw)


@settings(max_examples=MAX_EXAMPLES, database=None)
@given(st.text(alphabet=st.sampled_from("/.%2eEfF5cC3A9;\\a?#\x00\x7f"), max_size=40))
def test_property_arbitrary_text_only_bad_request(raw: str) -> None:
    # Anything goes in; only BadRequest may come out, and accepted paths are canonical.
    _check_canonical("/" + raw)


# --- route matching --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    prefix: str
    methods: frozenset[str] | None = None


ROUTES = [
    Route("root", "/"),
    Route("api", "/api"),
    Route("fin", "/api/fin", frozenset({"POST", "GET"})),
    Route("fin-reports", "/api/fin/reports"),
    Route("tools", "/t/"),
]


@pytest.fixture
def table() -> RouteTable[Route]:
    return RouteTable(ROUTES, case_insensitive=False)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/fin", "fin"),
        ("/api/fin/", "fin"),
        ("/api/fin/x", "fin"),
        ("/api/finance", "api"),
        ("/api/fin/reports/2024", "fin-reports"),
        ("/api/fin/reportsx", "fin"),
        ("/api", "api"),
        ("/apix", "root"),
        ("/t", "tools"),
        ("/t/x", "tools"),
        ("/tx", "root"),
        ("/", "root"),
        ("/" + "deep/" * 500, "root"),
    ],
)
def test_longest_prefix_on_segment_boundaries(table: RouteTable[Route], path: str, expected: str) -> None:
    assert table.match(path, "GET").name == expected


def test_case_sensitive_by_default(table: RouteTable[Route]) -> None:
    assert table.match("/API/FIN/x", "DELETE").name == "root"


def test_case_insensitive() -> None:
    table = RouteTable([Route("fin", "/API/Fin", frozenset({"GET"}))], case_insensitive=True)
    assert table.match("/api/fin/X", "GET").name == "fin"
    assert table.match("/Api/FIN", "GET").name == "fin"
    with pytest.raises(NotFound):
        table.match("/api/finance", "GET")


def test_method_not_allowed_has_sorted_allow_and_no_fall_through(table: RouteTable[Route]) -> None:
    # '/api' and '/' would both accept DELETE; the longest prefix decides alone.
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("/api/fin/x", "DELETE")
    assert caught.value.headers == {"Allow": "GET, POST"}
    assert caught.value.status == 405
    assert table.match("/api/fin/x", "POST").name == "fin"


def test_methods_are_case_sensitive(table: RouteTable[Route]) -> None:
    with pytest.raises(MethodNotAllowed):
        table.match("/api/fin", "get")


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT"])
def test_trace_track_connect_refused_unless_listed(table: RouteTable[Route], method: str) -> None:
    # App. C: a route without ``methods`` still refuses them (cross-site tracing, tunnels).
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("/api/x", method)
    assert caught.value.headers == {"Allow": "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"}
    with pytest.raises(MethodNotAllowed) as listed_elsewhere:
        table.match("/api/fin/x", method)
    assert listed_elsewhere.value.headers == {"Allow": "GET, POST"}
    listing = RouteTable([Route("diag", "/diag", frozenset({"GET", method}))])
    assert listing.match("/diag/x", method).name == "diag"


def test_not_found() -> None:
    table = RouteTable([Route("api", "/api")])
    for path in ("/", "/apix", "/other/api", "", "*"):
        with pytest.raises(NotFound):
            table.match(path, "GET")
    with pytest.raises(NotFound):
        RouteTable([]).match("/", "GET")


def test_duplicate_prefixes_refused() -> None:
    with pytest.raises(ValueError, match="share a prefix"):
        RouteTable([Route("a", "/t"), Route("b", "/t/")])
    with pytest.raises(ValueError, match="share a prefix"):
        RouteTable([Route("a", "/T"), Route("b", "/t")], case_insensitive=True)
    assert len(RouteTable([Route("a", "/T"), Route("b", "/t")]).routes) == 2


@pytest.mark.parametrize(
    ("path", "prefix", "ci", "expected"),
    [
        ("/api/fin", "/api/fin", False, True),
        ("/api/fin/x", "/api/fin", False, True),
        ("/api/fin/", "/api/fin/", False, True),
        ("/api/finance", "/api/fin", False, False),
        ("/api", "/api/fin", False, False),
        ("/anything", "/", False, True),
        ("/t/x", "/t/", False, True),
        ("/t", "/t/", False, True),
        ("/API/Fin/x", "/api/fin", False, False),
        ("/API/Fin/x", "/api/fin", True, True),
        ("/API/Finance", "/api/fin", True, False),
    ],
)
def test_matches_prefix(path: str, prefix: str, ci: bool, expected: bool) -> None:
    assert matches_prefix(path, prefix, ci) is expected


@settings(max_examples=MAX_EXAMPLES, database=None)
@given(PATHS, st.booleans())
def test_property_table_agrees_with_matches_prefix(raw: str, ci: bool) -> None:
    try:
        path = norm(raw).path
    except BadRequest:
        return
    routes = [Route("root", "/"), Route("a", "/a"), Route("ab", "/a/B"), Route("e", "/%2e%2e")]
    expected = max(
        (r for r in routes if matches_prefix(path, r.prefix, ci)),
        key=lambda r: len(r.prefix.rstrip("/")),
    )
    assert RouteTable(routes, case_insensitive=ci).match(path, "GET") is expected


def test_remembered_targets_equal_fresh_ones_and_stay_bounded() -> None:
    from gateway import routing

    for raw in ("/erp/api/v1/items?limit=4", "/a/%7Euser/./b//c", "/x/../y?q=1"):
        assert routing.canonical_target(raw, host=None) == normalise_target(raw, host=None)
        assert routing.canonical_target(raw, host=None) is routing.canonical_target(raw, host="h")
    for refused in ("/a/%2Fb", "/../etc/passwd", "/a#frag"):  # refused every time, never remembered
        for _ in range(2):
            with pytest.raises(BadRequest):
                routing.canonical_target(refused, host=None)
        assert refused not in routing._targets
    # SECURITY: absolute-form depends on Host: a target naming another host is never served from memory.
    assert routing.canonical_target("http://h/a", host="h").path == "/a"
    with pytest.raises(BadRequest):
        routing.canonical_target("http://h/a", host="other")
    # SECURITY: memory exhaustion — attacker-chosen targets are remembered up to a bound.
    for i in range(3000):
        routing.canonical_target(f"/p{i}", host=None)
    routing.canonical_target("/" + "l" * 300, host=None)
    assert len(routing._targets) <= 1024 and "/" + "l" * 300 not in routing._targets


def test_a_remembered_path_still_has_each_method_checked_and_the_memory_stays_bounded(
    table: RouteTable[Route],
) -> None:
    """A table remembers which route a path names, never a method's verdict: the path's second
    request with another method is judged afresh (no fall-through, TRACE refused as before)."""
    assert table.match("/api/fin/x", "GET").name == "fin"
    assert "/api/fin/x" in table._matched
    with pytest.raises(MethodNotAllowed) as caught:
        table.match("/api/fin/x", "DELETE")
    assert caught.value.headers == {"Allow": "GET, POST"}
    assert table.match("/api/x", "GET").name == "api"
    with pytest.raises(MethodNotAllowed):
        table.match("/api/x", "TRACE")
    # A 404 is never remembered (nothing to remember it as), nor a path over the length bound.
    strict = RouteTable([Route("api", "/api")])
    for _ in range(2):
        with pytest.raises(NotFound):
            strict.match("/other", "GET")
    assert "/other" not in strict._matched
    assert table.match("/" + "l" * 300, "GET").name == "root"
    assert "/" + "l" * 300 not in table._matched
    # SECURITY: memory exhaustion — attacker-chosen paths are remembered up to a bound.
    for i in range(3000):
        assert table.match(f"/api/p{i}", "GET").name == "api"
    assert len(table._matched) <= 1024
