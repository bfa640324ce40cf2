"""``RateLimit-Policy`` and ``RateLimit`` (IETF httpapi ratelimit-headers draft, structured
fields), for the most restrictive item of a request: ``"api";q=50;w=1`` and ``"api";r=12;t=1``.
"""

from __future__ import annotations

import math

POLICY_HEADER = "RateLimit-Policy"
STATE_HEADER = "RateLimit"


def _sf_string(text: str) -> str:
    # Policy names are config-validated ([A-Za-z0-9_.-]); escape anyway per RFC 8941 §3.3.3.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def policy_header(policy: str, quota: int, window: int) -> str:
    return f"{_sf_string(policy)};q={quota};w={window}"


def state_header(policy: str, remaining: int, reset_in: float) -> str:
    return f"{_sf_string(policy)};r={max(0, remaining)};t={seconds_until(reset_in)}"


def seconds_until(delta: float) -> int:
    """Whole seconds, rounded up, never negative (a client must not retry too early)."""
    return max(0, math.ceil(delta))


def retry_after(delta: float) -> int:
    """Retry-After is at least 1: "0" would invite an immediate retry storm."""
    return max(1, math.ceil(delta))
