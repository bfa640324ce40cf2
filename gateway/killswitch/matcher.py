"""A switch set compiled once per version, so checking a request costs a few dict lookups
however many switches are engaged (issue 7: 1,000 active switches ≈ the cost of a few).

* global: one list; module / route / integration / tenant: dicts keyed by the exact target
  (which scope matches how is the table in ``scopes.py``);
* endpoint globs: hash tables per method and glob shape (``_Globs``); a request costs one
  lookup per shape, not one comparison per glob. With case-insensitive routing the tables are
  keyed by case-folded segments and the path is case-folded too (SPEC §9: switches see what
  routing sees).

Expired switches stop matching at once: the clock is checked on candidates, never by a store
round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from gateway.killswitch.model import SAFE_METHODS, Switch
from gateway.killswitch.scopes import KEYED_SCOPES, METHODS, ROUTE_FIELD_SCOPES, SCOPE_BY_NAME, glob_segments

_Entry = tuple[str, Switch]  # (method or "*", switch)


class RouteFacts(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def module(self) -> str | None: ...
    @property
    def integration(self) -> str | None: ...


def refuses(switch: Switch, method: str, websocket: bool) -> bool:
    """block refuses everything; read-only lets GET/HEAD/OPTIONS pass but no WebSocket upgrade."""
    if switch.mode == "block":
        return True
    # SECURITY: a WebSocket is a GET that then carries writes; read-only must refuse it.
    return websocket or method not in SAFE_METHODS


_Bucket = list[tuple[tuple[tuple[int, str], ...], list[_Entry]]]  # (other literals, entries)


class _Globs:
    """The endpoint globs one method can meet, grouped by shape so matching is a few hashes.

    A glob's *shape* is its length, whether it ends in ``**``, and where its ``*`` segments
    are. Globs of one shape are bucketed by their last literal segment (usually the most
    selective: an id, an action name), so a request costs one string lookup per shape and a
    few comparisons on a hit. Shapes are few in practice (a handful for 1,000 globs), so the
    cost follows the number of shapes, not of switches.
    """

    __slots__ = ("_index", "shapes")

    def __init__(self) -> None:
        # (length, ends in '**', position of the last literal or -1, buckets by that literal)
        self.shapes: list[tuple[int, bool, int, dict[str, _Bucket]]] = []
        self._index: dict[tuple[int, bool, tuple[int, ...]], int] = {}

    def add(self, segments: list[str], entry: _Entry) -> None:
        rest = bool(segments) and segments[-1] == "**"
        body = segments[:-1] if rest else segments
        stars = tuple(i for i, segment in enumerate(body) if segment == "*")
        literals = [i for i in range(len(body)) if body[i] != "*"]
        key_pos = literals[-1] if literals else -1
        shape = (len(body), rest, stars)
        if shape not in self._index:
            self._index[shape] = len(self.shapes)
            self.shapes.append((len(body), rest, key_pos, {}))
        buckets = self.shapes[self._index[shape]][3]
        others = tuple((i, body[i]) for i in literals if i != key_pos)
        bucket = buckets.setdefault(body[key_pos] if key_pos >= 0 else "", [])
        for known, entries in bucket:
            if known == others:
                entries.append(entry)
                return
        bucket.append((others, [entry]))

    def candidates(self, segments: list[str]) -> list[list[_Entry]]:
        found = []
        count = len(segments)
        for length, rest, key_pos, buckets in self.shapes:
            if count != length and not (rest and count > length):
                continue
            bucket = buckets.get(segments[key_pos] if key_pos >= 0 else "")
            if bucket:
                for others, entries in bucket:
                    if all(segments[i] == literal for i, literal in others):
                        found.append(entries)
        return found


def _build_globs(switches: Iterable[Switch], fold: bool, method: str) -> _Globs:
    """The globs that can match requests of ``method`` (its own, '*', and GET's for HEAD)."""
    globs = _Globs()
    for switch in switches:
        pattern, _, path = switch.target.partition(" ")
        if _method_matches(pattern, method):
            globs.add(glob_segments(path.casefold() if fold else path), (pattern, switch))
    return globs


def _method_matches(pattern: str, method: str) -> bool:
    # SECURITY: HEAD runs the GET handler upstream; a switch on GET must cover it too.
    return pattern == "*" or pattern == method or (pattern == "GET" and method == "HEAD")


def _first_refusal(entries: Iterable[_Entry], method: str, websocket: bool, now: float) -> Switch | None:
    for pattern, switch in entries:
        if _method_matches(pattern, method) and switch.active(now) and refuses(switch, method, websocket):
            return switch
    return None


def _first_of(switches: Sequence[Switch] | None, method: str, websocket: bool, now: float) -> Switch | None:
    if switches:
        for switch in switches:
            if switch.active(now) and refuses(switch, method, websocket):
                return switch
    return None


class SwitchIndex:
    """Immutable: a new version builds a new index and swaps one reference."""

    __slots__ = (
        "_by",
        "_by_route",
        "_endpoints",
        "_glob_tables",
        "_global",
        "empty",
        "switches",
        "unidentified",
        "version",
    )

    def __init__(self, switches: Iterable[Switch], version: int) -> None:
        self.switches: tuple[Switch, ...] = tuple(sorted(switches, key=lambda s: (s.created_at, s.id)))
        self.version = version
        self.empty = not self.switches
        by: dict[str, dict[str, list[Switch]]] = {scope: {} for scope in KEYED_SCOPES}
        self._global: list[Switch] = []
        self._endpoints: list[Switch] = []
        for switch in self.switches:
            matching = SCOPE_BY_NAME[switch.scope].matching
            if matching == "every request":
                self._global.append(switch)
            elif matching == "path glob":
                self._endpoints.append(switch)
            else:
                by[switch.scope].setdefault(switch.target, []).append(switch)
        self._by = by
        # (route attribute, switches by target) for the route-field scopes that have switches,
        # in the order the scope table ranks them: a request skips the empty ones for free.
        self._by_route: tuple[tuple[str, dict[str, list[Switch]]], ...] = tuple(
            (rule.route_field, by[rule.name])
            for rule in ROUTE_FIELD_SCOPES
            if rule.route_field is not None and by[rule.name]
        )
        self._glob_tables: tuple[dict[str, _Globs], dict[str, _Globs]] = ({}, {})  # by letter-case mode
        # Whether ``refusal`` can find anything at all: with only tenant switches engaged (an
        # isolated tenant, the usual incident), the identity-free check is skipped outright.
        self.unidentified = bool(self._global or self._by_route or self._endpoints)

    def _globs(self, fold: bool, method: str) -> _Globs:
        # One table set per method keeps a GET from meeting POST-only globs. Methods no switch
        # can name share one set ('*' globs only), so odd methods cannot make us build more.
        tables = self._glob_tables[fold]
        globs = tables.get(method)
        if globs is None:  # built on first use (a reload may flip the letter-case mode)
            if method not in METHODS:
                method = ""
            globs = tables.get(method) or tables.setdefault(
                method, _build_globs(self._endpoints, fold, method)
            )
        return globs

    def refusal(
        self,
        method: str,
        path: str,
        route: RouteFacts | None,
        *,
        websocket: bool,
        now: float,
        case_insensitive: bool = False,
        spare_global: bool = False,
    ) -> Switch | None:
        """The switch that refuses this request among the scopes that need no identity."""
        if self.empty:
            return None
        if not spare_global and (hit := _first_of(self._global, method, websocket, now)):
            return hit
        if route is not None:
            for field, by_target in self._by_route:
                value = getattr(route, field)
                if value is not None and (hit := _first_of(by_target.get(value), method, websocket, now)):
                    return hit
        if self._endpoints:
            return self._endpoint_refusal(method, path, websocket, now, case_insensitive)
        return None

    def _endpoint_refusal(
        self, method: str, path: str, websocket: bool, now: float, fold: bool
    ) -> Switch | None:
        # Inlined glob_segments (hot path): a trailing slash makes no segment of its own.
        stripped = (path.casefold() if fold else path).strip("/")
        segments = stripped.split("/") if stripped else []
        for entries in self._globs(fold, method).candidates(segments):
            if hit := _first_refusal(entries, method, websocket, now):
                return hit
        return None

    def names_tenant(self, tenants: Iterable[str]) -> bool:
        """Whether a tenant switch (active or not) targets one of ``tenants``: when none does,
        ``tenant_refusal`` finds nothing, so a caller can skip its clock and header work."""
        by_tenant = self._by["tenant"]
        if by_tenant:
            for tenant in tenants:
                if tenant in by_tenant:
                    return True
        return False

    def tenant_refusal(
        self, tenants: Iterable[str], method: str, *, websocket: bool, now: float
    ) -> Switch | None:
        """The tenant switch refusing a request acting in (or authenticated by) ``tenants``."""
        by_tenant = self._by["tenant"]
        if not by_tenant:
            return None
        for tenant in tenants:
            if hit := _first_of(by_tenant.get(tenant), method, websocket, now):
                return hit
        return None

    def next_expiry(self) -> float | None:
        times = [s.expires_at for s in self.switches if s.expires_at is not None]
        return min(times) if times else None


EMPTY_INDEX = SwitchIndex((), 0)
__all__ = ["EMPTY_INDEX", "RouteFacts", "SwitchIndex", "refuses"]
