"""``verify_context`` (SPEC §7, App. B): the exact MAC, and every forgery refused."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from multidict import CIMultiDict

from gateway.tenancy import ContextInvalid, ReplayCache, VerifiedContext, sign_context, verify_context
from gateway.tenancy.context import ContextSigner, identity_tail

KEY = "s3cret-context-key"
NOW = 1_800_000_000
TARGET = "/api/inventory/items?page=2&q=r%C3%A9sum%C3%A9"


def _headers(**overrides: str) -> CIMultiDict[str]:
    base = {
        "X-Tenant-ID": "acme",
        "X-User-ID": "alice",
        "X-User-Roles": "finance,tenant-admin",
        "X-Request-ID": "req-1",
    }
    base.update(overrides)
    value = sign_context(KEY, "GET", TARGET, "acme", "alice", ("finance", "tenant-admin"), "req-1", now=NOW)
    headers = CIMultiDict(base)
    headers.setdefault("X-Gateway-Context", value)
    return headers


def test_mac_is_exactly_appendix_b() -> None:
    value = ContextSigner(KEY).sign("POST", "/t/acme/x?y=1", "acme", "alice", ("a", "b"), "rid", now=NOW)
    message = "\n".join(["v1", str(NOW), "POST", "/t/acme/x?y=1", "acme", "alice", "a,b", "rid"])
    mac = hmac.new(KEY.encode(), message.encode(), hashlib.sha256).digest()
    assert value == f"v1.{NOW}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    # The gateway's per-request spelling, roles already joined, signs the same bytes.
    joined = ContextSigner(KEY).sign_joined("POST", "/t/acme/x?y=1", "acme", "alice", "a,b", "rid", now=NOW)
    assert joined == value


@pytest.mark.parametrize(
    "key",
    ["k", KEY, "x" * 63, "x" * 64, "x" * 65, b"\xff" * 200, "schlüssel-ключ"],
)
def test_the_signers_mac_is_the_stdlib_hmac_for_any_key(key: str | bytes) -> None:
    """The signer's MAC is the stdlib's HMAC-SHA256 for keys shorter than, as long as, and longer
    than a block, str or bytes; and the timestamp's per-second text never carries over to another
    second."""
    raw = key.encode() if isinstance(key, str) else key
    signer = ContextSigner(key)
    target, user = "/t/acme/x?q=r%C3%A9sum%C3%A9", "zoë"
    for now in (NOW, NOW + 0.999, NOW + 1, NOW, NOW - 86_400.5):
        ts = str(int(now))
        message = "\n".join(["v1", ts, "PUT", target, "acme", user, "a,b", "rid-9"]).encode()
        mac = hmac.new(raw, message, hashlib.sha256).digest()
        expected = f"v1.{ts}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        assert signer.sign("PUT", target, "acme", user, ("a", "b"), "rid-9", now=now) == expected
        tail = identity_tail("acme", user, "a,b")
        assert signer.sign_tail("PUT", target, tail, "rid-9", now=now) == expected


def test_valid_context_verifies() -> None:
    context = verify_context(_headers(), "GET", TARGET, KEY, now=NOW + 10)
    assert context == VerifiedContext("acme", "alice", ("finance", "tenant-admin"), "req-1", NOW)
    # bytes keys, plain dict headers in another letter case
    plain = {k.lower(): v for k, v in _headers().items()}
    assert verify_context(plain, "GET", TARGET, KEY.encode(), now=NOW).tenant == "acme"


@pytest.mark.parametrize(
    "field",
    ["X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Request-ID"],
)
def test_any_changed_identity_header_is_refused(field: str) -> None:
    headers = _headers()
    headers[field] = "globex" if field != "X-User-Roles" else "finance,tenant-admin,admin"
    with pytest.raises(ContextInvalid) as caught:
        verify_context(headers, "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(("method", "target"), [("POST", TARGET), ("GET", "/api/finance/invoices")])
def test_context_is_bound_to_method_and_target(method: str, target: str) -> None:
    with pytest.raises(ContextInvalid):
        verify_context(_headers(), method, target, KEY, now=NOW)


def test_tampered_mac_and_timestamp_are_refused() -> None:
    value = _headers()["X-Gateway-Context"]
    flipped = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    later = value.replace(f"v1.{NOW}.", f"v1.{NOW + 30}.")
    for forged in (flipped, later):
        with pytest.raises(ContextInvalid) as caught:
            verify_context(_headers(**{"X-Gateway-Context": forged}), "GET", TARGET, KEY, now=NOW)
        assert caught.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "value", ["", "v1", "v2.1800000000.AAAA", f"v1.{NOW}.short", f"v1.-5.{'A' * 43}", "v1.x.y.z", "garbage"]
)
def test_malformed_context_is_refused(value: str) -> None:
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(**{"X-Gateway-Context": value}), "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "malformed"
    assert value not in str(caught.value) or not value  # the message never echoes the header


def test_missing_context_or_identity() -> None:
    headers = _headers()
    del headers["X-Gateway-Context"]
    with pytest.raises(ContextInvalid) as caught:
        verify_context(headers, "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "missing"
    headers = _headers()
    del headers["X-Tenant-ID"]
    with pytest.raises(ContextInvalid):
        verify_context(headers, "GET", TARGET, KEY, now=NOW)


def test_repeated_headers_are_ambiguous_and_refused() -> None:
    headers = _headers()
    headers.add("x-tenant-id", "globex")
    with pytest.raises(ContextInvalid) as caught:
        verify_context(headers, "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "malformed"


def test_expired_and_future_contexts_are_refused() -> None:
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(), "GET", TARGET, KEY, now=NOW + 61)
    assert caught.value.reason == "expired"
    assert verify_context(_headers(), "GET", TARGET, KEY, max_age=120, now=NOW + 61)
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(), "GET", TARGET, KEY, now=NOW - 30)
    assert caught.value.reason == "future"
    assert verify_context(_headers(), "GET", TARGET, KEY, now=NOW - 3)  # small clock skew


def test_replay_cache_refuses_a_second_use() -> None:
    cache = ReplayCache()
    verify_context(_headers(), "GET", TARGET, KEY, now=NOW, replay_cache=cache)
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(), "GET", TARGET, KEY, now=NOW + 5, replay_cache=cache)
    assert caught.value.reason == "replayed"
    # Another spelling of the same MAC (base64 padding bits) is the same MAC.
    value = _headers()["X-Gateway-Context"]
    last = value[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = value[:-1] + alphabet[alphabet.index(last) ^ 1]
    assert base64.urlsafe_b64decode(twin.rsplit(".", 1)[1] + "=") == base64.urlsafe_b64decode(
        value.rsplit(".", 1)[1] + "="
    )
    with pytest.raises(ContextInvalid) as caught:
        verify_context(
            _headers(**{"X-Gateway-Context": twin}), "GET", TARGET, KEY, now=NOW, replay_cache=cache
        )
    assert caught.value.reason == "replayed"
    # Forged requests never fill the cache; expired entries are forgotten.
    assert len(cache) == 1
    with pytest.raises(ContextInvalid):
        verify_context(_headers(), "GET", TARGET, KEY, now=NOW + 61, replay_cache=cache)


def test_replay_cache_is_bounded_and_fails_closed() -> None:
    cache = ReplayCache(max_entries=2)
    cache.check_and_add("a", NOW + 60, NOW)
    cache.check_and_add("b", NOW + 60, NOW)
    with pytest.raises(ContextInvalid):
        cache.check_and_add("c", NOW + 60, NOW)
    cache.check_and_add("c", NOW + 200, NOW + 100)  # a and b expired: room again


def test_wrong_key_refused_and_previous_key_accepted_in_a_list() -> None:
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(), "GET", TARGET, "another-key", now=NOW)
    assert caught.value.reason == "bad_signature"
    assert verify_context(_headers(), "GET", TARGET, ["new-key", KEY], now=NOW).user == "alice"
    assert verify_context(_headers(), "GET", TARGET, [b"new-key", KEY.encode()], now=NOW).user == "alice"
    with pytest.raises(ValueError):
        verify_context(_headers(), "GET", TARGET, [], now=NOW)
    with pytest.raises(ValueError):
        verify_context(_headers(), "GET", TARGET, "", now=NOW)


def test_empty_roles_round_trip() -> None:
    value = sign_context(KEY, "GET", "/x", "acme", "bob", (), "r", now=NOW)
    headers = {"X-Tenant-ID": "acme", "X-User-ID": "bob", "X-User-Roles": "", "X-Request-ID": "r"}
    headers["X-Gateway-Context"] = value
    assert verify_context(headers, "GET", "/x", KEY, now=NOW).roles == ()


def test_signer_repr_hides_the_key() -> None:
    assert KEY not in repr(ContextSigner(KEY))


@pytest.mark.parametrize("field", ["X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Request-ID"])
def test_undecodable_header_bytes_raise_context_invalid_only(field: str) -> None:
    # Regression: aiohttp hands undecodable header bytes over as lone surrogates
    # (surrogateescape); encoding the MAC message raised UnicodeEncodeError, not ContextInvalid.
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(**{field: "acme\udcff"}), "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "malformed"
    with pytest.raises(ContextInvalid):
        verify_context(_headers(), "GET", TARGET + "\udcff", KEY, now=NOW)


@pytest.mark.parametrize("value", [None, 17, ["acme"], b"\xff\xfe"])
def test_non_text_header_values_raise_context_invalid_only(value: object) -> None:
    # Regression: a None/int value in a plain dict, or undecodable bytes, raised AttributeError,
    # TypeError or UnicodeDecodeError instead of ContextInvalid.
    headers = {k: v for k, v in _headers().items()}
    for field in ("X-Gateway-Context", "X-Tenant-ID"):
        with pytest.raises(ContextInvalid):
            verify_context({**headers, field: value}, "GET", TARGET, KEY, now=NOW)


def test_raw_byte_headers_verify() -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in _headers().items()]
    assert verify_context(raw, "GET", TARGET, KEY, now=NOW).tenant == "acme"


def test_timestamp_with_leading_zeros_is_refused() -> None:
    # Regression: "v1.0<ts>.<mac>" verified, the MAC covering a re-formatted number rather than
    # the header's own text.
    value = _headers()["X-Gateway-Context"].replace("v1.", "v1.0", 1)
    with pytest.raises(ContextInvalid) as caught:
        verify_context(_headers(**{"X-Gateway-Context": value}), "GET", TARGET, KEY, now=NOW)
    assert caught.value.reason == "malformed"
