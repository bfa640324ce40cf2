"""Appendix C support identities: whose ``support`` role counts, and what a gateway MFA token
says about the issuer that authenticated its user."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.jwt import VerifiedClaims
from gateway.tenancy.model import SupportConfig
from gateway.tenancy.support import is_support_identity, origin_issuer, roles_that_count

IDP, PARTNER, GATEWAY = "https://id.example", "https://partner.example", "https://gw.example"
SUPPORT = SupportConfig(tenant="shopino-support", issuers=(IDP,))


def claims(iss: str = IDP, tenant: str = "shopino-support", roles: tuple[str, ...] = ("support",),
           **raw: Any) -> VerifiedClaims:  # fmt: skip
    return VerifiedClaims(
        iss, "sam", tenant, ("erp",), roles, ("pwd",), None, 1, 2, None, {"iss": iss, **raw}
    )


@pytest.mark.parametrize(
    ("token", "counts"),
    [
        (claims(), True),
        (claims(GATEWAY, idp=IDP), True),  # the gateway's MFA token for a support user of IDP
        (claims(tenant="acme"), False),  # a customer tenant's "support" role
        (claims(PARTNER), False),  # another trusted issuer minting the support tenant
        (claims(PARTNER, idp=IDP), False),  # only the gateway is believed about a token's origin
        (claims(GATEWAY, idp=PARTNER), False),
        (claims(GATEWAY), False),  # a gateway token that records no origin
        (claims(GATEWAY, idp=GATEWAY), False),
        (claims(GATEWAY, idp=["https://id.example"]), False),
        (claims(roles=("inventory",)), False),
    ],
)
def test_support_role_counts_only_on_support_identities(token: VerifiedClaims, counts: bool) -> None:
    assert is_support_identity(token, SUPPORT, GATEWAY) is counts


def test_origin_issuer() -> None:
    assert origin_issuer(claims(PARTNER, idp=IDP), GATEWAY) == PARTNER
    assert origin_issuer(claims(GATEWAY, idp=IDP), GATEWAY) == IDP
    assert origin_issuer(claims(GATEWAY), GATEWAY) is None


def test_roles_that_count_drop_a_support_role_that_does_not() -> None:
    assert roles_that_count(claims(roles=("support", "x")), SUPPORT, GATEWAY) == ("support", "x")
    assert roles_that_count(claims(tenant="acme", roles=("support", "x")), SUPPORT, GATEWAY) == ("x",)
    assert roles_that_count(claims(tenant="acme", roles=("x",)), SUPPORT, GATEWAY) == ("x",)
    assert (
        is_support_identity(claims(), SupportConfig(tenant="shopino-support", issuers=()), GATEWAY) is False
    )
