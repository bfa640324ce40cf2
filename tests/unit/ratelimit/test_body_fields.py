"""Appendix C: counted body fields have exactly one reading, or the request is refused (400).

Each ambiguity below is one an upstream framework reads differently from the gateway (aiohttp's
``dict(await request.post())`` takes the first value and reads ``filename=""`` parts as fields,
PHP and orjson take the last, a part's own charset decodes differently)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import RouteConfig
from gateway.errors import BadRequest
from gateway.ratelimit.body_fields import (
    COUNTED_BODY_CAP,
    DEFAULT_MAX_BODY,
    AmbiguousField,
    counted_body_limit,
    counted_content_type,
    counted_fields,
)

NAMES = frozenset({"username"})
BOUNDARY = "XX-boundary-7c1"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: bytes) -> bytes:
    sep = f"--{BOUNDARY}\r\n".encode()
    return b"".join(sep + part + b"\r\n" for part in parts) + f"--{BOUNDARY}--\r\n".encode()


def field(name: str, value: bytes, extra: str = "", headers: str = "") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"{extra}\r\n{headers}\r\n'.encode() + value


def test_the_attack_of_issue_14_an_empty_filename_decoy_is_refused() -> None:
    # aiohttp's post() reads the first part as username=victim; the old gateway skipped it and
    # counted the decoy, so every guess for the victim got the decoy's counter.
    body = multipart(
        field("username", b"victim", '; filename=""'),
        field("username", b"decoy-17"),
        field("password", b"guess"),
    )
    with pytest.raises(AmbiguousField) as refused:
        counted_fields(MULTIPART, body, NAMES)
    assert refused.value.status == 400 and refused.value.slug == "bad-request"


@pytest.mark.parametrize(
    "part",
    [
        field("username", b"victim", '; filename=""'),  # alone: aiohttp reads it as the field
        field("username", b"victim", '; filename="a.txt"'),
        field("username", b"victim", "; filename*=utf-8''a.txt"),
        field("username", b"\xff\xfev\x00", "", "Content-Type: text/plain; charset=utf-16\r\n"),
        field("username", b"victim", "", "Content-Type: text/plain; charset=latin-1\r\n"),
        field("username", b"victim", "", "Content-Type: application/octet-stream\r\n"),
        field("username", b"dmljdGlt", "", "Content-Transfer-Encoding: base64\r\n"),
        field("username", b"victim", "", "Content-Encoding: gzip\r\n"),
        field("username", b"vict\xffm"),  # not UTF-8
        b"Content-Disposition: form-data; name*=utf-8''username\r\n\r\nvictim",  # RFC 2231 name
        b'Content-Disposition: form-data; name="decoy"; name="username"\r\n\r\nvictim',
        b'Content-Disposition: form-data; name="username"\r\n'
        b'Content-Disposition: form-data; name="decoy"\r\n\r\nvictim',
    ],
)
def test_a_counted_part_with_two_possible_readings_is_refused(part: bytes) -> None:
    with pytest.raises(AmbiguousField):
        counted_fields(MULTIPART, multipart(part, field("password", b"pw")), NAMES)


def test_the_same_shapes_under_an_uncounted_name_are_the_upstreams_business() -> None:
    body = multipart(
        field("avatar", b"\x89PNG", '; filename=""', "Content-Type: image/png\r\n"),
        field("note", b"x", "", "Content-Type: text/plain; charset=latin-1\r\n"),
        field("username", b"alice", "", "Content-Type: text/plain; charset=UTF-8\r\n"),
    )
    assert counted_fields(MULTIPART, body, NAMES) == {"username": "alice"}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"username": "decoy", "username": "victim"}'),  # orjson keeps the last
        ("application/json", b'{"username": "a", "user\\u006eame": "b"}'),  # the same key, escaped
        ("application/json", b'{"username": ["victim", "decoy"]}'),
        ("application/json", b'{"username": {"first": "victim"}}'),
        ("application/x-www-form-urlencoded", b"username=victim&password=x&username=decoy"),
        ("application/x-www-form-urlencoded", b"username=a&username=a"),  # any second value
        ("application/x-www-form-urlencoded", b"username=a&user%6Eame=b"),
        ("application/x-www-form-urlencoded", b"username[]=victim&username=decoy"),  # PHP arrays
        ("application/x-www-form-urlencoded", b"username[0]=victim"),
        (MULTIPART, multipart(field("username", b"victim"), field("username", b"decoy"))),
        (f"{MULTIPART}; charset=iso-8859-1", multipart(field("username", b"victim"))),
        ("application/x-www-form-urlencoded; charset=utf-8; charset=utf-16", b"username=a"),
        (f"{MULTIPART}; boundary=other", multipart(field("username", b"victim"))),
        (MULTIPART, f"--{BOUNDARY}\r\n".encode() + field("username", b"victim")),  # unterminated
        ("multipart/form-data", b"username=victim"),  # no boundary at all
    ],
)
def test_every_second_value_or_unclear_body_is_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(AmbiguousField):
        counted_fields(content_type, body, NAMES)


def test_php_name_mangling_aliases_a_counted_underscore_name() -> None:
    names = frozenset({"user_name"})
    for body in (b"user.name=a", b"user name=a", b"user_name=a&user.name=b"):
        with pytest.raises(AmbiguousField):
            counted_fields("application/x-www-form-urlencoded", body, names)
    assert counted_fields("application/x-www-form-urlencoded", b"user_name=a", names) == {"user_name": "a"}


def test_uncounted_repetitions_and_nested_duplicates_pass() -> None:
    body = b'{"tags": ["a", "b"], "x": {"username": 1, "username": 2}, "username": "c", "tags": 3}'
    assert counted_fields("application/json", body, NAMES) == {"username": "c"}
    form = b"tag=a&tag=b&username=c"
    assert counted_fields("application/x-www-form-urlencoded", form, NAMES) == {"username": "c"}
    assert counted_fields("application/json", b"", NAMES) == {}
    assert counted_fields("application/json", b'{"username": "a"}', frozenset()) == {}


# --- properties: one occurrence reads back exactly; a second occurrence is always refused ----

_values = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), min_size=0, max_size=24
)
_other = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(lambda n: n != "username"), _values
)


def _encode(kind: str, pairs: list[tuple[str, str]]) -> tuple[str, bytes]:
    if kind == "json":
        body = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
        return "application/json", body.encode()
    if kind == "form":
        return "application/x-www-form-urlencoded", urlencode(pairs).encode()
    return MULTIPART, multipart(*(field(k, v.encode()) for k, v in pairs))


_kinds = st.sampled_from(["json", "form", "multipart"])


@settings(max_examples=60, deadline=None)
@given(kind=_kinds, value=_values, other=_other, position=st.integers(0, 8))
def test_a_single_counted_value_reads_back_exactly(
    kind: str, value: str, other: dict[str, str], position: int
) -> None:
    if kind == "multipart" and BOUNDARY in value:
        return
    pairs = list(other.items())
    pairs.insert(min(position, len(pairs)), ("username", value))
    assert counted_fields(*_encode(kind, pairs), NAMES) == {"username": value}


@settings(max_examples=60, deadline=None)
@given(kind=_kinds, first=_values, second=_values, other=_other, gap=st.integers(0, 8))
def test_a_second_occurrence_is_always_refused(
    kind: str, first: str, second: str, other: dict[str, str], gap: int
) -> None:
    pairs = [("username", first), *list(other.items())[:gap], ("username", second)]
    with pytest.raises(AmbiguousField):
        counted_fields(*_encode(kind, pairs), NAMES)


def test_a_counted_body_has_at_most_one_content_type() -> None:
    assert counted_content_type(()) == ""
    assert counted_content_type((MULTIPART,)) == MULTIPART
    # SECURITY: frameworks take the first or the last of two: two readings of one body.
    with pytest.raises(BadRequest, match="more than one Content-Type"):
        counted_content_type(("application/json", "application/x-www-form-urlencoded"))


def test_the_counted_body_bound_caps_a_routes_max_body_but_not_a_webhooks() -> None:
    def route(**fields: object) -> RouteConfig:
        return RouteConfig(name="r", prefix="/r/", upstream="u", **fields)  # type: ignore[arg-type]

    assert counted_body_limit(None) == counted_body_limit(route()) == DEFAULT_MAX_BODY
    assert counted_body_limit(route(max_body=1000)) == 1000
    assert counted_body_limit(route(max_body=50 * COUNTED_BODY_CAP)) == COUNTED_BODY_CAP
    assert counted_body_limit(route(auth="webhook")) == 1024 * 1024  # the signature stage's default
    assert counted_body_limit(route(auth="webhook", max_body=50 * COUNTED_BODY_CAP)) == 50 * COUNTED_BODY_CAP
