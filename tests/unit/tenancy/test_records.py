"""Appendix B: the audit records of tenancy decisions land in every concerned tenant's trail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit import AuditTrail
from gateway.auth.jwt import VerifiedClaims
from gateway.config.model import RouteConfig
from gateway.routing import CanonicalTarget
from gateway.state import StateStore
from gateway.tenancy.grants import Grant
from gateway.tenancy.records import record_grant_use, record_leak, record_mismatch

ROUTE = RouteConfig(name="inventory", prefix="/inv", upstream="erp", module="inventory")
TARGET = CanonicalTarget("/inv/items", "", "/inv/items")
SAM = VerifiedClaims(
    "https://id.example", "sam", "shopino-support", ("erp",), ("support",), (), None, 1, 2, None, {}
)


@dataclass
class Request:
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Facts:
    """A request as the pipeline established it (the fields ``RequestFacts`` names that matter)."""

    request: Request = field(default_factory=Request)
    request_id: str = "req-1"
    route: RouteConfig | None = ROUTE
    target: CanonicalTarget | None = TARGET
    user: str | None = "sam"
    tenant: str | None = "acme"


@pytest.fixture
async def trail(store: StateStore, tmp_path: Path) -> AsyncIterator[AuditTrail]:
    audit = AuditTrail(store, spool_dir=tmp_path / "spool")
    yield audit
    audit.close()


async def events(store: StateStore, tenant: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) async for _, raw in store.log_read(f"audit:{tenant}")]


async def test_each_record_goes_to_every_tenant_concerned(trail: AuditTrail, store: StateStore) -> None:
    facts: Any = Facts()
    grant = Grant("g-1", "acme", "sam", ("inventory",), 0.0, 100.0, "alice")
    assert record_grant_use(trail, facts, SAM, "acme", grant)
    assert record_mismatch(trail, facts, "globex", "acme")
    echoes = ["initech", "acme", "bad tenant!", "initech", "x", "y"]
    assert record_leak(trail, facts, "mismatch", echoes, 200)
    await trail.flush()
    acme = {e["event"]: e for e in await events(store, "acme")}
    assert acme["grant.used"]["details"]["support_tenant"] == "shopino-support"
    assert acme["grant.used"]["details"]["module"] == "inventory"
    assert acme["tenant.mismatch"]["details"]["token_tenant"] == "globex"
    assert [e["event"] for e in await events(store, "globex")] == ["tenant.mismatch"]  # both trails
    leak = acme["tenant.leak_blocked"]["details"]
    assert leak["claimed_tenants"] == ["initech", "acme", "bad tenant!", "initech"]  # four at most
    # The acting tenant's trail, and the valid other tenant the answer claimed (once).
    assert [e["event"] for e in await events(store, "initech")] == ["tenant.leak_blocked"]


async def test_a_record_that_cannot_be_filed_says_so(trail: AuditTrail) -> None:
    facts: Any = Facts()
    assert not record_mismatch(trail, facts, "acme", "not a tenant!")  # AuditTrail refuses it (ValueError)
