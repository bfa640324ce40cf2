"""When an open stream's session ends (App. C): the deadline (exp, leeway, grant expiry) and
the revocation and grant checks, against real revocation epochs on both store backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.auth.jwt import VerifiedClaims
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.sessions import GRANT_ENDED, REVOKED, session_end, stream_deadline
from gateway.state import StateStore
from gateway.tenancy.grants import Grant
from tests.support.timing import Clock

NOW = 1_700_000_000.5


def claims(
    *, tenant: str = "shopino-support", sub: str = "sam", iat: float = NOW - 60, exp: float = NOW + 60
):
    return VerifiedClaims(
        issuer="https://id.test", subject=sub, tenant=tenant, audience=("erp",), roles=("support",),
        amr=("pwd",), auth_time=None, issued_at=int(iat), expires_at=int(exp), token_id=None, raw={},
    )  # fmt: skip


def grant(
    gid: str = "g_aaaaaaaaaaaaaaaaaaaa", *, tenant: str = "acme", expires_at: float = NOW + 30
) -> Grant:
    return Grant(gid, tenant, "sam", ("inventory",), NOW - 10, expires_at, "alice")


@pytest.fixture
async def epochs(store: StateStore) -> AsyncIterator[RevocationEpochs]:
    revocations = RevocationEpochs(store, clock=Clock(NOW), resync=60)
    await revocations.start()
    await revocations.wait_loaded(timeout=3)
    yield revocations
    await revocations.stop()


def test_deadline_is_exp_not_exp_plus_leeway() -> None:
    assert stream_deadline(claims(exp=NOW + 60), None, leeway=30, now=NOW) == int(NOW + 60)


def test_a_stream_opened_inside_the_leeway_ends_when_the_leeway_does() -> None:
    # Closing it at once would refuse every stream the leeway (clock skew) let in.
    assert stream_deadline(claims(exp=NOW - 5), None, leeway=30, now=NOW) == int(NOW - 5) + 30


def test_the_grant_expiry_ends_a_stream_first() -> None:
    assert stream_deadline(claims(exp=NOW + 60), grant(expires_at=NOW + 30), leeway=30, now=NOW) == NOW + 30
    assert stream_deadline(claims(exp=NOW + 10), grant(expires_at=NOW + 30), leeway=30, now=NOW) == int(
        NOW + 10
    )


async def test_revocation_of_the_user_or_the_tenant_ends_the_session(epochs: RevocationEpochs) -> None:
    own = claims(tenant="acme", sub="alice")
    assert session_end(own, None, revocations=epochs, live_grants=frozenset(), now=NOW) is None
    await epochs.revoke("acme", "bob")  # another user: nothing ends
    assert session_end(own, None, revocations=epochs, live_grants=frozenset(), now=NOW) is None
    await epochs.revoke("acme", "alice")
    assert session_end(own, None, revocations=epochs, live_grants=frozenset(), now=NOW) == REVOKED


async def test_a_support_session_ends_with_its_grant_or_the_granting_tenants_revocation(
    epochs: RevocationEpochs,
) -> None:
    support, active = claims(), grant()
    live = frozenset({active.id})
    assert session_end(support, active, revocations=epochs, live_grants=live, now=NOW) is None
    # Revoked, or purged with its tenant: gone from the snapshot.
    assert session_end(support, active, revocations=epochs, live_grants=frozenset(), now=NOW) == GRANT_ENDED
    assert session_end(support, active, revocations=epochs, live_grants=live, now=NOW + 31) == GRANT_ENDED
    await epochs.revoke("acme")  # SECURITY: the granting tenant's revocation reaches support users
    assert session_end(support, active, revocations=epochs, live_grants=live, now=NOW) == REVOKED
