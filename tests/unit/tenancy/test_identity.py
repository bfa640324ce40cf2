"""SPEC §7: the identity headers the upstream sees (signed, so a backend's ``verify_context``
accepts them) and the tenant echo rule of the response check."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.auth.jwt import VerifiedClaims
from gateway.tenancy.context import ContextSigner, verify_context
from gateway.tenancy.grants import Grant
from gateway.tenancy.identity import echo_fault, identity_headers

KEY = "k" * 32
SAM = VerifiedClaims(
    "https://id.example",
    "sam",
    "shopino-support",
    ("erp",),
    ("tenant-admin", "finance"),
    (),
    None,
    1,
    2,
    None,
    {},
)
GRANT = Grant("g-1", "acme", "sam", ("inventory",), 0.0, 100.0, "alice")


def _verified(tenant: str, grant: Grant | None) -> tuple[CIMultiDict[str], tuple[str, ...]]:
    headers = CIMultiDict(
        identity_headers(ContextSigner(KEY), "POST", "/inv/items?a=1", tenant, SAM, grant, "rid-1")
    )
    headers["X-Request-ID"] = "rid-1"
    return headers, verify_context(headers, "POST", "/inv/items?a=1", KEY).roles


def test_the_token_s_own_tenant_gets_the_token_s_roles() -> None:
    headers, roles = _verified("shopino-support", None)
    assert list(headers.items())[:3] == [
        ("X-Tenant-ID", "shopino-support"),
        ("X-User-ID", "sam"),
        ("X-User-Roles", "tenant-admin,finance"),
    ]
    assert roles == ("tenant-admin", "finance")


def test_under_a_grant_only_the_support_role_is_forwarded_and_signed() -> None:
    headers, roles = _verified("acme", GRANT)
    assert headers["X-Tenant-ID"] == "acme"
    assert headers["X-User-Roles"] == "support"
    assert roles == ("support",)


@pytest.mark.parametrize(
    ("echoes", "required", "fault"),
    [
        (["acme"], False, None),
        (["acme", "acme"], True, None),
        ([], False, None),
        ([], True, "missing"),
        (["globex"], False, "mismatch"),
        (["acme", "globex"], True, "mismatch"),
        (["ACME"], False, "mismatch"),  # tenant ids compare exactly
    ],
)
def test_an_echo_other_than_the_acting_tenant_is_a_fault(
    echoes: list[str], required: bool, fault: str | None
) -> None:
    assert echo_fault("acme", echoes, required) == fault
