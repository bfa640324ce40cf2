"""SPEC §7 / App. B: a tenancy refusal is raised whether or not its audit record is filed; support
access whose ``grant.used`` record cannot be filed is refused (fail closed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditTrail
from gateway.errors import StoreUnavailable, TenantLeakBlocked, TenantMismatch
from gateway.state import StateStore
from gateway.tenancy.grants import Grant
from gateway.tenancy.refusals import account_grant_use, block_leak, refuse_mismatch
from tests.unit.tenancy.test_records import SAM, Facts, events

GRANT = Grant("g-1", "acme", "sam", ("inventory",), 0.0, 100.0, "alice")


@pytest.fixture
async def trail(store: StateStore, tmp_path: Path) -> AsyncIterator[AuditTrail]:
    audit = AuditTrail(store, spool_dir=tmp_path / "spool")
    yield audit
    audit.close()


async def test_a_mismatch_is_refused_and_filed_in_both_trails(trail: AuditTrail, store: StateStore) -> None:
    with pytest.raises(TenantMismatch):
        refuse_mismatch(trail, Facts(), "globex", "acme")
    await trail.flush()
    assert [e["event"] for e in await events(store, "globex")] == ["tenant.mismatch"]
    assert [e["event"] for e in await events(store, "acme")] == ["tenant.mismatch"]


async def test_a_mismatch_that_cannot_be_filed_is_refused_all_the_same(trail: AuditTrail) -> None:
    with pytest.raises(TenantMismatch):
        refuse_mismatch(trail, Facts(), "acme", "not a tenant!")  # AuditTrail refuses the record


@pytest.mark.parametrize(
    ("reason", "wording"), [("missing", "did not carry the request's tenant"), ("mismatch", "another tenant")]
)
async def test_a_leak_is_withheld_with_the_reason_s_wording(
    trail: AuditTrail, reason: str, wording: str
) -> None:
    with pytest.raises(TenantLeakBlocked) as caught:
        block_leak(trail, Facts(), 200, reason, ["globex"] if reason == "mismatch" else [])
    assert wording in caught.value.detail


async def test_a_grant_use_is_filed(trail: AuditTrail, store: StateStore) -> None:
    account_grant_use(trail, Facts(), SAM, "acme", GRANT)
    await trail.flush()
    assert [e["event"] for e in await events(store, "acme")] == ["grant.used"]


async def test_a_grant_use_that_cannot_be_filed_is_refused(trail: AuditTrail) -> None:
    facts: Any = Facts()
    with pytest.raises(StoreUnavailable):
        account_grant_use(trail, facts, SAM, "not a tenant!", GRANT)
