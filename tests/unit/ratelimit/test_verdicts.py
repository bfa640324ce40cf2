"""SPEC §8 / App. C: what a verdict writes on a request (the RateLimit headers, the access
line's mark) and the 429 it raises, for a route item, a shadow item and a locked login."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway.errors import LockedOut, RateLimited
from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.verdicts import apply_verdict, refuse_locked, refuse_pre_auth
from tests.unit.ratelimit.conftest import ItemFactory


@dataclass
class Request:
    """The two members of the per-request context a verdict writes (``LimitedRequest``)."""

    response_headers: dict[str, str] = field(default_factory=dict)
    ratelimit: str | None = None


@pytest.fixture
def item(items: ItemFactory) -> LimitItem:
    return items("10/minute")[0]


@pytest.fixture
def shadow_item(items: ItemFactory) -> LimitItem:
    (made,) = items("10/minute")
    object.__setattr__(made, "shadow", True)
    return made


def test_no_verdict_while_the_store_is_down_writes_nothing() -> None:
    request = Request()
    apply_verdict(request, None)
    refuse_pre_auth(request, None)
    assert request == Request()


def test_an_allowed_verdict_writes_both_headers(item: LimitItem) -> None:
    request = Request()
    apply_verdict(request, Verdict(True, item, 7, 12.2, "shared"))
    assert request.response_headers == {
        "RateLimit-Policy": item.policy_header,
        "RateLimit": '"test";r=7;t=13',
    }
    assert request.ratelimit is None


def test_a_refusing_verdict_raises_429_with_retry_after(item: LimitItem) -> None:
    request = Request()
    with pytest.raises(RateLimited) as caught:
        apply_verdict(request, Verdict(False, item, 0, 3.5, "shared"))
    assert caught.value.headers == {"Retry-After": "4"}
    assert request.response_headers["RateLimit"] == '"test";r=0;t=4'
    assert request.ratelimit == "limited"


def test_a_shadow_item_marks_the_request_and_speaks_in_no_header(shadow_item: LimitItem) -> None:
    request = Request()
    apply_verdict(request, Verdict(False, shadow_item, 0, 3.0, "shared", shadow=True))
    assert request == Request(ratelimit="shadow")


def test_an_allowed_pre_auth_verdict_adds_no_header(item: LimitItem, shadow_item: LimitItem) -> None:
    request = Request()
    refuse_pre_auth(request, Verdict(True, item, 7, 1.0, "shared"))
    assert request == Request()
    refuse_pre_auth(request, Verdict(True, item, 7, 1.0, "shared", shadow=True))
    assert request == Request(ratelimit="shadow")
    with pytest.raises(RateLimited):
        refuse_pre_auth(request, Verdict(False, item, 0, 1.0, "shared"))


def test_a_locked_login_is_refused_with_the_route_policy_s_headers(item: LimitItem) -> None:
    request = Request()
    with pytest.raises(LockedOut) as caught:
        refuse_locked(request, Verdict(True, item, 9, 30.0, "shared"), 0.2)
    assert caught.value.headers == {"Retry-After": "1"}  # never 0
    assert request.response_headers == {
        "RateLimit-Policy": item.policy_header,
        "RateLimit": '"test";r=9;t=30',
    }
    with pytest.raises(LockedOut):
        refuse_locked(request := Request(), None, 5.0)
    assert request == Request()
