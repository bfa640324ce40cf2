"""The audit records of tenancy decisions (Appendix B): a support grant used, a request naming
another tenant than its token's, an upstream answer withheld because it claimed another
tenant. Each function files one record in the trails of every tenant concerned and says
whether it could; what a failure means (refuse, or only log) is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.audit.trail import AuditTrail
from gateway.auth.jwt import VerifiedClaims
from gateway.facts import RequestFacts
from gateway.tenancy.grants import Grant
from gateway.tenancy.resolve import TENANT_ID_RE

_MAX_CLAIMED = 4  # tenants named in one leak record (the upstream chooses them)
_SUBMIT_ERRORS = (OSError, ValueError)  # AuditTrail.submit: spool full, or a record it refuses


def record_grant_use(
    audit: AuditTrail, facts: RequestFacts, claims: VerifiedClaims, tenant: str, grant: Grant
) -> bool:
    """``grant.used`` in the granting tenant's trail."""
    route, target = facts.route, facts.target
    assert route is not None and target is not None
    try:
        audit.submit(
            "grant.used",
            tenants=[tenant],
            actor=claims.subject,
            request_id=facts.request_id,
            details={
                "grant": grant.id,
                "support_tenant": claims.tenant,
                "method": facts.request.method,
                "path": target.path,
                "route": route.name,
                "module": route.module,
            },
        )
    except _SUBMIT_ERRORS:
        return False
    return True


def record_mismatch(audit: AuditTrail, facts: RequestFacts, own: str, named: str | None) -> bool:
    """``tenant.mismatch`` in the token's tenant's trail and the named tenant's (App. B: both)."""
    route, target = facts.route, facts.target
    assert route is not None and target is not None
    try:
        audit.submit(
            "tenant.mismatch",
            tenants=[own] if named is None else [own, named],
            actor=facts.user,
            request_id=facts.request_id,
            details={
                "token_tenant": own,
                "requested_tenant": named,
                "method": facts.request.method,
                "path": target.path,
                "route": route.name,
            },
        )
    except _SUBMIT_ERRORS:
        return False
    return True


def record_leak(
    audit: AuditTrail, facts: RequestFacts, reason: str, echoes: Sequence[str], status: int
) -> bool:
    """``tenant.leak_blocked`` in the acting tenant's trail and those the answer claimed (valid
    ids only, at most four: the upstream chooses them)."""
    route, target, tenant = facts.route, facts.target, facts.tenant
    assert route is not None and target is not None and tenant is not None
    claimed = [e[:128] for e in echoes[:_MAX_CLAIMED]]
    others = [c for c in dict.fromkeys(claimed) if c != tenant and TENANT_ID_RE.fullmatch(c)]
    try:
        audit.submit(
            "tenant.leak_blocked",
            tenants=[tenant, *others],  # the acting tenant and whoever the data claims to be
            actor=facts.user,
            request_id=facts.request_id,
            details={
                "reason": reason,
                "claimed_tenants": claimed,
                "upstream_status": status,
                "method": facts.request.method,
                "path": target.path,
                "route": route.name,
            },
        )
    except _SUBMIT_ERRORS:
        return False
    return True
