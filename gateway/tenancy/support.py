"""Support identities (Appendix C ``tenancy.support``): whose ``support`` role counts.

The role is a claim any trusted issuer can mint for any tenant, so by itself it proves nothing:
it counts only on tokens of the support tenant from one of the support issuers, and a grant's
grantee (a ``sub``) is looked for only among those identities.

The gateway's own MFA tokens (SPEC §6) are issued by ``mfa.issuer`` for a user first
authenticated elsewhere; they carry that first issuer in ``idp`` (set by the gateway, under its
signature), and that is the issuer judged here. An ``idp`` claim in any other issuer's token is
ignored: only the gateway vouches for where its own tokens came from.
"""

from __future__ import annotations

from gateway.auth.jwt import VerifiedClaims
from gateway.auth.mfa import origin_issuer as mfa_origin_issuer
from gateway.tenancy.grants import SUPPORT_ROLE
from gateway.tenancy.model import SupportConfig


def origin_issuer(claims: VerifiedClaims, gateway_issuer: str) -> str | None:
    """The issuer that authenticated the user: the token's own, or for a gateway MFA token the
    first-factor issuer it records (None when it records none)."""
    return mfa_origin_issuer(claims.issuer, claims.raw, gateway_issuer)


def is_support_identity(claims: VerifiedClaims, support: SupportConfig, gateway_issuer: str) -> bool:
    """Whether this token's ``support`` role counts (Appendix C)."""
    # SECURITY: a customer tenant's IdP, or a partner issuer minting the support tenant's id,
    # must not make a "support" user who could then use another tenant's grant for that sub.
    return (
        SUPPORT_ROLE in claims.roles
        and claims.tenant == support.tenant
        and origin_issuer(claims, gateway_issuer) in support.issuers
    )


def roles_that_count(claims: VerifiedClaims, support: SupportConfig, gateway_issuer: str) -> tuple[str, ...]:
    """The token's roles, without ``support`` when it is not a support identity's."""
    if SUPPORT_ROLE not in claims.roles or is_support_identity(claims, support, gateway_issuer):
        return claims.roles
    return tuple(role for role in claims.roles if role != SUPPORT_ROLE)
