"""What a failed tenancy decision means (SPEC §7, Appendix B): each refusal is counted, logged
and filed in the audit trails (``gateway.tenancy.records``), and here is decided what an audit
record that cannot be filed means: support access is then refused (fail closed), a refusal is
refused all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import structlog

from gateway.audit.trail import AuditTrail
from gateway.auth.jwt import VerifiedClaims
from gateway.auth.metrics import AUTH_FAILURES
from gateway.errors import StoreUnavailable, TenantLeakBlocked, TenantMismatch
from gateway.facts import RequestFacts
from gateway.tenancy.grants import Grant
from gateway.tenancy.records import record_grant_use, record_leak, record_mismatch

log = structlog.get_logger("gateway.tenancy")


def account_grant_use(
    audit: AuditTrail, facts: RequestFacts, claims: VerifiedClaims, tenant: str, grant: Grant
) -> None:
    """File ``grant.used`` for a request acting in ``tenant`` under ``grant``, or refuse it (503)."""
    if not record_grant_use(audit, facts, claims, tenant, grant):
        # SECURITY: support access that cannot be accounted for is not granted (fail closed).
        log.error("grant_audit_failed", request_id=facts.request_id)
        raise StoreUnavailable("Support access cannot be audited right now")


def refuse_mismatch(audit: AuditTrail, facts: RequestFacts, own: str, named: str | None) -> NoReturn:
    """403 ``tenant-mismatch``: the request names a tenant (``None``: one it could not name) its
    token's tenant ``own`` does not act for."""
    AUTH_FAILURES.labels("tenant_mismatch").inc()
    if not record_mismatch(audit, facts, own, named):
        log.error("tenant_mismatch_audit_failed", request_id=facts.request_id)
    raise TenantMismatch("This request names a tenant your token does not act for")


def block_leak(
    audit: AuditTrail, facts: RequestFacts, status: int, reason: str, echoes: Sequence[str]
) -> NoReturn:
    """502 ``tenant-leak-blocked``: the upstream's answer (``status``) is withheld, for the
    ``reason`` given by ``gateway.tenancy.identity.echo_fault``."""
    assert facts.route is not None
    log.warning("tenant_leak_blocked", reason=reason, route=facts.route.name, upstream_status=status)
    if not record_leak(audit, facts, reason, echoes, status):
        log.error("tenant_leak_audit_failed", request_id=facts.request_id)
    raise TenantLeakBlocked(
        "The upstream's answer did not carry the request's tenant; it was withheld"
        if reason == "missing"
        else "The upstream answered for another tenant; its response was withheld"
    )
