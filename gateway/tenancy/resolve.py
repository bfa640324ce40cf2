"""Route ``tenant_from`` templates: where a request names its tenant (SPEC §7).

``path:/t/{tenant}/`` reads the tenant from the canonical path; ``host:{tenant}.erp.example.com``
from the ``Host`` header (port ignored, letter case ignored as DNS does, the tenant lower-cased).
Each template is validated when the config loads and compiled once per runtime, so a request
costs one precompiled regex match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from gateway.audit.record import TENANT_ID_RE

PLACEHOLDER = "{tenant}"
_HOST_LITERAL_RE = re.compile(r"[A-Za-z0-9.-]*")
_PATH_LITERAL_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")


class TenantNotNamed(Exception):
    """The request does not name a tenant where the route's template says it must."""


@dataclass(frozen=True, slots=True)
class TenantTemplate:
    kind: Literal["path", "host"]
    text: str  # the template without its "path:"/"host:" prefix
    literal_prefix: str  # the part before {tenant}
    _regex: re.Pattern[str]

    def tenant_of(self, path: str, host: str | None) -> str:
        """The tenant the request names; ``TenantNotNamed`` when it names none (or garbage)."""
        if self.kind == "path":
            match = self._regex.match(path)
        else:
            match = self._regex.fullmatch(_host_without_port(host or "").lower())
        if match is None:
            raise TenantNotNamed
        tenant = match.group("tenant")
        # SECURITY: a named tenant is only ever compared or used as an id; junk is refused early.
        if not TENANT_ID_RE.fullmatch(tenant):
            raise TenantNotNamed
        return tenant


def _host_without_port(host: str) -> str:
    if host.startswith("["):
        return host  # an IP literal never matches a name template
    return host.rpartition(":")[0] if ":" in host else host


def compile_tenant_from(spec: str, *, case_insensitive: bool = False) -> TenantTemplate:
    """Parse ``path:…{tenant}…`` or ``host:…{tenant}…``; ``ValueError`` says what is wrong."""
    kind, sep, text = spec.partition(":")
    if not sep or kind not in ("path", "host"):
        raise ValueError('expected "path:/t/{tenant}/" or "host:{tenant}.erp.example.com"')
    if text.count(PLACEHOLDER) != 1:
        raise ValueError("the template must contain {tenant} exactly once")
    before, _, after = text.partition(PLACEHOLDER)
    if any(c in before + after for c in "{}"):
        raise ValueError("only {tenant} may appear in braces")
    if kind == "path":
        if not before.startswith("/") or "//" in text or not _PATH_LITERAL_RE.fullmatch(before + after):
            raise ValueError("a path template is an absolute path like /t/{tenant}/")
        flags = re.IGNORECASE if case_insensitive else 0
        # The tenant is one segment (or part of one); what follows must end on a segment boundary.
        tail = re.escape(after.rstrip("/"))
        regex = re.compile(f"{re.escape(before)}(?P<tenant>[^/]+){tail}(?=/|$)", flags)
        return TenantTemplate("path", text, before, regex)
    if not _HOST_LITERAL_RE.fullmatch(before + after) or not (before + after):
        raise ValueError("a host template is a DNS name like {tenant}.erp.example.com (no port)")
    regex = re.compile(f"{re.escape(before.lower())}(?P<tenant>[a-z0-9-]+){re.escape(after.lower())}")
    return TenantTemplate("host", text, before, regex)


def covers_route(template: TenantTemplate, prefix: str, case_insensitive: bool = False) -> bool:
    """Whether a path template can match paths under ``prefix`` (a config cross-check)."""
    if template.kind != "path":
        return True
    literal, route = template.literal_prefix, prefix.rstrip("/") + "/"
    if case_insensitive:
        literal, route = literal.casefold(), route.casefold()
    return literal.startswith(route) or route.startswith(literal)


def compile_templates(
    routes: Iterable[tuple[str, str | None]], *, case_insensitive: bool
) -> Mapping[str, TenantTemplate]:
    """Route name → compiled template, for the routes that have one (built once per runtime)."""
    return MappingProxyType(
        {
            name: compile_tenant_from(spec, case_insensitive=case_insensitive)
            for name, spec in routes
            if spec is not None
        }
    )
