"""Tenant audit trails: hash-chained records, streamed export, verification, retention, purge,
and a disk spool so no audit write is lost while the state store is down (SPEC §11, App. B).

Features write through ``AuditTrail.record``; features that keep per-tenant data call
``register_tenant_data("<name>:{tenant}:")`` at import so ``purge_tenant`` removes it.
"""

from __future__ import annotations

from gateway.audit.export import CONTENT_TYPES, FORMATS, parse_time_bound
from gateway.audit.purge import register_tenant_data, registered_tenant_data
from gateway.audit.record import (
    CHECKPOINT_EVENT,
    FIELDS,
    GENESIS_HASH,
    PURGED_EVENT,
    SYSTEM_TENANT,
    compute_hash,
    validate_tenant,
)
from gateway.audit.trail import AuditTrail
from gateway.audit.verify import VerifyResult, iter_export_records, verify_records

SYSTEM_TRAIL = SYSTEM_TENANT  # the name some callers use for the global trail

__all__ = [
    "CHECKPOINT_EVENT",
    "CONTENT_TYPES",
    "FIELDS",
    "FORMATS",
    "GENESIS_HASH",
    "PURGED_EVENT",
    "SYSTEM_TENANT",
    "SYSTEM_TRAIL",
    "AuditTrail",
    "VerifyResult",
    "compute_hash",
    "iter_export_records",
    "parse_time_bound",
    "register_tenant_data",
    "registered_tenant_data",
    "validate_tenant",
    "verify_records",
]
