"""SPEC §3.6 / §7: who may act in which tenant, as rules over plain values (claims, route
settings, the grant and revocation snapshots). The tenancy stage applies what they decide.

Decisions (documented in the README):
* A route's ``roles`` are any-of against the token's roles. A support user acting under a grant
  is let through by the grant instead: a grant that covers the route's module satisfies the
  route's roles (the tenant admin chose to open that module). Routes without a ``module`` are
  never reachable under a grant.
* The ``support`` role counts only on support identities (Appendix C ``tenancy.support``: the
  support tenant, one of its issuers): elsewhere it neither opens a grant nor satisfies a
  route's ``roles``. A grant's grantee is a ``sub`` among those identities only.
* A request whose route has ``tenant_from`` but that names no (valid) tenant is refused like a
  mismatch: the route promised the tenant would be checked, and it cannot be.
"""

from __future__ import annotations

import functools
import re
from typing import Final, Literal

from gateway.audit.record import TENANT_ID_RE
from gateway.auth.jwt import VerifiedClaims
from gateway.auth.revocation import RevocationEpochs
from gateway.tenancy.grants import Grant, SupportGrants
from gateway.tenancy.model import SupportConfig
from gateway.tenancy.resolve import TenantTemplate
from gateway.tenancy.support import is_support_identity, roles_that_count

# SECURITY: identity values become upstream header values and MAC fields: no control characters
# (header injection, field confusion in the "\n"-joined MAC), no comma inside a role, no lone
# surrogates (not encodable as UTF-8: the MAC could not be computed), and no leading or trailing
# blank (HTTP strips it, so the backend would see another value than the one signed).
_USER_RE = re.compile(r"(?![ \t])[^\x00-\x1f\x7f\ud800-\udfff]{1,1024}(?<![ \t])")
_ROLE_RE = re.compile(r"(?![ \t])[^\x00-\x1f\x7f,\ud800-\udfff]{1,256}(?<![ \t])")
REVOKED: Final = "revoked"  # support_grant: a grant exists, but a revocation stops its user


@functools.lru_cache(maxsize=4096)
def identity_ok(tenant: str, subject: str, roles: tuple[str, ...]) -> bool:
    """Whether a token's tenant, subject and roles may become upstream identity headers."""
    # Cached: the same few identities come back on every request, and three regex scans per
    # request were a visible share of an authenticated request's cost.
    return bool(
        TENANT_ID_RE.fullmatch(tenant)
        and _USER_RE.fullmatch(subject)
        and all(_ROLE_RE.fullmatch(role) for role in roles)
    )


def named_tenant(template: TenantTemplate, path: str, host: str, own: str) -> str | None:
    """The tenant a request names (``tenant_from``) when it is not the token's own; None when it
    is. Raises ``TenantNotNamed`` when the request names no valid tenant (refused as a mismatch)."""
    named = template.tenant_of(path, host)
    # Host names are case-insensitive: a host template yields a lower-case tenant.
    return None if named == (own.lower() if template.kind == "host" else own) else named


def roles_allow(
    route_roles: tuple[str, ...], claims: VerifiedClaims, support: SupportConfig, issuer: str
) -> bool:
    """Any-of: one of the token's roles that count (``issuer``: the gateway's MFA issuer) is a
    role of the route. A route without ``roles`` needs none."""
    return not route_roles or not set(route_roles).isdisjoint(roles_that_count(claims, support, issuer))


def support_grant(
    claims: VerifiedClaims,
    tenant: str,
    module: str | None,
    *,
    support: SupportConfig,
    issuer: str,
    grants: SupportGrants,
    revocations: RevocationEpochs,
) -> Grant | Literal["revoked"] | None:
    """The grant under which this token may act in ``tenant``, another than its own: None when
    there is none (the request is a tenant mismatch), ``REVOKED`` when a revocation in ``tenant``
    stops its user."""
    if not is_support_identity(claims, support, issuer):
        return None
    grant = grants.find(tenant, claims.subject, module)
    if grant is None:
        return None
    # SECURITY: a tenant-wide (or per-user) revocation in the granting tenant stops support
    # users acting there too, whatever their own tenant says.
    if revocations.is_revoked(tenant, claims.subject, claims.issued_at):
        return REVOKED
    return grant
