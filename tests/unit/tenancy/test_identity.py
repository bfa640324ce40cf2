"""SPEC §7: the identity headers the upstream sees (signed, so a backend's ``verify_context``
accepts them) and the tenant echo rule of the response check."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.auth.jwt import VerifiedClaims
from gateway.header_lines import line_pair
from gateway.tenancy.context import ContextInvalid, ContextSigner, verify_context
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
    lines = identity_headers(ContextSigner(KEY), "POST", "/inv/items?a=1", tenant, SAM, grant, "rid-1")
    headers = CIMultiDict(map(line_pair, lines))
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


def _claims(user: str, roles: tuple[str, ...]) -> VerifiedClaims:
    return VerifiedClaims("https://id.example", user, "acme", ("erp",), roles, (), None, 1, 2, None, {})


def test_an_identity_is_derived_once_per_token_and_its_context_signed_per_request() -> None:
    signer, alice, bob = ContextSigner(KEY), _claims("alice", ("clerk",)), _claims("bob", ("buyer",))
    first = identity_headers(signer, "GET", "/a", "acme", alice, None, "r1")
    derived = alice.derived
    assert derived is not None and bob.derived is None
    second = identity_headers(signer, "POST", "/b?c=1", "acme", alice, None, "r2")
    assert alice.derived is derived  # made once, on the token's first request
    assert first[:3] == second[:3] == ("X-Tenant-ID: acme", "X-User-ID: alice", "X-User-Roles: clerk")
    for lines, method, target, rid in ((first, "GET", "/a", "r1"), (second, "POST", "/b?c=1", "r2")):
        headers = CIMultiDict(map(line_pair, lines))
        headers["X-Request-ID"] = rid
        assert verify_context(headers, method, target, KEY).user == "alice"
        with pytest.raises(ContextInvalid):  # bound to its own request
            verify_context(headers, "GET", "/a" if target != "/a" else "/b?c=1", KEY)
    # Another token's claims never see this one's identity.
    assert identity_headers(signer, "GET", "/a", "acme", bob, None, "r1")[1:3] == (
        "X-User-ID: bob",
        "X-User-Roles: buyer",
    )


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
