"""``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft, structured
fields), for the most restrictive item of a request: ``"api";q=50;w=1`` and ``"api";r=12;t=1``.
"""

from __future__ import annotations

import math
from typing import Protocol

from multidict import istr

from gateway.bounded_memo import remember

# istr: the names go into a CIMultiDict on every limited answer, which then skips case-folding.
POLICY_HEADER = istr("RateLimit-Policy")
STATE_HEADER = istr("RateLimit")


def _sf_string(text: str) -> str:
    # Policy names are config-validated ([A-Za-z0-9_.-]); escape anyway per RFC 8941 §3.3.3.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(policy: str, quota: int, window: int) -> str:
    return f"{_sf_string(policy)};q={quota};w={window}"


def state_head(policy: str) -> str:
    """The constant start of a policy's ``RateLimit`` value, ``"api";r=`` (built once per item)."""
    return f"{_sf_string(policy)};r="


def state_header(policy: str, remaining: int, reset_in: float) -> str:
    return state_value(state_head(policy), remaining, reset_in)


def state_value(head: str, remaining: int, reset_in: float) -> str:
    """``state_header`` from the item's precomputed ``state_head``: on every admitted request of
    a limited route, so the quoting and the two ``max`` calls are not redone each time."""
    wait = math.ceil(reset_in)  # seconds_until, inline
    return f"{head}{remaining if remaining > 0 else 0};t={wait if wait > 0 else 0}"


def seconds_until(delta: float) -> int:
    """Whole seconds, rounded up, never negative (a client must not retry too early)."""
    return max(0, math.ceil(delta))


def retry_after(delta: float) -> int:
    """Retry-After is at least 1: "0" would invite an immediate retry storm."""
    return max(1, math.ceil(delta))


class NamedItem(Protocol):
    """What the headers need of a limit item (``policies.LimitItem``): the policy it belongs to."""

    @property
    def policy(self) -> str: ...


_REFUSAL_LIMIT = 1024  # (item, remaining, second) shapes remembered; a handful per second in practice
# id(item), remaining, whole seconds to the reset -> (the item, (RateLimit value, Retry-After seconds))
_refusals: dict[tuple[int, int, int], tuple[NamedItem, tuple[str, int]]] = {}


def refusal_values(item: NamedItem, remaining: int, reset_in: float) -> tuple[str, int]:
    """The RateLimit value and Retry-After of a refusal: both change only with the whole seconds
    to the reset, so a flood formats them once per bucket and second, not once per request."""
    key = (id(item), remaining, math.ceil(reset_in))
    known = _refusals.get(key)
    if known is not None and known[0] is item:  # the id of an item a reload dropped may be reused
        return known[1]
    values = state_header(item.policy, remaining, reset_in), retry_after(reset_in)
    remember(_refusals, _REFUSAL_LIMIT, key, (item, values))
    return values
