"""Appendix B "CORS": preflight answers and origin checks of a route's CORS policy."""

from __future__ import annotations

import pytest

from gateway.config.model import CorsPolicy
from gateway.middleware.cors import _origin_allowed, _preflight_headers

APP = "https://app.shopino.example"


def policy(
    *,
    origins: tuple[str, ...] = (APP,),
    methods: tuple[str, ...] = ("GET", "POST", "PUT"),
    headers: tuple[str, ...] = ("Authorization", "Content-Type"),
    credentials: bool = False,
    max_age: float = 600.0,
) -> CorsPolicy:
    return CorsPolicy(
        name="web",
        origins=frozenset(origins),
        methods=methods,
        headers=headers,
        credentials=credentials,
        max_age=max_age,
    )


def test_preflight_allowed_answers_every_header() -> None:
    assert _preflight_headers(policy(max_age=900.0), APP, "PUT", "Authorization, Content-Type") == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Methods": "GET, POST, PUT",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "900",
    }


def test_preflight_max_age_is_whole_seconds() -> None:
    assert _preflight_headers(policy(max_age=90.7), APP, "GET", "")["Access-Control-Max-Age"] == "90"


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "TRACE", ""])
def test_preflight_method_not_allowed_gets_no_cors_headers(method: str) -> None:
    assert _preflight_headers(policy(), APP, method, "") == {}


@pytest.mark.parametrize(
    "requested",
    ["X-Evil", "Authorization, X-Evil", "Content-Type,X-Tenant-ID", "Authorization-Extra"],
)
def test_preflight_header_not_allowed_gets_no_cors_headers(requested: str) -> None:
    assert _preflight_headers(policy(), APP, "GET", requested) == {}


@pytest.mark.parametrize(
    "requested", ["", "authorization", "CONTENT-TYPE, Authorization", " authorization , ,"]
)
def test_preflight_requested_headers_compare_case_insensitively(requested: str) -> None:
    headers = _preflight_headers(policy(), APP, "POST", requested)
    assert headers["Access-Control-Allow-Origin"] == APP


def test_preflight_credentials_header_only_with_credentials() -> None:
    assert (
        _preflight_headers(policy(credentials=True), APP, "GET", "")["Access-Control-Allow-Credentials"]
        == "true"
    )
    assert "Access-Control-Allow-Credentials" not in _preflight_headers(policy(), APP, "GET", "")


def test_preflight_echoes_the_origin_not_a_wildcard() -> None:
    other = "https://partner.example"
    headers = _preflight_headers(policy(origins=("*",)), other, "GET", "")
    assert headers["Access-Control-Allow-Origin"] == other


def test_listed_origin_is_allowed() -> None:
    assert _origin_allowed(policy(), APP)
    assert _origin_allowed(policy(credentials=True), APP)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.shopino.example",  # scheme differs
        "https://app.shopino.example:8443",  # port differs
        "https://app.shopino.example.evil.example",  # suffix attack
        "null",
        "",
    ],
)
def test_unlisted_origin_is_refused(origin: str) -> None:
    assert not _origin_allowed(policy(), origin)


def test_wildcard_origin_without_credentials_allows_any() -> None:
    assert _origin_allowed(policy(origins=("*",)), "https://anyone.example")
    assert _origin_allowed(policy(origins=("*", APP)), "https://anyone.example")


def test_wildcard_origin_with_credentials_allows_only_listed() -> None:
    # The schema refuses this combination; the helper must still never grant it.
    wildcard = policy(origins=("*", APP), credentials=True)
    assert not _origin_allowed(wildcard, "https://anyone.example")
    assert _origin_allowed(wildcard, APP)
