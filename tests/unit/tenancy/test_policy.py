"""SPEC §3.6 / §7: who may act in which tenant, decided over plain values (the tenancy stage
only applies these decisions)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.auth.jwt import VerifiedClaims
from gateway.auth.revocation import RevocationEpochs
from gateway.state import StateStore
from gateway.tenancy.grants import SupportGrants
from gateway.tenancy.model import SupportConfig
from gateway.tenancy.policy import REVOKED, identity_ok, named_tenant, roles_allow, support_grant
from gateway.tenancy.resolve import TenantNotNamed, compile_tenant_from
from tests.support.timing import Clock

IDP, GATEWAY = "https://id.example", "https://gw.example"
SUPPORT = SupportConfig(tenant="shopino-support", issuers=(IDP,))
T0 = 1_800_000_000


def claims(
    tenant: str = "shopino-support", roles: tuple[str, ...] = ("support",), iat: int = T0
) -> VerifiedClaims:
    return VerifiedClaims(
        IDP, "sam", tenant, ("erp",), roles, ("pwd",), None, iat, iat + 60, None, {"iss": IDP}
    )


@pytest.mark.parametrize(
    ("tenant", "subject", "roles", "ok"),
    [
        ("acme", "alice", ("erp-user", "finance"), True),
        ("acme", "alice", (), True),
        ("_system", "alice", (), False),  # not a tenant id
        ("acme", "ali\nce", (), False),  # SECURITY: header injection / MAC field confusion
        ("acme", " alice", (), False),  # HTTP strips it: the backend would see another value
        ("acme", "alice", ("a,b",), False),  # a comma inside a role splits it upstream
        ("acme", "\ud800", (), False),  # a lone surrogate: the MAC cannot be computed
    ],
)
def test_only_clean_identities_reach_the_upstream(
    tenant: str, subject: str, roles: tuple[str, ...], ok: bool
) -> None:
    assert identity_ok(tenant, subject, roles) is ok


def test_named_tenant_is_none_for_the_tokens_own() -> None:
    path = compile_tenant_from("path:/t/{tenant}/")
    host = compile_tenant_from("host:{tenant}.erp.example.com")
    assert named_tenant(path, "/t/acme/orders", "", "acme") is None
    assert named_tenant(path, "/t/globex/orders", "", "acme") == "globex"
    assert named_tenant(host, "/", "ACME.erp.example.com:8443", "Acme") is None  # host names: any case
    with pytest.raises(TenantNotNamed):  # refused like a mismatch: the route promised a check
        named_tenant(path, "/elsewhere", "", "acme")


def test_roles_are_any_of_and_support_counts_only_on_support_identities() -> None:
    assert roles_allow((), claims(roles=()), SUPPORT, GATEWAY)
    assert roles_allow(("finance", "erp-user"), claims("acme", ("erp-user",)), SUPPORT, GATEWAY)
    assert not roles_allow(("finance",), claims("acme", ("erp-user",)), SUPPORT, GATEWAY)
    assert roles_allow(("support",), claims(), SUPPORT, GATEWAY)
    assert not roles_allow(("support",), claims("acme"), SUPPORT, GATEWAY)  # a customer's "support"


@pytest.fixture
async def grants(store: StateStore) -> AsyncIterator[SupportGrants]:
    service = SupportGrants(store, clock=Clock(T0), resync=60)
    await service.start()
    await service.wait_loaded(timeout=3)
    yield service
    await service.stop()


@pytest.fixture
async def revocations(store: StateStore) -> AsyncIterator[RevocationEpochs]:
    epochs = RevocationEpochs(store, clock=Clock(T0 + 10), resync=60)
    await epochs.start()
    await epochs.wait_loaded(timeout=3)
    yield epochs
    await epochs.stop()


async def test_a_support_grant_decides_acting_in_another_tenant(
    grants: SupportGrants, revocations: RevocationEpochs
) -> None:
    def decide(token: VerifiedClaims, module: str | None = "inventory") -> object:
        return support_grant(
            token, "acme", module, support=SUPPORT, issuer=GATEWAY, grants=grants, revocations=revocations
        )

    assert decide(claims()) is None  # no grant: a tenant mismatch
    grant = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
    assert decide(claims()) == grant
    assert decide(claims(), "finance") is None  # another module
    assert decide(claims(), None) is None  # routes without a module: never under a grant
    assert decide(claims("globex")) is None  # "support" of a customer tenant opens no grant
    await revocations.revoke("acme", "sam")
    # SECURITY: a revocation in the granting tenant stops the support user there too.
    assert decide(claims(iat=T0)) == REVOKED
    assert decide(claims(iat=T0 + 20)) == grant  # a token issued after it
