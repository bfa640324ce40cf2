"""Appendix B origin rules over plain values (``gateway.origins``): preflight answers and origin
checks of a route's CORS policy, and the CSRF rule for cookie-carried tokens."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config.model import CorsPolicy
from gateway.errors import Forbidden
from gateway.origins import check_cookie_origin, origin_allowed, preflight_headers

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
    assert preflight_headers(policy(max_age=900.0), APP, "PUT", "Authorization, Content-Type") == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Methods": "GET, POST, PUT",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "900",
    }


def test_preflight_max_age_is_whole_seconds() -> None:
    assert preflight_headers(policy(max_age=90.7), APP, "GET", "")["Access-Control-Max-Age"] == "90"


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "TRACE", ""])
def test_preflight_method_not_allowed_gets_no_cors_headers(method: str) -> None:
    assert preflight_headers(policy(), APP, method, "") == {}


@pytest.mark.parametrize(
    "requested",
    ["X-Evil", "Authorization, X-Evil", "Content-Type,X-Tenant-ID", "Authorization-Extra"],
)
def test_preflight_header_not_allowed_gets_no_cors_headers(requested: str) -> None:
    assert preflight_headers(policy(), APP, "GET", requested) == {}


@pytest.mark.parametrize(
    "requested", ["", "authorization", "CONTENT-TYPE, Authorization", " authorization , ,"]
)
def test_preflight_requested_headers_compare_case_insensitively(requested: str) -> None:
    headers = preflight_headers(policy(), APP, "POST", requested)
    assert headers["Access-Control-Allow-Origin"] == APP


def test_preflight_credentials_header_only_with_credentials() -> None:
    assert (
        preflight_headers(policy(credentials=True), APP, "GET", "")["Access-Control-Allow-Credentials"]
        == "true"
    )
    assert "Access-Control-Allow-Credentials" not in preflight_headers(policy(), APP, "GET", "")


def test_preflight_echoes_the_origin_not_a_wildcard() -> None:
    other = "https://partner.example"
    headers = preflight_headers(policy(origins=("*",)), other, "GET", "")
    assert headers["Access-Control-Allow-Origin"] == other


def test_listed_origin_is_allowed() -> None:
    assert origin_allowed(policy(), APP)
    assert origin_allowed(policy(credentials=True), APP)


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
    assert not origin_allowed(policy(), origin)


def test_wildcard_origin_without_credentials_allows_any() -> None:
    assert origin_allowed(policy(origins=("*",)), "https://anyone.example")
    assert origin_allowed(policy(origins=("*", APP)), "https://anyone.example")


def test_wildcard_origin_with_credentials_allows_only_listed() -> None:
    # The schema refuses this combination; the helper must still never grant it.
    wildcard = policy(origins=("*", APP), credentials=True)
    assert not origin_allowed(wildcard, "https://anyone.example")
    assert origin_allowed(wildcard, APP)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_a_safe_method_needs_no_origin(method: str) -> None:
    check_cookie_origin(method, headers(), None)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_write_with_one_listed_origin_passes(method: str) -> None:
    check_cookie_origin(method, headers(("Origin", APP)), policy())


@pytest.mark.parametrize(
    "pairs",
    [
        (),  # no Origin
        (("Referer", f"{APP}/orders"),),  # a Referer does not stand in for it
        (("Origin", "https://evil.example"),),
        (("Origin", "null"),),
        (("Origin", APP), ("Origin", APP)),  # several
    ],
)
def test_a_write_without_exactly_one_listed_origin_is_forbidden(pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(Forbidden):
        check_cookie_origin("POST", headers(*pairs), policy())


def test_a_wildcard_policy_admits_no_write_origin() -> None:
    with pytest.raises(Forbidden):
        check_cookie_origin("POST", headers(("Origin", "*")), policy(origins=("*",)))
    with pytest.raises(Forbidden):
        check_cookie_origin("POST", headers(("Origin", "https://anyone.example")), policy(origins=("*",)))


def test_a_route_without_a_policy_admits_no_origin() -> None:
    with pytest.raises(Forbidden):
        check_cookie_origin("POST", headers(("Origin", APP)), None)


def test_a_websocket_upgrade_is_judged_like_a_write() -> None:
    with pytest.raises(Forbidden):
        check_cookie_origin(
            "GET", headers(("Upgrade", "WebSocket"), ("Origin", "https://evil.example")), policy()
        )
    check_cookie_origin("GET", headers(("Upgrade", "websocket"), ("Origin", APP)), policy())
