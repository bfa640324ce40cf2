"""Who the client is, and the headers that tell the upstream (SPEC §8 client IP, §10, App. B).

The client IP is the socket peer unless that peer is a trusted proxy; only then is
``X-Forwarded-For`` read, from the right, skipping further trusted hops.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.bounded_memo import remember
from gateway.config.model import IPNetwork
from gateway.exchange import ServerRequest
from gateway.header_lines import header_line, line_pair, pair_line

# RFC 9110 §7.6.1 plus the de-facto Proxy-Connection: never forwarded in either direction.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Connection",
    )
)
# SPEC §10 / App. B: from an untrusted peer every X-Forwarded-* (-Prefix, -Server, -Port, -Ssl,
# whatever a framework invents next) is dropped, so the prefix is matched, not a list of names.
FORWARDING_PREFIX = "x-forwarded"
FORWARDING_HEADERS = frozenset(("forwarded", "x-real-ip"))
# App. C: never forwarded from any client, trusted peer or not.
# SECURITY: verb tampering — frameworks that honour these turn an allowed POST into a DELETE, or
# route on a URL the gateway never matched, switched or authorised.
OVERRIDE_HEADERS = frozenset(
    ("x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url")
)
RESPONSE_STRIPPED = frozenset(("server", "x-powered-by"))
# istr: multidict looks these up (and sets them) without case-folding the name on every request.
_CONNECTION = istr("Connection")
_UPGRADE = istr("Upgrade")
_HOST = istr("Host")
_FORWARDED = istr("Forwarded")
_X_FORWARDED_FOR = istr("X-Forwarded-For")
_X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
_X_FORWARDED_HOST = istr("X-Forwarded-Host")


_MEMO_LIMIT = 4096  # distinct peer and hop addresses remembered per runtime


class TrustedProxies:
    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self._networks = tuple(networks)
        # address text → trusted or not, None when it is no IP address. Peers and hops repeat
        # from request to request; parsing each one again was a tenth of a refusal's cost.
        self._memo: dict[str, bool | None] = {}

    def _verdict(self, address: str) -> bool | None:
        memo = self._memo
        try:
            return memo[address]
        except KeyError:
            pass
        verdict = self._classify(address)
        if len(memo) >= _MEMO_LIMIT:
            # SECURITY: memory exhaustion — spoofed X-Forwarded-For hops cannot grow the memo.
            memo.clear()
        memo[address] = verdict
        return verdict

    def _classify(self, address: str) -> bool | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
        return any(ip in net for net in self._networks)

    def __contains__(self, address: str) -> bool:
        return bool(self._networks) and self._verdict(address) is True

    def client_ip(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The rightmost hop not in ``trusted_proxies`` (SPEC §8)."""
        # SECURITY: an untrusted peer's X-Forwarded-For is ignored (IP spoofing past limits).
        if peer not in self:
            return peer
        hops = [h.strip() for value in forwarded_for for h in value.split(",")]
        client = peer
        for hop in reversed(hops):
            trusted = self._verdict(hop)
            if trusted is None:
                # SECURITY: garbage in the chain ends the walk at the last hop a trusted proxy vouched for.
                break
            client = hop
            if not trusted:
                break
        return client


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str] | frozenset[str]:
    values = headers.getall(_CONNECTION, ())
    if not values:
        return _NO_TOKENS  # the common case (HTTP/1.1 keep-alive): nothing to parse
    if len(values) == 1 and (known := _USUAL_TOKENS.get(values[0])) is not None:
        return known  # "keep-alive" on nearly every upstream answer: parsed once, not per request
    tokens: set[str] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


_NO_TOKENS: frozenset[str] = frozenset()
# Exact values, so a hit parses to what the loop above would: a fixed set, nothing a peer can grow.
_USUAL_TOKENS = {
    value: frozenset((value.lower(),)) for value in ("keep-alive", "Keep-Alive", "close", "Close")
}


