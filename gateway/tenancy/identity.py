"""SPEC §7: the identity the upstream sees, from the verified token, the acting tenant and the
support grant it acts under: the tenant, user and roles headers and their signed
``X-Gateway-Context`` (``gateway.tenancy.context``); and the tenant an upstream answer must echo.
"""

from __future__ import annotations

from collections.abc import Sequence

from multidict import istr

from gateway.auth.jwt import VerifiedClaims
from gateway.header_lines import header_line
from gateway.tenancy import context as signed_context
from gateway.tenancy.context import ContextSigner, identity_tail
from gateway.tenancy.grants import SUPPORT_ROLE, Grant
from gateway.tenancy.policy import identity_ok

# istr: multidict keeps their case-folded form, so adding them costs no case folding per request.
TENANT_HEADER = istr(signed_context.TENANT_HEADER)
USER_HEADER = istr(signed_context.USER_HEADER)
ROLES_HEADER = istr(signed_context.ROLES_HEADER)
CONTEXT_HEADER = istr(signed_context.CONTEXT_HEADER)


class OwnIdentity:
    """A token's identity in its own tenant, derived from its claims alone, once per token (kept
    in ``VerifiedClaims.derived``; ``own_identity``): whether it may become upstream headers
    (``policy.identity_ok``), its three plain identity headers and its part of the signed
    context (``context.identity_tail``). Only what varies per request (method, target, request
    id, time) is signed per request."""

    __slots__ = ("lines", "ok", "tail")

    def __init__(self, claims: VerifiedClaims) -> None:
        tenant, user, roles = claims.tenant, claims.subject, claims.roles_text
        self.ok = identity_ok(tenant, user, claims.roles)
        # As upstream header lines (``forwarding.UpstreamHeaders``): joined once per token.
        self.lines = _identity_lines(tenant, user, roles)
        self.tail = identity_tail(tenant, user, roles)


def own_identity(claims: VerifiedClaims) -> OwnIdentity:
    """The claims' ``OwnIdentity``, made on the token's first request."""
    own: OwnIdentity | None = claims.derived
    if own is None:
        own = OwnIdentity(claims)
        object.__setattr__(claims, "derived", own)
    return own


def identity_headers(
    signer: ContextSigner,
    method: str,
    target: str,
    tenant: str,
    claims: VerifiedClaims,
    grant: Grant | None,
    request_id: str,
) -> tuple[str, ...]:
    """The four identity headers of a request to ``target`` acting in ``tenant`` as upstream
    header lines (``forwarding.UpstreamHeaders``), the last one the signed context over them."""
    if grant is None and tenant == claims.tenant:  # the token's own tenant: every request but grants
        own: OwnIdentity | None = claims.derived
        if own is None:
            own = own_identity(claims)
        return (*own.lines, _CONTEXT_PREFIX + signer.sign_tail(method, target, own.tail, request_id))
    # SECURITY: a token's roles hold in the token's own tenant. Acting in another tenant under a
    # grant, a support user is "support" there and nothing more: a "tenant-admin" or "finance"
    # role from the support organisation's tenant must not reach the granting tenant's backend.
    roles = SUPPORT_ROLE if grant is not None else claims.roles_text
    user = claims.subject
    signed = signer.sign_joined(method, target, tenant, user, roles, request_id)
    return (*_identity_lines(tenant, user, roles), _CONTEXT_PREFIX + signed)


def _identity_lines(tenant: str, user: str, roles: str) -> tuple[str, str, str]:
    return (
        header_line(TENANT_HEADER, tenant),
        header_line(USER_HEADER, user),
        header_line(ROLES_HEADER, roles),
    )


# The signed context's line up to its value: one concatenation per request.
_CONTEXT_PREFIX = header_line(CONTEXT_HEADER, "")


def echo_fault(tenant: str, echoes: Sequence[str], required: bool) -> str | None:
    """Why an upstream answer carrying these ``X-Tenant-ID`` ``echoes`` must not reach a client
    acting in ``tenant`` (``"missing"``, only when the route requires an echo, or
    ``"mismatch"``); ``None`` when it may."""
    if not echoes:
        return "missing" if required else None
    if any(echo != tenant for echo in echoes):
        return "mismatch"
    return None
