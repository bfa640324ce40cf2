"""SPEC §4 and Appendix B "Paths"/"Methods": the one canonical path, and the route table.

Route matching, kill switches and role policies must all see the path exactly as the upstream
will understand it, otherwise an encoding trick lets a request match one thing at the gateway
and reach another behind it. ``normalise_target`` therefore produces a single canonical, decoded
path and derives what the upstream receives from that path alone.

Percent-escapes. Every valid escape is decoded exactly once, in one pass, and the octets are read
as strict UTF-8 (overlong forms and surrogates are invalid). That includes reserved characters
other than the ones refused outright (``%2F`` ``%5C`` ``%3B``, controls): ``%3A`` becomes ``:``,
``%3F`` becomes ``?``, ``%C3%A9`` becomes ``é``. Most upstream frameworks decode the whole path
before routing, so leaving a reserved escape encoded would let ``/api/x%3Ay`` slip past a switch
on ``/api/x:y``. The upstream target is the canonical path re-encoded: unreserved characters,
sub-delims, ``:`` ``@`` and ``/`` stay literal; everything else (``%`` itself as ``%25``, ``?``,
``#``, non-ASCII as UTF-8, stray ASCII such as ``"`` or ``|``) is escaped with upper-case hex.
So a client's ``%2B`` reaches the upstream as ``+`` (in a path both mean the same character),
and normalising the upstream target again yields the same canonical path.

Raw characters: non-ASCII, space and control characters are refused (a conforming client always
escapes them); other printable ASCII outside RFC 3986 ``pchar`` is tolerated and re-escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import quote

from gateway.bounded_memo import remember
from gateway.errors import BadRequest, MethodNotAllowed, NotFound

MAX_PATH_LENGTH = 8 * 1024

# The methods a route without ``methods`` accepts: everything the parser carries except these.
# SECURITY: TRACE/TRACK reflect the request (cookies, tokens) back — cross-site tracing — and
# CONNECT asks for a tunnel; Appendix C refuses them (405) unless a route lists them.
UNLISTED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
# What a route without ``methods`` tells a client refused one of UNLISTED_METHODS.
DEFAULT_ALLOW = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
# The liveness and readiness probes among the gateway's own endpoints (SPEC §11). SPEC §9: a
# global kill switch spares them, so probes keep answering during an isolation.
HEALTH_PATH = "/_gateway/health"
READY_PATH = "/_gateway/ready"
PROBE_PATHS = frozenset((HEALTH_PATH, READY_PATH))

# Characters left literal when re-encoding for the upstream (RFC 3986 pchar minus ';', plus '/').
# quote() always keeps ALPHA DIGIT '-._~'.
_UPSTREAM_SAFE = "/!$&'()*+,=:@"

# A path that is already canonical and needs no re-encoding: segments of pchar characters that
# do not start with '.', no '%', no empty segment. The common case skips the slow path entirely.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)*/?")

# SECURITY: raw controls/space/non-ASCII (request splitting, parser confusion), backslash
# (Windows-style traversal), ';' (path parameters like ;jsessionid that upstreams strip).
_BAD_RAW_PATH_CHAR = re.compile(r"[\x00-\x20\x7f-\U0010ffff\\;]")
# SECURITY: the query is forwarded verbatim, so raw CR/LF/controls must never pass through.
_BAD_RAW_QUERY_CHAR = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")
_ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://([^/?]*)(.*)", re.DOTALL)
_C1_CONTROL = re.compile(r"[\x80-\x9f]")

_HEX = frozenset("0123456789abcdefABCDEF")
# Decoded octets refused with a fixed phrase; nothing from the client is echoed back.
_FORBIDDEN_OCTETS: dict[int, str] = {
    **{octet: "control character in path" for octet in (*range(0x20), 0x7F)},
    0x2F: "encoded slash in path",  # SECURITY: %2F smuggles '/' past segment-based matching
    0x5C: "encoded backslash in path",  # SECURITY: %5C read as a separator by some upstreams
    0x3B: "semicolon in path",  # SECURITY: %3B path parameters hide the real segment
}


@dataclass(frozen=True, slots=True)
class CanonicalTarget:
    path: str  # canonical, decoded, in the client's letter case: what matching sees
    query: str  # raw query string without '?', '' if none
    upstream_target: str  # re-encoded canonical path plus '?query' when present


def normalise_target(raw_target: str, *, host: str | None) -> CanonicalTarget:
    """Canonicalise a request-target (origin-form, or absolute-form naming ``host``)."""
    if "#" in raw_target:
        raise BadRequest("fragment in request target")
    origin_form = raw_target.startswith("/")
    target = raw_target if origin_form else _strip_absolute_form(raw_target, host)
    path, has_query, query = target.partition("?")
    if len(path) > MAX_PATH_LENGTH:  # SECURITY: bounds decoding work and memory per request
        raise BadRequest("path too long")
    bad = _BAD_RAW_PATH_CHAR.search(path)
    if bad is not None:
        raise BadRequest(_raw_char_detail(bad.group()))
    if has_query and _BAD_RAW_QUERY_CHAR.search(query):
        raise BadRequest("invalid character in query")

    if _PLAIN_PATH.fullmatch(path):
        canonical = upstream_path = path
    else:
        canonical = _canonical_path(path)
        upstream_path = quote(canonical, safe=_UPSTREAM_SAFE)
    upstream = f"{upstream_path}?{query}" if query else upstream_path
    return CanonicalTarget(path=canonical, query=query, upstream_target=upstream)


_TARGET_MEMO_LIMIT = 1024  # request-targets remembered (a flood repeats one; a busy API a few hundred)
_TARGET_MEMO_LENGTH = 256  # longer targets are canonicalised every time, never held
_targets: dict[str, CanonicalTarget] = {}


def canonical_target(raw_target: str, host: str | None) -> CanonicalTarget:
    """``normalise_target``, remembered for recent origin-form targets (their result depends on
    the target alone); a refused target is never remembered, so it is refused every time."""
    target = _targets.get(raw_target)
    if target is not None:
        return target
    target = normalise_target(raw_target, host=host)
    if raw_target.startswith("/") and len(raw_target) <= _TARGET_MEMO_LENGTH:
        remember(_targets, _TARGET_MEMO_LIMIT, raw_target, target)  # attacker-chosen targets
    return target


def _strip_absolute_form(raw_target: str, host: str | None) -> str:
    match = _ABSOLUTE_FORM.fullmatch(raw_target)
    if match is None:  # '*', authority-form, other schemes, relative paths
        raise BadRequest("unsupported request-target form")
    authority, rest = match.groups()
    # SECURITY: a target naming another host must not be routed as if it named ours
    # (cache poisoning, host-based routing confusion). Compare exactly, ignoring case only.
    if not host or not authority or authority.lower() != host.lower():
        raise BadRequest("absolute-form target does not match Host")
    return rest if rest.startswith("/") else "/" + rest


def _raw_char_detail(char: str) -> str:
    if char == "\\":
        return "backslash in path"
    if char == ";":
        return "semicolon in path"
    if char < " " or char == "\x7f":
        return "control character in path"
    return "invalid character in path"


def _canonical_path(path: str) -> str:
    """Decode each segment, merge empty segments, resolve dot segments (RFC 3986 §5.2.4)."""
    resolved: list[str] = []
    trailing_slash = False
    # Splitting on raw '/' before decoding is sound only because no segment may decode to '/'.
    for raw_segment in path[1:].split("/"):
        segment = _decode_segment(raw_segment) if "%" in raw_segment else raw_segment
        if segment == "" or segment == ".":
            trailing_slash = True  # repeated slash merged; '/a/.' is the directory '/a/'
        elif segment == "..":
            if not resolved:
                # SECURITY: '/..' and '/a/../../b' would escape the root; refusing instead of
                # clamping keeps the gateway from inventing a path the client never meant.
                raise BadRequest("path escapes the root")
            resolved.pop()
            trailing_slash = True
        else:
            resolved.append(segment)
            trailing_slash = False
    if not resolved:
        return "/"
    return "/" + "/".join(resolved) + ("/" if trailing_slash else "")


def _decode_segment(segment: str) -> str:
    """Decode every escape exactly once; the result is never decoded again (``%252F`` → ``%2F``)."""
    head, *escapes = segment.split("%")
    octets = bytearray(head.encode("ascii"))  # raw text was checked to be ASCII already
    for escape in escapes:
        # SECURITY: invalid escapes ('%zz', truncated '%4') are read differently by every parser.
        if len(escape) < 2 or escape[0] not in _HEX or escape[1] not in _HEX:
            raise BadRequest("invalid percent-encoding in path")
        octet = int(escape[:2], 16)
        refusal = _FORBIDDEN_OCTETS.get(octet)
        if refusal is not None:
            raise BadRequest(refusal)
        octets.append(octet)
        octets += escape[2:].encode("ascii")
    try:
        # SECURITY: strict UTF-8 refuses overlong forms (%C0%AE for '.') and lone surrogates.
        text = octets.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("invalid UTF-8 in path") from None
    if _C1_CONTROL.search(text):  # SECURITY: C1 controls (U+0080-U+009F) confuse log viewers
        raise BadRequest("control character in path")
    return text


class RouteLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    @property
    def methods(self) -> frozenset[str] | None: ...


R = TypeVar("R", bound=RouteLike)


def _prefix_key(prefix: str, case_insensitive: bool) -> str:
    """'/t/' behaves like '/t'; '/' becomes '' (matches everything)."""
    key = prefix.rstrip("/")
    return key.casefold() if case_insensitive else key


def matches_prefix(path: str, prefix: str, case_insensitive: bool = False) -> bool:
    """True when ``prefix`` covers ``path`` on a segment boundary ('/api/fin' ≠ '/api/finance')."""
    key = _prefix_key(prefix, case_insensitive)
    if not key:
        return True
    if case_insensitive:
        path = path.casefold()
    # SECURITY: a bare startswith would let '/api/finance' inherit '/api/fin' scopes.
    return path.startswith(key) and (len(path) == len(key) or path[len(key)] == "/")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[R]):
    route: R
    methods: frozenset[str] | None
    allow: str


_MATCH_MEMO_LIMIT = 1024  # paths whose route a table remembers (as _TARGET_MEMO_LIMIT)
_MATCH_MEMO_LENGTH = 256  # longer paths are looked up every time, never held


class RouteTable(Generic[R]):
    """Longest-prefix route lookup; everything is precomputed so ``match`` is a few dict gets,
    and a path seen recently costs one (the route a path names depends on the path alone)."""

    __slots__ = ("_by_key", "_matched", "_max_key_length", "case_insensitive", "routes")

    def __init__(self, routes: Iterable[R], case_insensitive: bool = False) -> None:
        self.routes: tuple[R, ...] = tuple(routes)
        self.case_insensitive = case_insensitive
        by_key: dict[str, _Entry[R]] = {}
        # Longest prefix first, so a reader of the table sees precedence in iteration order.
        for route in sorted(self.routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True):
            key = _prefix_key(route.prefix, case_insensitive)
            if key in by_key:
                # Two routes on one prefix would make the winner depend on declaration order.
                raise ValueError(f"routes {by_key[key].route.name!r} and {route.name!r} share a prefix")
            allow = ", ".join(sorted(route.methods)) if route.methods is not None else DEFAULT_ALLOW
            by_key[key] = _Entry(route, route.methods, allow)
        self._by_key = by_key
        self._max_key_length = max((len(k) for k in by_key), default=0)
        self._matched: dict[str, _Entry[R]] = {}  # path → its entry (never a 404)

    def match(self, path: str, method: str) -> R:
        """The route with the longest prefix covering ``path``; 404 or 405 otherwise."""
        entry = self._matched.get(path)
        if entry is None:
            entry = self._entry(path)
            if len(path) <= _MATCH_MEMO_LENGTH:
                remember(self._matched, _MATCH_MEMO_LIMIT, path, entry)  # attacker-chosen paths
        # SECURITY: no fall-through to a shorter prefix; a method-restricted route must not be
        # bypassed by a catch-all route that allows every method.
        if entry.methods is None:
            if method in UNLISTED_METHODS:
                raise method_not_allowed(entry.allow)
        elif method not in entry.methods:
            raise method_not_allowed(entry.allow)
        return entry.route

    def _entry(self, path: str) -> _Entry[R]:
        """The entry with the longest prefix covering ``path``; 404 when none does."""
        if not path.startswith("/"):
            raise NotFound("no route for this path")
        key = path.casefold() if self.case_insensitive else path
        key = key.rstrip("/")
        if len(key) > self._max_key_length:
            # No prefix is this long: jump straight to the longest segment boundary that fits.
            key = key[: key.rfind("/", 0, self._max_key_length + 1)]
        by_key = self._by_key
        while (entry := by_key.get(key)) is None:
            if not key:
                raise NotFound("no route for this path")
            key = key[: key.rfind("/")]  # drop the last segment: next shorter boundary
        return entry


def method_not_allowed(allow: str = DEFAULT_ALLOW) -> MethodNotAllowed:
    return MethodNotAllowed("method not allowed on this route", headers={"Allow": allow})
