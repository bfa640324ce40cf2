"""The kill-switch scopes (SPEC §9), in one table: what each names, how its target is checked,
how a request meets it, and where the running config lists its possible targets.

Everything else iterates over ``SCOPE_RULES``: validation (``model.validate_spec``), the
matcher's index (``matcher.SwitchIndex``), the admin API's target check and the console's
pickers, the CLI's ``--scope`` choices and ``--target`` help. A new scope is one row here
(plus its ``Scope`` literal and its tests); a new way of *matching* also needs its branch in
``matcher.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gateway.audit.record import validate_tenant
from gateway.errors import GatewayError
from gateway.routing import normalise_target

if TYPE_CHECKING:
    from gateway.config_model import GatewayConfig

Scope = Literal["global", "module", "route", "tenant", "integration", "endpoint"]
Matching = Literal["every request", "route field", "acting tenant", "path glob"]
"""How a request meets a switch: every request; its matched route's ``route_field`` equal to the
target; its acting (or token) tenant equal to the target; its path matching a ``METHOD /glob``."""

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "*"))
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def glob_segments(path: str) -> list[str]:
    """Segments of a canonical path; a trailing slash does not make a segment of its own."""
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def parse_endpoint(target: str) -> tuple[str, str]:
    """``"POST /api/finance/*"`` → ``("POST", "/api/finance/*")``: the path canonicalised like a
    request path (SPEC §4), so a glob written with ``//`` or ``%66`` still names what requests see."""
    method, _, path = target.strip().partition(" ")
    method, path = method.upper(), path.strip()
    if method not in METHODS:
        raise ValueError("endpoint target must be 'METHOD /path' (METHOD an HTTP method or '*')")
    if not path.startswith("/"):
        raise ValueError("endpoint path must start with '/'")
    try:
        canonical = normalise_target(path, host=None)
    except GatewayError as exc:
        raise ValueError(f"endpoint path: {exc.detail}") from None
    if canonical.query:
        raise ValueError("endpoint path must not carry a query")
    segments = glob_segments(canonical.path)
    if "**" in segments[:-1]:
        raise ValueError("'**' may only be the last segment of an endpoint path")
    if any(("*" in s and s not in ("*", "**")) for s in segments):
        raise ValueError("'*' and '**' must be whole segments")
    return method, canonical.path


# -- target normalisers: (scope name, raw target) -> the stored target, or ValueError ----------
def _no_target(scope: str, target: object) -> str:
    if target not in (None, "", "*"):
        raise ValueError(f"a {scope} switch takes no target (or '*')")
    return "*"


def _required(scope: str, target: object) -> str:
    if not isinstance(target, str) or not target:
        raise ValueError(f"a {scope} switch needs a target")
    return target


def _name(scope: str, target: object) -> str:
    name = _required(scope, target)
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"{scope} target must be a name of letters, digits, '-', '_' or '.'")
    return name


def _tenant(scope: str, target: object) -> str:
    return validate_tenant(_required(scope, target))


def _endpoint(scope: str, target: object) -> str:
    method, path = parse_endpoint(_required(scope, target))
    return f"{method} {path}"


# -- the names a target may take in the running config (None: any valid value) -----------------
def _modules(config: GatewayConfig) -> list[str]:
    return sorted({r.module for r in config.routes if r.module})


def _routes(config: GatewayConfig) -> list[str]:
    return sorted(r.name for r in config.routes)


def _integrations(config: GatewayConfig) -> list[str]:
    return sorted({*config.integrations, *(r.integration for r in config.routes if r.integration)})


@dataclass(frozen=True, slots=True)
class ScopeRule:
    name: Scope
    matching: Matching
    normalise: Callable[[str, object], str]  # (scope, raw target) -> stored target; ValueError
    target_hint: str | None  # how the CLI's --target help names it (None: takes no target)
    route_field: str | None = None  # for "route field": the RouteConfig attribute compared
    rank: int = 0  # among "route field" scopes, the order a request is checked in (first hit wins)
    known_targets: Callable[[GatewayConfig], list[str]] | None = None  # engage refuses other names

    def normalise_target(self, target: object) -> str:
        return self.normalise(self.name, target)


# Listed in the order SPEC App. B lists them (messages, CLI choices, the console's picker).
SCOPE_RULES: tuple[ScopeRule, ...] = (
    ScopeRule("global", "every request", _no_target, None),
    ScopeRule("module", "route field", _name, "module", "module", 1, _modules),
    ScopeRule("route", "route field", _name, "route", "name", 0, _routes),
    ScopeRule("tenant", "acting tenant", _tenant, "tenant"),
    ScopeRule("integration", "route field", _name, "integration", "integration", 2, _integrations),
    ScopeRule("endpoint", "path glob", _endpoint, "'METHOD /glob'"),
)
SCOPES: tuple[Scope, ...] = tuple(rule.name for rule in SCOPE_RULES)
SCOPE_BY_NAME: Mapping[str, ScopeRule] = {rule.name: rule for rule in SCOPE_RULES}
ROUTE_FIELD_SCOPES: tuple[ScopeRule, ...] = tuple(
    sorted((r for r in SCOPE_RULES if r.matching == "route field"), key=lambda r: r.rank)
)
KEYED_SCOPES: tuple[Scope, ...] = tuple(
    r.name for r in SCOPE_RULES if r.matching in ("route field", "acting tenant")
)
"""Scopes matched by an exact target (a dict lookup per request)."""


def target_help() -> str:
    """``module, route, tenant, integration, or 'METHOD /glob'``: every scope's target, in order."""
    hints = [r.target_hint for r in SCOPE_RULES if r.target_hint is not None]
    return ", ".join(hints[:-1]) + ", or " + hints[-1]


def known_targets(config: GatewayConfig) -> dict[str, list[str]]:
    """The names each scope with a fixed set of targets may name in the running config."""
    return {r.name: r.known_targets(config) for r in SCOPE_RULES if r.known_targets is not None}


__all__ = [
    "KEYED_SCOPES",
    "METHODS",
    "ROUTE_FIELD_SCOPES",
    "SCOPES",
    "SCOPE_BY_NAME",
    "SCOPE_RULES",
    "Matching",
    "Scope",
    "ScopeRule",
    "glob_segments",
    "known_targets",
    "parse_endpoint",
    "target_help",
]