def never_forwarded_names(strip_headers: frozenset[str]) -> frozenset[str]:
    """Every lower-case name a request header is dropped by, whoever the peer: one set lookup
    per header instead of five. ``strip_headers``: the client identity headers (SPEC §7,
    lower-case). ``expect``: the gateway itself answers 100-continue (App. B).
    ``traceparent`` / ``tracestate``: the proxy sets its own (App. C, gateway.tracing.context).
    Built once per runtime (``Runtime.never_forwarded``), not per request."""
    return HOP_BY_HOP | OVERRIDE_HEADERS | strip_headers | {"host", "expect", "traceparent", "tracestate"}


HOST_SLOT: Final[tuple[str, str]] = (_HOST, "")
"""The ``Host`` pair's stand-in where a ``CIMultiDict`` is built from the pairs (the aiohttp
transport and the WebSocket path): each sets its endpoint's own on it, in place."""
_FRAMING_NAMES = frozenset(("content-length", "transfer-encoding"))


# Our X-Request-ID line up to its value: one concatenation per request.
_REQUEST_ID_PREFIX = header_line("X-Request-ID", "")


class UpstreamHeaders(list[str]):
    """The request headers for the upstream as ``Name: value`` lines in wire order (no CRLF):
    the transport joins them into the head as they are, and the lines that repeat from request
    to request (the forwarding headers, a token's identity) are made once, not per request
    (the per-pair join was half of the head's cost). ``pairs()`` gives the (name, value) view.

    ``host_at``: where the endpoint's ``Host`` goes (the transport knows it, not the proxy);
    ``framed``: a line may name Content-Length or Transfer-Encoding, so the head must drop them
    (``request_head``: framing is the gateway's alone). Whoever removes lines keeps both true;
    the header hooks only append names the gateway owns (never framing)."""

    __slots__ = ("framed", "host_at")
    host_at: int
    framed: bool

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]], host_at: int | None = None) -> UpstreamHeaders:
        """Pairs from anywhere (tests, benches): ``framed`` found by looking at every name."""
        pairs = list(pairs)
        out = cls(header_line(name, value) for name, value in pairs)
        out.host_at = len(out) if host_at is None else host_at
        out.framed = any(name.lower() in _FRAMING_NAMES for name, _ in pairs)
        return out

    def pairs(self) -> list[tuple[str, str]]:
        """The (name, value) pairs of the lines, in order."""
        return [line_pair(line) for line in self]

    def with_host_slot(self) -> list[tuple[str, str]]:
        """The pairs with ``HOST_SLOT`` where Host goes: what a ``CIMultiDict`` is built from."""
        pairs = self.pairs()
        pairs.insert(self.host_at, HOST_SLOT)
        return pairs


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer_ip: str,
    peer_trusted: bool,
    scheme: str,
    host: str,
    request_id: str,
    never_forwarded: frozenset[str],
) -> UpstreamHeaders:
    """The headers for the upstream: hop-by-hop removed, forwarding headers set or appended,
    Host's place marked, and ``X-Request-ID`` (in place of the client's first one, else after
    Host). The lines hold the items a ``CIMultiDict`` built and set the same way would hold.
    ``never_forwarded`` is ``never_forwarded_names(strip_headers)`` (the runtime holds it);
    required, so no caller can forget the identity headers it must drop."""
    named_hop = connection_tokens(incoming)
    never = never_forwarded
    classes = _NAME_CLASSES.get(never)
    if classes is None:
        classes = _classes_for(never)
    # Names the client's Connection header lists are dropped too; "keep-alive" (the usual one)
    # is hop-by-hop, so never forwarded anyway: no name needs looking at for it.
    listed = bool(named_hop) and not named_hop <= never
    out = UpstreamHeaders()
    own_id = framed = False
    for pair in incoming.items():
        name = pair[0]
        try:
            kind = classes[name]
        except KeyError:
            kind = _learn_class(classes, never, name)
        if kind == _DROP or (listed and _dash_key(name) in named_hop):
            continue
        if kind == _FORWARDING:
            if not peer_trusted:
                # SECURITY: forged X-Forwarded-*/Forwarded from an untrusted peer are dropped.
                continue
        elif kind == _REQUEST_ID:
            # Ours replaces the client's first and drops the rest (a CIMultiDict set).
            if not own_id:
                out.append(_REQUEST_ID_PREFIX + request_id)
                own_id = True
            continue
        elif kind == _LENGTH:
            framed = True  # Transfer-Encoding is hop-by-hop: never here
        out.append(pair_line(pair))
    if not peer_trusted:  # none of the client's forwarding headers is left: ours alone
        key = (peer_ip, scheme, host)
        try:
            out += _FORWARDING_TAILS[key]
        except KeyError:
            out += _forwarding_tail(key)
    else:
        _extend_forwarding(out, peer_ip, scheme, host, _forwarded_element(peer_ip, scheme, host))
    out.host_at = len(out)
    out.framed = framed
    if not own_id:
        out.append(_REQUEST_ID_PREFIX + request_id)
    return out


