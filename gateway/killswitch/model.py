"""The kill switch object (SPEC §9, App. B): what is isolated, how, why, until when.

A switch names a *scope* (the table of scopes is ``scopes.py``) and a *target*; the matcher
(``matcher.py``) compiles a set of them into an index. Validation happens here, once, when a
switch is engaged, so every instance can trust what it loads from the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeGuard

from gateway.audit.incidents import validate_incident
from gateway.audit.record import SYSTEM_TENANT, format_time
from gateway.config.values import parse_duration
from gateway.errors import Isolated
from gateway.killswitch.scopes import SCOPE_BY_NAME, SCOPES, Scope

Mode = Literal["block", "read-only"]
MODES: tuple[Mode, ...] = ("block", "read-only")
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
MAX_TTL = 366 * 86400.0
_MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Switch:
    id: str
    scope: Scope
    target: str  # "*" for global; "METHOD /glob" for endpoint
    mode: Mode
    reason: str
    incident: str | None
    created_at: float
    expires_at: float | None
    actor: str | None
    version: int = 0

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The App. B kill switch object (times as RFC 3339 UTC)."""
        return {
            "id": self.id,
            "scope": self.scope,
            "target": self.target,
            "mode": self.mode,
            "reason": self.reason,
            "incident": self.incident,
            "created_at": format_time(self.created_at),
            "expires_at": None if self.expires_at is None else format_time(self.expires_at),
            "actor": self.actor,
            "version": self.version,
        }

    def to_record(self) -> dict[str, Any]:
        """The stored form: raw Unix times, so loading needs no date parsing."""
        return {**self.to_json(), "created_at": self.created_at, "expires_at": self.expires_at}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Switch:
        """Rebuild a stored switch, validating it again (``ValueError`` if anything is off)."""
        spec = validate_spec(data)
        created, expires = data.get("created_at"), data.get("expires_at")
        if not _finite(created) or (expires is not None and not _finite(expires)):
            raise ValueError("bad timestamps")
        version = data.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError("bad version")
        ident, actor = data.get("id"), data.get("actor")
        if not isinstance(ident, str) or not ident or (actor is not None and not isinstance(actor, str)):
            raise ValueError("bad id or actor")
        return replace(
            spec, id=ident, created_at=float(created), expires_at=expires, actor=actor, version=version
        )


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_ttl(raw: object) -> float | None:
    """``"2h"``, ``"15m"`` or seconds; None when absent. ``ValueError`` otherwise."""
    if raw is None:
        return None
    ttl = parse_duration(raw)
    if ttl <= 0 or ttl > MAX_TTL:
        raise ValueError("ttl must be more than 0 and at most 366d")
    return ttl


def validate_spec(data: dict[str, Any]) -> Switch:
    """Scope, target, mode, reason and incident checked and normalised (``ValueError``)."""
    scope, mode = data.get("scope"), data.get("mode", "block")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    if mode not in MODES:
        raise ValueError("mode must be 'block' or 'read-only'")
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("reason is required")
    if len(reason) > _MAX_REASON:
        raise ValueError(f"reason is longer than {_MAX_REASON} characters")
    incident = data.get("incident")
    if incident is not None:
        validate_incident(incident)  # the one rule every incident id follows (audit index)
    target = normalise_switch_target(scope, data.get("target"))
    return Switch("", scope, target, mode, reason.strip(), incident, 0.0, None, None)


def normalise_switch_target(scope: str, target: object) -> str:
    return SCOPE_BY_NAME[scope].normalise_target(target)


def isolated_error(switch: Switch, now: float) -> Isolated:
    """The 503 a refused request gets: ``incident`` when given, ``Retry-After`` when a ttl is set."""
    headers: dict[str, str] = {}
    if switch.expires_at is not None:
        headers["Retry-After"] = str(max(1, math.ceil(switch.expires_at - now)))
    extensions = {"incident": switch.incident} if switch.incident else {}
    # The reason is the operator's own text and may name internals: it is not shown to clients.
    read_only = " (read-only)" if switch.mode == "read-only" else ""
    error = Isolated(
        f"Isolated by a {switch.scope} kill switch{read_only}", headers=headers, extensions=extensions
    )
    error.switch_id = switch.id
    return error


__all__ = [
    "MODES",
    "SAFE_METHODS",
    "Mode",
    "Switch",
    "isolated_error",
    "normalise_switch_target",
    "parse_ttl",
    "validate_spec",
]


def audit_trails(switch: Switch) -> list[str]:
    """Where a switch's engage/release/expiry records go: a tenant switch in that tenant's own
    trail (it sees it in its export) and in _system, where operators find every switch."""
    if SCOPE_BY_NAME[switch.scope].matching == "acting tenant" and switch.target:
        return [switch.target, SYSTEM_TENANT]
    return [SYSTEM_TENANT]
