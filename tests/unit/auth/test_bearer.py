"""RFC 6750 bearer tokens and the refusals every token check shares (RFC 9470 step-up)."""

from __future__ import annotations

import pytest

from gateway.auth.bearer import bearer_token, invalid_token, mfa_required, mfa_shortfall
from gateway.auth.jwt import VerifiedClaims

ACCEPTED = ("otp", "mfa", "hwk")


def claims(amr: tuple[str, ...], auth_time: int | None) -> VerifiedClaims:
    return VerifiedClaims("https://id.example", "u", "acme", ("erp",), (), amr, auth_time, 1, 2, None, {})


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer   abc ", "abc"),  # the scheme is case-insensitive
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("", None),
    ],
)
def test_bearer_token(header: str, token: str | None) -> None:
    assert bearer_token({"Authorization": header} if header else {}) == token


def test_one_refusal_for_every_bad_token() -> None:
    refusal = invalid_token()
    assert refusal.status == 401
    assert refusal.headers == {"WWW-Authenticate": 'Bearer realm="shopino", error="invalid_token"'}


def test_mfa_shortfall_and_its_refusal() -> None:
    assert mfa_shortfall(claims(("pwd", "otp"), 1000), ACCEPTED, None, 5000) is None
    assert mfa_shortfall(claims(("pwd", "otp"), 1000), ACCEPTED, 600, 1500) is None
    assert mfa_shortfall(claims(("pwd",), 1000), ACCEPTED, 600, 1500) == "mfa_missing"
    assert mfa_shortfall(claims(("pwd", "otp"), 1000), ACCEPTED, 600, 1601) == "mfa_stale"
    assert mfa_shortfall(claims(("pwd", "otp"), None), ACCEPTED, 600, 1000) == "mfa_stale"  # age unknown
    missing, stale = mfa_required("mfa_missing", None), mfa_required("mfa_stale", 600.0)
    assert missing.status == stale.status == 401
    assert missing.headers["WWW-Authenticate"] == (
        'Bearer realm="shopino", error="insufficient_user_authentication", '
        'error_description="A multi-factor authentication is required"'
    )
    assert stale.headers["WWW-Authenticate"].endswith(
        'error_description="A more recent authentication is required", max_age=600'
    )