# What a client's header name means to ``upstream_request_headers`` (the checks below, in order).
_FORWARD, _DROP, _FORWARDING, _REQUEST_ID, _LENGTH = range(5)
# never_forwarded set → {name as the client spelt it → its class}: a dict lookup per header
# instead of lower-casing it and four set lookups (names repeat from request to request).
_NAME_CLASSES: dict[frozenset[str], dict[str, int]] = {}
_CLASSES_LIMIT = 1024


def _dash_key(name: str) -> str:
    """The name every check sees. SECURITY: CGI/WSGI backends read X_Tenant_ID and
    X_Forwarded_For as X-Tenant-ID and X-Forwarded-For (see tenancy.model.HeaderNameSet): every
    check sees the '-' spelling."""
    return name.lower().replace("_", "-")


def _classes_for(never: frozenset[str]) -> dict[str, int]:
    if len(_NAME_CLASSES) >= 8:
        _NAME_CLASSES.clear()  # sets of runtimes reloaded away
    classes = _NAME_CLASSES[never] = {}
    return classes


def _learn_class(classes: dict[str, int], never: frozenset[str], name: str) -> int:
    return remember(classes, _CLASSES_LIMIT, name, _name_class(never, name))  # the client's names


def _name_class(never: frozenset[str], name: str) -> int:
    key = _dash_key(name)
    if key in never:
        return _DROP
    if key.startswith(FORWARDING_PREFIX) or key in FORWARDING_HEADERS:
        return _FORWARDING  # dropped from an untrusted peer
    # SECURITY: an X_Request_ID or Content_Length would reach a CGI/WSGI backend as a second id
    # beside ours, or as a length that is not framing: dropped.
    if key == "x-request-id":
        return _REQUEST_ID if "_" not in name else _DROP
    if key == "content-length":
        return _LENGTH if "_" not in name else _DROP
    return _FORWARD


def _forwarded_element(peer_ip: str, scheme: str, host: str) -> str:
    node = f'"[{peer_ip}]"' if ":" in peer_ip else peer_ip
    # SECURITY: RFC 7239 quoted-string escaping — a '"' in Host must not inject a forged for=.
    quoted_host = host.replace("\\", "\\\\").replace('"', '\\"')
    return f"for={node};proto={scheme}" + (f';host="{quoted_host}"' if host else "")


# (peer, scheme, Host) → an untrusted peer's forwarding header lines: peers and hosts repeat.
_FORWARDING_TAILS: dict[tuple[str, str, str], tuple[str, ...]] = {}
_TAILS_LIMIT = 1024


def _forwarding_tail(key: tuple[str, str, str]) -> tuple[str, ...]:
    peer_ip, scheme, host = key
    pairs = [(_X_FORWARDED_FOR, peer_ip), (_X_FORWARDED_PROTO, scheme)]
    if host:
        pairs.append((_X_FORWARDED_HOST, host))
    pairs.append((_FORWARDED, _forwarded_element(peer_ip, scheme, host)))
    lines = tuple(header_line(name, value) for name, value in pairs)
    return remember(_FORWARDING_TAILS, _TAILS_LIMIT, key, lines)  # Host is the client's


