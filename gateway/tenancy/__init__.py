"""Tenant isolation at the edge (SPEC §7): the signed context assertion for backends, tenant
templates, support grants.

Backends import ``verify_context`` from here. This module imports only the dependency-free
context code, so a backend pulls in nothing of the gateway's runtime by importing it.
"""

from __future__ import annotations

from gateway.tenancy.context import (
    ContextInvalid,
    ReplayCache,
    VerifiedContext,
    sign_context,
    verify_context,
)

__all__ = ["ContextInvalid", "ReplayCache", "VerifiedContext", "sign_context", "verify_context"]
