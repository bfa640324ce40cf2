"""App. C request hygiene over header values (``gateway.hygiene``): singletons, transfer codings,
WebSocket handshakes."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest, NotImplementedCoding
from gateway.hygiene import check_singletons, check_transfer_coding, check_websocket_handshake, cookie_count

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_one_authorization_and_one_token_cookie_pass() -> None:
    check_singletons(
        headers(("Authorization", "Bearer a"), ("Cookie", "sid=a; x=1"), ("Cookie", "y=2")), "sid"
    )


@pytest.mark.parametrize(
    ("pairs", "cookie"),
    [
        ((("Authorization", "Bearer a"), ("authorization", "Bearer b")), None),
        ((("Cookie", "sid=a; sid=b"),), "sid"),
        ((("Cookie", "sid=a"), ("Cookie", "x=1; sid=b")), "sid"),
        ((("Cookie", "sid=a;sid"),), "sid"),  # a valueless second one counts too
        ((("Cookie", " sid =a;  sid=b"),), "sid"),
    ],
)
def test_duplicates_refused(pairs: tuple[tuple[str, str], ...], cookie: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        check_singletons(headers(*pairs), cookie)
    assert "Bearer" not in caught.value.detail and "sid=" not in caught.value.detail


def test_cookies_without_a_configured_token_cookie_are_not_counted() -> None:
    check_singletons(headers(("Cookie", "sid=a; sid=b")), None)


def test_cookie_count_is_case_sensitive_and_exact() -> None:
    assert cookie_count(["SID=a; sidx=b; xsid=c"], "sid") == 0
    assert cookie_count(["sid=a", "sid=b; sid=c"], "sid") == 3


@pytest.mark.parametrize("value", ["chunked", "Chunked", " chunked "])
def test_lone_chunked_passes(value: str) -> None:
    check_transfer_coding([value])
    check_transfer_coding([])


@pytest.mark.parametrize(
    "values",
    [["gzip, chunked"], ["chunked, identity"], ["identity"], ["gzip"], ["chunked", "chunked"], [""]],
)
def test_other_codings_are_501(values: list[str]) -> None:
    with pytest.raises(NotImplementedCoding) as caught:
        check_transfer_coding(values)
    assert caught.value.status == 501
    assert caught.value.slug == "not-implemented"


def test_valid_websocket_handshake_passes() -> None:
    check_websocket_handshake(headers(("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")))


@pytest.mark.parametrize(
    "pairs",
    [
        (("Sec-WebSocket-Version", "13"),),
        (("Sec-WebSocket-Key", "not base64"), ("Sec-WebSocket-Version", "13")),
        (("Sec-WebSocket-Key", "c2hvcnQ="), ("Sec-WebSocket-Version", "13")),  # 5 bytes
        (("Sec-WebSocket-Key", KEY[:-2]), ("Sec-WebSocket-Version", "13")),  # padding missing
        (("Sec-WebSocket-Key", "é" * 24), ("Sec-WebSocket-Version", "13")),
        (("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")),
        (("Sec-WebSocket-Key", KEY),),
        (("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "8")),
        (("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Version", "13")),
    ],
)
def test_invalid_websocket_handshakes_are_400(pairs: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadRequest):
        check_websocket_handshake(headers(*pairs))
