"""The operators' and a tenant's identity providers, as end-to-end tests configure them."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer

OPS, TENANT_IDP, AUD = "https://ops-id.example", "https://tenant-id.example", "shopino-erp"


def operator_and_tenant_issuers() -> dict[str, DemoIssuer]:
    """``ops`` (trusted for the admin API) and ``tenant`` (a customer's IdP)."""
    return {
        "ops": DemoIssuer(issuer=OPS, audience=AUD),
        "tenant": DemoIssuer(issuer=TENANT_IDP, audience=AUD),
    }


def issuer_entries(issuers: Mapping[str, DemoIssuer], tmp: Path) -> list[dict[str, Any]]:
    """``auth.issuers`` for these issuers, each with its keys written to ``tmp/<name>.json``."""
    return [
        {
            "issuer": issuer.issuer,
            "audience": issuer.audience,
            "jwks_file": str(issuer.write_jwks(tmp / f"{name}.json")),
        }
        for name, issuer in issuers.items()
    ]


def mint(
    issuer: DemoIssuer,
    tenant: str,
    roles: list[str],
    amr: tuple[str, ...] = ("pwd", "otp"),
    *,
    user_id: str | None = None,
) -> str:
    """A 10-minute token for ``user_id`` (default ``user-<tenant>``), MFA-backed by default."""
    user = make_user(user_id or f"user-{tenant}", tenant, roles, "irrelevant-pw")
    return issuer.mint(user, amr=amr, ttl=600, auth_time=int(time.time()))
