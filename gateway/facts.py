"""What domain logic may read of one request: read-only views the per-request context satisfies.

Domain packages (auth, tenancy, ratelimit, killswitch, audit, tracing, traffic, logs) take a
``RequestFacts`` instead of ``gateway.context.RequestContext``, so they import neither the
context nor the server (aiohttp, the lean listener). These are ``typing.Protocol`` classes:
the context already has every attribute, so passing it costs nothing per request, where a
frozen value built for each request would (about a microsecond on the hot path).

Add a member here only when a domain function needs it; keep members read-only (properties).
The claims, grant and trace members are typed by views declared here (what domain code reads of
``auth.jwt.VerifiedClaims``, ``tenancy.grants.Grant`` and ``tracing.context.Trace``), so this
module imports no domain package and every domain package may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.config.model import RouteConfig
    from gateway.routing import CanonicalTarget

# The request's W3C trace (trace id, span id, traceparent, tracestate, parent id):
# ``gateway.tracing.context.Trace`` is this type.
TraceFacts = tuple[str, str, str, str | None, str | None]


class RequestView(Protocol):
    """The request line and headers as received (aiohttp's request or the lean listener's)."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def version(self) -> tuple[int, int]: ...

    @property
    def host(self) -> str: ...


class ClaimsView(Protocol):
    """What domain logic reads of a request's verified token (``gateway.auth.jwt.VerifiedClaims``)."""

    @property
    def issuer(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def issued_at(self) -> int: ...

    @property
    def expires_at(self) -> int: ...


class GrantView(Protocol):
    """What domain logic reads of the support grant a request acts under
    (``gateway.tenancy.grants.Grant``)."""

    @property
    def id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def expires_at(self) -> float: ...


class RequestFacts(Protocol):
    """One request as the pipeline has established it so far (SPEC §3): who, for whom, where."""

    @property
    def request(self) -> RequestView: ...

    @property
    def request_id(self) -> str: ...

    @property
    def client_ip(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def target(self) -> CanonicalTarget | None: ...

    @property
    def route(self) -> RouteConfig | None: ...

    @property
    def claims(self) -> ClaimsView | None: ...

    @property
    def user(self) -> str | None: ...

    @property
    def tenant(self) -> str | None: ...

    @property
    def grant(self) -> GrantView | None: ...

    @property
    def trace(self) -> TraceFacts: ...

    @property
    def status(self) -> int: ...

    @property
    def outcome(self) -> str | None: ...

    @property
    def refusal(self) -> str | None: ...

    @property
    def ratelimit(self) -> str | None: ...

    @property
    def killswitch_id(self) -> str | None: ...

    @property
    def killswitch_index(self) -> object | None: ...
