"""Rate-limit keying and counted fields at their edges: body-field parsing differentials,
IPv6 buckets, user keys per issuer, Retry-After with several full items (which attempt resets a
username is tested with the lockouts, tests/unit/ratelimit/test_lockout.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.ratelimit.body_fields import AmbiguousField, counted_fields
from gateway.ratelimit.keys import KeySpec, ip_subject
from gateway.ratelimit.limiter import RateLimitBackend
from tests.unit.ratelimit.conftest import ItemFactory, settings

USERNAME = frozenset({"username"})


def test_a_repeated_field_is_refused_even_with_equal_values() -> None:
    # aiohttp's dict(await request.post()) keeps the first value; orjson and PHP the last.
    # Appendix C: any second value of a counted field is a 400 (see test_body_fields.py).
    for content_type, body in [
        ("application/x-www-form-urlencoded", b"username=mine&username=victim"),
        ("application/json", b'{"username": "mine", "username": "victim"}'),
        ("application/x-www-form-urlencoded", b"username=a&username=a"),
    ]:
        with pytest.raises(AmbiguousField):
            counted_fields(content_type, body, USERNAME)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json; charset=utf-16", '{"username": "victim"}'.encode("utf-16")),
        ("application/json", '{"username": "victim"}'.encode("utf-32")),  # detected like json.loads
        ("application/json", b'{"username": "victim", "x": NaN}'),  # Python's json accepts NaN
        ("text/plain", b'{"username": "victim"}'),  # upstreams that force-parse JSON
        ("", b'{"username": "victim"}'),
        ("application/x-www-form-urlencoded; charset=utf-16", "username=victim".encode("utf-16")),
        ("application/x-www-form-urlencoded; charset=utf-7", b"username=+AHY-ictim"),
        (
            "multipart/form-data; boundary=XX",
            b'--XX\r\nContent-Disposition: form-data; name="username"\r\n\r\nvictim\r\n'
            b'--XX\r\nContent-Disposition: form-data; name="password"\r\n\r\npw\r\n--XX--\r\n',
        ),
    ],
)
def test_the_upstream_reading_of_the_body_is_what_counts(content_type: str, body: bytes) -> None:
    assert counted_fields(content_type, body, USERNAME) == {"username": "victim"}


def test_hostile_bodies_parse_to_nothing() -> None:
    assert counted_fields("application/json", b"[" * 100_000, USERNAME) == {}
    assert counted_fields("application/json; charset=no-such-charset", b'{"username": "a"}', USERNAME) == {}


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert ip_subject("2001:db8:1:2::1") == ip_subject("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert ip_subject("2001:db8:1:3::1") != ip_subject("2001:db8:1:2::1")
    assert ip_subject("::ffff:192.0.2.7") == ip_subject("192.0.2.7") == "192.0.2.7"


def test_user_keys_are_scoped_by_issuer() -> None:
    spec = KeySpec.parse("user")

    def ctx(issuer: str) -> Any:
        return SimpleNamespace(user="42", claims=SimpleNamespace(issuer=issuer))

    assert spec.raw_value(ctx("https://idp-a"), None) != spec.raw_value(ctx("https://idp-b"), None)


async def test_retry_after_names_the_full_item_that_frees_last(items: ItemFactory) -> None:
    backend = RateLimitBackend("local:/nonexistent")
    per_second, per_minute = items("1/second;1/minute")
    checks = [(per_second, "k"), (per_minute, "k")]
    try:
        assert (await backend.check(checks, settings(), "route")).allowed
        await asyncio.sleep(0)
        refused = await backend.check(checks, settings(), "route")
        assert not refused.allowed and refused.item is per_minute and refused.reset_in > 50
    finally:
        await backend.close()
