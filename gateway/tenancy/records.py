"""The audit records of tenancy decisions (Appendix B): a support grant used, a request naming
another tenant than its token's, an upstream answer withheld because it claimed another
tenant. Each function files one record in the trails of every tenant concerned and says
whether it could; what a failure means (refuse, or only log) is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.audit.record import TENANT_ID_RE
from gateway.audit.trail import AuditTrail
from gateway.auth.jwt import VerifiedClaims
from gateway.facts import RequestFacts
from gateway.tenancy.grants import Grant

_MAX_CLAIMED = 4  # tenants named in one leak record (the upstream chooses them)
_SUBMIT_ERRORS = (OSError, ValueError)  # AuditTrail.submit: spool full, or a record it refuses


def _where(facts: RequestFacts) -> dict[str, str]:
    """The request's method, canonical path and route, as every tenancy record names them."""
    route, target = facts.route, facts.target
    assert route is not None and target is not None
    return {"method": facts.request.method, "path": target.path, "route": route.name}


def _file(
    audit: AuditTrail,
    event: str,
    facts: RequestFacts,
    tenants: list[str],
    actor: str | None,
    details: dict[str, Any],
) -> bool:
    try:
        audit.submit(event, tenants=tenants, actor=actor, request_id=facts.request_id, details=details)
    except _SUBMIT_ERRORS:
        return False
    return True


def record_grant_use(
    audit: AuditTrail, facts: RequestFacts, claims: VerifiedClaims, tenant: str, grant: Grant
) -> bool:
    """``grant.used`` in the granting tenant's trail."""
    assert facts.route is not None
    details = {
        "grant": grant.id,
        "support_tenant": claims.tenant,
        **_where(facts),
        "module": facts.route.module,
    }
    return _file(audit, "grant.used", facts, [tenant], claims.subject, details)


def record_mismatch(audit: AuditTrail, facts: RequestFacts, own: str, named: str | None) -> bool:
    """``tenant.mismatch`` in the token's tenant's trail and the named tenant's (App. B: both)."""
    tenants = [own] if named is None else [own, named]
    details = {"token_tenant": own, "requested_tenant": named, **_where(facts)}
    return _file(audit, "tenant.mismatch", facts, tenants, facts.user, details)


def record_leak(
    audit: AuditTrail, facts: RequestFacts, reason: str, echoes: Sequence[str], status: int
) -> bool:
    """``tenant.leak_blocked`` in the acting tenant's trail and those the answer claimed (valid
    ids only, at most four: the upstream chooses them)."""
    tenant = facts.tenant
    assert tenant is not None
    claimed = [e[:128] for e in echoes[:_MAX_CLAIMED]]
    others = [c for c in dict.fromkeys(claimed) if c != tenant and TENANT_ID_RE.fullmatch(c)]
    details = {"reason": reason, "claimed_tenants": claimed, "upstream_status": status, **_where(facts)}
    # the acting tenant and whoever the data claims to be
    return _file(audit, "tenant.leak_blocked", facts, [tenant, *others], facts.user, details)
