"""One error family for everything the gateway refuses.

Stages raise a ``GatewayError`` subclass; exactly one module (``gateway.http.problem``) turns it
into an RFC 9457 problem+json answer and counts it. ``detail`` must be safe to show a client:
it never contains header values, token contents, internal addresses or stack traces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class GatewayError(Exception):
    """A refusal with a status, a stable slug and a client-safe detail."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.headers: dict[str, str] = dict(headers or {})
        self.extensions: dict[str, Any] = dict(extensions or {})
        super().__init__(self.detail)


class BadRequest(GatewayError):
    status, slug, title = 400, "bad-request", "Bad request"


class MissingToken(GatewayError):
    status, slug, title = 401, "missing-token", "Authentication required"


class InvalidToken(GatewayError):
    status, slug, title = 401, "invalid-token", "Invalid token"


class MfaRequired(GatewayError):
    status, slug, title = 401, "mfa-required", "Multi-factor authentication required"


class Forbidden(GatewayError):
    status, slug, title = 403, "forbidden", "Forbidden"


class TenantMismatch(GatewayError):
    status, slug, title = 403, "tenant-mismatch", "Tenant mismatch"


class NotFound(GatewayError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(GatewayError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class RequestTimeout(GatewayError):
    status, slug, title = 408, "request-timeout", "Request timeout"


class Conflict(GatewayError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(GatewayError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class HeadersTooLarge(GatewayError):
    status, slug, title = 431, "headers-too-large", "Request header fields too large"


class RateLimited(GatewayError):
    status, slug, title = 429, "rate-limited", "Too many requests"


class LockedOut(GatewayError):
    status, slug, title = 429, "locked-out", "Too many failed attempts"


class TenantLeakBlocked(GatewayError):
    status, slug, title = 502, "tenant-leak-blocked", "Upstream response withheld"


class UpstreamUnavailable(GatewayError):
    status, slug, title = 502, "upstream-unavailable", "Upstream unavailable"


class Isolated(GatewayError):
    status, slug, title = 503, "isolated", "Isolated by an incident response switch"
    switch_id: str | None = None  # the refusing switch (a span attribute; never sent to clients)


class NotReady(GatewayError):
    status, slug, title = 503, "not-ready", "Gateway not ready"


class StoreUnavailable(GatewayError):
    """The state store cannot be reached. Raised by every store backend for any driver error."""

    status, slug, title = 503, "store-unavailable", "State store unavailable"


class MfaEnrolmentFrozen(GatewayError):
    """MFA enrolment refused fleet-wide after a state store reset until an operator lifts the
    freeze (gateway.auth.mfa_freeze). A service condition, not the client's fault (hence not
    4xx), of the family of ``isolated``; a slug of its own so clients can tell it from an
    outage. Extends App. B's list."""

    status, slug, title = 503, "mfa-enrolment-frozen", "MFA enrolment frozen"


class NotImplementedCoding(GatewayError):
    """RFC 9112 §6.1: a transfer coding the gateway does not implement (anything but chunked)."""

    status, slug, title = 501, "not-implemented", "Not implemented"


class UpstreamTimeout(GatewayError):
    status, slug, title = 504, "upstream-timeout", "Upstream timeout"


class InternalError(GatewayError):
    status, slug, title = 500, "internal", "Internal error"