def _extend_forwarding(lines: list[str], peer_ip: str, scheme: str, host: str, element: str) -> None:
    """A trusted peer's forwarding headers with this hop added: its X-Forwarded-For and
    Forwarded lines joined into one each at the end, its X-Forwarded-Proto and -Host kept (ours
    added when it sent none). Names match as a CIMultiDict matches them (letter case only)."""
    kept: list[str] = []
    prior_xff: list[str] = []
    prior_fwd: list[str] = []
    has_proto = has_host = False
    for line in lines:
        name, value = line_pair(line)
        lower = name.lower()
        if lower == "x-forwarded-for":
            prior_xff.append(value)
            continue
        if lower == "forwarded":
            prior_fwd.append(value)
            continue
        if lower == "x-forwarded-proto":
            has_proto = True
        elif lower == "x-forwarded-host":
            has_host = True
        kept.append(line)
    kept.append(header_line(_X_FORWARDED_FOR, ", ".join([*prior_xff, peer_ip])))
    if not has_proto:
        kept.append(header_line(_X_FORWARDED_PROTO, scheme))
    if not has_host and host:
        kept.append(header_line(_X_FORWARDED_HOST, host))
    kept.append(header_line(_FORWARDED, ", ".join([*prior_fwd, element])))
    lines[:] = kept


# Never passed on to the client: hop-by-hop, backend fingerprints, and Content-Length (set by the
# response object from the upstream's value).
_RESPONSE_DROPPED = HOP_BY_HOP | RESPONSE_STRIPPED | {"content-length"}
# name as received → kept under one of the fixed sets below: a dict lookup per header instead of
# lower-casing it (names repeat from answer to answer, as the same str with its hash cached when
# the httptools transport hands them). One memo per set; none for a set a peer's tokens built.
_Kept = dict[str, bool]
_KEPT_LIMIT = 1024
# The fixed sets with their memos, for no Connection header and for the usual values' names:
# fixed keys, nothing a peer can grow.
_PLAIN_RESPONSE_DROPPED: tuple[frozenset[str], _Kept | None] = (_RESPONSE_DROPPED, {})
_USUAL_RESPONSE_DROPPED: dict[str, tuple[frozenset[str], _Kept | None]] = {
    value: (_RESPONSE_DROPPED | tokens, {}) for value, tokens in _USUAL_TOKENS.items()
}


# istr: set without case-folding the name on every answer (the same spelling goes out).
_X_CONTENT_TYPE_OPTIONS = istr("X-Content-Type-Options")
_STRICT_TRANSPORT_SECURITY = istr("Strict-Transport-Security")


def _learn_kept(kept: _Kept, dropped: frozenset[str], name: str) -> bool:
    return remember(kept, _KEPT_LIMIT, name, name.lower() not in dropped)  # the upstream's names


def downstream_response_headers(
    upstream: CIMultiDictProxy[str] | CIMultiDict[str], *, tls: bool
) -> CIMultiDict[str]:
    """Response headers for the client: hop-by-hop and backend fingerprints removed."""
    # Every lower-case name a response header is dropped by (one set lookup per header), and
    # the memo of which names that set keeps when it is one of the fixed sets.
    values = upstream.getall(_CONNECTION, ())
    if not values:
        dropped, kept = _PLAIN_RESPONSE_DROPPED
    elif len(values) == 1 and (known := _USUAL_RESPONSE_DROPPED.get(values[0])) is not None:
        dropped, kept = known  # "keep-alive" on nearly every upstream answer
    else:
        dropped, kept = _RESPONSE_DROPPED | connection_tokens(upstream), None
    out: CIMultiDict[str] = CIMultiDict()
    # add() per pair: measured cheaper than a list built once
    if kept is None:
        for name, value in upstream.items():
            if name.lower() not in dropped:
                out.add(name, value)
    else:
        for name, value in upstream.items():
            try:
                keep = kept[name]
            except KeyError:
                keep = _learn_kept(kept, dropped, name)
            if keep:
                out.add(name, value)
    out.setdefault(_X_CONTENT_TYPE_OPTIONS, "nosniff")
    if tls:
        out[_STRICT_TRANSPORT_SECURITY] = "max-age=31536000; includeSubDomains"
    return out


def wants_websocket(request: ServerRequest) -> bool:
    """A WebSocket upgrade the proxy would carry through (SPEC §10)."""
    if request.method != "GET":
        return False
    headers = request.headers
    upgrade = headers.get(_UPGRADE)  # None on nearly every request: nothing to lower-case
    return (
        upgrade is not None
        and upgrade.lower() == "websocket"
        and "upgrade" in headers.get(_CONNECTION, "").lower()
    )
